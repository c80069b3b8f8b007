/* model.h: GPT-2 (learned positions, pre-LayerNorm, GELU tanh, causal attention, tied LM head)
 * in fp32, forward and backward with the base weights frozen. The model owns its frozen
 * parameters (one contiguous buffer, named pointers into it) and its activations; the
 * adapter (adapter.h) owns the trainable vectors and is called from each linear layer.
 * Linear weights keep the Hugging Face Conv1D layout (in x out): y = x W + bias. */
#ifndef VERA_MODEL_H
#define VERA_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t max_seq_len;  /* n_positions */
    int32_t vocab_size;   /* V */
    int32_t n_layer;      /* L */
    int32_t n_head;       /* NH */
    int32_t channels;     /* C (n_embd) */
    float ln_eps;         /* layer_norm_epsilon */
} vd_gpt2_config;

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

/* ---- model_io.c: Hugging Face directories ---- */
/* Reads DIR/config.json and DIR/model.safetensors (names with or without the "transformer."
 * prefix; F32/BF16/F16 converted to fp32). Returns a malloc'd contiguous host buffer in
 * vd_gpt2_params order. Dies naming the file and tensor on missing tensors or wrong shapes. */
float *vd_gpt2_load_hf(const char *dir, vd_gpt2_config *cfg);
/* Writes DIR/config.json and DIR/model.safetensors as GPT2LMHeadModel.save_pretrained does
 * (F32, "transformer." names, tied lm_head left out). Creates DIR. */
void vd_gpt2_save_hf(const char *dir, const vd_gpt2_config *cfg, const float *params);
/* GPT-2 initialisation: N(0, 0.02) weights and embeddings, residual projections
 * (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weight 1 bias 0. */
void vd_gpt2_init_random(const vd_gpt2_config *cfg, float *params, uint64_t seed);
/* HF name of tensor `which` (0..15) for layer l (ignored for global tensors). */
void vd_gpt2_param_name(int which, int32_t l, char *out, size_t cap);
/* Hash of shapes and contents: the base-model fingerprint stored in checkpoints. */
uint64_t vd_gpt2_fingerprint(const vd_gpt2_config *cfg, const float *params);

#endif
