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

/* ---- model_io.c: Hugging Face directories and llm.c model files ---- */
/* Reads DIR/config.json and DIR/model.safetensors (names with or without the "transformer."
 * prefix; F32/BF16/F16 converted to fp32). Returns a malloc'd contiguous host buffer in
 * vd_gpt2_params order. Dies naming the file and tensor on missing tensors or wrong shapes. */
float *vd_gpt2_load_hf(const char *dir, vd_gpt2_config *cfg);
/* Writes DIR/config.json and DIR/model.safetensors as GPT2LMHeadModel.save_pretrained does
 * (F32, "transformer." names, tied lm_head left out). Creates DIR. */
void vd_gpt2_save_hf(const char *dir, const vd_gpt2_config *cfg, const float *params);
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
struct vd_vera;

/* Per forward call: what dropout needs to draw a world-size independent mask. */
typedef struct {
    int32_t training;       /* 1: dropout on; 0: eval */
    uint64_t dropout_seed;  /* mixes run seed and optimizer step */
    uint64_t row0;          /* global index of this micro-batch's first token row */
} vd_fwd_ctx;

typedef struct vd_gpt2 {
    vd_gpt2_config config;
    const struct vd_backend *be;
    vd_gpt2_params params;   /* frozen weights, named pointers into params_memory (device) */
    float *params_memory;
    size_t num_params;
    struct vd_vera *vera;    /* adapter (owned by the caller); NULL = plain GPT-2 */
    int32_t B, T;            /* activation capacity: up to B sequences of exactly T tokens */
    /* activations kept for backward (device); L = n_layer, N = B*T */
    float *encoded;          /* (N, C)        embeddings = input of block 0 */
    float *ln1;              /* (L, N, C) */
    float *ln1_mean, *ln1_rstd; /* (L, N) */
    float *qkv;              /* (L, N, 3C) */
    float *atty;             /* (L, N, C)     attention output before c_proj */
    float *att;              /* (L, B, NH, T, T) causal softmax */
    float *residual2;        /* (L, N, C) */
    float *ln2;              /* (L, N, C) */
    float *ln2_mean, *ln2_rstd; /* (L, N) */
    float *fch;              /* (L, N, 4C) */
    float *fch_gelu;         /* (L, N, 4C) */
    float *residual3;        /* (L, N, C)     output of each block */
    float *lnf;              /* (N, C) */
    float *lnf_mean, *lnf_rstd; /* (N) */
    float *logits;           /* (N, V) logits, then softmax, then dlogits in place */
    float *losses;           /* (N) */
    int32_t *inputs, *targets; /* (N) */
    /* backward scratch */
    float *dresidual;        /* (N, C) */
    float *dbuf_a, *dbuf_b;  /* (N, 4C) */
    float *dqkv;             /* (N, 3C) */
    float *datt;             /* (B, NH, T, T) */
    float *proj_out;         /* (N, C)  c_proj / mlp.c_proj output before the residual add */
    int32_t last_B;          /* sequences in the last forward */
} vd_gpt2;

/* Uploads host_params (vd_gpt2_params order) to the backend. */
void vd_gpt2_init(vd_gpt2 *m, const struct vd_backend *be, const vd_gpt2_config *cfg, const float *host_params);
void vd_gpt2_alloc_acts(vd_gpt2 *m, int32_t B, int32_t T);
/* Forward on nb <= B sequences of T tokens (host arrays of nb*T ids). With targets, returns
 * the sum of token losses (and keeps what backward needs); without, returns 0. */
double vd_gpt2_forward(vd_gpt2 *m, const int32_t *inputs, const int32_t *targets, int32_t nb,
                       const vd_fwd_ctx *ctx);
/* Backward of (dloss * sum of token losses) of the last forward: accumulates the adapter's
 * b/d gradients into m->vera->grads. Frozen weights get no gradient. */
void vd_gpt2_backward(vd_gpt2 *m, float dloss, const vd_fwd_ctx *ctx);
void vd_gpt2_free(vd_gpt2 *m);

#endif
