/* peft.h: Hugging Face PEFT's VeRA adapter format (what PeftModel.save_pretrained writes):
 *   DIR/adapter_config.json      {"peft_type": "VERA", "r", "target_modules", "projection_prng_key", ...}
 *   DIR/adapter_model.safetensors
 *       base_model.model.<module path>.vera_lambda_b   (out)
 *       base_model.model.<module path>.vera_lambda_d   (r)
 *       base_model.vera_A (r, max_in), base_model.vera_B (max_out, r)  when save_projection */
#ifndef VERA_PEFT_H
#define VERA_PEFT_H

#include "vera/adapter.h"
#include "vera/config.h"

/* Loads lambda_b / lambda_d of every adapted module from a safetensors file with PEFT's key
 * names into v->params (host values, uploaded). Dies naming the file and key if a module is
 * missing, has the wrong length, or the file adapts a module this run does not; if the file
 * holds vera_A / vera_B they must equal v's projections bit for bit. */
void vd_peft_load_vectors(vd_vera *v, const char *path);
/* Reads DIR/adapter_config.json, checks it against the run (peft_type, r, projection_prng_key,
 * target_modules) naming the field that differs, then loads DIR/adapter_model.safetensors. */
void vd_peft_load_dir(vd_vera *v, const char *dir);
/* The options an adapter directory was made with, for a run that loads it (generate): r,
 * projection_prng_key and the target kinds of DIR/adapter_config.json against model m (dropout
 * 0, d_initial 0: the vectors come from the file). Dies naming the file and field. The checks of
 * vd_peft_load_dir then pass by construction. */
void vd_peft_read_options(const char *dir, const vd_model *m, vd_vera_options *opt);
/* Writes the vectors (host, v's layout) under PEFT's key names to one safetensors file, with
 * base_model.vera_A / vera_B when A and B are non-NULL, and optional metadata pairs. */
void vd_peft_write_safetensors(const char *path, const vd_vera *v, const float *params, const float *A,
                               const float *B, const char *const *meta_kv, int32_t n_meta);
/* Writes DIR/adapter_config.json and DIR/adapter_model.safetensors from host vectors
 * (n_trainable floats in v's layout) and, when save_projection, host A and B. */
void vd_peft_save_dir(const char *dir, const vd_vera *v, const float *params, const float *A, const float *B,
                      int save_projection, const char *base_model_path);

/* Writes DIR as a PEFT LoRA adapter that computes exactly this VeRA adapter's dW:
 * lora_A.weight (r, in) = diag(lambda_d) A[:, :in], lora_B.weight (out, r) = diag(lambda_b) B[:out],
 * lora_alpha = r (scaling 1), same target_modules; for servers that support LoRA but not VeRA. */
void vd_peft_save_lora_dir(const char *dir, const vd_vera *v, const float *params, const float *A, const float *B,
                           const char *base_model_path);

#endif
