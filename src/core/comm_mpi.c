/* comm_mpi.c: collectives over MPI. Every call is checked; a failure ends all ranks. */
#define _POSIX_C_SOURCE 200809L
#include "vera/comm.h"

#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vera/common.h"

#define mpiCheck(call) do { int err_ = (call); if (err_ != MPI_SUCCESS) { \
    char msg_[MPI_MAX_ERROR_STRING]; int len_ = 0; MPI_Error_string(err_, msg_, &len_); \
    vd_die_at(__FILE__, __LINE__, "MPI error: %s", msg_); } } while (0)

static int32_t g_world = 1; /* set by vd_comm_init */
static MPI_Comm g_roll = MPI_COMM_NULL; /* a duplicate of MPI_COMM_WORLD for the roll call only */

/* How long a rank, once it gives up on a collective, waits for the other ranks to answer the
 * roll call (they answer while they wait in any collective, so an answer takes milliseconds;
 * this covers a slow link), and how long a rank that is not the one to report waits before it
 * ends the job (so that the report is printed first). */
#define COMM_ROLL_GRACE_S 1.0
#define COMM_REPORT_GRACE_S 1.0
/* How long MPI_Abort may take before the rank exits by itself: with a node's link down the
 * launcher may be unreachable and MPI_Abort may never return. */
#define COMM_ABORT_GRACE_S 3.0
#define COMM_TAG_ROLL 7301

/* Called by vd_die after its one-line message. With several ranks, MPI_Abort ends them all (a
 * rank that just exited would leave the others waiting in the next collective). With one rank
 * there is nobody to tell: returning lets vd_die exit(code) with nothing after the message,
 * where MPI_Abort would add Open MPI's MPI_ABORT banner (or, for a singleton whose show_help
 * cannot reach a daemon, "ORTE_ERROR_LOG: Data unpack would read past end of buffer").
 * MPI_Finalize is not called: vd_die may run on any thread, or inside a failed MPI call. */
static int g_abort_code = 1;

static void *comm_abort_watchdog(void *arg) {
    (void)arg;
    struct timespec ts = {(time_t)COMM_ABORT_GRACE_S, 0};
    nanosleep(&ts, NULL);
    _exit(g_abort_code);
    return NULL;
}

static void comm_abort_hook(int code) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin || g_world <= 1) return;
    /* MPI_Abort asks the launcher to end every rank; when the launcher cannot be reached (a
     * node cut off) it may never return, so this rank then exits on its own */
    g_abort_code = code;
    pthread_t t;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) == 0) {
        if (pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0)
            (void)pthread_create(&t, &attr, comm_abort_watchdog, NULL);
        pthread_attr_destroy(&attr);
    }
    MPI_Abort(MPI_COMM_WORLD, code);
}

/* A rank whose launcher (mpirun, orted, slurmstepd: its parent) died must stop at once and
 * write nothing more: Open MPI notices only after about a second, long enough to start a
 * checkpoint or a metrics row. A watchdog thread polls the parent every 50 ms and ends the
 * process when it changes. (PR_SET_PDEATHSIG would fire when the launcher's *thread* that
 * forked us exits, which some launchers do on purpose.) Checkpoints are written atomically,
 * so stopping in the middle of one loses nothing. */
static pid_t g_launcher_pid;

static void *comm_launcher_watchdog(void *arg) {
    (void)arg;
    struct timespec ts = {0, 50 * 1000 * 1000};
    for (;;) {
        nanosleep(&ts, NULL);
        if (getppid() != g_launcher_pid) {
            static const char msg[] = "vera-dist: error: the MPI launcher (parent process) died; stopping this rank\n";
            ssize_t w = write(2, msg, sizeof(msg) - 1);
            (void)w;
            _exit(137);
        }
    }
    return NULL;
}

static void comm_watch_launcher(void) {
    /* only ranks a launcher started: a singleton run may outlive its shell (nohup, &) */
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") && !getenv("PMI_RANK")) return;
    g_launcher_pid = getppid();
    if (g_launcher_pid <= 1) return; /* already orphaned or started by init: nothing to watch */
    pthread_t t;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0 || pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) != 0 ||
        pthread_create(&t, &attr, comm_launcher_watchdog, NULL) != 0)
        vd_warn("cannot start the launcher watchdog thread: a killed mpirun may leave this rank running ~1 s");
    pthread_attr_destroy(&attr);
}

static double comm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void vd_comm_init(vd_comm *c, int *argc, char ***argv) {
    int init = 0;
    MPI_Initialized(&init);
    c->owns_mpi = !init;
    if (!init) mpiCheck(MPI_Init(argc, argv));
    /* errors come back as codes so mpiCheck can report them, then abort every rank */
    mpiCheck(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    int rank = 0, world = 1;
    mpiCheck(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    mpiCheck(MPI_Comm_size(MPI_COMM_WORLD, &world));
    c->rank = rank;
    c->world = world;
    c->timeout_s = 0.0;
    c->step = -1;
    g_world = world;
    MPI_Comm node;
    mpiCheck(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
    int lr = 0, ls = 1;
    mpiCheck(MPI_Comm_rank(node, &lr));
    mpiCheck(MPI_Comm_size(node, &ls));
    mpiCheck(MPI_Comm_free(&node));
    c->local_rank = lr;
    c->local_size = ls;
    /* every rank's host name, so that a report of a lost rank can say where it ran */
    char me[VD_COMM_HOST_MAX] = {0};
    if (gethostname(me, sizeof(me) - 1) != 0) snprintf(me, sizeof(me), "?");
    c->hosts = mallocCheck((size_t)world * VD_COMM_HOST_MAX);
    mpiCheck(MPI_Allgather(me, VD_COMM_HOST_MAX, MPI_CHAR, c->hosts, VD_COMM_HOST_MAX, MPI_CHAR, MPI_COMM_WORLD));
    if (world > 1) mpiCheck(MPI_Comm_dup(MPI_COMM_WORLD, &g_roll));
    vd_set_rank_info(rank, world);
    vd_set_abort_hook(comm_abort_hook);
    comm_watch_launcher();
}

void vd_comm_free(vd_comm *c) {
    free(c->hosts);
    c->hosts = NULL;
    if (c->owns_mpi) {
        vd_set_abort_hook(NULL);
        if (g_roll != MPI_COMM_NULL) MPI_Comm_free(&g_roll);
        MPI_Finalize();
    }
}

void vd_comm_set_timeout(vd_comm *c, double seconds) { c->timeout_s = seconds > 0 ? seconds : 0.0; }
void vd_comm_set_step(vd_comm *c, int32_t step) { c->step = step; }

const char *vd_comm_host(const vd_comm *c, int32_t rank) {
    if (!c->hosts || rank < 0 || rank >= c->world) return "?";
    return c->hosts + (size_t)rank * VD_COMM_HOST_MAX;
}

/* ---- lost and frozen ranks (docs/multinode.md, "Lost and frozen nodes") ----
 * A collective that has not completed after timeout_s seconds of waiting starts a roll call:
 * the rank sends a small message to every other rank on g_roll and waits COMM_ROLL_GRACE_S for
 * theirs. A rank waiting in any collective sees the roll call while it polls and answers at
 * once; a rank that is killed, frozen (SIGSTOP) or cut off does not. The lowest rank that
 * answered prints one line naming the ranks (and hosts) that did not, and every answering rank
 * ends the job. */
typedef struct {
    int32_t rank;      /* the sender */
    int32_t step;      /* its vd_comm.step */
    int32_t waited_ms; /* how long it had waited in its collective */
    int32_t pad;
} comm_roll_msg;

static size_t comm_append(char *out, size_t cap, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t comm_append(char *out, size_t cap, size_t len, const char *fmt, ...) {
    if (len >= cap) return len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + len, cap - len, fmt, ap);
    va_end(ap);
    return n < 0 ? len : len + (size_t)n;
}

/* "rank 2 (host n1)", "ranks 2, 3 (host n1)", "ranks 2 (host n1), 5 (host n2)": the ranks that
 * did not answer, each run of them on one host followed by its name; at most 16 named */
static void comm_name_missing(const vd_comm *c, const int *answered, char *out, size_t cap) {
    int32_t n_missing = 0, named = 0;
    for (int32_t r = 0; r < c->world; r++) n_missing += !answered[r];
    size_t len = comm_append(out, cap, 0, "%s", n_missing > 1 ? "ranks " : "rank ");
    for (int32_t r = 0; r < c->world; r++) {
        if (answered[r]) continue;
        if (named == 16) { len = comm_append(out, cap, len, " and %d more", (int)(n_missing - named)); break; }
        len = comm_append(out, cap, len, named ? ", %d" : "%d", (int)r);
        named++;
        int32_t next = r + 1;
        while (next < c->world && answered[next]) next++;
        if (next == c->world || named == 16 || strcmp(vd_comm_host(c, r), vd_comm_host(c, next)) != 0)
            len = comm_append(out, cap, len, " (host %s)", vd_comm_host(c, r));
    }
}

void vd_comm_lost(const vd_comm *c, const char *what, double waited) {
    int32_t world = c->world, me = c->rank;
    comm_roll_msg mine = {me, c->step, (int32_t)(waited * 1e3), 0};
    comm_roll_msg *got = callocCheck((size_t)world, sizeof(comm_roll_msg));
    MPI_Request *reqs = mallocCheck(sizeof(MPI_Request) * 2 * (size_t)world);
    int *answered = callocCheck((size_t)world, sizeof(int));
    answered[me] = 1;
    got[me] = mine;
    /* errors here (a peer whose connection broke) only mean that peer does not answer */
    for (int32_t r = 0; r < world; r++) {
        reqs[r] = reqs[world + r] = MPI_REQUEST_NULL;
        if (r == me) continue;
        if (MPI_Irecv(&got[r], (int)sizeof(comm_roll_msg), MPI_BYTE, r, COMM_TAG_ROLL, g_roll, &reqs[r]) != MPI_SUCCESS)
            reqs[r] = MPI_REQUEST_NULL;
        if (MPI_Isend(&mine, (int)sizeof(comm_roll_msg), MPI_BYTE, r, COMM_TAG_ROLL, g_roll, &reqs[world + r]) !=
            MPI_SUCCESS)
            reqs[world + r] = MPI_REQUEST_NULL;
    }
    double t0 = comm_now();
    int32_t n_answered = 1;
    struct timespec nap = {0, 200 * 1000};
    while (n_answered < world && comm_now() - t0 < COMM_ROLL_GRACE_S) {
        for (int32_t r = 0; r < world; r++) {
            if (answered[r] || reqs[r] == MPI_REQUEST_NULL) continue;
            int done = 0;
            if (MPI_Test(&reqs[r], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) { reqs[r] = MPI_REQUEST_NULL; continue; }
            if (done) { answered[r] = 1; n_answered++; }
        }
        nanosleep(&nap, NULL);
    }
    int32_t reporter = 0, longest = 0, step = c->step;
    while (!answered[reporter]) reporter++;
    for (int32_t r = 0; r < world; r++)
        if (answered[r] && got[r].waited_ms > longest) { longest = got[r].waited_ms; step = got[r].step; }
    if (reporter != me) {
        /* the reporter prints the line; this rank ends the job a moment later */
        struct timespec ts = {(time_t)COMM_REPORT_GRACE_S, 0};
        nanosleep(&ts, NULL);
        vd_comm_abort(1);
    }
    char where[96];
    if (step < 0) snprintf(where, sizeof(where), "during start-up");
    else snprintf(where, sizeof(where), "of step %d", (int)step + 1);
    if (n_answered == world)
        vd_die("a collective %s made no progress for %.1f s, yet every rank answered a roll call: the ranks are "
               "in different collectives (a bug; this rank was in the %s)", where, 1e-3 * longest, what);
    char missing[1024];
    comm_name_missing(c, answered, missing, sizeof(missing));
    int one = world - n_answered == 1;
    vd_die("lost %s: the %s %s waited %.1f s for %s and %s did not answer a roll call (%d of %d ranks answered "
           "within %.0f s): killed, frozen or cut off from the network (HINT: --resume auto continues from the "
           "last checkpoint; raise collective_timeout if a rank is only slow)",
           missing, what, where, 1e-3 * longest, one ? "it" : "them", one ? "it" : "they", (int)n_answered,
           (int)world, COMM_ROLL_GRACE_S);
}

int vd_comm_roll_called(const vd_comm *c) {
    if (c->world == 1) return 0;
    int roll = 0;
    mpiCheck(MPI_Iprobe(MPI_ANY_SOURCE, COMM_TAG_ROLL, g_roll, &roll, MPI_STATUS_IGNORE));
    return roll;
}

/* Waits for a non-blocking collective, at most timeout_s seconds (0 = forever), answering a
 * roll call another rank starts meanwhile. Polls, as MPI's blocking calls do: MPI_Test drives
 * the collective's progress; after the first 10 ms each poll yields the core to any other
 * runnable thread (never sleeps: a large message over TCP moves only while it is polled). */
static void comm_wait(const vd_comm *c, MPI_Request *req, const char *what) {
    if (c->timeout_s <= 0) {
        mpiCheck(MPI_Wait(req, MPI_STATUS_IGNORE));
        return;
    }
    double t0 = comm_now(), last_probe = t0;
    for (;;) {
        int done = 0;
        mpiCheck(MPI_Test(req, &done, MPI_STATUS_IGNORE));
        if (done) return;
        double now = comm_now();
        if (now - last_probe > 1e-3) {
            last_probe = now;
            if (vd_comm_roll_called(c)) vd_comm_lost(c, what, now - t0);
        }
        if (now - t0 > c->timeout_s) vd_comm_lost(c, what, now - t0);
        if (now - t0 > 0.01) sched_yield();
    }
}

void vd_comm_allreduce_sum_f32(const vd_comm *c, float *buf, size_t count) {
    if (c->world == 1) return;
    vd_require(count <= (size_t)0x7fffffff);
    MPI_Request req;
    mpiCheck(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req));
    comm_wait(c, &req, "gradient all-reduce");
}

void vd_comm_allreduce_sum_f64(const vd_comm *c, double *buf, size_t count) {
    if (c->world == 1) return;
    vd_require(count <= (size_t)0x7fffffff);
    MPI_Request req;
    mpiCheck(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &req));
    comm_wait(c, &req, "evaluation all-reduce");
}

void vd_comm_allreduce_max_i32(const vd_comm *c, int32_t *buf, size_t count) {
    if (c->world == 1) return;
    vd_require(count <= (size_t)0x7fffffff);
    MPI_Request req;
    mpiCheck(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, MPI_INT32_T, MPI_MAX, MPI_COMM_WORLD, &req));
    comm_wait(c, &req, "all-reduce (max)");
}

void vd_comm_bcast(const vd_comm *c, void *buf, size_t bytes, int32_t root) {
    if (c->world == 1) return;
    vd_require(bytes <= (size_t)0x7fffffff);
    MPI_Request req;
    mpiCheck(MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &req));
    comm_wait(c, &req, "broadcast");
}

void vd_comm_allgather_u64(const vd_comm *c, uint64_t value, uint64_t *out) {
    if (c->world == 1) { out[0] = value; return; }
    MPI_Request req;
    mpiCheck(MPI_Iallgather(&value, 1, MPI_UINT64_T, out, 1, MPI_UINT64_T, MPI_COMM_WORLD, &req));
    comm_wait(c, &req, "allgather");
}

void vd_comm_barrier(const vd_comm *c) {
    if (c->world == 1) return;
    MPI_Request req;
    mpiCheck(MPI_Ibarrier(MPI_COMM_WORLD, &req));
    comm_wait(c, &req, "barrier");
}

void vd_comm_abort(int code) { comm_abort_hook(code); exit(code); }
