/* weights.h: a base model's frozen tensors by their Hugging Face names, from any file the
 * `model` key accepts besides llm.c's .bin:
 *   - a Hugging Face directory: config.json + model.safetensors, or config.json +
 *     model.safetensors.index.json naming several shards (F32, BF16 or F16 tensors);
 *   - a GGUF file (general.architecture "llama"; F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors,
 *     dequantized on read), whose tensor names (blk.N.attn_q.weight, ...) are mapped back to
 *     Hugging Face's (model.layers.N.self_attn.q_proj.weight, ...) and whose Q/K rows are
 *     un-permuted (llama.cpp's convert script permutes them for its RoPE kernel).
 * The model families (src/model/) ask for tensors by HF name and HF shape (nn.Linear weights
 * are (out, in)); they never see which file kind they came from. */
#ifndef VERA_WEIGHTS_H
#define VERA_WEIGHTS_H

#include <stdint.h>

struct cJSON;
typedef struct vd_weights vd_weights;

/* Opens a directory (HF) or a .gguf file. Dies with one line naming the path and what was
 * expected (missing config.json, missing or malformed shard, index naming a missing file,
 * truncated GGUF, unknown GGUF tensor type, ...). */
vd_weights *vd_weights_open(const char *path);
/* The model's config.json, parsed. For GGUF: synthesized from its metadata with HF's keys
 * (architectures ["LlamaForCausalLM"], model_type "llama", hidden_size, intermediate_size,
 * num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
 * max_position_embeddings, rms_norm_eps, rope_theta, vocab_size, tie_word_embeddings,
 * bos_token_id, eos_token_id). Owned by w. */
const struct cJSON *vd_weights_config(const vd_weights *w);
/* "config.json" path or the GGUF path: what error messages name. */
const char *vd_weights_config_path(const vd_weights *w);
/* 1 if the model holds a tensor with this HF name. */
int vd_weights_has(const vd_weights *w, const char *name);
/* Reads tensor `name` converted to fp32 into dst. Its shape must equal shape[0..ndim) (HF's
 * convention). Dies with "<file>: tensor <name>: ..." when it is missing, has another shape,
 * or an unsupported dtype. */
void vd_weights_read_f32(const vd_weights *w, const char *name, int32_t ndim, const int64_t *shape, float *dst);
void vd_weights_close(vd_weights *w);

#endif
