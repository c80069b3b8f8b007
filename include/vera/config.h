/* config.h: the run configuration. Defaults, then an INI file (--config, parsed with libinih),
 * then --key value / --key=value on the command line; the command line wins.
 * Every key is in one table in config.c with its type, default, range and help text. */
#ifndef VERA_CONFIG_H
#define VERA_CONFIG_H

#include <stdint.h>
#include <stdio.h>
#include "vera/common.h"

/* Where a key's value came from; vd_config.from[i] is that of key i of config.c's table. */
typedef enum { VD_FROM_DEFAULT = 0, VD_FROM_FILE, VD_FROM_CLI, VD_FROM_CODE } vd_config_from;
#define VD_CONFIG_MAX_KEYS 64 /* room in vd_config.from; config.c checks its table fits */

typedef struct vd_config {
    char config_path[VD_PATH_MAX]; /* the --config file, "" if none */
    /* [model] */
    char model[VD_PATH_MAX];       /* Hugging Face GPT-2 directory (config.json + model.safetensors) or llm.c .bin file */
    /* [data] */
    char train_data[VD_PATH_MAX];  /* glob of llm.c token shards */
    char val_data[VD_PATH_MAX];    /* glob for eval loss; "" = no eval */
    int32_t pack;                  /* 1: several examples per sequence (shards of examples) */
    char out_dir[VD_PATH_MAX];     /* metrics.jsonl, final adapter */
    /* [vera] */
    int32_t r;                     /* rank of the shared projections */
    float d_initial;               /* initial value of every lambda_d */
    uint64_t projection_prng_key;  /* seed of torch's MT19937 stream for A and B */
    char target_modules[256];      /* PEFT names, normalized: "all" or sorted, e.g. "attn.c_attn,mlp.c_fc",
                                    * "q_proj,v_proj"; checked against the family once the model is read */
    float vera_dropout;            /* dropout probability on the adapter input */
    char init_adapter[VD_PATH_MAX]; /* PEFT adapter directory to start from; "" = b 0, d d_initial */
    /* [train] */
    int32_t batch_size;            /* sequences per micro-batch per rank */
    int32_t seq_len;               /* tokens per sequence */
    int32_t grad_accum;            /* micro-batches per optimizer step per rank */
    float lr;                      /* peak learning rate */
    float min_lr_ratio;            /* cosine decays to lr * min_lr_ratio */
    int32_t warmup_steps;
    int32_t max_steps;
    float weight_decay;            /* AdamW decoupled weight decay */
    float beta1, beta2, adam_eps;
    float grad_clip;               /* clip by global norm; 0 = off */
    uint64_t seed;                 /* dropout stream */
    /* [log] */
    int32_t log_every;
    int32_t eval_every;            /* 0 = never (besides the end, if val_data is set) */
    int32_t eval_seqs;             /* validation sequences per eval (global, world-size independent) */
    int32_t overwrite;             /* 1: allow replacing outputs already in out_dir */
    /* [system] */
    int32_t threads;               /* threads per rank; 0 = node cores / ranks on the node */
    char device[16];               /* "cpu", "cuda" or "auto" (cuda when usable, else cpu): docs/gpu.md */
    char precision[8];             /* "fp32", "bf16" or "tf32" (cuda only): docs/configuration.md, "Precision" */
    float collective_timeout;      /* seconds of waiting in one collective before the job ends; 0 = off */
    /* [checkpoint] */
    int32_t ckpt_every;            /* steps between checkpoints; 0 = only at the end */
    int32_t keep_last;             /* checkpoints kept */
    int32_t save_projection;       /* 1: store A and B in checkpoints */
    char resume[VD_PATH_MAX];      /* "auto", "none" or a checkpoint path */
    int32_t ckpt_delay_ms;         /* testing only: slow checkpoint writes down */
    /* [adapter] (docs/adapters.md) */
    char adapter_type[16];         /* "vera", "vblora" or "lora" */
    /* [lora] */
    float lora_alpha;              /* scaling lora_alpha / r (or / sqrt(r) with use_rslora) */
    float lora_dropout;            /* dropout probability on the adapter input */
    int32_t use_rslora;            /* 1: rank-stabilised scaling */
    /* [vblora] */
    int32_t num_vectors;           /* vectors in the shared bank */
    int32_t vector_length;         /* length of each bank vector */
    int32_t topk;                  /* bank vectors mixed per sub-vector */
    float init_vector_bank_bound;  /* bank ~ U(-bound, bound) */
    float init_logits_std;         /* logits ~ N(0, std) */
    float vblora_dropout;          /* dropout probability on the adapter input */
    float lr_vector_bank;          /* peak lr of the bank; 0 = lr */
    int32_t save_only_topk_weights; /* PEFT export: top-k indices and weights only */
    char recompute[8];             /* "none" or "block": activation recomputation (docs/configuration.md) */
    /* not a key: who set each key (defaults 0 = VD_FROM_DEFAULT). A default that conflicts with
     * a value the user gave gives way to it (vd_config_parse adjusts it and logs one line); only
     * values the user gave can conflict with each other (vd_config_validate refuses those). */
    uint8_t from[VD_CONFIG_MAX_KEYS];
} vd_config;

/* The config keys one sub-command reads (include/vera/cli.h says how sub-commands use it). */
typedef struct vd_config_uses {
    const char *sub;         /* "forward": names the sub-command in messages */
    const char *const *keys; /* the keys it reads, NULL-terminated */
    const char *options;     /* its own options, listed in the refusal ("--tokens, --out"); may be NULL */
} vd_config_uses;

void vd_config_defaults(vd_config *c);
/* Applies --config FILE (if present anywhere in argv) then every --key value pair.
 * argv[0..first-1] are skipped (program name, sub-command). Dies with a one-line error
 * naming the key (and file:line for INI) and the accepted range on any bad key or value. */
void vd_config_parse(vd_config *c, int argc, char **argv, int first);
/* vd_config_parse for a sub-command that reads only uses->keys: any other key on the command line
 * dies with one line naming it and listing what the sub-command reads. Keys from the --config
 * file that it does not read are ignored (the file describes a whole run, shared by all
 * sub-commands). uses == NULL accepts every key (train). */
void vd_config_parse_for(vd_config *c, int argc, char **argv, int first, const vd_config_uses *uses);
/* 1 if key's value came from the --config file, the command line or vd_config_set; 0 if it is
 * the default. Dies on an unknown key (a bug in the caller). */
int vd_config_user_set(const vd_config *c, const char *key);
/* A limit known only later (the model's context for seq_len): returns 0 if the INT key's value is
 * <= limit; if the key is at its default, lowers it to limit, logs one line naming `what` and
 * returns 1; if the user set it, returns -1 (the caller dies with its own message). */
int vd_config_fit_default(vd_config *c, const char *key, int32_t limit, const char *what);
/* Same checks as the parser, on the whole struct (cross-key rules such as warmup <= max_steps). */
void vd_config_validate(const vd_config *c);
void vd_config_print_help(FILE *f);
/* Canonical "key = value\n" lines in table order; returns the length. Used for the
 * cross-rank configuration hash and for the checkpoint. */
size_t vd_config_serialize(const vd_config *c, char *buf, size_t cap);
/* Sets one key from text with the parser's rules (for code and tests; the key then counts as set,
 * VD_FROM_CODE). Returns 0, or -1 with a one-line message naming the key in err; c is unchanged
 * on failure. */
int vd_config_set(vd_config *c, const char *key, const char *value, char *err, size_t errcap);
/* Compares two vd_config_serialize outputs line by line. Returns NULL if they are equal, else
 * copies the key of the first differing line into key_out and returns key_out. */
const char *vd_config_first_difference(const char *serialized_a, const char *serialized_b,
                                       char *key_out, size_t cap);

/* 1 if the serialized line (len bytes, no newline) is what vd_config_serialize writes for the
 * defaults: a key that a checkpoint of an earlier version lacks is accepted when this run
 * leaves it at its default (the math the earlier version had). */
int vd_config_line_is_default(const char *line, size_t len);
/* 1 if key may differ between a checkpoint and the run that resumes it (logging, paths,
 * max_steps, the per-rank split of an unchanged global batch, ...); 0 if it changes the math. */
int vd_config_key_resume_free(const char *key);
/* 1 if key may differ on resume provided the base model's fingerprint in the checkpoint matches
 * the model loaded now (`model`: the same weights moved to another path); the trainer compares
 * the fingerprint. 0 for every other key. */
int vd_config_key_resume_same_model(const char *key);

#endif
