/* peft.h: Hugging Face PEFT adapter directories (what PeftModel.save_pretrained writes), for
 * every adapter method of the seam (include/vera/adapter.h):
 *   DIR/adapter_config.json      {"peft_type": "VERA" | "LORA" | "VBLORA", "r", "target_modules", ...}
 *   DIR/adapter_model.safetensors  every tensor of the adapter's table under its peft_key
 *       (VeRA: base_model.model.<module path>.vera_lambda_b (out), .vera_lambda_d (r), and
 *        base_model.vera_A (r, max_in), base_model.vera_B (max_out, r) when save_projection;
 *        LoRA: base_model.model.<module path>.lora_A.weight (r, in), .lora_B.weight (out, r)).
 * The method's own config fields go through its ops (peft_config_write / peft_config_read). */
#ifndef VERA_PEFT_H
#define VERA_PEFT_H

#include "vera/adapter.h"
#include "vera/config.h"

struct cJSON;

/* Loads every tensor of a's table from a safetensors file with PEFT's key names into a->params
 * (host values, uploaded), then refreshes. Dies naming the file and key if a tensor is missing or
 * has the wrong shape, or the file holds a tensor this adapter does not have; a saved tensor the
 * file holds (vera_A / vera_B) must equal a's bit for bit. */
void vd_peft_load_tensors(vd_adapter *a, const char *path);
/* Reads DIR/adapter_config.json, checks it against the run (peft_type, the method's fields,
 * target_modules) naming the field that differs, then loads DIR/adapter_model.safetensors. */
void vd_peft_load_dir(vd_adapter *a, const char *dir);
/* The options an adapter directory was made with, for a run that loads it (forward, eval,
 * generate): the method from peft_type, its fields and the target kinds of
 * DIR/adapter_config.json against model m (dropout 0: the values come from the file). Dies
 * naming the file and field. The checks of vd_peft_load_dir then pass by construction. */
void vd_peft_read_options(const char *dir, const vd_model *m, vd_adapter_options *opt);
/* Writes a's tensors (host values hp, a's layout) under their PEFT keys to one safetensors file,
 * with the saved tensors (vera_A / vera_B) when save_saved, and optional metadata pairs. */
void vd_peft_write_safetensors(const char *path, const vd_adapter *a, const float *hp, int save_saved,
                               const char *const *meta_kv, int32_t n_meta);
/* Writes DIR/adapter_config.json and DIR/adapter_model.safetensors from host values hp
 * (n_trainable floats in a's layout) and, when save_saved, the saved tensors. */
void vd_peft_save_dir(const char *dir, const vd_adapter *a, const float *hp, int save_saved,
                      const char *base_model_path);

/* Writes DIR as a PEFT LoRA adapter that computes exactly this VeRA adapter's dW:
 * lora_A.weight (r, in) = diag(lambda_d) A[:, :in], lora_B.weight (out, r) = diag(lambda_b) B[:out],
 * lora_alpha = r (scaling 1), same target_modules; for servers that support LoRA but not VeRA.
 * a must be a VeRA adapter. */
void vd_peft_save_lora_dir(const char *dir, const vd_adapter *a, const float *hp, const char *base_model_path);

/* For the methods' peft_config_read. The value of an integer key read from the JSON text itself
 * (cJSON's double cannot tell 2^60 from 2^60 + 1): 1 and *out when it is a whole non-negative
 * integer, else 0. */
int vd_peft_read_u64(const char *text, const char *key, unsigned long long *out);
/* "r": a positive integer, or dies naming path; run_r > 0: it must equal run_r
 * ("r is 8, this run has r = 4"). */
int32_t vd_peft_read_rank(const struct cJSON *root, const char *path, int32_t run_r);
/* A number field, or dies naming path and field; absent = def. */
double vd_peft_read_number(const struct cJSON *root, const char *path, const char *field, double def);
/* A boolean field, or dies naming path and field; absent or null = def. */
int vd_peft_read_bool(const struct cJSON *root, const char *path, const char *field, int def);

#endif
