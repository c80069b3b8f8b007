/* memory.h: what one rank needs in memory, and what it can have.
 * `vera-dist inspect` prints the estimate; the trainer refuses to start a run that does not
 * fit (one line with both figures) instead of being killed by the kernel with no message. */
#ifndef VERA_MEMORY_H
#define VERA_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "vera/config.h"
#include "vera/model.h"

struct vd_backend;

typedef struct vd_memory_estimate {
    size_t weights;  /* frozen model: fp32, the linear layers bf16 under precision bf16 */
    size_t acts;     /* vd_model_act_bytes(batch_size, seq_len, recompute, be) */
    size_t adapter;  /* A, B, vectors, gradients, AdamW m and v, the adapter's activations */
    size_t merged;   /* merged W0 + dW on the layers where it pays (adapter.c's rule; none under
                      * bf16), or under bf16 on the CPU the gemm_ex scratch (cpu_bf16.c) */
    size_t total;
} vd_memory_estimate;

/* Bytes one rank allocates for a run of cfg (batch_size, seq_len, grad_accum, r, vera_dropout,
 * precision, recompute) on the model mc with the adapted layers in target_mask, on backend be
 * (what its attention keeps for the backward); be NULL: the CPU backend's figure. */
void vd_memory_estimate_run(const vd_model_config *mc, uint32_t target_mask, const vd_config *cfg,
                            const struct vd_backend *be, vd_memory_estimate *e);

/* Bytes this rank can still allocate: MemAvailable (/proc/meminfo) and the cgroup's free
 * room (v2 memory.max - memory.current, or v1's limit - usage), the smaller, divided by the
 * ranks on this node. VERA_MEMORY_LIMIT_BYTES replaces the figure (tests). 0 when unknown.
 * how says where the figure came from. */
size_t vd_memory_rank_available(int32_t ranks_on_node, char *how, size_t cap);

/* Dies with one line (both figures and a HINT) when e->total does not fit in what this rank
 * can have; held_bytes is what the rank already holds of e (the loaded weights), which the
 * available figure no longer includes. */
void vd_memory_check_or_die(const vd_memory_estimate *e, size_t held_bytes, int32_t ranks_on_node,
                            const vd_config *cfg);

/* The trainer's one call, right before it allocates the model and activations (the weights
 * are loaded): estimate, compare, refuse. Host memory for the CPU backend; the device's free
 * memory (be->device_free_bytes) for a GPU backend. VERA_MEMORY_LIMIT_BYTES overrides both. */
void vd_memory_check_run(const vd_model_config *mc, uint32_t target_mask, const vd_config *cfg,
                         int32_t ranks_on_node, const struct vd_backend *be);

#endif
