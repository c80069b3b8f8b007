/* model.h: GPT-2 (learned positions, pre-LayerNorm, GELU tanh, causal attention, tied LM head)
 * in fp32, forward and backward with the base weights frozen. The model owns its frozen
 * parameters (one contiguous buffer, named pointers into it) and its activations; the
 * adapter (adapter.h) owns the trainable vectors and is called from each linear layer.
 * Linear weights keep the Hugging Face Conv1D layout (in x out): y = x W + bias. */
#ifndef VERA_MODEL_H
#define VERA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "vera/tensor.h"

struct cJSON;

/* The model families. GPT-2 is 0 so that a GPT-2 config written field by field stays one. */
typedef enum { VD_ARCH_GPT2 = 0, VD_ARCH_LLAMA = 1 } vd_arch;
/* Rotary scaling types (HF rope_parameters / rope_scaling "rope_type"). */
typedef enum { VD_ROPE_DEFAULT = 0, VD_ROPE_LLAMA3 = 1 } vd_rope_type;

/* One base model's shape, for every family (fields a family does not use stay 0). The same
 * struct is stored in checkpoints and printed by `inspect`. GPT-2 uses the first six. */
typedef struct {
    int32_t max_seq_len;  /* n_positions / max_position_embeddings */
    int32_t vocab_size;   /* V */
    int32_t n_layer;      /* L */
    int32_t n_head;       /* NH */
    int32_t channels;     /* C (n_embd / hidden_size) */
    float ln_eps;         /* layer_norm_epsilon / rms_norm_eps */
    vd_arch arch;
    /* ---- Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) ---- */
    int32_t n_kv_head;    /* num_key_value_heads (GQA); == n_head without grouping */
    int32_t head_dim;     /* head_dim, default C / NH */
    int32_t intermediate; /* intermediate_size (SwiGLU width) */
    int32_t tied;         /* tie_word_embeddings: LM head = embed_tokens */
    int32_t qkv_bias;     /* q/k/v projections have biases (attention_bias, or Qwen2) */
    int32_t o_bias;       /* o_proj has a bias (attention_bias) */
    int32_t mlp_bias;     /* gate/up/down have biases (mlp_bias) */
    float rope_theta;
    vd_rope_type rope_type;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor; /* llama3 scaling */
    int32_t rope_original_max_pos;                                   /* llama3: original_max_position_embeddings */
    char hf_architecture[48]; /* config.json "architectures"[0], written back on export */
} vd_model_config;

/* GPT-2's code keeps its own name for the shared struct. */
typedef vd_model_config vd_gpt2_config;

#define VD_GPT2_NUM_PARAMS 16
typedef struct {
    float *wte;      /* (V, C)      token embeddings, also the LM head */
    float *wpe;      /* (maxT, C)   position embeddings */
    float *ln1w;     /* (L, C) */
    float *ln1b;     /* (L, C) */
    float *qkvw;     /* (L, C, 3C)  attn.c_attn.weight, Conv1D in x out */
    float *qkvb;     /* (L, 3C) */
    float *attprojw; /* (L, C, C)   attn.c_proj.weight */
    float *attprojb; /* (L, C) */
    float *ln2w;     /* (L, C) */
    float *ln2b;     /* (L, C) */
    float *fcw;      /* (L, C, 4C)  mlp.c_fc.weight */
    float *fcb;      /* (L, 4C) */
    float *fcprojw;  /* (L, 4C, C)  mlp.c_proj.weight */
    float *fcprojb;  /* (L, C) */
    float *lnfw;     /* (C) */
    float *lnfb;     /* (C) */
} vd_gpt2_params;

/* Element counts of the 16 tensors, in the order of vd_gpt2_params. */
void vd_gpt2_param_sizes(const vd_gpt2_config *cfg, size_t sizes[VD_GPT2_NUM_PARAMS]);
size_t vd_gpt2_num_params(const vd_gpt2_config *cfg);
/* Points the named pointers into one contiguous buffer laid out in that order. */
void vd_gpt2_params_point(vd_gpt2_params *p, const vd_gpt2_config *cfg, float *buf);
/* Sets the named pointers to addr[i] (vd_gpt2_params order; NULL allowed). */
void vd_gpt2_params_set(vd_gpt2_params *p, float *const addr[VD_GPT2_NUM_PARAMS]);

/* ---- model_io.c: Hugging Face directories and llm.c model files ---- */
/* Reads DIR/config.json and DIR/model.safetensors (names with or without the "transformer."
 * prefix; F32/BF16/F16 converted to fp32). Returns a malloc'd contiguous host buffer in
 * vd_gpt2_params order. Dies naming the file and tensor on missing tensors or wrong shapes. */
float *vd_gpt2_load_hf(const char *dir, vd_gpt2_config *cfg);
/* Writes DIR/config.json and DIR/model.safetensors as GPT2LMHeadModel.save_pretrained does
 * (F32, "transformer." names, tied lm_head left out). Creates DIR. */
void vd_gpt2_save_hf(const char *dir, const vd_gpt2_config *cfg, const float *params);
/* config.json helpers shared by the families (model_io.c). Each dies naming path and key. */
struct cJSON *vd_cfg_read_json(const char *path);                     /* a JSON object */
char *vd_read_small_file(const char *path, size_t *len_out);          /* whole file, NUL-terminated */
/* An integer field in [lo, hi]; dflt < 0 means required. */
int32_t vd_cfg_int(const struct cJSON *root, const char *path, const char *key, int64_t dflt, int64_t lo, int64_t hi);
/* A boolean that must be `want` when present (why: what we would compute otherwise). */
void vd_cfg_require_bool(const struct cJSON *root, const char *path, const char *key, int want, const char *why);
/* GPT-2's fields of a parsed config.json. */
void vd_gpt2_config_from_json(const struct cJSON *root, const char *path, vd_gpt2_config *cfg);
/* Reads an llm.c model file (gpt2_124M.bin as llm.c's train_gpt2.py writes it): int32[256]
 * header (magic 20240326; version 3 = fp32 or 5 = bf16 parameters; [2] maxT, [3] V, [4] L,
 * [5] NH, [6] C, [7] padded vocab Vp >= V), then the 16 tensors in vd_gpt2_params order with
 * wte padded to Vp rows and linear weights stored out x in. Returns the same host buffer as
 * vd_gpt2_load_hf: padding rows dropped, weights transposed to Conv1D's in x out, bf16 widened
 * to fp32; ln_eps = 1e-5. The file size must match the header exactly. Dies naming the file and
 * what was expected (wrong magic, unsupported version, bad field, truncated, too long). */
float *vd_gpt2_load_llmc(const char *path, vd_gpt2_config *cfg);
/* The `model` key: a directory is a Hugging Face GPT-2 directory (vd_gpt2_load_hf), a regular
 * file an llm.c model file (vd_gpt2_load_llmc). Dies naming the path if it is neither. */
float *vd_gpt2_load(const char *path, vd_gpt2_config *cfg);
/* GPT-2 initialisation: N(0, 0.02) weights and embeddings, residual projections
 * (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weight 1 bias 0. */
void vd_gpt2_init_random(const vd_gpt2_config *cfg, float *params, uint64_t seed);
/* HF name of tensor `which` (0..15) for layer l (ignored for global tensors). */
void vd_gpt2_param_name(int which, int32_t l, char *out, size_t cap);
/* Hash of shapes and contents: the base-model fingerprint stored in checkpoints. */
uint64_t vd_gpt2_fingerprint(const vd_gpt2_config *cfg, const float *params);


/* ---- model.c: the model on a backend ---- */
struct vd_backend;
struct vd_adapter;

/* Per forward call: what dropout needs to draw a world-size independent mask. */
typedef struct {
    int32_t training;       /* 1: dropout on; 0: eval */
    uint64_t dropout_seed;  /* mixes run seed and optimizer step */
    uint64_t row0;          /* global index of this micro-batch's first token row */
    float dloss;            /* the dloss of the backward that follows (training): the forward then
                             * takes the LM head's gradient with each chunk of logits at hand;
                             * 0 = unknown, the backward recomputes the head (one GEMM more) */
} vd_fwd_ctx;

struct vd_linear_site;

typedef struct vd_gpt2 {
    vd_gpt2_config config;
    const struct vd_backend *be;
    vd_gpt2_params params;   /* frozen weights, named pointers into params_memory (device); the four
                              * linear weights are NULL under bf16: they live in lin_memory */
    float *params_memory;
    void *lin_memory;        /* bf16 linear weights (weight_dtype BF16), else NULL */
    const struct vd_linear_site *sites; /* (n_layer * 4) the model's site list: W of each linear layer */
    size_t num_params;
    struct vd_adapter *adapter; /* adapter (owned by the caller); NULL = plain GPT-2 */
    int32_t B, T;            /* activation capacity: up to B sequences of exactly T tokens */
    int32_t recompute;       /* 1: recompute = block (vd_model_set_recompute): the block activations
                              * below have one slot (LB = 1), rebuilt per block in the backward;
                              * 0: LB = L slots, one per layer */
    /* activations kept for backward (device); L = n_layer, N = B*T; LB = L, or 1 under recompute */
    float *encoded;          /* (N, C)        embeddings = input of block 0 */
    float *ln1;              /* (N, C): one slot, the backward rebuilds it */
    float *ln1_mean, *ln1_rstd; /* (LB, N) */
    float *qkv;              /* (LB, N, 3C) */
    float *atty;             /* (LB, N, C)     attention output before c_proj */
    float *att;              /* (LB, attention_saved_floats) attention's saved state (the backend's) */
    float *residual2;        /* (LB, N, C) */
    float *ln2;              /* (N, C): one slot, the backward rebuilds it */
    float *ln2_mean, *ln2_rstd; /* (LB, N) */
    float *fch;              /* (LB, N, 4C) */
    float *fch_gelu;         /* (N, 4C): one slot, the backward rebuilds it from fch */
    float *residual3;        /* (L, N, C)     output of each block */
    float *lnf;              /* (N, C) */
    float *lnf_mean, *lnf_rstd; /* (N) */
    float *logits;           /* (logit_rows, V) a chunk's logits, softmax, dlogits in place */
    int32_t logit_rows;      /* min(N, VD_HEAD_CHUNK); N after a forward without targets */
    float head_dloss;        /* dloss the last forward took the head's gradient (dbuf_a) with; 0: none */
    float *losses;           /* (N) */
    int32_t *inputs, *targets; /* (N) */
    int32_t *pos;            /* (N) positions of the last forward, when it had any */
    const int32_t *last_pos; /* pos, or NULL when the last forward had none (= t) */
    /* backward scratch */
    float *dresidual;        /* (N, C) */
    float *dbuf_a, *dbuf_b;  /* (N, 4C) */
    float *dqkv;             /* (N, 3C) */
    float *datt;             /* (B, NH, T, T) */
    float *proj_out;         /* (N, C)  c_proj / mlp.c_proj output before the residual add */
    int32_t last_B;          /* sequences in the last forward */
} vd_gpt2;

/* Uploads host_params (vd_gpt2_params order) to the backend, the linear weights as wdtype (F32
 * or BF16), and fills sites (n_layer * 4), which the model keeps using. */
void vd_gpt2_init(vd_gpt2 *m, const struct vd_backend *be, const vd_gpt2_config *cfg, const float *host_params,
                  vd_dtype wdtype, struct vd_linear_site *sites);
void vd_gpt2_alloc_acts(vd_gpt2 *m, int32_t B, int32_t T);
/* Forward on nb <= B sequences of T tokens (host arrays of nb*T ids). With targets, returns
 * the sum of token losses (targets VD_TARGET_NONE add 0; and keeps what backward needs);
 * without, returns 0. pos (host, nb*T) or NULL: as vd_model_forward. */
double vd_gpt2_forward(vd_gpt2 *m, const int32_t *inputs, const int32_t *targets, const int32_t *pos, int32_t nb,
                       const vd_fwd_ctx *ctx);
/* Backward of (dloss * sum of token losses) of the last forward: accumulates the adapter's
 * adapter gradients into m->adapter->grads. Frozen weights get no gradient. */
void vd_gpt2_backward(vd_gpt2 *m, float dloss, const vd_fwd_ctx *ctx);
void vd_gpt2_free(vd_gpt2 *m);


/* ============================================================================================
 * The model seam (src/model/model.c). The training loop, adapter, optimizer, checkpoint, PEFT
 * I/O, export and inspect see only what is below: a family table that knows the names and
 * shapes, and a list of adaptable linear sites. Each family (gpt2.c, llama.c) owns its weights,
 * activations and its explicit forward / backward.
 * ============================================================================================ */

#define VD_MAX_KINDS 8
struct vd_weights;

/* One family: every fact about its layer names and shapes lives in its table (gpt2.c, llama.c). */
typedef struct vd_model_family {
    vd_arch arch;
    const char *name;                 /* "gpt2", "llama": the checkpoint's and inspect's name */
    int32_t n_kinds;                  /* adaptable linear layers per block */
    const char *kind_paths[VD_MAX_KINDS]; /* module path inside a block, PEFT (module) order */
    const char *block_path;           /* printf format of block l's module prefix */
    int32_t fan_in_fan_out;           /* PEFT's flag: 1 when the HF layer is Conv1D (weight in x out) */
    const char *peft_parent_library;  /* adapter_config.json auto_mapping */
    /* in / out features of `kind` for this shape */
    void (*kind_shape)(const vd_model_config *c, int32_t kind, int32_t *in, int32_t *out);
    /* frozen parameter count (elements of the host buffer) */
    size_t (*num_params)(const vd_model_config *c);
} vd_model_family;

/* One adaptable linear layer, y = x W (+ bias). Every family keeps linear weights in x out on
 * the backend (GPT-2's Conv1D layout; Llama's nn.Linear weights are transposed at load). */
typedef struct vd_linear_site {
    char name[96];        /* HF module path, e.g. "model.layers.3.self_attn.q_proj" */
    int32_t layer, kind;  /* block index; index into family->kind_paths */
    int32_t in, out;
    vd_tensor W;          /* (in, out) frozen weight on the backend, owned by the model: F32, or BF16
                           * under --precision bf16 */
    size_t host_off;      /* where W's (in, out) floats start in the family's host buffer */
} vd_linear_site;

typedef struct vd_llama vd_llama;

typedef struct vd_model {
    vd_model_config config;
    const vd_model_family *family;
    const struct vd_backend *be;
    int32_t n_sites;          /* n_layer * n_kinds: block by block, kinds in family order */
    vd_linear_site *sites;    /* (n_sites) */
    size_t num_params;
    vd_gpt2 *gpt2;            /* the family's own struct: exactly one is set */
    vd_llama *llama;
} vd_model;

/* The family of an arch, or of an HF "architectures" entry (NULL if unsupported). */
const vd_model_family *vd_model_family_of(vd_arch arch);
const vd_model_family *vd_model_family_by_hf_name(const char *architectures0);
/* Site name of (layer, kind): block_path + kind_paths[kind]. */
void vd_model_site_name(const vd_model_family *f, int32_t layer, int32_t kind, char *out, size_t cap);

/* Reads the shape from `path` without loading weights: a HF directory's config.json (GPT-2 or
 * Llama family, by "architectures"), a GGUF file's metadata, or an llm.c .bin header. Dies
 * naming the file and what was expected; an unsupported architectures entry is refused by name. */
void vd_model_read_config(const char *path, vd_model_config *cfg);
/* The same from a parsed config.json (cfg_path names it in errors). */
void vd_model_config_from_json(const struct cJSON *root, const char *cfg_path, vd_model_config *cfg);
/* Loads the frozen weights on the host: a malloc'd buffer of num_params floats in the family's
 * layout. Accepts everything vd_model_read_config does. */
float *vd_model_load(const char *path, vd_model_config *cfg);
/* Hash of the shape and the weights: the base-model fingerprint stored in checkpoints. */
uint64_t vd_model_fingerprint(const vd_model_config *cfg, const float *host_params);
/* Writes DIR as transformers' save_pretrained would (config.json + model.safetensors, F32). */
void vd_model_save_hf(const char *dir, const vd_model_config *cfg, const float *host_params);

/* Bytes of activations and backward scratch vd_model_alloc_acts(B, T) allocates (inspect, the
 * memory pre-check), with recompute = 1 (recompute = block) or 0 (none), on backend be:
 * attention's saved state is be's (the CPU keeps 2 floats per query row, a CUDA backend
 * B*NH*T*T floats per layer); be NULL: the CPU backend's. */
size_t vd_model_act_bytes(const vd_model_config *cfg, int32_t B, int32_t T, int recompute,
                          const struct vd_backend *be);
/* Uploads host_params to the backend and lists the sites: vd_model_init_typed with F32. */
void vd_model_init(vd_model *m, const struct vd_backend *be, const vd_model_config *cfg, const float *host_params);
/* The same with the linear layers' frozen weights stored as wdtype: VD_DTYPE_F32, or
 * VD_DTYPE_BF16 (rounded to nearest even; half the memory; their GEMMs run on bf16 inputs with
 * fp32 accumulation). Embeddings, the LM head, norms and biases stay fp32. */
void vd_model_init_typed(vd_model *m, const struct vd_backend *be, const vd_model_config *cfg,
                         const float *host_params, vd_dtype wdtype);
/* The storage of the linear layers' frozen weights for a `precision` value: BF16 for "bf16",
 * F32 for "fp32" and "tf32" (TF32 is a GEMM mode, not a storage type). */
vd_dtype vd_precision_weight_dtype(const char *precision);
/* Elements of the linear layers' weights (all kinds, every layer): what BF16 storage halves. */
size_t vd_model_linear_params(const vd_model_config *cfg);
/* The families' upload (model.c). host: n tensors of count[i] floats, in order; the tensors in
 * `linear` (bit i) hold linear weights. F32: one fp32 device buffer in the host layout
 * (*f32_mem; *lin_mem = NULL). BF16: the linear tensors rounded into one bf16 buffer (*lin_mem),
 * the rest in a compact fp32 buffer. f32[i]: tensor i's fp32 device address (NULL when it has
 * no elements or went to bf16); lin[i]: tensor i's device address either way; host_off[i]:
 * its offset in host (floats). */
/* Rows of logits per chunk of the LM head + cross-entropy: a training step never holds the
 * (N, V) logits, only (VD_HEAD_CHUNK, V), reused. Fixed, not derived from N or the machine, so
 * the GEMM shapes (and the bits) do not change with the batch size. */
#define VD_HEAD_CHUNK 512
/* The LM head and softmax cross-entropy of x (N, C) against head (V, C), for both families.
 * targets NULL: the logits of all N rows into *logits, grown once to N rows (forward --logits,
 * the decode test), returns 0. Else chunk by chunk: logits, the row losses (N) and, dx
 * non-NULL, dlogits = dloss (softmax - onehot) in place, then dx (N, C) = dlogits head.
 * Returns the sum of the losses, in row order whatever the chunk. targets: device. */
double vd_model_head(const struct vd_backend *be, float **logits, int32_t *logit_rows, const float *x,
                     const float *head, const int32_t *targets, float *losses, float dloss, float *dx, int32_t N,
                     int32_t C, int32_t V);
void vd_model_upload(const struct vd_backend *be, const float *host, const size_t *count, int n, uint32_t linear,
                     vd_dtype wdtype, float **f32_mem, void **lin_mem, float **f32, void **lin, size_t *host_off);
/* Fills sites (n_layer * n_kinds, block by block): names, shapes, and W = layer l's slice of
 * tensor kind_tensor[kind] (an (n_layer, in, out) tensor at lin[] / host_off[] of
 * vd_model_upload). */
void vd_model_fill_sites(const vd_model_family *f, const vd_model_config *cfg, const int *kind_tensor,
                         void *const *lin, const size_t *host_off, vd_dtype wdtype, vd_linear_site *sites);
/* Activation recomputation (config key recompute): 1 keeps only each block's input in the forward
 * and rebuilds a block's activations into one shared set right before its backward (the same
 * block forward, so results are bit-identical); 0 keeps every block's activations. Call before
 * vd_model_alloc_acts (it decides what that allocates); the default is 0. */
void vd_model_set_recompute(vd_model *m, int recompute);
void vd_model_alloc_acts(vd_model *m, int32_t B, int32_t T);
/* The adapter every adapted site calls (NULL: plain model). */
void vd_model_set_adapter(vd_model *m, struct vd_adapter *a);
/* Forward on nb <= B sequences of T tokens; host arrays of nb*T: inputs, targets (or NULL: logits
 * only) and pos (or NULL: pos[t] = t). Returns the sum of the token losses; a target
 * VD_TARGET_NONE takes no loss (adds 0, gets no gradient). pos[t] is the position of token t
 * inside its example (docs/instruction-tuning.md): GPT-2's wpe row / Llama's RoPE angle, and
 * query t attends to keys t - pos[t] .. t only, so packed examples stay apart. */
double vd_model_forward(vd_model *m, const int32_t *inputs, const int32_t *targets, const int32_t *pos, int32_t nb,
                        const vd_fwd_ctx *ctx);
/* Backward of dloss * (sum of token losses) of the last forward (its positions included). */
void vd_model_backward(vd_model *m, float dloss, const vd_fwd_ctx *ctx);
/* Logits of the last forward without targets, (nb*T, V) on the backend (a forward with
 * targets keeps only a chunk of them: vd_model_head). */
const float *vd_model_logits(const vd_model *m);
/* Offset of a site's weight in the host buffer of vd_model_load, and whether it is stored
 * out x in there (so export can write merged weights back in the file's layout). */
size_t vd_model_site_host_offset(const vd_model *m, int32_t site);
void vd_model_free(vd_model *m);

/* ---- generation: one sequence through a KV cache (model.c dispatches; gpt2.c, llama.c) ---- */
/* The keys and values of every position seen so far, per layer, plus scratch for up to max_T new
 * tokens per call. GPT-2 caches its fused qkv rows (k holds (L, max_T, 3C), v is NULL: the new
 * rows are written there by c_attn itself); Llama caches k and v (L, max_T, n_kv_head*head_dim)
 * after RoPE. All buffers are backend memory. */
typedef struct vd_kv_cache {
    int32_t max_T;           /* positions it holds (<= the model's max_seq_len) */
    int32_t kv_width;        /* floats per cached row */
    float *k, *v;            /* (L, max_T, kv_width) */
    int32_t *pos;            /* (max_T) 0, 1, .., max_T-1: the positions array the backend ops take */
    int32_t *tokens;         /* (max_T) the ids of a call */
    float *x;                /* (max_T, C)  residual stream of the new tokens */
    float *xn;               /* (max_T, C)  normed input of a sub-layer */
    float *q;                /* (max_T, n_head*head_dim) Llama's queries (GPT-2: NULL) */
    float *atty;             /* (max_T, n_head*head_dim) attention output */
    float *h1, *h2, *h3;     /* (max_T, MLP width) GPT-2: fc, gelu; Llama: gate, up, silu(gate)*up */
    float *proj;             /* (max_T, C)  output of a projection before the residual add */
    float *mean, *rstd;      /* (max_T) */
    float *xf, *xf_mean, *xf_rstd; /* (C), (1), (1): final norm of the last position */
    float *logits;           /* (V) */
} vd_kv_cache;

/* Allocates a cache for positions 0 .. max_T-1 (1 <= max_T <= max_seq_len). */
void vd_model_kv_alloc(const vd_model *m, vd_kv_cache *kv, int32_t max_T);
void vd_model_kv_free(const vd_model *m, vd_kv_cache *kv);
/* Runs n >= 1 new tokens at positions pos0 .. pos0+n-1 (pos0 = tokens already in the cache;
 * pos0 + n <= max_T) in eval mode (no dropout), the adapter applied as in forward (its
 * activations must hold n tokens: vd_adapter_alloc_acts(N >= n)), appends their keys and values to
 * the cache, and writes the logits (V) of the last of them to logits_host. The prompt goes in one
 * call, then one token per call: the logits equal those of a full forward of the sequence. */
void vd_model_decode(vd_model *m, vd_kv_cache *kv, const int32_t *tokens, int32_t n, int32_t pos0,
                     float *logits_host);
void vd_gpt2_kv_alloc(const vd_gpt2 *m, vd_kv_cache *kv, int32_t max_T);
void vd_gpt2_decode(vd_gpt2 *m, vd_kv_cache *kv, const int32_t *tokens, int32_t n, int32_t pos0, float *logits_host);
void vd_llama_kv_alloc(const vd_llama *m, vd_kv_cache *kv, int32_t max_T);
void vd_llama_decode(vd_llama *m, vd_kv_cache *kv, const int32_t *tokens, int32_t n, int32_t pos0,
                     float *logits_host);

/* target_modules against a family: a comma-separated list of PEFT names, each selecting the
 * kinds whose path equals it or ends with "." + it; "all" / "all-linear" select every kind.
 * Returns the kind mask; on a name that selects nothing returns 0 with a one-line reason in err. */
uint32_t vd_model_parse_targets(const vd_model_family *f, const char *s, char *err, size_t errcap);
/* Canonical spelling: "all" or the selected kind paths, sorted. */
void vd_model_format_targets(const vd_model_family *f, uint32_t mask, char *out, size_t cap);
/* vd_model_parse_targets that dies naming target_modules and the model; rewrites the string to
 * the canonical spelling (what checkpoints store). */
uint32_t vd_model_targets_or_die(const vd_model_family *f, char *target_modules, size_t cap, const char *model_path);
/* (trainable counts are the adapter method's: vd_adapter_size_of, adapter.h) */

/* ---- the families' entry points (model.c dispatches to them) ---- */
extern const vd_model_family vd_family_gpt2;
extern const vd_model_family vd_family_llama;
size_t vd_gpt2_act_bytes(const vd_model_config *cfg, int32_t B, int32_t T, int recompute,
                          const struct vd_backend *be);
size_t vd_llama_act_bytes(const vd_model_config *cfg, int32_t B, int32_t T, int recompute,
                          const struct vd_backend *be);
void vd_gpt2_config_read_file(const char *config_json, vd_gpt2_config *cfg);
void vd_llama_config_from_json(const struct cJSON *root, const char *path, const char *architecture,
                               vd_model_config *cfg);
float *vd_llama_load(const char *path, vd_model_config *cfg);         /* HF dir or GGUF, via weights.h */
void vd_llama_init_random(const vd_model_config *cfg, float *params, uint64_t seed);
uint64_t vd_llama_fingerprint(const vd_model_config *cfg, const float *params);
void vd_llama_save_hf(const char *dir, const vd_model_config *cfg, const float *params);
void vd_llama_init(vd_llama *m, const struct vd_backend *be, const vd_model_config *cfg, const float *host_params,
                   vd_dtype wdtype, struct vd_linear_site *sites); /* as vd_gpt2_init; sites (n_layer * 7) */
void vd_llama_alloc_acts(vd_llama *m, int32_t B, int32_t T);
double vd_llama_forward(vd_llama *m, const int32_t *inputs, const int32_t *targets, const int32_t *pos, int32_t nb,
                        const vd_fwd_ctx *ctx);
void vd_llama_backward(vd_llama *m, float dloss, const vd_fwd_ctx *ctx);
void vd_llama_free(vd_llama *m);

/* ---- llama.c: the Llama family (LlamaForCausalLM semantics) ---- */
typedef struct {
    float *embed;     /* (V, C)        model.embed_tokens.weight */
    float *attn_norm; /* (L, C)        input_layernorm.weight */
    float *wq;        /* (L, C, Q)     q_proj.weight^T, Q = NH*hd */
    float *bq;        /* (L, Q)        or NULL */
    float *wk;        /* (L, C, KV)    k_proj.weight^T, KV = NKV*hd */
    float *bk;        /* (L, KV) */
    float *wv;        /* (L, C, KV) */
    float *bv;        /* (L, KV) */
    float *wo;        /* (L, Q, C)     o_proj.weight^T */
    float *bo;        /* (L, C) */
    float *mlp_norm;  /* (L, C)        post_attention_layernorm.weight */
    float *wg;        /* (L, C, I)     gate_proj.weight^T */
    float *bg;        /* (L, I) */
    float *wu;        /* (L, C, I) */
    float *bu;        /* (L, I) */
    float *wd;        /* (L, I, C)     down_proj.weight^T */
    float *bd;        /* (L, C) */
    float *norm;      /* (C)           model.norm.weight */
    float *lm_head;   /* (V, C)        lm_head.weight, or NULL when tied (embed is used) */
} vd_llama_params;
#define VD_LLAMA_NUM_PARAMS 19

struct vd_llama {
    vd_model_config config;
    const struct vd_backend *be;
    vd_llama_params params;  /* named pointers into params_memory (device); the seven linear weights
                              * are NULL under bf16: they live in lin_memory */
    float *params_memory;
    void *lin_memory;        /* bf16 linear weights (weight_dtype BF16), else NULL */
    const struct vd_linear_site *sites; /* (n_layer * 7) the model's site list */
    size_t num_params;
    float *inv_freq;         /* (hd/2) RoPE frequencies, device */
    struct vd_adapter *adapter; /* adapter (owned by the caller); NULL = plain model */
    int32_t B, T, last_B;
    int32_t recompute;       /* 1: recompute = block: the block activations xn1 .. act have one slot
                              * (LB = 1), rebuilt per block in the backward; 0: LB = L */
    /* activations kept for backward (device); N = B*T; LB = L, or 1 under recompute */
    float *resid;            /* (L+1, N, C)   input of each block; [L] = output of the last */
    float *xn1, *rstd1;      /* (N, C), (LB, N)  input_layernorm (xn1 one slot, rebuilt in the backward) */
    float *q, *k, *v;        /* (LB, N, Q), (LB, N, KV), (LB, N, KV)  after RoPE */
    float *att;              /* (LB, attention_saved_floats) attention's saved state (the backend's) */
    float *atty;             /* (LB, N, Q)     attention output before o_proj */
    float *resid_mid;        /* (LB, N, C)     after the attention residual */
    float *xn2, *rstd2;      /* (N, C), (LB, N)  post_attention_layernorm (xn2 one slot, rebuilt) */
    float *gate, *up;        /* (LB, N, I) */
    float *act;              /* (N, I) act = silu(gate) * up: one slot, the backward rebuilds it */
    float *xnf, *rstdf;      /* (N, C), (N)   final norm */
    float *logits;           /* (logit_rows, V) a chunk's logits, softmax, dlogits in place */
    int32_t logit_rows;      /* min(N, VD_HEAD_CHUNK); N after a forward without targets */
    float head_dloss;        /* dloss the last forward took the head's gradient (dx) with; 0: none */
    float *losses;           /* (N) */
    int32_t *inputs, *targets;
    int32_t *pos;            /* (N) positions of the last forward, when it had any */
    const int32_t *last_pos; /* pos, or NULL when the last forward had none (= t) */
    /* backward scratch */
    float *dres;             /* (N, C) */
    float *dx, *dtmp;        /* (N, max(C, Q, I)) */
    float *dq, *dk, *dv;     /* (N, Q), (N, KV), (N, KV) */
    float *dgate, *dup;      /* (N, I) */
    float *datt;             /* (B, NH, T, T) */
    float *proj_out;         /* (N, C) */
};

#endif
