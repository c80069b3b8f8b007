/* checkpoint.h: HDF5 checkpoints (docs/checkpoint-format.md). Rank 0 writes them atomically
 * (temporary name in the same directory, flush, fsync, rename); readers verify structure,
 * shapes and checksums before anything in the file is used. The in-memory form is a plain
 * host struct, so the trainer never touches HDF5 and the file never depends on the backend. */
#ifndef VERA_CHECKPOINT_H
#define VERA_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "vera/adapter.h"
#include "vera/model.h"

#define VD_CKPT_FORMAT "vera-dist-checkpoint"
/* Version written. 2: /model holds every field of vd_model_config (any family) and /adapter
 * stores the module table (module_out, module_off_b, module_off_d, n_trainable). The reader
 * also reads version 1 (GPT-2 only; the fields it lacks read as GPT-2 defaults, 0). */
#define VD_CKPT_VERSION 2
#define VD_CKPT_MIN_VERSION 1
/* Version 3: any adapter other than VeRA (docs/checkpoint-format.md, "Version 3"): /adapter holds
 * adapter_type and the tensor table (tensor_order, n_trainable) instead of VeRA's module table,
 * each tensor a dataset of its own shape. VeRA's files stay version 2 (adapter_type absent =
 * vera), so every reader of version 2 still reads them. */
#define VD_CKPT_VERSION_TENSORS 3
#define VD_CKPT_MAX_VERSION VD_CKPT_VERSION_TENSORS

/* One adapted layer as stored: its module path and vector lengths, in the trainer's (PEFT's)
 * order. The reader checks that the list is self-consistent (names unique and valid, out > 0,
 * [lambda_b, lambda_d] back to back in order, total n_trainable); whether it is the list of the
 * model being resumed is the trainer's to check. */
typedef struct {
    char name[96];        /* e.g. "transformer.h.0.attn.c_attn", "model.layers.0.self_attn.q_proj" */
    int32_t out;          /* length of lambda_b */
    size_t off_b, off_d;  /* offsets of lambda_b / lambda_d in the flat arrays below */
} vd_ckpt_module;

/* One trainable tensor as stored: its HDF5 path under /adapter (and under /optimizer/exp_avg,
 * /optimizer/exp_avg_sq), its place in the flat arrays below and its shape; the generic form of
 * the adapter's tensor table (vd_adapter_tensor), for every adapter type. */
typedef struct {
    char path[160];       /* e.g. "transformer.h.0.attn.c_attn/lambda_b", "model.layers.0.self_attn.q_proj/lora_A" */
    size_t offset, numel; /* in the flat arrays */
    int32_t ndim;
    int64_t shape[VD_ADAPTER_MAX_DIM];
} vd_ckpt_tensor;

typedef struct vd_checkpoint {
    /* identity: what the vectors belong to */
    char *config_text;            /* vd_config_serialize output of the run that wrote it (malloc'd) */
    uint64_t config_hash;         /* vd_hash64 of config_text */
    int32_t format_version;       /* set by vd_checkpoint_read to the file's version; the writer
                                   * ignores it and always writes VD_CKPT_VERSION */
    vd_model_config model;        /* base model shape, every field (a version-1 file: GPT-2's six
                                   * fields, arch VD_ARCH_GPT2, everything else 0) */
    uint64_t model_fingerprint;   /* the base model's fingerprint (vd_gpt2_fingerprint for GPT-2) */
    int32_t r, max_in, max_out;
    uint64_t projection_prng_key;
    char target_modules[256];     /* canonical form */
    uint64_t projection_checksum; /* vd_vera.proj_checksum: hash of A then B as generated */
    /* progress */
    int64_t step;                 /* optimizer steps completed */
    uint64_t tokens_seen;         /* global tokens consumed */
    uint64_t next_sequence;       /* global sequence index the next step starts at */
    uint64_t global_batch_seqs;   /* sequences per optimizer step (batch_size*grad_accum*world) */
    int32_t world_size;           /* ranks of the run that wrote it (information only) */
    uint64_t dropout_seed;        /* run seed; masks are counter-based on (seed, step) */
    int32_t adam_t;               /* AdamW bias-correction step count */
    float last_loss;              /* loss of the last completed step */
    /* the adapter: its method and tensor table (every version: files before version 3 are VeRA's,
     * their table rebuilt from the module table) */
    char adapter_type[16];        /* "vera", "lora", "vblora" (vd_adapter_type_name) */
    int32_t n_tensors;
    vd_ckpt_tensor *tensors;      /* (n_tensors) in offset order, covering n_trainable */
    /* tensors (host, fp32) */
    int32_t n_modules;
    vd_ckpt_module *modules;      /* (n_modules) VeRA's module table (versions 1 and 2); 0 / NULL otherwise */
    size_t n_trainable;
    float *params;                /* (n_trainable) lambda_b / lambda_d, at modules' offsets */
    float *exp_avg;               /* (n_trainable) AdamW first moment */
    float *exp_avg_sq;            /* (n_trainable) AdamW second moment */
    float *A;                     /* (r, max_in) or NULL when not stored */
    float *B;                     /* (max_out, r) or NULL when not stored */
} vd_checkpoint;

/* Writes ck to path atomically (path + ".tmp.<pid>", H5Fflush, fsync, rename, fsync dir), as
 * version 2 when ck->adapter_type is "vera" (or empty: VeRA's module table), else version 3
 * (the tensor table).
 * Stores A and B only if ck->A and ck->B are non-NULL. delay_ms > 0 sleeps between writing
 * datasets (tests use it to kill a writer mid-file). Dies (vd_die) on any I/O error. */
void vd_checkpoint_write(const char *path, const vd_checkpoint *ck, int32_t delay_ms);
/* Reads and verifies path into ck (allocating its arrays); format versions
 * VD_CKPT_MIN_VERSION..VD_CKPT_MAX_VERSION. Returns 0 on success; on any
 * problem (not HDF5, missing group/dataset/attribute, wrong shape, checksum mismatch,
 * truncated) returns -1 with a one-line reason in err, leaves ck freed, and never dies. */
int vd_checkpoint_read(const char *path, vd_checkpoint *ck, char *err, size_t errcap);
void vd_checkpoint_free(vd_checkpoint *ck);
/* Checksum over params, exp_avg and exp_avg_sq, the scalars that drive resume, the model
 * config and the module (or tensor) table, as the version vd_checkpoint_write writes ck in defines it
 * (docs/checkpoint-format.md, "data_checksum"); ck->format_version is not used. */
uint64_t vd_checkpoint_data_checksum(const vd_checkpoint *ck);

/* The identity and tensor table of adapter a into ck (adapter_type, r, max_in, max_out,
 * projection_prng_key, target_modules from targets, projection_checksum, the tensor table, and
 * VeRA's module table), and, when save_saved, host copies of a's saved tensors into A / B.
 * The arrays params / exp_avg / exp_avg_sq are the caller's to fill. */
void vd_checkpoint_set_adapter(vd_checkpoint *ck, const vd_adapter *a, const char *targets, int save_saved);
/* Compares a checkpoint's adapter with adapter a regenerated from the run's options: the type,
 * the frozen state's checksum, the tensor table (paths, offsets, shapes). Returns 0 if they
 * agree; else 1 with the first difference in out, e.g. "adapter_type lora in the checkpoint,
 * vera here". */
int vd_checkpoint_adapter_difference(const vd_checkpoint *ck, const vd_adapter *a, char *out, size_t cap);

/* Compares a checkpoint's base-model config (format `version`: fields a version does not store
 * are skipped) with the model loaded now, field by field in the file's order. Returns 0 if they
 * agree; else 1, with the first difference in out under the checkpoint's attribute name, e.g.
 * "n_embd 64 in the checkpoint, 96 here". */
int vd_checkpoint_model_difference(const vd_model_config *ck, int32_t version, const vd_model_config *here,
                                   char *out, size_t cap);
/* Moves a checkpoint file that failed verification into out_dir/checkpoints/refused/ (created
 * when needed), never replacing a file already there (a numeric suffix is added instead). The
 * new path goes to moved (may be NULL). Returns 0, or -1 with errno set. */
int vd_checkpoint_move_refused(const char *out_dir, const char *path, char *moved, size_t cap);

/* Checkpoint files in dir/checkpoints matching step_XXXXXXXX.h5, newest (highest step) first.
 * Returns the count; *paths is a malloc'd array of malloc'd strings (free with
 * vd_checkpoint_list_free). Missing directory = 0. */
int32_t vd_checkpoint_list(const char *out_dir, char ***paths);
void vd_checkpoint_list_free(char **paths, int32_t n);
/* Removes all but the newest keep_last checkpoints, and stale temporary files. */
void vd_checkpoint_prune(const char *out_dir, int32_t keep_last);
/* out_dir/checkpoints/step_%08lld.h5 */
void vd_checkpoint_path(const char *out_dir, int64_t step, char *out, size_t cap);

#endif
