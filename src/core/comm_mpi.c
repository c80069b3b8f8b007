/* comm_mpi.c: collectives over MPI. Every call is checked; a failure ends all ranks. */
#include "vera/comm.h"

#include <mpi.h>
#include <stdlib.h>

#include "vera/common.h"

#define mpiCheck(call) do { int err_ = (call); if (err_ != MPI_SUCCESS) { \
    char msg_[MPI_MAX_ERROR_STRING]; int len_ = 0; MPI_Error_string(err_, msg_, &len_); \
    vd_die_at(__FILE__, __LINE__, "MPI error: %s", msg_); } } while (0)

static void comm_abort_hook(int code) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
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
