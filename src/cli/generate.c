/* generate.c: `vera-dist generate`: text from a base model, optionally with a VeRA adapter (a
 * PEFT directory or a training checkpoint), through the model's KV-cache decode
 * (vd_model_decode): the prompt in one call, then one token per call. Greedy by default;
 * sampling in transformers' order (src/model/sample.c). Output streams as tokens come, or one
 * JSON object with --json. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/chat.h"
#include "vera/checkpoint.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/gguf.h"
#include "vera/model.h"
#include "vera/peft.h"
#include "vera/sample.h"
#include "vera/tokenizer.h"
#ifdef VERA_HAVE_CUDA
#include "vera/backend_cuda.h"
#endif

static void gen_usage(void) {
    printf("usage: vera-dist generate --model DIR|FILE.gguf|FILE.bin [--adapter PEFT_DIR | --checkpoint FILE.h5]\n"
           "                          (--prompt TEXT | --chat JSON | --prompt_ids 1,2,3)\n"
           "                          [--max_new_tokens N] [--temperature T] [--top_k K] [--top_p P] [--seed S]\n"
           "                          [--stop_ids 1,2] [--ignore_eos 1] [--json] [--device cpu|cuda|auto] [--threads N]\n"
           "Generates up to max_new_tokens (default 64) tokens after the prompt with a KV cache.\n"
           "  --prompt TEXT      tokenized with the model's tokenizer as tokenizer(TEXT) (its BOS, if it adds one)\n"
           "  --chat JSON        a list of {\"role\", \"content\"} messages rendered with the model's chat\n"
           "                     template and the generation prompt (add_generation_prompt)\n"
           "  --prompt_ids IDS   token ids directly (no tokenizer needed)\n"
           "  --adapter DIR      a PEFT VeRA adapter directory (adapter_config.json + adapter_model.safetensors)\n"
           "  --checkpoint FILE  a vera-dist training checkpoint (--model defaults to the one it was trained on)\n"
           "Decoding: greedy (argmax) when --temperature is 0, the default. Otherwise the logits are divided\n"
           "by the temperature, then top_k (0 = off) and top_p (1 = off) filter them, in transformers'\n"
           "order, and the token is drawn with the PRNG seeded by --seed (default 0): a seed reproduces a sample.\n"
           "Stops after max_new_tokens or at a stop token: the tokenizer's EOS, the chat template's end-of-turn\n"
           "token (--chat), eos_token_id of generation_config.json / config.json, and --stop_ids;\n"
           "--ignore_eos 1 drops all but --stop_ids. The stop token is part of the new ids.\n"
           "Output: the new text as it is generated (special tokens not printed; the ids when the model has\n"
           "no tokenizer); --json prints only {\"prompt_ids\": [...], \"ids\": [...], \"text\": \"...\"}\n"
           "(ids = the new tokens; text = their decoding without special tokens).\n"
           "--device cpu (default), cuda, or auto (cuda when a GPU is usable).\n");
}

/* The backend for --device (one process, no collectives): cpu; cuda (or a one-line error); auto
 * = cuda when usable, else cpu. Like train.c's selection, compiled with VERA_HAVE_CUDA in CUDA
 * builds (and in the emulated backend's binary). */
static const vd_backend *gen_backend(const char *device) {
    if (!device || !strcmp(device, "cpu")) return vd_backend_cpu();
    if (strcmp(device, "cuda") != 0 && strcmp(device, "auto") != 0)
        vd_die("generate: --device must be cpu, cuda or auto, got '%s'", device);
#ifdef VERA_HAVE_CUDA
    char why[512];
    const vd_backend *be = vd_backend_cuda_init(NULL, why, sizeof(why));
    if (be) return be;
    if (!strcmp(device, "cuda"))
        vd_die("generate: --device cuda requested but no usable CUDA device (%s) (HINT: --device cpu or auto)", why);
    vd_log("generate: device auto -> cpu (%s)\n", why);
#else
    if (!strcmp(device, "cuda"))
        vd_die("generate: --device cuda requested but this build has no CUDA backend (HINT: --device cpu or auto)");
#endif
    return vd_backend_cpu();
}

/* ---- options ---- */

static long long gen_parse_int(const char *opt, const char *s, long long lo, long long hi) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != 0 || v < lo || v > hi)
        vd_die("generate: --%s must be an integer in [%lld, %lld], got '%s'", opt, lo, hi, s);
    return v;
}

static double gen_parse_float(const char *opt, const char *s, double lo, double hi) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != 0 || !(v >= lo && v <= hi))
        vd_die("generate: --%s must be a number in [%g, %g], got '%s'", opt, lo, hi, s);
    return v;
}

static int gen_parse_bool(const char *opt, const char *s) {
    if (!strcmp(s, "1") || !strcmp(s, "true")) return 1;
    if (!strcmp(s, "0") || !strcmp(s, "false")) return 0;
    vd_die("generate: --%s must be 0 or 1, got '%s'", opt, s);
}

/* A growable list of ids. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} gen_ids;

static void gen_ids_push(gen_ids *l, int32_t id) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        int32_t *nv = mallocCheck(sizeof(int32_t) * l->cap);
        if (l->n) memcpy(nv, l->v, sizeof(int32_t) * l->n);
        free(l->v);
        l->v = nv;
    }
    l->v[l->n++] = id;
}

static int gen_ids_has(const gen_ids *l, int32_t id) {
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i] == id) return 1;
    return 0;
}

/* "1,2,3" (spaces allowed) into ids, each in [0, V). */
static void gen_parse_id_list(const char *opt, const char *s, int32_t V, gen_ids *out) {
    const char *p = s;
    for (;;) {
        while (*p == ' ') p++;
        char *end = NULL;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno != 0)
            vd_die("generate: --%s must be a comma-separated list of token ids, got '%s'", opt, s);
        if (v < 0 || v >= V)
            vd_die("generate: --%s: token id %lld is outside the model's vocabulary [0, %d)", opt, v, (int)V);
        gen_ids_push(out, (int32_t)v);
        p = end;
        while (*p == ' ') p++;
        if (*p == 0) break;
        if (*p != ',') vd_die("generate: --%s must be a comma-separated list of token ids, got '%s'", opt, s);
        p++;
    }
    if (out->n == 0) vd_die("generate: --%s is empty", opt);
}

/* eos_token_id (an id or a list of ids) of DIR/generation_config.json, else of DIR/config.json:
 * where transformers' generate stops by default. */
static void gen_read_eos_ids(const char *model, int32_t V, gen_ids *stop) {
    struct stat st;
    if (stat(model, &st) != 0 || !S_ISDIR(st.st_mode)) return;
    const char *files[2] = {"generation_config.json", "config.json"};
    for (int f = 0; f < 2; f++) {
        char path[VD_PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/%s", model, files[f]);
        if (!vd_path_exists(path)) continue;
        cJSON *root = vd_cfg_read_json(path);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
        int found = e && !cJSON_IsNull(e);
        if (cJSON_IsNumber(e)) {
            if (e->valuedouble >= 0 && e->valuedouble < V) gen_ids_push(stop, (int32_t)e->valuedouble);
        } else if (cJSON_IsArray(e)) {
            const cJSON *it;
            cJSON_ArrayForEach(it, e) if (cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble < V)
                gen_ids_push(stop, (int32_t)it->valuedouble);
        } else if (found) {
            vd_die("%s: eos_token_id is not an integer or a list of integers", path);
        }
        cJSON_Delete(root);
        if (found) return;
    }
}

/* ---- the adapter ---- */

/* Loads a checkpoint's vectors into a new adapter on m (checked by vd_cli_check_checkpoint). */
static void gen_adapter_from_checkpoint(vd_adapter *a, vd_model *m, const vd_checkpoint *ck, const vd_config *cfg,
                                        uint64_t fingerprint, const char *ckpath, int32_t N) {
    vd_cli_check_checkpoint_model("generate", ckpath, ck, fingerprint, cfg->model);
    char targets[sizeof(cfg->target_modules)];
    snprintf(targets, sizeof(targets), "%s", cfg->target_modules);
    uint32_t mask = vd_model_targets_or_die(m->family, targets, sizeof(targets), cfg->model);
    vd_adapter_options ao;
    vd_adapter_options_from_config(&ao, cfg, mask);
    ao.dropout = ao.lora_dropout = ao.vblora_dropout = 0.0f;
    vd_adapter_init(a, m->be, m, &ao);
    vd_cli_check_checkpoint_adapter("generate", ckpath, ck, a);
    vd_adapter_alloc_acts(a, N, N, VD_WEFF_NEVER);
    m->be->to_device(a->params, ck->params, sizeof(float) * ck->n_trainable);
    vd_adapter_refresh(a);
}

/* ---- text: the tokenizer, the chat template, streaming ---- */

/* The model's tokenizer when it has one: a HF directory's tokenizer.json, or a GGUF file's
 * tokenizer.ggml metadata. required: die naming the file when there is none. */
static vd_tokenizer *gen_tokenizer(const char *model, int required, const char *why) {
    struct stat st;
    int have = 0;
    if (stat(model, &st) == 0 && S_ISDIR(st.st_mode)) {
        char path[VD_PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/tokenizer.json", model);
        have = vd_path_exists(path);
        if (!have && required)
            vd_die("generate: %s needs the model's tokenizer, and %s is missing (HINT: --prompt_ids)", why, path);
    } else if (vd_gguf_has_magic(model)) {
        vd_gguf g;
        vd_gguf_open(&g, model);
        have = vd_gguf_find_kv(&g, "tokenizer.ggml.tokens") != NULL;
        vd_gguf_close(&g);
        if (!have && required)
            vd_die("generate: %s needs the model's tokenizer, and %s has no tokenizer.ggml metadata (HINT: --prompt_ids)",
                   why, model);
    } else if (required) {
        vd_die("generate: %s needs the model's tokenizer, and %s (an llm.c model file) has none (HINT: --prompt_ids)",
               why, model);
    }
    return have ? vd_tokenizer_load(model) : NULL;
}

/* --chat: a JSON list of {"role": ..., "content": ...} rendered with the tokenizer's template
 * and the generation prompt; *eot gets the template's end-of-turn token id (-1 if absent). */
static char *gen_render_chat(const vd_tokenizer *tok, const char *json, const char *model, size_t *len, int32_t *eot) {
    cJSON *root = cJSON_Parse(json);
    if (!cJSON_IsArray(root) || cJSON_GetArraySize(root) < 1)
        vd_die("generate: --chat must be a JSON list of {\"role\", \"content\"} messages");
    size_t n = (size_t)cJSON_GetArraySize(root);
    vd_chat_message *msgs = callocCheck(n, sizeof(vd_chat_message));
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, root) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role) || !cJSON_IsString(content))
            vd_die("generate: --chat message %zu is not an object with string \"role\" and \"content\"", i);
        msgs[i].role = role->valuestring;
        msgs[i].content = content->valuestring;
        i++;
    }
    vd_chat_template tpl;
    char what[VD_PATH_MAX + 32];
    snprintf(what, sizeof(what), "generate: --model %s", model);
    vd_chat_template_recognise(&tpl, vd_tokenizer_chat_template(tok), what);
    char *text = vd_chat_render(&tpl, msgs, n, 1, vd_tokenizer_bos_text(tok), vd_tokenizer_eos_text(tok), len, NULL, NULL);
    /* the token that ends the assistant's turn */
    *eot = vd_tokenizer_token_id(tok, tpl.kind == VD_CHAT_LLAMA3 ? "<|eot_id|>" : "<|im_end|>");
    vd_chat_template_free(&tpl);
    free(msgs);
    cJSON_Delete(root);
    return text;
}

/* The UTF-8 character at p[0..n): its byte count when complete and valid; 0 when it is a valid
 * start that needs more bytes; -k when its first k bytes are the longest start of a valid
 * character that cannot continue (k >= 1: one U+FFFD replaces them, Python's errors="replace"
 * and Rust's from_utf8_lossy, which Hugging Face tokenizers' decode uses). */
static int gen_utf8_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    int len;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3;
    else if (c >= 0xF0 && c <= 0xF4) len = 4;
    else return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return 0;
        unsigned b = p[i];
        /* the second byte's range excludes overlong forms, surrogates and code points > U+10FFFF */
        unsigned lo = 0x80, hi = 0xBF;
        if (i == 1 && c == 0xE0) lo = 0xA0;
        if (i == 1 && c == 0xED) hi = 0x9F;
        if (i == 1 && c == 0xF0) lo = 0x90;
        if (i == 1 && c == 0xF4) hi = 0x8F;
        if (b < lo || b > hi) return -i;
    }
    return len;
}

/* Writes to out the longest prefix of p[0..n) that is whole characters, each invalid part as
 * U+FFFD; returns the bytes consumed. final: nothing more will come, so an incomplete tail
 * becomes one U+FFFD too. */
static size_t gen_utf8_emit(const unsigned char *p, size_t n, int final, FILE *out) {
    size_t i = 0;
    while (i < n) {
        int k = gen_utf8_len(p + i, n - i);
        if (k == 0) {
            if (!final) break;
            fputs("\xEF\xBF\xBD", out);
            i = n;
        } else if (k < 0) {
            fputs("\xEF\xBF\xBD", out);
            i += (size_t)-k;
        } else {
            fwrite(p + i, 1, (size_t)k, out);
            i += (size_t)k;
        }
    }
    return i;
}

/* A copy of s[0..n) with invalid UTF-8 replaced (JSON must be valid UTF-8). */
static char *gen_utf8_clean(const char *s, size_t n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) vd_die("generate: out of memory");
    gen_utf8_emit((const unsigned char *)s, n, 1, f);
    fclose(f);
    return buf;
}

/* Streams token text to stdout: whole characters only, special tokens not printed. */
typedef struct {
    unsigned char pending[64];
    size_t n;
} gen_stream;

static void gen_stream_token(gen_stream *s, const vd_tokenizer *tok, int32_t id) {
    if (vd_tokenizer_is_special(tok, id)) return;
    size_t len = 0;
    const char *b = vd_tokenizer_token_bytes(tok, id, &len);
    if (!b) return;
    for (size_t i = 0; i < len; i++) {
        s->pending[s->n++] = (unsigned char)b[i];
        /* print what is whole; at most 3 bytes of a started character stay pending */
        if (s->n == sizeof(s->pending) || i + 1 == len) {
            size_t used = gen_utf8_emit(s->pending, s->n, 0, stdout);
            memmove(s->pending, s->pending + used, s->n - used);
            s->n -= used;
        }
    }
    fflush(stdout);
}

static void gen_stream_end(gen_stream *s) {
    gen_utf8_emit(s->pending, s->n, 1, stdout);
    s->n = 0;
    printf("\n");
}

/* ---- output ---- */

static void gen_print_json_ids(cJSON *root, const char *key, const int32_t *ids, size_t n) {
    cJSON *a = cJSON_AddArrayToObject(root, key);
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
}

int vd_generate_main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        gen_usage();
        return 0;
    }
    const char *model_path = vd_cli_take_option(&argc, argv, "model");
    const char *adapter = vd_cli_take_option(&argc, argv, "adapter");
    const char *ckpath = vd_cli_take_option(&argc, argv, "checkpoint");
    const char *prompt = vd_cli_take_option(&argc, argv, "prompt");
    const char *chat = vd_cli_take_option(&argc, argv, "chat");
    const char *prompt_ids = vd_cli_take_option(&argc, argv, "prompt_ids");
    const char *s_max_new = vd_cli_take_option(&argc, argv, "max_new_tokens");
    const char *s_temp = vd_cli_take_option(&argc, argv, "temperature");
    const char *s_top_k = vd_cli_take_option(&argc, argv, "top_k");
    const char *s_top_p = vd_cli_take_option(&argc, argv, "top_p");
    const char *s_seed = vd_cli_take_option(&argc, argv, "seed");
    const char *s_stop = vd_cli_take_option(&argc, argv, "stop_ids");
    const char *s_ignore_eos = vd_cli_take_option(&argc, argv, "ignore_eos");
    const char *device = vd_cli_take_option(&argc, argv, "device");
    const char *s_threads = vd_cli_take_option(&argc, argv, "threads");
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
            for (int j = i; j + 1 < argc; j++) argv[j] = argv[j + 1];
            argc--;
            i--;
        }
    }
    if (argc > 1) vd_die("generate: unknown argument '%s' (see vera-dist generate --help)", argv[1]);
    if ((prompt != NULL) + (chat != NULL) + (prompt_ids != NULL) != 1)
        vd_die("generate: give exactly one of --prompt TEXT, --chat JSON or --prompt_ids IDS");
    if (adapter && ckpath) vd_die("generate: give --adapter or --checkpoint, not both");
    int32_t max_new = s_max_new ? (int32_t)gen_parse_int("max_new_tokens", s_max_new, 1, INT32_MAX / 2) : 64;
    vd_sample_options so = {0.0f, 0, 1.0f};
    if (s_temp) so.temperature = (float)gen_parse_float("temperature", s_temp, 0.0, 1e6);
    if (s_top_k) so.top_k = (int32_t)gen_parse_int("top_k", s_top_k, 0, INT32_MAX);
    if (s_top_p) so.top_p = (float)gen_parse_float("top_p", s_top_p, 1e-9, 1.0);
    uint64_t seed = s_seed ? (uint64_t)gen_parse_int("seed", s_seed, 0, LLONG_MAX) : 0;
    int ignore_eos = s_ignore_eos ? gen_parse_bool("ignore_eos", s_ignore_eos) : 0;
    if (s_threads) vd_backend_cpu_set_threads((int32_t)gen_parse_int("threads", s_threads, 1, 4096));

    /* the checkpoint first: it names the base model when --model is not given */
    vd_checkpoint ck;
    vd_config ckcfg;
    int have_ck = 0;
    if (ckpath) {
        char err[1024];
        if (vd_checkpoint_read(ckpath, &ck, err, sizeof(err)) != 0) vd_die("generate: --checkpoint: %s", err);
        vd_cli_config_from_text(&ckcfg, ck.config_text, ckpath);
        if (model_path) snprintf(ckcfg.model, sizeof(ckcfg.model), "%s", model_path);
        model_path = ckcfg.model;
        have_ck = 1;
    }
    if (!model_path) vd_die("generate: --model PATH is required");

    const vd_backend *be = gen_backend(device);
    vd_model_config mc;
    float *host = vd_model_load(model_path, &mc);
    int32_t V = mc.vocab_size;

    /* the prompt: ids directly, or text through the model's own tokenizer */
    vd_tokenizer *tok = gen_tokenizer(model_path, prompt_ids == NULL, prompt ? "--prompt" : "--chat");
    gen_ids pids = {0}, stop = {0};
    int32_t chat_eot = -1; /* the chat template's end-of-turn token */
    if (prompt_ids) {
        gen_parse_id_list("prompt_ids", prompt_ids, V, &pids);
    } else {
        vd_tokens enc = {0};
        if (prompt) {
            vd_tokenizer_encode(tok, prompt, strlen(prompt), VD_TOK_ADD_SPECIAL, &enc);
        } else {
            /* as apply_chat_template(..., add_generation_prompt=True, tokenize=True): the
             * template writes any BOS itself, so no special tokens are added */
            size_t len = 0;
            char *text = gen_render_chat(tok, chat, model_path, &len, &chat_eot);
            vd_tokenizer_encode(tok, text, len, 0, &enc);
            free(text);
        }
        for (size_t i = 0; i < enc.n; i++) {
            if (enc.ids[i] < 0 || enc.ids[i] >= V)
                vd_die("generate: the tokenizer of %s gives token id %d, outside the model's vocabulary of %d", model_path,
                       (int)enc.ids[i], (int)V);
            gen_ids_push(&pids, enc.ids[i]);
        }
        vd_tokens_free(&enc);
        if (pids.n == 0) vd_die("generate: the prompt is empty (no tokens)");
    }
    if (!ignore_eos) {
        gen_read_eos_ids(model_path, V, &stop);
        int32_t eos = tok ? vd_tokenizer_eos(tok) : -1;
        if (eos >= 0 && eos < V) gen_ids_push(&stop, eos);
        if (chat_eot >= 0 && chat_eot < V) gen_ids_push(&stop, chat_eot);
    }
    if (s_stop) gen_parse_id_list("stop_ids", s_stop, V, &stop);
    int64_t need = (int64_t)pids.n + max_new;
    if (need > mc.max_seq_len)
        vd_die("generate: the prompt (%zu tokens) + max_new_tokens (%d) = %lld exceeds the model's context of %d "
               "positions", pids.n, (int)max_new, (long long)need, (int)mc.max_seq_len);

    vd_model model;
    vd_model_init(&model, be, &mc, host);
    vd_adapter vera;
    int have_vera = 0;
    int32_t N = (int32_t)pids.n; /* the largest decode call: the prompt */
    if (adapter) {
        vd_adapter_options vo;
        vd_peft_read_options(adapter, &model, &vo);
        vd_adapter_init(&vera, be, &model, &vo);
        vd_adapter_alloc_acts(&vera, N, N, VD_WEFF_NEVER);
        vd_peft_load_dir(&vera, adapter);
        have_vera = 1;
    } else if (have_ck) {
        gen_adapter_from_checkpoint(&vera, &model, &ck, &ckcfg, vd_model_fingerprint(&mc, host), ckpath, N);
        have_vera = 1;
    }
    free(host);
    if (have_vera) vd_model_set_adapter(&model, &vera);

    vd_kv_cache kv;
    vd_model_kv_alloc(&model, &kv, (int32_t)need);
    vd_sampler sampler;
    vd_sampler_init(&sampler, V, seed);
    float *logits = mallocCheck(sizeof(float) * (size_t)V);
    gen_ids out = {0};
    gen_stream stream = {{0}, 0};
    vd_model_decode(&model, &kv, pids.v, (int32_t)pids.n, 0, logits);
    for (int32_t step = 0; step < max_new; step++) {
        int32_t id = vd_sample_next(&sampler, logits, &so);
        gen_ids_push(&out, id);
        if (!json && tok) {
            gen_stream_token(&stream, tok, id);
        } else if (!json) {
            printf("%s%d", step ? " " : "", (int)id);
            fflush(stdout);
        }
        if (gen_ids_has(&stop, id) || step + 1 == max_new) break;
        vd_model_decode(&model, &kv, &id, 1, (int32_t)pids.n + step, logits);
    }
    if (json) {
        cJSON *root = cJSON_CreateObject();
        gen_print_json_ids(root, "prompt_ids", pids.v, pids.n);
        gen_print_json_ids(root, "ids", out.v, out.n);
        char *text = NULL;
        if (tok) {
            size_t len = 0;
            char *raw = vd_tokenizer_decode(tok, out.v, out.n, 1, &len);
            text = gen_utf8_clean(raw, len);
            free(raw);
        }
        cJSON_AddStringToObject(root, "text", text ? text : "");
        free(text);
        char *s = cJSON_PrintUnformatted(root);
        if (!s) vd_die("generate: out of memory writing JSON");
        printf("%s\n", s);
        free(s);
        cJSON_Delete(root);
    } else if (tok) {
        gen_stream_end(&stream);
    } else {
        printf("\n");
    }
    fflush(stdout);

    free(logits);
    free(pids.v);
    free(stop.v);
    free(out.v);
    vd_sampler_free(&sampler);
    vd_model_kv_free(&model, &kv);
    if (have_vera) vd_adapter_free(&vera);
    vd_model_free(&model);
    if (have_ck) vd_checkpoint_free(&ck);
    if (tok) vd_tokenizer_free(tok);
    return 0;
}
