/* config.c: the run configuration, driven by one table of keys.
 *
 * Every key lives in g_keys[] below with its INI section, type, place in vd_config, default,
 * accepted range and help text. Defaults, the INI reader, the command line, --help, the
 * canonical serialization and validation all walk that table, so adding a key is one line
 * and the six views of it can never disagree.
 *
 * Order of application: defaults, then the --config INI file, then --key value pairs in the
 * order given (the command line wins). Every bad key or value dies with one line naming the
 * key (and file:line for the INI) and what is accepted. */
#define _POSIX_C_SOURCE 200809L
#include "vera/config.h"
#include "vera/cli.h"
#include "vera/model.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

/* ----------------------------------------------------------------------------------------- */
/* the table */

typedef enum { KT_INT, KT_FLOAT, KT_U64, KT_STRING, KT_BOOL, KT_TARGETS } key_type;

/* Range bounds are inclusive unless these flags open them: lr is in (0, 10], betas in [0, 1). */
enum { MIN_OPEN = 1 << 0, MAX_OPEN = 1 << 1,
       /* may differ between a checkpoint and the run resuming it: it does not change the math */
       RESUME_FREE = 1 << 2,
       /* may differ on resume when the base model's fingerprint (shapes and every weight, stored
        * in the checkpoint) matches: the same weights at another path are the same math */
       RESUME_SAME_MODEL = 1 << 3 };

typedef struct {
    const char *name;
    const char *section;
    key_type type;
    size_t offset;        /* into vd_config */
    size_t size;          /* sizeof the field: the buffer size for strings */
    const char *def;      /* default, as text: it goes through the same parser as user input */
    double min, max;      /* KT_INT and KT_FLOAT only (u64 keys take all of 0..2^64-1) */
    unsigned flags;       /* MIN_OPEN / MAX_OPEN / RESUME_FREE / RESUME_SAME_MODEL */
    const char *choices;  /* KT_STRING: "a|b|c" if only these spellings are accepted */
    const char *help;
} vd_key;

#define FIELD(f) offsetof(vd_config, f), sizeof(((vd_config *)0)->f)
#define I32_BIG 1000000000.0 /* step-like counts: far beyond any run, far below INT32_MAX */

static const vd_key g_keys[] = {
    /* [model] */
    {"model", "model", KT_STRING, FIELD(model), "", 0, 0, RESUME_SAME_MODEL, NULL,
     "Hugging Face directory (GPT-2, Llama, Mistral, Qwen2; safetensors, sharded or not), a llama .gguf file, or an llm.c GPT-2 .bin"},
    /* [data] */
    {"train_data", "data", KT_STRING, FIELD(train_data), "", 0, 0, RESUME_FREE, NULL,
     "glob of llm.c token shards to train on, e.g. data/train_*.bin"},
    {"val_data", "data", KT_STRING, FIELD(val_data), "", 0, 0, RESUME_FREE, NULL,
     "glob of token shards for the validation loss; empty = no evaluation"},
    {"out_dir", "data", KT_STRING, FIELD(out_dir), "out", 0, 0, RESUME_FREE, NULL,
     "directory for metrics.jsonl, checkpoints and the final adapter"},
    /* [vera] */
    {"r", "vera", KT_INT, FIELD(r), "256", 1, 65536, 0, NULL,
     "rank of the shared frozen random projections A (r x in) and B (out x r)"},
    {"d_initial", "vera", KT_FLOAT, FIELD(d_initial), "0.1", 0, 100, MIN_OPEN, NULL,
     "initial value of every entry of the scaling vector d (b starts at 0, so d must not)"},
    {"projection_prng_key", "vera", KT_U64, FIELD(projection_prng_key), "0", 0, 0, 0, NULL,
     "seed of the MT19937 stream (as in torch) that draws the projections A and B"},
    {"target_modules", "vera", KT_TARGETS, FIELD(target_modules), "attn.c_attn", 0, 0, 0, NULL,
     "layers that get an adapter, by PEFT module name: all (= all-linear), or a comma-separated list "
     "(GPT-2: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, c_proj; Llama: q_proj, k_proj, v_proj, "
     "o_proj, gate_proj, up_proj, down_proj)"},
    {"init_adapter", "vera", KT_STRING, FIELD(init_adapter), "", 0, 0, RESUME_FREE, NULL,
     "start from a PEFT VeRA adapter directory (adapter_config.json + adapter_model.safetensors) "
     "instead of b = 0, d = d_initial; ignored when resuming from a checkpoint"},
    {"vera_dropout", "vera", KT_FLOAT, FIELD(vera_dropout), "0", 0, 1, MAX_OPEN, NULL,
     "dropout probability on the adapter input while training; 0 = off"},
    /* [train] */
    {"batch_size", "train", KT_INT, FIELD(batch_size), "4", 1, 65536, RESUME_FREE, NULL,
     "sequences per micro-batch on each rank"},
    {"seq_len", "train", KT_INT, FIELD(seq_len), "64", 1, 1 << 20, 0, NULL,
     "tokens per sequence (at most the model's n_positions)"},
    {"grad_accum", "train", KT_INT, FIELD(grad_accum), "1", 1, 65536, RESUME_FREE, NULL,
     "micro-batches accumulated per optimizer step on each rank"},
    {"lr", "train", KT_FLOAT, FIELD(lr), "4e-3", 0, 10, MIN_OPEN, NULL,
     "peak learning rate, reached at the end of warmup"},
    {"min_lr_ratio", "train", KT_FLOAT, FIELD(min_lr_ratio), "0.1", 0, 1, 0, NULL,
     "the cosine schedule decays to lr * min_lr_ratio at max_steps"},
    {"warmup_steps", "train", KT_INT, FIELD(warmup_steps), "10", 0, I32_BIG, 0, NULL,
     "optimizer steps of linear learning-rate warmup"},
    {"max_steps", "train", KT_INT, FIELD(max_steps), "100", 1, I32_BIG, RESUME_FREE, NULL,
     "optimizer steps to run"},
    {"weight_decay", "train", KT_FLOAT, FIELD(weight_decay), "0", 0, 10, 0, NULL,
     "AdamW decoupled weight decay on the adapter vectors"},
    {"beta1", "train", KT_FLOAT, FIELD(beta1), "0.9", 0, 1, MAX_OPEN, NULL,
     "AdamW decay rate of the first moment"},
    {"beta2", "train", KT_FLOAT, FIELD(beta2), "0.999", 0, 1, MAX_OPEN, NULL,
     "AdamW decay rate of the second moment"},
    {"adam_eps", "train", KT_FLOAT, FIELD(adam_eps), "1e-8", 0, 1, MIN_OPEN, NULL,
     "AdamW epsilon, added to the denominator"},
    {"grad_clip", "train", KT_FLOAT, FIELD(grad_clip), "1", 0, 1e6, 0, NULL,
     "clip the global gradient norm to this value; 0 = no clipping"},
    {"seed", "train", KT_U64, FIELD(seed), "1337", 0, 0, 0, NULL,
     "seed of the dropout stream (the masks do not depend on the number of ranks) and of the random init of "
     "LoRA and VB-LoRA"},
    /* [log] */
    {"log_every", "log", KT_INT, FIELD(log_every), "1", 1, I32_BIG, RESUME_FREE, NULL,
     "print and record the training loss every N steps"},
    {"eval_every", "log", KT_INT, FIELD(eval_every), "0", 0, I32_BIG, RESUME_FREE, NULL,
     "validation loss every N steps; 0 = only at the end (when val_data is set)"},
    {"eval_seqs", "log", KT_INT, FIELD(eval_seqs), "64", 1, 1 << 20, RESUME_FREE, NULL,
     "validation sequences per evaluation, in total over all ranks"},
    {"overwrite", "log", KT_BOOL, FIELD(overwrite), "0", 0, 1, RESUME_FREE, NULL,
     "1: allow replacing outputs already present in out_dir"},
    /* [system] */
    {"threads", "system", KT_INT, FIELD(threads), "0", 0, 65536, RESUME_FREE, NULL,
     "threads per rank; 0 = the node's cores divided by the ranks on that node"},
    {"device", "system", KT_STRING, FIELD(device), "cpu", 0, 0, RESUME_FREE, "cpu|cuda|auto",
     "where to compute: cpu; cuda (one GPU per rank, chosen by node-local rank; NCCL all-reduce); "
     "auto (cuda when a GPU is usable, else cpu, saying which)"},
    /* [checkpoint] */
    {"ckpt_every", "checkpoint", KT_INT, FIELD(ckpt_every), "100", 0, I32_BIG, RESUME_FREE, NULL,
     "write a checkpoint every N optimizer steps (and always at the end); 0 = only at the end"},
    {"keep_last", "checkpoint", KT_INT, FIELD(keep_last), "3", 1, 1000000, RESUME_FREE, NULL,
     "keep the newest N checkpoints in out_dir/checkpoints"},
    {"save_projection", "checkpoint", KT_BOOL, FIELD(save_projection), "1", 0, 1, RESUME_FREE, NULL,
     "1: store A and B in checkpoints; 0: store only their checksum and regenerate them from the key"},
    {"resume", "checkpoint", KT_STRING, FIELD(resume), "auto", 0, 0, RESUME_FREE, NULL,
     "auto: continue from the newest valid checkpoint in out_dir; none: start fresh; or a checkpoint file"},
    {"ckpt_delay_ms", "checkpoint", KT_INT, FIELD(ckpt_delay_ms), "0", 0, 60000, RESUME_FREE, NULL,
     "testing only: sleep this long between datasets while writing a checkpoint"},
    /* last in the table (it is a [system] key): checkpoints written before it existed still line
     * up key by key with this table when resumed */
    {"precision", "system", KT_STRING, FIELD(precision), "fp32", 0, 0, RESUME_FREE, "fp32|bf16|tf32",
     "arithmetic of the frozen model: fp32; bf16 (frozen linear weights stored bf16, their GEMMs on bf16 "
     "inputs with fp32 accumulation; adapter vectors, gradients, optimizer and residual stream fp32); "
     "tf32 (cuda only: fp32 storage, TF32 tensor-core GEMMs). May differ on resume"},
    /* after precision for the same reason: a checkpoint without this line was written with pack 0 */
    {"pack", "data", KT_BOOL, FIELD(pack), "0", 0, 1, 0, NULL,
     "shards of examples (prepare-data JSONL): 1 packs several examples into each sequence (positions "
     "restart and attention stays inside each example); 0 gives each example its own sequences"},
    /* appended for the same reason */
    {"collective_timeout", "system", KT_FLOAT, FIELD(collective_timeout), "20", 0, 86400, RESUME_FREE, NULL,
     "seconds a rank waits inside one collective for the others before it names the ranks that did not "
     "arrive and ends the job (10x this at start-up, in the first step and at the end); 0 = wait forever"},
    /* after collective_timeout for the same reason: the adapter method and its keys
     * (docs/adapters.md); a checkpoint without these lines was written by VeRA at these defaults */
    {"adapter_type", "adapter", KT_STRING, FIELD(adapter_type), "vera", 0, 0, 0, "vera|vblora|lora",
     "adapter method: vera (shared frozen projections, trainable scaling vectors), vblora (VB-LoRA: "
     "a shared vector bank with top-k admixture), lora (trainable A and B per layer); r and "
     "target_modules apply to all three"},
    {"lora_alpha", "lora", KT_FLOAT, FIELD(lora_alpha), "8", 0, 1e6, MIN_OPEN, NULL,
     "LoRA: the update is scaled by lora_alpha / r (lora_alpha / sqrt(r) with use_rslora)"},
    {"lora_dropout", "lora", KT_FLOAT, FIELD(lora_dropout), "0", 0, 1, MAX_OPEN, NULL,
     "LoRA: dropout probability on the adapter input while training; 0 = off"},
    {"use_rslora", "lora", KT_BOOL, FIELD(use_rslora), "0", 0, 1, 0, NULL,
     "LoRA: 1 scales by lora_alpha / sqrt(r) (rank-stabilised LoRA), 0 by lora_alpha / r"},
    {"num_vectors", "vblora", KT_INT, FIELD(num_vectors), "256", 1, 1 << 24, 0, NULL,
     "VB-LoRA: vectors in the shared bank"},
    {"vector_length", "vblora", KT_INT, FIELD(vector_length), "256", 1, 1 << 20, 0, NULL,
     "VB-LoRA: length of each bank vector; every adapted layer's in and out must be multiples of it"},
    {"topk", "vblora", KT_INT, FIELD(topk), "2", 1, 1 << 20, 0, NULL,
     "VB-LoRA: bank vectors mixed into each sub-vector (top-k of its logits, softmax weights)"},
    {"init_vector_bank_bound", "vblora", KT_FLOAT, FIELD(init_vector_bank_bound), "0.02", 0, 1e3, MIN_OPEN, NULL,
     "VB-LoRA: the bank starts uniform in (-bound, bound)"},
    {"init_logits_std", "vblora", KT_FLOAT, FIELD(init_logits_std), "0.1", 0, 1e3, MIN_OPEN, NULL,
     "VB-LoRA: the logits start normal with this standard deviation"},
    {"vblora_dropout", "vblora", KT_FLOAT, FIELD(vblora_dropout), "0", 0, 1, MAX_OPEN, NULL,
     "VB-LoRA: dropout probability on the adapter input while training; 0 = off"},
    {"lr_vector_bank", "vblora", KT_FLOAT, FIELD(lr_vector_bank), "0", 0, 10, 0, NULL,
     "VB-LoRA: peak learning rate of the vector bank (lr is the logits'); 0 = lr"},
    {"save_only_topk_weights", "vblora", KT_BOOL, FIELD(save_only_topk_weights), "0", 0, 1, RESUME_FREE, NULL,
     "VB-LoRA: PEFT exports keep only the top-k indices and weights of the logits (smaller; for merging "
     "and inference only, never resumed)"},
    /* appended at the end for the same reason: a checkpoint without this line ran with none */
    {"recompute", "train", KT_STRING, FIELD(recompute), "none", 0, 0, RESUME_FREE, "none|block",
     "activation memory: none keeps every block's activations for the backward; block keeps only each "
     "block's input and recomputes the block's activations right before its backward (less memory, "
     "one more forward of the blocks; bit-identical results). May differ on resume"},
};
#define NKEYS ((int)(sizeof(g_keys) / sizeof(g_keys[0])))
_Static_assert(sizeof(g_keys) / sizeof(g_keys[0]) <= VD_CONFIG_MAX_KEYS, "vd_config.from has no room for every key");

/* Cross-key rules lo <= hi (both INT keys). When one of the two is at its default, the default
 * gives way: it is set to the other's value, with one log line (a default must not stop a run
 * that never mentioned it: --max_steps 5 lowers warmup_steps 10 to 5). When the user set both,
 * vd_config_validate refuses. ckpt_every and eval_every need no rule: an interval beyond
 * max_steps just means "at the end" (the trainer always checkpoints, and evaluates with
 * val_data, at the last step); the cosine decay runs from warmup_steps to max_steps. */
static const struct { const char *lo, *hi; } g_le_rules[] = {
    {"warmup_steps", "max_steps"},
};
#define NRULES ((int)(sizeof(g_le_rules) / sizeof(g_le_rules[0])))

static const char *const g_sections[] = {"model", "data", "vera", "train", "log", "system", "checkpoint", "adapter",
                                          "lora", "vblora"};
#define NSECTIONS ((int)(sizeof(g_sections) / sizeof(g_sections[0])))


/* ----------------------------------------------------------------------------------------- */
/* small helpers */

static const vd_key *find_key(const char *name) {
    for (int i = 0; i < NKEYS; i++) if (strcmp(g_keys[i].name, name) == 0) return &g_keys[i];
    return NULL;
}

/* Levenshtein distance, with '-' and '_' counted equal so --max-steps suggests max_steps.
 * Names longer than 63 characters are never close to a key. */
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    int row[64];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            char ca = a[i - 1] == '-' ? '_' : a[i - 1], cb = b[j - 1] == '-' ? '_' : b[j - 1];
            int best = diag + (ca != cb);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = row[j];
            row[j] = best;
        }
    }
    return row[lb];
}

/* Closest of names[0..n-1] within edit distance 2, or NULL. */
static const char *closest(const char *word, const char *const *names, int n) {
    const char *best = NULL;
    int best_d = 3;
    for (int i = 0; i < n; i++) {
        int d = edit_distance(word, names[i]);
        if (d < best_d) { best_d = d; best = names[i]; }
    }
    return best;
}

static const char *closest_key(const char *word) {
    const char *names[NKEYS];
    for (int i = 0; i < NKEYS; i++) names[i] = g_keys[i].name;
    return closest(word, names, NKEYS);
}

/* "[1, 65536]", "(0, 10]", "[0, 1)": the accepted range of a numeric key, for messages. */
static void format_range(const vd_key *k, char *out, size_t cap) {
    if (k->type == KT_U64) { snprintf(out, cap, "[0, 18446744073709551615]"); return; }
    snprintf(out, cap, "%c%.10g, %.10g%c", (k->flags & MIN_OPEN) ? '(' : '[', k->min, k->max,
             (k->flags & MAX_OPEN) ? ')' : ']');
}

static int in_range(const vd_key *k, double v) {
    if (k->flags & MIN_OPEN ? !(v > k->min) : !(v >= k->min)) return 0;
    if (k->flags & MAX_OPEN ? !(v < k->max) : !(v <= k->max)) return 0;
    return 1;
}

/* Value for messages: long values are cut so the error stays one readable line. */
static void quote_value(const char *v, char *out, size_t cap) {
    size_t n = strlen(v);
    if (n + 3 <= cap) snprintf(out, cap, "'%s'", v);
    else snprintf(out, cap, "'%.*s...'", (int)(cap > 8 ? cap - 8 : 0), v);
}

static void trim_into(const char *s, char *out, size_t cap, size_t *len_out) {
    while (*s && isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
    *len_out = n;
    if (n >= cap) n = cap - 1; /* the caller checks *len_out against the field size */
    memcpy(out, s, n);
    out[n] = 0;
}

/* ----------------------------------------------------------------------------------------- */
/* target_modules. Which names exist depends on the model's family, known only once the model
 * is read (vd_model_parse_targets); here every entry must name a layer of SOME family, so a
 * typo fails before a large model loads, and the text is normalized (trimmed, sorted, "all")
 * so that spellings of the same set serialize the same. */

#define TARGETS_ACCEPTED "accepted: all, all-linear, or PEFT module names (GPT-2: attn.c_attn, c_proj, ...; Llama: q_proj, v_proj, ...)"

/* Every kind path of every family, and their last components (PEFT's short names). */
static int target_names(const char **names, int cap) {
    const vd_model_family *fams[2] = {&vd_family_gpt2, &vd_family_llama};
    int n = 0;
    for (int f = 0; f < 2; f++)
        for (int32_t k = 0; k < fams[f]->n_kinds && n + 2 <= cap; k++) {
            const char *full = fams[f]->kind_paths[k], *leaf = strrchr(full, '.');
            names[n++] = full;
            if (leaf) names[n++] = leaf + 1;
        }
    return n;
}

static int target_known(const char *item) {
    const vd_model_family *fams[2] = {&vd_family_gpt2, &vd_family_llama};
    char err[8];
    for (int f = 0; f < 2; f++)
        if (vd_model_parse_targets(fams[f], item, err, sizeof(err))) return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Checks s and writes its normalized form to out; on failure returns -1 with a reason in err. */
static int parse_targets(const char *s, char *out, size_t outcap, char *err, size_t errcap) {
    char items[32][64];
    const char *sorted[32];
    int n_items = 0, saw_all = 0;
    const char *p = s;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len > 0 && isspace((unsigned char)*p)) { p++; len--; }
        while (len > 0 && isspace((unsigned char)p[len - 1])) len--;
        if (len == 0) {
            snprintf(err, errcap, "%s", n_items == 0 && !end ? "empty value" : "empty entry in the list");
            return -1;
        }
        if (len >= sizeof(items[0]) || n_items == 32) {
            snprintf(err, errcap, "unknown module '%.20s...'", p);
            return -1;
        }
        char *item = items[n_items];
        memcpy(item, p, len);
        item[len] = 0;
        int is_all = !strcmp(item, "all") || !strcmp(item, "all-linear");
        if (!is_all && !target_known(item)) {
            const char *names[4 * VD_MAX_KINDS + 2] = {"all", "all-linear"};
            int nn = 2 + target_names(names + 2, 4 * VD_MAX_KINDS);
            const char *hint = closest(item, names, nn);
            char hintbuf[96] = "";
            if (hint) snprintf(hintbuf, sizeof(hintbuf), " (did you mean '%s'?)", hint);
            snprintf(err, errcap, "unknown module '%s'%s", item, hintbuf);
            return -1;
        }
        for (int i = 0; i < n_items; i++)
            if (!strcmp(items[i], item)) {
                snprintf(err, errcap, "'%s' is listed twice", item);
                return -1;
            }
        saw_all |= is_all;
        sorted[n_items] = item;
        n_items++;
        if (saw_all && n_items > 1) {
            snprintf(err, errcap, "'all' cannot be combined with other modules");
            return -1;
        }
        if (!end) break;
        p = end + 1;
    }
    if (saw_all) {
        snprintf(out, outcap, "all");
        return 0;
    }
    qsort(sorted, (size_t)n_items, sizeof(sorted[0]), cmp_str);
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < n_items; i++) {
        int w = snprintf(out + used, outcap - used, "%s%s", i ? "," : "", sorted[i]);
        if (w < 0 || (size_t)w >= outcap - used) {
            snprintf(err, errcap, "value is too long");
            return -1;
        }
        used += (size_t)w;
    }
    return 0;
}

/* ----------------------------------------------------------------------------------------- */
/* setting one key from text: the single parser behind defaults, INI, CLI and vd_config_set */

/* Parses value for key k into c. On failure leaves c unchanged, writes a message (without the
 * key name: callers prefix "--r: " or "file:line: r: ") and returns -1. */
static int set_key(vd_config *c, const vd_key *k, const char *raw, char *err, size_t errcap) {
    char *field = (char *)c + k->offset;
    char range[64], shown[96];
    format_range(k, range, sizeof(range));
    quote_value(raw, shown, sizeof(shown));

    /* values are trimmed everywhere, so "--r ' 64'" and "r = 64" mean the same */
    char v[VD_PATH_MAX];
    size_t len;
    trim_into(raw, v, sizeof(v), &len);
    if (len >= sizeof(v)) {
        snprintf(err, errcap, "value is longer than %zu characters", sizeof(v) - 1);
        return -1;
    }
    for (const char *p = v; *p; p++) {
        if (iscntrl((unsigned char)*p)) { /* a newline would break the serialized form */
            snprintf(err, errcap, "value contains a control character (byte 0x%02x)", (unsigned char)*p);
            return -1;
        }
    }

    switch (k->type) {
    case KT_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end != 0 || errno == ERANGE || !in_range(k, (double)x)) {
            snprintf(err, errcap, "expected an integer in %s, got %s", range, shown);
            return -1;
        }
        *(int32_t *)field = (int32_t)x;
        return 0;
    }
    case KT_FLOAT: {
        char *end;
        double x = strtod(v, &end);
        /* range check on the stored float: 1e-50 becomes 0 and must fail lr > 0 */
        float f = (float)x;
        if (end == v || *end != 0 || !isfinite(x) || !isfinite(f) || !in_range(k, (double)f)) {
            snprintf(err, errcap, "expected a number in %s, got %s", range, shown);
            return -1;
        }
        *(float *)field = f == 0.0f ? 0.0f : f; /* "-0" and "0" must serialize (and hash) alike */
        return 0;
    }
    case KT_U64: {
        /* strtoull accepts "-1" and wraps it to 2^64-1: only digits (after an optional '+') */
        const char *d = v + (v[0] == '+');
        char *end = NULL;
        errno = 0;
        unsigned long long x = isdigit((unsigned char)d[0]) ? strtoull(d, &end, 10) : 0;
        if (!isdigit((unsigned char)d[0]) || *end != 0 || errno == ERANGE) {
            snprintf(err, errcap, "expected an integer in %s, got %s", range, shown);
            return -1;
        }
        *(uint64_t *)field = (uint64_t)x;
        return 0;
    }
    case KT_BOOL: {
        int b;
        if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0) b = 1;
        else if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0) b = 0;
        else {
            snprintf(err, errcap, "expected 0, 1, true or false, got %s", shown);
            return -1;
        }
        *(int32_t *)field = b;
        return 0;
    }
    case KT_STRING: {
        if (len >= k->size) {
            snprintf(err, errcap, "value is longer than %zu characters", k->size - 1);
            return -1;
        }
        if (k->choices) {
            int ok = 0;
            for (const char *p = k->choices; *p;) {
                size_t n = strcspn(p, "|");
                if (n == len && strncmp(p, v, n) == 0) ok = 1;
                p += n + (p[n] == '|');
            }
            if (!ok) {
                char list[128];
                size_t used = 0;
                for (const char *p = k->choices; *p && used + 3 < sizeof(list); p++) {
                    if (*p == '|') { list[used++] = ','; list[used++] = ' '; }
                    else list[used++] = *p;
                }
                list[used] = 0;
                snprintf(err, errcap, "expected one of %s, got %s", list, shown);
                return -1;
            }
        }
        memcpy(field, v, len + 1);
        return 0;
    }
    case KT_TARGETS: {
        if (len >= k->size) {
            snprintf(err, errcap, "value is longer than %zu characters", k->size - 1);
            return -1;
        }
        char why[256], norm[sizeof(((vd_config *)0)->target_modules)];
        if (parse_targets(v, norm, sizeof(norm), why, sizeof(why)) != 0) {
            if (len == 0) snprintf(err, errcap, "empty value; %s", TARGETS_ACCEPTED);
            else snprintf(err, errcap, "%s in %s; %s", why, shown, TARGETS_ACCEPTED);
            return -1;
        }
        memcpy(field, norm, strlen(norm) + 1);
        return 0;
    }
    }
    vd_die_at(__FILE__, __LINE__, "key %s has an unknown type %d", k->name, (int)k->type);
}

static int key_index(const vd_key *k) { return (int)(k - g_keys); }

int vd_config_set(vd_config *c, const char *key, const char *value, char *err, size_t errcap) {
    const vd_key *k = find_key(key);
    if (!k) {
        const char *hint = closest_key(key);
        if (hint) snprintf(err, errcap, "unknown key '%s' (did you mean '%s'?)", key, hint);
        else snprintf(err, errcap, "unknown key '%s' (see vera-dist --help for the keys)", key);
        return -1;
    }
    char why[512];
    if (set_key(c, k, value, why, sizeof(why)) != 0) {
        snprintf(err, errcap, "%s: %s", key, why);
        return -1;
    }
    c->from[key_index(k)] = VD_FROM_CODE;
    return 0;
}

/* The key or an internal error: names passed by code (rules, sub-commands' key lists) must exist. */
static const vd_key *find_key_or_die(const char *name) {
    const vd_key *k = find_key(name);
    if (!k) vd_die_at(__FILE__, __LINE__, "'%s' is not a configuration key", name);
    return k;
}

int vd_config_user_set(const vd_config *c, const char *key) {
    return c->from[key_index(find_key_or_die(key))] != VD_FROM_DEFAULT;
}

static int32_t *int_field(vd_config *c, const vd_key *k) {
    vd_require(k->type == KT_INT);
    return (int32_t *)((char *)c + k->offset);
}

int vd_config_fit_default(vd_config *c, const char *key, int32_t limit, const char *what) {
    const vd_key *k = find_key_or_die(key);
    int32_t *v = int_field(c, k);
    if (*v <= limit) return 0;
    if (c->from[key_index(k)] != VD_FROM_DEFAULT) return -1;
    if (!in_range(k, (double)limit)) return -1; /* the default cannot give way that far */
    vd_log("config: %s is %d, below the default %s = %d: using %s = %d\n", what, (int)limit, key, (int)*v, key,
           (int)limit);
    *v = limit;
    return 1;
}

/* Applies g_le_rules where one side is a default. Logs only for keys the sub-command reads
 * (uses NULL: all), so `inspect --config run.ini` does not talk about warmup. */
static int uses_key(const vd_config_uses *uses, const char *name) {
    if (!uses) return 1;
    for (const char *const *p = uses->keys; *p; p++)
        if (!strcmp(*p, name)) return 1;
    return 0;
}

static void config_fit_defaults(vd_config *c, const vd_config_uses *uses) {
    for (int i = 0; i < NRULES; i++) {
        const vd_key *klo = find_key_or_die(g_le_rules[i].lo), *khi = find_key_or_die(g_le_rules[i].hi);
        int32_t *lo = int_field(c, klo), *hi = int_field(c, khi);
        if (*lo <= *hi) continue;
        int lo_set = c->from[key_index(klo)] != VD_FROM_DEFAULT, hi_set = c->from[key_index(khi)] != VD_FROM_DEFAULT;
        if (lo_set && hi_set) continue; /* vd_config_validate refuses: the user asked for both */
        const vd_key *moved = lo_set ? khi : klo, *kept = lo_set ? klo : khi;
        int32_t *mv = lo_set ? hi : lo, target = lo_set ? *lo : *hi;
        if (!in_range(moved, (double)target)) continue; /* cannot give way: validate names both */
        if (uses_key(uses, moved->name))
            vd_log("config: %s = %d, %s the default %s = %d: using %s = %d\n", kept->name, (int)target,
                   lo_set ? "above" : "below", moved->name, (int)*mv, moved->name, (int)target);
        *mv = target;
    }
}

void vd_config_defaults(vd_config *c) {
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < NKEYS; i++) {
        char err[512];
        /* a default outside its own range is a bug in the table, not user input */
        if (set_key(c, &g_keys[i], g_keys[i].def, err, sizeof(err)) != 0)
            vd_die_at(__FILE__, __LINE__, "default of %s: %s", g_keys[i].name, err);
    }
}

/* ----------------------------------------------------------------------------------------- */
/* the INI file */

typedef struct {
    FILE *f;
    const char *path;
    int line;              /* line the reader returned last = the line being handled */
    char *buf;             /* getline buffer */
    size_t bufcap;
    int long_line;         /* line that did not fit the parser's buffer, 0 if none */
    int max_line;          /* the longest line that fits */
    int err_line;          /* first line our handler rejected, 0 if none */
    char err[1024];
    vd_config *c;
    int set_at[sizeof(g_keys) / sizeof(g_keys[0])]; /* line where each key was set, 0 = not yet */
} ini_ctx;

/* The reader behind ini_parse_stream. It counts lines (libinih's handler gets no line number),
 * refuses lines longer than the parser's fixed buffer (libinih would silently split them, so a
 * long path could be cut), and drops leading whitespace so an indented line is an ordinary
 * line rather than a Python-configparser continuation of the previous value. */
static char *ini_reader_fn(char *str, int num, void *stream) {
    ini_ctx *x = stream;
    ssize_t n = getline(&x->buf, &x->bufcap, x->f);
    if (n < 0) return NULL;
    x->line++;
    char *s = x->buf;
    size_t len = strlen(s); /* stops at an embedded NUL, as libinih would */
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r')) s[--len] = 0;
    while (*s == ' ' || *s == '\t') { s++; len--; }
    if ((*s == ';' || *s == '#') && len + 1 > (size_t)num) {
        len = 1; /* a long comment is still just a comment: hand over its first character */
        s[1] = 0;
    }
    if (len + 1 > (size_t)num) {
        x->long_line = x->line;
        x->max_line = num - 1;
        return NULL; /* ends parsing; vd_config_load_ini reports it */
    }
    memcpy(str, s, len + 1);
    return str;
}

static int ini_fail(ini_ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ini_fail(ini_ctx *x, const char *fmt, ...) {
    if (!x->err_line) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->err, sizeof(x->err), fmt, ap);
        va_end(ap);
        x->err_line = x->line;
    }
    return 0; /* libinih then reports this line as the first error, unless an earlier one exists */
}

/* Strips an inline '#' comment (libinih strips ';' ones itself) and one pair of matching
 * quotes, so value = 'data/train_*.bin' works as a shell user would expect. */
static int ini_clean_value(ini_ctx *x, const char *key, const char *value, char *out, size_t cap) {
    size_t n = strlen(value);
    if (n >= cap) return ini_fail(x, "%s: value is longer than %zu characters", key, cap - 1);
    memcpy(out, value, n + 1);
    if (out[0] == '"' || out[0] == '\'') {
        char *close = strchr(out + 1, out[0]);
        if (!close) return ini_fail(x, "%s: the value opens a quote (%c) that is never closed", key, out[0]);
        const char *rest = close + 1;
        while (isspace((unsigned char)*rest)) rest++;
        if (*rest && *rest != '#')
            return ini_fail(x, "%s: unexpected text '%s' after the closing quote", key, rest);
        *close = 0;
        memmove(out, out + 1, strlen(out + 1) + 1);
        return 1;
    }
    for (char *p = out; *p; p++) {
        if (*p == '#' && p > out && isspace((unsigned char)p[-1])) { *p = 0; break; }
    }
    size_t m = strlen(out);
    while (m > 0 && isspace((unsigned char)out[m - 1])) out[--m] = 0;
    return 1;
}

static int ini_handler_fn(void *user, const char *section, const char *name, const char *value) {
    ini_ctx *x = user;
    if (x->err_line) return 1; /* only the first error is reported; ignore the rest */
    const vd_key *k = find_key(name);
    if (!k) {
        const char *hint = closest_key(name);
        char hintbuf[96] = "";
        if (hint) snprintf(hintbuf, sizeof(hintbuf), " (did you mean '%s'?)", hint);
        return ini_fail(x, "unknown key '%s'%s", name, hintbuf);
    }
    if (section[0] == 0)
        return ini_fail(x, "key '%s' is outside any section; put it under [%s]", name, k->section);
    int known = 0;
    for (int i = 0; i < NSECTIONS; i++) known |= strcmp(section, g_sections[i]) == 0;
    if (!known) {
        const char *hint = closest(section, g_sections, NSECTIONS);
        char hintbuf[96] = "";
        if (hint) snprintf(hintbuf, sizeof(hintbuf), " (did you mean [%s]?)", hint);
        return ini_fail(x, "unknown section [%s]%s; sections are [model] [data] [vera] [train] [log] [system]",
                        section, hintbuf);
    }
    if (strcmp(section, k->section) != 0)
        return ini_fail(x, "key '%s' belongs in section [%s], not [%s]", name, k->section, section);
    int idx = (int)(k - g_keys);
    if (x->set_at[idx])
        return ini_fail(x, "key '%s' is set twice (first at line %d)", name, x->set_at[idx]);
    char clean[VD_PATH_MAX];
    if (!ini_clean_value(x, name, value, clean, sizeof(clean))) return 0;
    char why[512];
    if (set_key(x->c, k, clean, why, sizeof(why)) != 0) return ini_fail(x, "%s: %s", name, why);
    x->set_at[idx] = x->line;
    x->c->from[idx] = VD_FROM_FILE;
    return 1;
}

/* Binary garbage parses as nonsense keys ("unknown key ''"): say what the file is instead.
 * Text is UTF-8 without control characters other than tab, CR and LF. Rewinds f. */
static void ini_require_text(FILE *f, const char *path) {
    unsigned char buf[1 << 16];
    uint64_t at = 0;
    size_t got, carry = 0;
    for (;;) {
        got = fread(buf + carry, 1, sizeof(buf) - carry, f);
        size_t n = carry + got;
        if (n == 0) break;
        size_t bad = vd_text_problem(buf, n, 1);
        /* a UTF-8 sequence cut by the buffer's end is checked again with the next read */
        if (bad < n && got > 0 && n - bad < 4) {
            carry = n - bad;
            memmove(buf, buf + bad, carry);
            at += bad;
            continue;
        }
        if (bad < n)
            vd_die("--config %s: not a text configuration file (byte %llu is 0x%02x, %s; expected an INI file of "
                   "'key = value' lines in UTF-8)",
                   path, (unsigned long long)(at + bad), buf[bad],
                   buf[bad] == 0 ? "a NUL byte"
                   : (buf[bad] < 0x20 || buf[bad] == 0x7f) ? "a control character"
                                                           : "not valid UTF-8");
        at += n;
        carry = 0;
        if (got == 0) break;
    }
    if (ferror(f)) vd_die("--config %s: read failed (%s)", path, strerror(errno));
    rewind(f);
}

static void vd_config_load_ini(vd_config *c, const char *path) {
    ini_ctx x;
    memset(&x, 0, sizeof(x));
    x.path = path;
    x.c = c;
    /* refused before open when not a regular file (a FIFO would block every rank) */
    int fd = vd_open_regular_as("--config", path, "an INI configuration file");
    x.f = fdopen(fd, "r");
    if (!x.f) vd_die("--config %s: cannot open (%s)", path, strerror(errno));
    ini_require_text(x.f, path);
    int ret = ini_parse_stream(ini_reader_fn, &x, ini_handler_fn, &x);
    int read_error = ferror(x.f);
    fclose(x.f);
    free(x.buf);
    if (read_error) vd_die("--config %s: read failed", path);
    /* libinih returns the first failing line (ours or a syntax error); a too-long line ended
     * the parse, so anything it reported lies before it */
    if (ret > 0 && ret == x.err_line) vd_die("%s:%d: %s", path, ret, x.err);
    if (ret > 0)
        vd_die("%s:%d: syntax error: expected 'key = value', '[section]' or a comment (; or #)", path, ret);
    if (ret < 0) vd_die("--config %s: the INI parser failed (code %d)", path, ret);
    if (x.long_line)
        vd_die("%s:%d: line is longer than the INI reader's limit of %d characters; shorten it or pass "
               "the value on the command line", path, x.long_line, x.max_line);
}

/* ----------------------------------------------------------------------------------------- */
/* the command line */

/* One --key value pair. Splits --key=value; a missing value is an error naming the key. */
typedef struct { const char *key; size_t keylen; const char *value; } cli_arg;

/* Reads argv[*i] (and maybe argv[*i + 1]) into a; advances *i past what it used. */
static void cli_next(int argc, char **argv, int *i, cli_arg *a) {
    const char *s = argv[*i];
    if (strncmp(s, "--", 2) != 0 || s[2] == 0 || s[2] == '=') {
        if (s[0] == '-' && s[1] != '-' && s[1] != 0)
            vd_die("unexpected argument '%s': options take two dashes (--key value)", s);
        vd_die("unexpected argument '%s': options are --key value or --key=value (see --help)", s);
    }
    a->key = s + 2;
    const char *eq = strchr(a->key, '=');
    if (eq) {
        a->keylen = (size_t)(eq - a->key);
        a->value = eq + 1;
        *i += 1;
        return;
    }
    a->keylen = strlen(a->key);
    /* a value is required; "--model --r 8" almost certainly forgot the model's path */
    if (*i + 1 >= argc) vd_die("--%s: missing value (expected --%s VALUE)", a->key, a->key);
    const char *next = argv[*i + 1];
    if (strncmp(next, "--", 2) == 0)
        vd_die("--%s: missing value (the next argument is the option '%s')", a->key, next);
    a->value = next;
    *i += 2;
}

static int cli_is(const cli_arg *a, const char *name) {
    return strlen(name) == a->keylen && strncmp(a->key, name, a->keylen) == 0;
}

/* "model, r, seq_len" from a NULL-terminated list, cut to fit. */
static void join_names(const char *const *names, char *out, size_t cap) {
    size_t used = 0;
    out[0] = 0;
    for (const char *const *p = names; *p && used + 1 < cap; p++) {
        int w = snprintf(out + used, cap - used, "%s--%s", p == names ? "" : ", ", *p);
        if (w < 0) break;
        used += (size_t)w;
    }
}

/* A key given on the command line that the sub-command does not read (or no key at all): one
 * line naming it and listing what the sub-command takes. */
static void refuse_unused(const vd_config_uses *uses, const char *key) {
    char list[1024], what[160];
    join_names(uses->keys, list, sizeof(list));
    if (find_key(key)) snprintf(what, sizeof(what), " is not used by %s", uses->sub);
    else snprintf(what, sizeof(what), ": unknown option");
    vd_die("%s: --%s%s (it takes %s%s%s; see vera-dist %s --help)", uses->sub, key, what,
           uses->options ? uses->options : "", uses->options ? " and the config keys " : "the config keys ", list,
           uses->sub);
}

void vd_config_parse(vd_config *c, int argc, char **argv, int first) { vd_config_parse_for(c, argc, argv, first, NULL); }

void vd_config_parse_for(vd_config *c, int argc_in, char **argv_in, int first, const vd_config_uses *uses) {
    if (uses)
        for (const char *const *p = uses->keys; *p; p++) find_key_or_die(*p); /* a typo in a sub-command's list */
    /* booleans are flags on the command line, as in every sub-command (cli.h): --overwrite alone
     * is --overwrite 1. They are taken out of a copy of argv (vd_cli_take_flag compacts it; the
     * copy keeps argv[0] first, so argv[first..] are the options) and applied after the INI. */
    char **argv = mallocCheck(sizeof(char *) * ((size_t)argc_in + 1));
    memcpy(argv, argv_in, sizeof(char *) * (size_t)argc_in);
    argv[argc_in] = NULL;
    int argc = argc_in;
    int flag[NKEYS];
    for (int i = 0; i < NKEYS; i++) {
        flag[i] = -1;
        if (g_keys[i].type != KT_BOOL) continue;
        /* vd_cli_take_flag looks from argv[1]; the sub-command name before `first` is no option */
        flag[i] = vd_cli_take_flag(&argc, argv, g_keys[i].name, uses ? uses->sub : NULL);
        if (flag[i] >= 0 && !uses_key(uses, g_keys[i].name)) refuse_unused(uses, g_keys[i].name);
    }
    /* pass 1: check the shape of the whole command line and find --config, which is applied
     * before any --key so that the command line wins wherever it appears */
    const char *config = NULL;
    for (int i = first; i < argc;) {
        cli_arg a;
        cli_next(argc, argv, &i, &a);
        if (cli_is(&a, "config")) {
            if (config) vd_die("--config: given twice ('%s' and '%s'); pass one file", config, a.value);
            if (a.value[0] == 0) vd_die("--config: missing value (expected --config FILE)");
            config = a.value;
        }
    }
    if (config) {
        if (strlen(config) >= sizeof(c->config_path))
            vd_die("--config: path is longer than %zu characters", sizeof(c->config_path) - 1);
        vd_config_load_ini(c, config);
        snprintf(c->config_path, sizeof(c->config_path), "%s", config);
    }
    /* pass 2: every --key value, in order */
    for (int i = first; i < argc;) {
        cli_arg a;
        cli_next(argc, argv, &i, &a);
        if (cli_is(&a, "config")) continue;
        char key[128];
        if (a.keylen >= sizeof(key)) vd_die("--%.40s...: unknown option", a.key);
        memcpy(key, a.key, a.keylen);
        key[a.keylen] = 0;
        const vd_key *k = find_key(key);
        if (!k) {
            const char *hint = closest_key(key);
            if (hint && uses_key(uses, hint)) vd_die("--%s: unknown option (did you mean --%s?)", key, hint);
            if (uses) refuse_unused(uses, key);
            vd_die("--%s: unknown option (see vera-dist --help for the keys)", key);
        }
        if (!uses_key(uses, key)) refuse_unused(uses, key);
        char why[512];
        if (set_key(c, k, a.value, why, sizeof(why)) != 0) vd_die("--%s: %s", key, why);
        c->from[key_index(k)] = VD_FROM_CLI;
    }
    for (int i = 0; i < NKEYS; i++) {
        if (flag[i] < 0) continue;
        *(int32_t *)((char *)c + g_keys[i].offset) = flag[i];
        c->from[i] = VD_FROM_CLI;
    }
    free(argv);
    config_fit_defaults(c, uses);
}

/* ----------------------------------------------------------------------------------------- */
/* validation, help, serialization */

void vd_config_validate(const vd_config *c) {
    /* every key again, for structs filled in by code rather than by the parser */
    for (int i = 0; i < NKEYS; i++) {
        const vd_key *k = &g_keys[i];
        const char *field = (const char *)c + k->offset;
        char range[64];
        format_range(k, range, sizeof(range));
        switch (k->type) {
        case KT_INT: {
            int32_t v = *(const int32_t *)field;
            if (!in_range(k, (double)v)) vd_die("%s = %d is out of range %s", k->name, (int)v, range);
            break;
        }
        case KT_FLOAT: {
            float v = *(const float *)field;
            if (!isfinite(v) || !in_range(k, (double)v))
                vd_die("%s = %.9g is out of range %s", k->name, (double)v, range);
            break;
        }
        case KT_BOOL: {
            int32_t v = *(const int32_t *)field;
            if (v != 0 && v != 1) vd_die("%s = %d: expected 0 or 1", k->name, (int)v);
            break;
        }
        case KT_U64: break; /* every value is valid */
        case KT_STRING:
        case KT_TARGETS: {
            if (!memchr(field, 0, k->size)) vd_die("%s: value is not terminated", k->name);
            vd_config tmp = *c; /* re-parse a copy: same spelling rules as the parser */
            char err[512];
            if (set_key(&tmp, k, field, err, sizeof(err)) != 0) vd_die("%s: %s", k->name, err);
            if (k->type == KT_TARGETS && strcmp(tmp.target_modules, c->target_modules) != 0)
                vd_die("target_modules '%s' is not in normalized form (set it with vd_config_set)", c->target_modules);
            break;
        }
        }
    }
    /* cross-key rules */
    if (!c->model[0]) vd_die("model is not set. HINT: pass --model DIR or set [model] model in the config");
    if (!c->train_data[0])
        vd_die("train_data is not set. HINT: pass --train_data GLOB or set [data] train_data in the config");
    if (!c->out_dir[0]) vd_die("out_dir is empty. HINT: pass --out_dir DIR or set [data] out_dir in the config");
    /* the rules of g_le_rules still broken after vd_config_parse: the user set both values */
    for (int i = 0; i < NRULES; i++) {
        const vd_key *klo = find_key_or_die(g_le_rules[i].lo), *khi = find_key_or_die(g_le_rules[i].hi);
        int32_t lo = *(const int32_t *)((const char *)c + klo->offset), hi = *(const int32_t *)((const char *)c + khi->offset);
        if (lo > hi) vd_die("%s (%d) must be <= %s (%d)", klo->name, (int)lo, khi->name, (int)hi);
    }
    if (c->eval_every > 0 && !c->val_data[0])
        vd_die("eval_every = %d but val_data is empty. HINT: set [data] val_data, or eval_every = 0",
               (int)c->eval_every);
    /* token rows of one micro-batch are counted in int32 by the model */
    if ((int64_t)c->batch_size * c->seq_len > INT32_MAX)
        vd_die("batch_size * seq_len = %lld exceeds %d token rows per micro-batch",
               (long long)c->batch_size * c->seq_len, INT32_MAX);
}

static const char *type_name(const vd_key *k) {
    switch (k->type) {
    case KT_INT: return "INT";
    case KT_FLOAT: return "FLOAT";
    case KT_U64: return "U64";
    case KT_BOOL: return "BOOL";
    case KT_TARGETS: return "LIST";
    case KT_STRING: return k->choices ? "NAME" : "PATH";
    }
    return "?";
}

void vd_config_print_help(FILE *f) {
    fprintf(f,
            "usage: vera-dist [train] --config FILE [--key value ...]\n"
            "       vera-dist init-model --out DIR [...]     write a small random GPT-2 or Llama (tests, demo)\n"
            "       vera-dist prepare-data --in TEXT --out DIR [...]  byte-level text into llm.c shards\n"
            "       vera-dist forward | export | inspect ...  one forward/backward, adapter export, counts\n"
            "       vera-dist tokenize --tokenizer PATH (--text STR | --in FILE) [--json]  a model's token ids\n"
            "       vera-dist eval --model PATH --data GLOB [--adapter DIR | --checkpoint FILE] [...]\n"
            "                                                mean loss / perplexity over the target tokens\n"
            "       vera-dist <sub-command> --help\n"
            "\n"
            "Train VeRA adapters on a GPT-2 or Llama-family model with MPI data parallelism\n"
            "(mpirun -n N vera-dist ...).\n"
            "Settings: the defaults below, then the INI file given by --config, then --key value\n"
            "or --key=value on the command line, in order (the command line wins). A default that\n"
            "conflicts with a value you set gives way to it, with one line saying so (--max_steps 5\n"
            "lowers the default warmup_steps to 5); two values you set that conflict are refused.\n");
    for (int s = 0; s < NSECTIONS; s++) {
        fprintf(f, "\n[%s]\n", g_sections[s]);
        for (int i = 0; i < NKEYS; i++) {
            const vd_key *k = &g_keys[i];
            if (strcmp(k->section, g_sections[s]) != 0) continue;
            char opt[64], range[64] = "";
            /* booleans are flags: --overwrite alone means 1 */
            snprintf(opt, sizeof(opt), k->type == KT_BOOL ? "--%s [%s]" : "--%s %s", k->name, type_name(k));
            if (k->type == KT_INT || k->type == KT_FLOAT || k->type == KT_U64) {
                char r[48];
                format_range(k, r, sizeof(r));
                snprintf(range, sizeof(range), ", range %s", r);
            } else if (k->choices) {
                snprintf(range, sizeof(range), ", one of %s", k->choices);
            } else if (k->type == KT_BOOL) {
                snprintf(range, sizeof(range), ", 0/1/true/false; --%s alone = 1", k->name);
            }
            int quoted = k->type == KT_STRING || k->type == KT_TARGETS;
            fprintf(f, "  %-28s default %s%s%s%s\n      %s\n", opt, quoted ? "\"" : "", k->def,
                    quoted ? "\"" : "", range, k->help);
        }
    }
}


size_t vd_config_serialize(const vd_config *c, char *buf, size_t cap) {
    size_t total = 0;
    for (int i = 0; i < NKEYS; i++) {
        const vd_key *k = &g_keys[i];
        const char *field = (const char *)c + k->offset;
        char val[VD_PATH_MAX];
        switch (k->type) {
        case KT_INT:
        case KT_BOOL: snprintf(val, sizeof(val), "%d", (int)*(const int32_t *)field); break;
        case KT_FLOAT: vd_format_float_shortest(val, sizeof(val), *(const float *)field); break;
        case KT_U64: snprintf(val, sizeof(val), "%" PRIu64, *(const uint64_t *)field); break;
        case KT_STRING: snprintf(val, sizeof(val), "%.*s", (int)k->size, field); break;
        case KT_TARGETS: snprintf(val, sizeof(val), "%s", field); break;
        }
        /* snprintf semantics: the full length is counted even when buf is too small */
        int w = snprintf(total < cap ? buf + total : NULL, total < cap ? cap - total : 0, "%s = %s\n", k->name, val);
        if (w < 0) vd_die_at(__FILE__, __LINE__, "snprintf failed serializing %s", k->name);
        total += (size_t)w;
    }
    if (cap > 0 && total >= cap) buf[cap - 1] = 0;
    return total;
}

/* Copies the key of a "key = value" line (up to the first space or '='). */
static void line_key(const char *line, size_t len, char *out, size_t cap) {
    size_t n = 0;
    while (n < len && line[n] != ' ' && line[n] != '=') n++;
    if (cap == 0) return;
    if (n >= cap) n = cap - 1;
    memcpy(out, line, n);
    out[n] = 0;
}

const char *vd_config_first_difference(const char *a, const char *b, char *key_out, size_t cap) {
    while (*a || *b) {
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || memcmp(a, b, la) != 0) {
            /* a line missing on one side (older checkpoint) is named from the side that has it */
            if (la > 0 || *a) line_key(a, la, key_out, cap);
            else line_key(b, lb, key_out, cap);
            return key_out;
        }
        a += la + (a[la] == '\n');
        b += lb + (b[lb] == '\n');
    }
    return NULL;
}

int vd_config_line_is_default(const char *line, size_t len) {
    static char defaults[1 << 16];
    vd_config d;
    vd_config_defaults(&d);
    vd_config_serialize(&d, defaults, sizeof(defaults));
    for (const char *p = defaults; *p;) {
        size_t l = strcspn(p, "\n");
        if (l == len && !memcmp(p, line, len)) return 1;
        p += l + (p[l] == '\n');
    }
    return 0;
}

int vd_config_key_resume_free(const char *key) {
    const vd_key *k = find_key(key);
    return k != NULL && (k->flags & RESUME_FREE) != 0;
}

int vd_config_key_resume_same_model(const char *key) {
    const vd_key *k = find_key(key);
    return k != NULL && (k->flags & RESUME_SAME_MODEL) != 0;
}
