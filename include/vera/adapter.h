/* adapter.h: the adapter seam. A method (VeRA, VB-LoRA, LoRA) is a table of operations
 * (vd_adapter_ops) over one generic vd_adapter that holds everything the trainer, the
 * checkpoint, PEFT I/O, export, inspect and the all-reduce need WITHOUT knowing the method:
 *
 *   - ONE contiguous trainable buffer `params` (n_trainable floats) and ONE gradient buffer
 *     `grads` (n_reduce = n_trainable + 2 floats: the loss sum and the stop-request count ride
 *     along), all-reduced once per optimizer step (the only collective of a step);
 *   - the adapted modules (one per targeted site of the model, PEFT's order) and module_of[site];
 *   - a table of named trainable tensors (PEFT key, checkpoint path, offset, shape) covering
 *     params exactly once, in offset order;
 *   - optimizer groups (offset, count, peak learning rate): AdamW runs per group with its own lr;
 *   - non-trainable tensors the method may save (VeRA's A and B when save_projection);
 *   - the method id and its options.
 *
 * Ownership: adapter.c allocates and frees modules, module_of, tensors, saved, params and grads
 * (the method declares sizes in `layout`, fills initial values in `init_params`); a method's
 * private state (VeRA's A, B, U, scratch) lives behind `state`, allocated by its `layout` /
 * `alloc_acts` and freed by its `free`. A merged weight (`vd_adapter_module.weff`) is allocated
 * by the method and used by vd_linear_forward / vd_linear_backward in place of W0.
 * See docs/adapters.md ("Design") and docs/architecture.md. */
#ifndef VERA_ADAPTER_H
#define VERA_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "vera/backend.h"
#include "vera/config.h"
#include "vera/model.h"

struct cJSON;
struct vd_safetensors;

/* Method ids; the config key adapter_type spells them "vera", "vblora", "lora". The id is
 * stored in checkpoints (attribute /adapter/adapter_type; absent = vera). */
typedef enum { VD_ADAPTER_VERA = 0, VD_ADAPTER_VBLORA = 1, VD_ADAPTER_LORA = 2, VD_ADAPTER_N_TYPES } vd_adapter_type;

#define VD_ADAPTER_MAX_GROUPS 4
#define VD_ADAPTER_MAX_DIM 4

/* Which adapted layers keep a merged weight (vd_adapter_merge_pays). INFERENCE: every layer, and
 * the adapter dropout is ignored (no forward drops its input there: export's merge). */
typedef enum { VD_WEFF_AUTO = 0, VD_WEFF_ALWAYS, VD_WEFF_NEVER, VD_WEFF_INFERENCE } vd_weff_policy;

/* Every method's options, flat (a method reads its own block). Built from vd_config by
 * vd_adapter_options_from_config, or from an adapter_config.json by vd_peft_read_options. */
typedef struct {
    vd_adapter_type type;
    uint32_t target_mask;  /* bit k: adapt the family's kind k (vd_model_parse_targets) */
    int32_t r;             /* rank (every method) */
    float lr;              /* peak learning rate of the default optimizer group (config lr) */
    uint64_t seed;         /* init seed of random trainable tensors (LoRA's A, VB-LoRA's bank and logits) */
    /* VeRA */
    float d_initial;
    uint64_t key;          /* projection_prng_key */
    float dropout;         /* vera_dropout */
    /* LoRA */
    float lora_alpha;
    float lora_dropout;
    int32_t use_rslora;    /* 1: scaling alpha / sqrt(r), else alpha / r */
    /* VB-LoRA */
    int32_t num_vectors;          /* bank rows */
    int32_t vector_length;        /* bank columns; every adapted in / out must be a multiple */
    int32_t topk;
    float init_vector_bank_bound; /* bank ~ U(-bound, bound) */
    float init_logits_std;        /* logits ~ N(0, std) */
    float vblora_dropout;
    float lr_vector_bank;         /* peak learning rate of the bank group (0 = lr) */
    int32_t save_only_topk_weights; /* PEFT export of top-k indices / weights only (not resumable) */
} vd_adapter_options;

/* One adapted linear layer (a targeted site of the model). */
typedef struct {
    char name[96];      /* HF module path, e.g. "transformer.h.0.attn.c_attn", "model.layers.0.self_attn.q_proj" */
    int32_t layer;      /* block index */
    int32_t kind;       /* index into the family's kind_paths */
    int32_t site;       /* index into the model's site list */
    int32_t in, out;    /* base layer shape (in x out on the backend) */
    const float *W0;    /* (in, out) frozen base weight (device), owned by the model, when it is
                         * F32; NULL when BF16 (--precision bf16): then no method builds weff
                         * (vd_adapter_alloc_acts passes VD_WEFF_NEVER), since merging dW into a
                         * bf16 weight would round most of it away (docs/gpu.md) */
    float *weff;        /* (in, out) W0 + dW^T kept by the method (rebuilt in refresh), used by
                         * vd_linear_forward / _backward in place of W0; NULL = factored path */
} vd_adapter_module;

/* One named trainable tensor: a slice of params (and the same slice of grads, of the AdamW
 * moments, of the checkpoint's arrays). Stored row-major in PEFT's own layout, so PEFT export
 * and import are plain copies. */
typedef struct {
    char peft_key[192];  /* safetensors key in adapter_model.safetensors, e.g.
                          * "base_model.model.transformer.h.0.attn.c_attn.vera_lambda_b",
                          * "base_model.vblora_vector_bank" */
    char ckpt_path[160]; /* HDF5 path under /adapter (and /optimizer/exp_avg...), e.g.
                          * "transformer.h.0.attn.c_attn/lambda_b", "vector_bank" */
    int32_t module;      /* owning module, or -1 for a tensor shared by every module */
    int32_t group;       /* optimizer group index */
    size_t offset;       /* first float in params / grads */
    size_t numel;        /* product of shape */
    int32_t ndim;        /* 1..VD_ADAPTER_MAX_DIM */
    int64_t shape[VD_ADAPTER_MAX_DIM];
} vd_adapter_tensor;

/* A contiguous range of params updated with its own peak learning rate (the schedule's warmup
 * and cosine apply to each). Groups cover params exactly once, in offset order. */
typedef struct {
    char name[32];       /* "default", "logits", "vector_bank" (logged) */
    size_t offset, count;
    float lr;            /* peak learning rate */
} vd_adapter_group;

/* A non-trainable tensor the method can save (VeRA's vera_A / vera_B): regenerated from the
 * options on every run, so it is saved only on request (save_projection) and checked bit for
 * bit when a file holds it. */
typedef struct {
    char peft_key[192];  /* e.g. "base_model.vera_A" */
    char ckpt_name[32];  /* dataset name under /projection, e.g. "A" */
    const float *data;   /* device, owned by the method */
    size_t numel;
    int32_t ndim;
    int64_t shape[VD_ADAPTER_MAX_DIM];
} vd_adapter_saved;

/* A method's sizes from the model's shapes alone, nothing allocated: what inspect prints and the
 * memory pre-check counts (vd_adapter_size_of). vd_adapter_init checks n_trainable against the
 * layout's on every run, so the two cannot drift apart. */
typedef struct {
    size_t n_trainable;  /* floats in params (the layout's n_trainable) */
    size_t n_shared;     /* of them, in tensors shared by every module (VB-LoRA's bank; 0 otherwise) */
    size_t state_bytes;  /* the method's other memory: frozen (VeRA's A, B), derived (VB-LoRA's composed
                          * A, B and top-k) and per-token buffers for N tokens; not params, grads, AdamW,
                          * merged weights */
    float merge_dropout; /* the dropout that decides merged weights (vd_adapter_alloc_weffs: only at 0) */
    char shared[192];    /* one line on what every module shares, for inspect (may be empty) */
} vd_adapter_size;

struct vd_adapter;

/* The method table. Every entry is required unless marked optional. */
typedef struct vd_adapter_ops {
    const char *name;       /* adapter_type spelling: "vera" */
    const char *peft_type;  /* adapter_config.json peft_type: "VERA", "VBLORA", "LORA" */
    const char *trainable_formula; /* how n_trainable adds up, for the log: "sum over adapted layers of out + r" */
    /* The method's setup in one line for the log, after "<name>: r=R, M adapted layers (targets)":
     * e.g. ", A 4x64, B 192x4, projection checksum ..." (may be empty). */
    void (*describe)(const struct vd_adapter *a, char *out, size_t cap);
    /* Declares the tensors (vd_adapter_add_tensor), groups (vd_adapter_add_group) and saved
     * tensors of a->modules (already laid out), and builds the method's frozen state (VeRA: A, B).
     * Sets a->identity_checksum (hash of that frozen state; 0 if none). Dies naming the option
     * or layer on options the method cannot take. */
    void (*layout)(struct vd_adapter *a);
    /* The sizes of layout + alloc_acts for n_modules modules of shapes in[i] x out[i] (max_in,
     * max_out over them) and N tokens per micro-batch, bf16 base weights or not, into sz; no
     * allocation. Dies as layout does on options the method cannot take. */
    void (*size)(const vd_adapter_options *opt, const int32_t *in, const int32_t *out, int32_t n_modules,
                 int32_t max_in, int32_t max_out, size_t N, int bf16, vd_adapter_size *sz);
    /* Initial trainable values into hp (host, n_trainable floats, zeroed): PEFT's init. */
    void (*init_params)(const struct vd_adapter *a, float *hp);
    /* Per-token buffers for N tokens per micro-batch; tokens_per_step (per rank) and policy
     * decide the merged-weight path. Calls refresh at the end. */
    void (*alloc_acts)(struct vd_adapter *a, int32_t N, int64_t tokens_per_step, vd_weff_policy policy);
    /* After params change (each optimizer step, a load): rebuild whatever derives from them
     * (merged weights, VB-LoRA's composed A / B). */
    void (*refresh)(struct vd_adapter *a);
    /* optional: NULL = zero all of grads (n_reduce floats) */
    void (*zero_grads)(struct vd_adapter *a);
    /* The adapter's part of an adapted layer, after vd_linear_forward's base GEMM
     * out = inp (W0 or weff) + bias: adds the adapter term unless md->weff already holds it,
     * and keeps what backward needs. */
    void (*linear_forward)(struct vd_adapter *a, int32_t module, float *out, const float *inp, int32_t N,
                           const vd_fwd_ctx *ctx);
    /* After vd_linear_backward's base GEMM dinp = dout (W0 or weff)^T: accumulates the
     * module's parameter gradients into a->grads and, unless md->weff was used or dinp is
     * NULL (no input gradient wanted), adds the adapter path to dinp. inp is the layer's input
     * of the forward (the model keeps it for the backward), unchanged since. */
    void (*linear_backward)(struct vd_adapter *a, int32_t module, float *dinp, const float *dout, const float *inp,
                            int32_t N, const vd_fwd_ctx *ctx);
    /* Frees the method's state (not the generic arrays). */
    void (*free)(struct vd_adapter *a);

    /* ---- PEFT I/O (src/io/peft_io.c calls these; the tensors go by the table) ---- */
    /* Adds the method's adapter_config.json fields (r, alpha, key, ...) to root; the common keys
     * (peft_type, target_modules, bias, ...) are written by peft_io. */
    void (*peft_config_write)(const struct vd_adapter *a, struct cJSON *root, int save_saved);
    /* Reads the method's fields of an adapter_config.json (text: the file's bytes, for exact
     * 64-bit integers) into opt (type and target_mask are already set); dies naming path and
     * field. run non-NULL (loading into a run): also dies naming the field where the file
     * differs from run in what shapes the tensors or the frozen state ("r is 8, this run has 4"). */
    void (*peft_config_read)(const struct cJSON *root, const char *text, const char *path, vd_adapter_options *opt,
                             const vd_adapter_options *run);
    /* optional: writes adapter_model.safetensors itself (VB-LoRA's top-k only form) from host
     * params and returns 1, or returns 0 to let peft_io write every tensor of the table (plus the
     * saved tensors when save_saved); NULL = always the table. */
    int (*peft_write_tensors)(const struct vd_adapter *a, const float *hp, const char *path, int save_saved,
                              const char *const *meta_kv, int32_t n_meta);
    /* optional: reads a file in the method's own form (VB-LoRA's top-k only) into hp (host,
     * n_trainable floats) with its own checks and returns 1, or returns 0 to let peft_io read it
     * by the table; NULL = always the table. */
    int (*peft_read_tensors)(struct vd_adapter *a, const struct vd_safetensors *st, float *hp);
    /* optional: dies with one line when the loaded values cannot be trained (NULL = they can) */
    void (*check_trainable)(const struct vd_adapter *a);
} vd_adapter_ops;

typedef struct vd_adapter {
    vd_adapter_type type;
    const vd_adapter_ops *ops;
    const vd_backend *be;
    const vd_model_family *family; /* the model's: layer names for PEFT I/O */
    char base_model_class[48];     /* HF architecture, e.g. "LlamaForCausalLM" (adapter_config.json) */
    vd_adapter_options opt;
    int32_t max_in, max_out;       /* over the modules */
    int32_t n_modules;
    vd_adapter_module *modules;    /* (n_modules) PEFT's order: block by block, kinds in the family's order */
    int32_t n_sites;
    int32_t *module_of;            /* (n_sites) module index of each model site, or -1 */
    int32_t n_tensors;
    vd_adapter_tensor *tensors;    /* (n_tensors) in offset order, covering params */
    int32_t n_groups;
    vd_adapter_group groups[VD_ADAPTER_MAX_GROUPS]; /* (n_groups) in offset order, covering params */
    int32_t n_saved;
    vd_adapter_saved *saved;       /* (n_saved) */
    size_t n_trainable;            /* floats in params */
    size_t n_reduce;               /* n_trainable + 2: the loss sum and the stop-request count ride along */
    uint64_t identity_checksum;    /* hash of the frozen state regenerated from the options (VeRA: A then B) */
    float *params;                 /* (n_trainable) device, the tensors at their offsets */
    float *grads;                  /* (n_reduce) device: gradients, then the loss sum, then the number of
                                    * ranks that received a stop signal (SIGTERM/SIGUSR1) */
    int32_t N;                     /* tokens per micro-batch the activations hold (alloc_acts) */
    vd_dtype wdtype;               /* the base linear weights' dtype (every site has the same): BF16 never merges */
    int share_input;               /* set by vd_adapter_share_input for the next vd_linear_backward only */
    uint64_t input_epoch;          /* which layer input the current backward reads: advanced by every
                                    * vd_linear_backward not promised the previous one's input, so a
                                    * method may reuse what it formed from an input while it is unchanged */
    void *state;                   /* the method's private state */
} vd_adapter;

/* The configuration keys, besides r, target_modules, d_initial and projection_prng_key, that
 * decide the shape and math of an adapter a sub-command rebuilds to load values into (forward,
 * eval): list them in its key list (cli.h). Init-only keys are not among them. */
#define VD_ADAPTER_SHAPE_KEYS "adapter_type", "lora_alpha", "use_rslora", "num_vectors", "vector_length", "topk"

/* "vera" / "vblora" / "lora"; parse returns -1 for an unknown name. */
const char *vd_adapter_type_name(vd_adapter_type t);
int vd_adapter_type_parse(const char *name);
/* The method's table; dies naming adapter_type when this build lacks it. */
const vd_adapter_ops *vd_adapter_ops_of(vd_adapter_type t);
/* The method whose ops->peft_type is peft_type ("VERA"), or -1; the list of them, for messages. */
int vd_adapter_type_of_peft(const char *peft_type);
const char *vd_adapter_peft_types(void);
/* The options of a run from its configuration and target mask. */
void vd_adapter_options_from_config(vd_adapter_options *opt, const vd_config *cfg, uint32_t target_mask);

/* Copies every key that defines an adapter (adapter_type, r, target_modules, d_initial,
 * projection_prng_key, the LoRA and VB-LoRA keys, lr, lr_vector_bank, seed) from src to dst:
 * a checkpoint's stored configuration into a sub-command's (eval --checkpoint). */
void vd_adapter_config_copy(vd_config *dst, const vd_config *src);

/* Lays out one module per targeted site of `m`, calls the method's layout, allocates params and
 * grads, fills params with the method's init, binds each module to its site's frozen weight.
 * The caller attaches it to the model with vd_model_set_adapter. */
/* The method's sizes for model mc (its targeted kinds, every layer) and N tokens per micro-batch:
 * n_modules, max_in, max_out of the modules vd_adapter_init would lay out (each may be NULL). */
void vd_adapter_size_of(const vd_model_config *mc, const vd_adapter_options *opt, size_t N, int bf16,
                        vd_adapter_size *sz, int32_t *n_modules, int32_t *max_in, int32_t *max_out);
/* Trainable floats of one module of shape in x out, beyond the shared tensors (inspect's per-layer line). */
size_t vd_adapter_module_trainable(const vd_adapter_options *opt, int32_t in, int32_t out);

void vd_adapter_init(vd_adapter *a, const vd_backend *be, const vd_model *m, const vd_adapter_options *opt);
void vd_adapter_alloc_acts(vd_adapter *a, int32_t N, int64_t tokens_per_step, vd_weff_policy policy);
void vd_adapter_refresh(vd_adapter *a);
/* Whether a layer in x out keeps a merged weight W0 + dW (the one rule: alloc_weffs, the methods'
 * size hooks and the memory pre-check ask it): where it pays (tokens_per_step (in + out) > in out;
 * always with VD_WEFF_ALWAYS, never with VD_WEFF_NEVER or dropout > 0; always with
 * VD_WEFF_INFERENCE, whatever the dropout). */
int vd_adapter_merge_pays(float dropout, int64_t tokens_per_step, vd_weff_policy policy, int32_t in, int32_t out);
/* For a method's alloc_acts: gives md->weff (in x out, device; the method frees it) to every
 * module where vd_adapter_merge_pays. Returns 1 if any module got one. */
int vd_adapter_alloc_weffs(vd_adapter *a, float dropout, int64_t tokens_per_step, vd_weff_policy policy);
/* For a method's linear_forward / _backward (LoRA-shaped: U = dropout(x) A^T with A (r, in)):
 * dropout(x) of module's input into scratch (N, in), the same mask in forward and backward, or x
 * itself when p is 0 or not training. */
const float *vd_adapter_dropped(vd_adapter *a, int32_t module, float *scratch, const float *x, float p, int32_t N,
                               const vd_fwd_ctx *ctx);
/* dinp (N, in) += mask * (scale dU A), dU (N, r), A (r, in); scratch (N, in) holds the product
 * when a dropout mask applies. */
void vd_adapter_input_grad(vd_adapter *a, int32_t module, float *dinp, const float *dU, const float *A, float scale,
                           float *scratch, float p, int32_t N, const vd_fwd_ctx *ctx);
/* A training run calls this after loading an adapter (--init_adapter): the method dies with one
 * line if what it loaded cannot be trained (VB-LoRA's save_only_topk_weights files). */
void vd_adapter_check_trainable(const vd_adapter *a);
void vd_adapter_zero_grads(vd_adapter *a);
void vd_adapter_free(vd_adapter *a);
/* For a method's layout: appends a tensor at the next offset (n_trainable grows by its numel)
 * and returns its index; module -1 = shared. `ckpt_path` and `peft_key` are complete strings. */
int32_t vd_adapter_add_tensor(vd_adapter *a, const char *peft_key, const char *ckpt_path, int32_t module,
                              int32_t group, int32_t ndim, const int64_t *shape);
/* Opens a new optimizer group at the current end of params (the tensors added next belong to it). */
int32_t vd_adapter_add_group(vd_adapter *a, const char *name, float lr);
void vd_adapter_add_saved(vd_adapter *a, const char *peft_key, const char *ckpt_name, const float *data,
                          int32_t ndim, const int64_t *shape);
/* Index of the tensor with this PEFT key, or -1. */
int32_t vd_adapter_find_tensor(const vd_adapter *a, const char *peft_key);

/* One linear layer of the model, adapted when module >= 0.
 * out (N, outd) = inp (N, in) W (in, outd) + bias (may be NULL) [+ the adapter's term]. W is F32
 * or BF16: the base GEMM is the one place that reads it (be->gemm_ex: bf16 inputs, fp32
 * accumulation); everything else is fp32. */
void vd_linear_forward(vd_adapter *a, const vd_backend *be, int32_t module, float *out, const float *inp,
                       const vd_tensor *W, const float *bias, int32_t N, int32_t in, int32_t outd,
                       const vd_fwd_ctx *ctx);
/* dinp (N, in) = dout W^T [+ adapter path]; accumulates the module's gradients into a->grads.
 * inp (N, in) is the forward's input of the layer, kept by the model (the adapter's gradients
 * need it). dinp NULL: no input gradient (block 0's first layers: the embedding below is
 * frozen), only the module's gradients. */
void vd_linear_backward(vd_adapter *a, const vd_backend *be, int32_t module, float *dinp, const float *dout,
                        const float *inp, const vd_tensor *W, int32_t N, int32_t in, int32_t outd,
                        const vd_fwd_ctx *ctx);

/* The model says that the next vd_linear_backward's input is the previous one's, unchanged
 * (Llama's k and v after q, up after gate): the method may reuse what it formed from it (VeRA's
 * U). Only a promise for that one call; without it every call forms its own (never wrong). */
void vd_adapter_share_input(vd_adapter *a);

/* Seed of module's dropout mask for this forward (the backend draws element (row, col) from it);
 * every method draws its adapter-input dropout from this stream. */
uint64_t vd_adapter_dropout_seed(const vd_fwd_ctx *ctx, int32_t module);

/* The methods' tables (src/adapter/<method>.c). */
extern const vd_adapter_ops vd_vera_ops;
extern const vd_adapter_ops vd_lora_ops;
extern const vd_adapter_ops vd_vblora_ops;

#endif
