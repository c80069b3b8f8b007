/* comm.h: the collectives seam. The CPU backend uses MPI; a GPU backend supplies its own
 * all-reduce on device memory (NCCL) behind the same calls. Counts are elements. */
#ifndef VERA_COMM_H
#define VERA_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef struct vd_comm {
    int32_t rank;        /* global rank */
    int32_t world;       /* number of ranks */
    int32_t local_rank;  /* rank among the ranks on this node (MPI_Comm_split_type SHARED) */
    int32_t local_size;  /* ranks on this node */
    int32_t owns_mpi;    /* 1 when vd_comm_init called MPI_Init */
    char *hosts;         /* [world][VD_COMM_HOST_MAX] every rank's host name (one allgather at init) */
    double timeout_s;    /* seconds a rank waits inside one collective before it names the ranks that
                          * did not arrive and ends the job (docs/multinode.md); 0 = wait forever */
    int32_t step;        /* the optimizer step the caller is in, for that message; -1 = start-up */
} vd_comm;

#define VD_COMM_HOST_MAX 64 /* bytes per host name in vd_comm.hosts, NUL included */

void vd_comm_init(vd_comm *c, int *argc, char ***argv);
void vd_comm_free(vd_comm *c); /* MPI_Finalize */
/* The collectives' patience (vd_comm.timeout_s) and the step their message names. Only the
 * time a rank spends waiting inside a collective counts, never its own work. */
void vd_comm_set_timeout(vd_comm *c, double seconds);
void vd_comm_set_step(vd_comm *c, int32_t step);
/* This rank's host name (vd_comm.hosts row); "?" before vd_comm_init. */
const char *vd_comm_host(const vd_comm *c, int32_t rank);
/* In-place sum over all ranks; count in elements. Every rank must call with the same count. */
void vd_comm_allreduce_sum_f32(const vd_comm *c, float *buf, size_t count);
void vd_comm_allreduce_sum_f64(const vd_comm *c, double *buf, size_t count);
void vd_comm_allreduce_max_i32(const vd_comm *c, int32_t *buf, size_t count);
void vd_comm_bcast(const vd_comm *c, void *buf, size_t bytes, int32_t root);
/* Gathers one uint64 from every rank into out[world] on every rank. */
void vd_comm_allgather_u64(const vd_comm *c, uint64_t value, uint64_t *out);
void vd_comm_barrier(const vd_comm *c);
/* For a backend that waits for a collective of its own (NCCL) with the same deadline: whether
 * another rank has started a roll call (then call vd_comm_lost at once: it must answer), and
 * the report: a roll call over MPI, one line naming the ranks that did not answer (printed by
 * the lowest rank that did), the job ended. `what` names the collective, waited_s how long
 * this rank waited in it. */
int vd_comm_roll_called(const vd_comm *c);
void vd_comm_lost(const vd_comm *c, const char *what, double waited_s) __attribute__((noreturn));
void vd_comm_abort(int code);

#endif
