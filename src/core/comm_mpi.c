/* comm_mpi.c: collectives over MPI. Every call is checked; a failure ends all ranks. */
#define _POSIX_C_SOURCE 200809L
#include "vera/comm.h"

#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "vera/common.h"

#define mpiCheck(call) do { int err_ = (call); if (err_ != MPI_SUCCESS) { \
    char msg_[MPI_MAX_ERROR_STRING]; int len_ = 0; MPI_Error_string(err_, msg_, &len_); \
    vd_die_at(__FILE__, __LINE__, "MPI error: %s", msg_); } } while (0)

static int32_t g_world = 1; /* set by vd_comm_init */

/* Called by vd_die after its one-line message. With several ranks, MPI_Abort ends them all (a
 * rank that just exited would leave the others waiting in the next collective). With one rank
 * there is nobody to tell: returning lets vd_die exit(code) with nothing after the message,
 * where MPI_Abort would add Open MPI's MPI_ABORT banner (or, for a singleton whose show_help
 * cannot reach a daemon, "ORTE_ERROR_LOG: Data unpack would read past end of buffer").
 * MPI_Finalize is not called: vd_die may run on any thread, or inside a failed MPI call. */
static void comm_abort_hook(int code) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin && g_world > 1) MPI_Abort(MPI_COMM_WORLD, code);
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
    g_world = world;
    MPI_Comm node;
    mpiCheck(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
    int lr = 0, ls = 1;
    mpiCheck(MPI_Comm_rank(node, &lr));
    mpiCheck(MPI_Comm_size(node, &ls));
    mpiCheck(MPI_Comm_free(&node));
    c->local_rank = lr;
    c->local_size = ls;
    vd_set_rank_info(rank, world);
    vd_set_abort_hook(comm_abort_hook);
    comm_watch_launcher();
}

void vd_comm_free(vd_comm *c) {
    if (c->owns_mpi) {
        vd_set_abort_hook(NULL);
        MPI_Finalize();
    }
}

void vd_comm_allreduce_sum_f32(const vd_comm *c, float *buf, size_t count) {
    if (c->world == 1) return;
    vd_require(count <= (size_t)0x7fffffff);
    mpiCheck(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
}

void vd_comm_allreduce_sum_f64(const vd_comm *c, double *buf, size_t count) {
    if (c->world == 1) return;
    vd_require(count <= (size_t)0x7fffffff);
    mpiCheck(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
}

void vd_comm_allreduce_max_i32(const vd_comm *c, int32_t *buf, size_t count) {
    if (c->world == 1) return;
    vd_require(count <= (size_t)0x7fffffff);
    mpiCheck(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_INT32_T, MPI_MAX, MPI_COMM_WORLD));
}

void vd_comm_bcast(const vd_comm *c, void *buf, size_t bytes, int32_t root) {
    if (c->world == 1) return;
    vd_require(bytes <= (size_t)0x7fffffff);
    mpiCheck(MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD));
}

void vd_comm_allgather_u64(const vd_comm *c, uint64_t value, uint64_t *out) {
    if (c->world == 1) { out[0] = value; return; }
    mpiCheck(MPI_Allgather(&value, 1, MPI_UINT64_T, out, 1, MPI_UINT64_T, MPI_COMM_WORLD));
}

void vd_comm_barrier(const vd_comm *c) {
    if (c->world == 1) return;
    mpiCheck(MPI_Barrier(MPI_COMM_WORLD));
}

void vd_comm_abort(int code) { comm_abort_hook(code); exit(code); }
