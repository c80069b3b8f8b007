/* forward.c: `vera-dist forward`: one forward and backward on the first batch_size sequences
 * of a token shard, written to a safetensors file (logits, loss, A, B, and the gradient of every
 * lambda_b / lambda_d). The PEFT conformance tests compare it with transformers + PEFT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/data.h"
#include "vera/model.h"
#include "vera/peft.h"
#include "vera/safetensors.h"

/* --batch FILE: int32 B, T, then inputs, targets, pos (B*T each). Returns the whole file. */
/* the keys read below; train_data is --tokens, vera_dropout is 0 (one deterministic pass) */
static const char *const forward_keys[] = {"model", "r", "d_initial", "projection_prng_key", "target_modules",
                                           "batch_size", "seq_len", "threads", "pack", VD_ADAPTER_SHAPE_KEYS, NULL};
static const vd_config_uses forward_uses = {"forward", forward_keys, "--tokens or --batch, --out, --adapter"};

static int32_t *forward_read_batch(const char *path) {
    size_t bytes = 0;
    void *map = vd_mmap_file(path, 8, "int32 B, T, inputs, targets, pos", &bytes);
    int32_t *data = mallocCheck(bytes);
    memcpy(data, map, bytes);
    munmap(map, bytes);
    const int32_t *h = data;
    if (bytes < 8 || bytes % 4 != 0 || h[0] < 1 || h[1] < 1 || h[0] > 65536 || h[1] > (1 << 20))
        vd_die("--batch: %s: expected int32 B, T (B, T >= 1) then 3 * B * T int32", path);
    size_t want = 8 + 12 * (size_t)h[0] * (size_t)h[1];
    if (bytes != want)
        vd_die("--batch: %s: %zu bytes, expected %zu for B %d, T %d (int32 B, T, inputs, targets, pos)", path, bytes,
               want, (int)h[0], (int)h[1]);
    return data;
}

int vd_forward_main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: vera-dist forward --model DIR|FILE.gguf|FILE.bin --tokens GLOB|--batch FILE --out FILE.safetensors\n"
               "                         [--adapter FILE|DIR] [--batch_size B --seq_len T --r R --d_initial D --projection_prng_key K\n"
               "                          --target_modules LIST --pack 0|1 --threads N] [--config FILE]\n"
               "One forward + backward on the first batch_size sequences of the token shards; writes logits\n"
               "[B,T,V], loss [1], vera_A, vera_B and <module>.vera_lambda_b.grad / .vera_lambda_d.grad\n"
               "(gradients of the mean loss over the target tokens: masked targets take none; --pack 1 packs\n"
               "shards of examples, with positions restarting per example) to FILE, and inputs, targets, pos [B,T].\n"
               "--batch FILE instead gives the batch itself (tests): little-endian int32 B, T, then inputs [B,T],\n"
               "targets [B,T] (-1: no loss) and positions [B,T] (query t attends to keys t - pos[t] .. t).\n"
               "--adapter DIR (a PEFT directory) gives the adapter's settings unless adapter keys are given: then they\n"
               "must match its adapter_config.json. Other configuration keys are refused on the command line\n"
               "(--adapter, not --init_adapter, loads an\n"
               "adapter); from a --config file they are ignored. A default batch_size or seq_len larger than the\n"
               "shards or the model allow is lowered to fit, with a line saying so.\n");
        return 0;
    }
    const char *tokens = vd_cli_take_option(&argc, argv, "tokens");
    const char *batch = vd_cli_take_option(&argc, argv, "batch");
    const char *out = vd_cli_take_option(&argc, argv, "out");
    const char *adapter = vd_cli_take_option(&argc, argv, "adapter");
    if (!tokens == !batch) vd_die("forward: one of --tokens GLOB (token shards) or --batch FILE is required");
    if (!out) vd_die("forward: --out FILE is required");
    vd_config cfg;
    vd_config_defaults(&cfg);
    vd_config_parse_for(&cfg, argc, argv, 1, &forward_uses);
    int32_t *file_batch = NULL;
    if (batch) {
        file_batch = forward_read_batch(batch);
        cfg.batch_size = file_batch[0];
        cfg.seq_len = file_batch[1];
    }
    snprintf(cfg.train_data, sizeof(cfg.train_data), "%s", tokens ? tokens : batch);
    vd_config_validate(&cfg);
    const vd_backend *be = vd_backend_cpu();
    if (cfg.threads > 0) vd_backend_cpu_set_threads(cfg.threads);

    vd_model_config mc;
    float *host_params = vd_model_load(cfg.model, &mc);
    if (vd_config_fit_default(&cfg, "seq_len", mc.max_seq_len, "the model's context (max positions)") < 0)
        vd_die("seq_len: %d is larger than the model's context (max positions %d)", (int)cfg.seq_len, (int)mc.max_seq_len);
    /* a PEFT directory with no adapter keys given names its own targets (vd_cli_adapter_options) */
    uint32_t mask = vd_cli_adapter_from_dir(&cfg, adapter)
                        ? 0
                        : vd_model_targets_or_die(vd_model_family_of(mc.arch), cfg.target_modules,
                                                  sizeof(cfg.target_modules), cfg.model);
    vd_dataset ds;
    memset(&ds, 0, sizeof(ds));
    if (tokens) {
        vd_dataset_open(&ds, tokens, cfg.seq_len, mc.vocab_size, cfg.pack, "tokens");
        int32_t n_seqs = ds.n_seqs > (uint64_t)INT32_MAX ? INT32_MAX : (int32_t)ds.n_seqs;
        if (vd_config_fit_default(&cfg, "batch_size", n_seqs, "the number of sequences in --tokens") < 0)
            vd_die("--tokens: %s holds %llu sequences, batch_size is %d", tokens, (unsigned long long)ds.n_seqs,
                   (int)cfg.batch_size);
    }
    int32_t B = cfg.batch_size, T = cfg.seq_len, V = mc.vocab_size, N = B * T;
    int32_t *inputs = mallocCheck(sizeof(int32_t) * (size_t)N), *targets = mallocCheck(sizeof(int32_t) * (size_t)N);
    int32_t *pos = mallocCheck(sizeof(int32_t) * (size_t)N);
    if (tokens) {
        for (int32_t b = 0; b < B; b++)
            vd_dataset_get(&ds, (uint64_t)b, inputs + (size_t)b * T, targets + (size_t)b * T, pos + (size_t)b * T);
    } else {
        memcpy(inputs, file_batch + 2, sizeof(int32_t) * (size_t)N);
        memcpy(targets, file_batch + 2 + N, sizeof(int32_t) * (size_t)N);
        memcpy(pos, file_batch + 2 + 2 * (size_t)N, sizeof(int32_t) * (size_t)N);
        for (int32_t i = 0; i < N; i++) {
            int32_t t = i % T;
            if (inputs[i] < 0 || inputs[i] >= V || targets[i] < VD_TARGET_NONE || targets[i] >= V)
                vd_die("--batch: %s: token %d: input %d / target %d outside the vocabulary (0..%d; target -1 = no loss)",
                       batch, (int)i, (int)inputs[i], (int)targets[i], (int)V - 1);
            if (pos[i] < 0 || pos[i] > t || (t > 0 && pos[i] != 0 && pos[i] != pos[i - 1] + 1))
                vd_die("--batch: %s: token %d: position %d (expected 0, or the previous position + 1, at most %d)", batch,
                       (int)i, (int)pos[i], (int)t);
        }
        free(file_batch);
    }
    const char *src = tokens ? tokens : batch;
    int32_t n_targets = 0;
    for (int32_t i = 0; i < N; i++) n_targets += targets[i] != VD_TARGET_NONE;
    if (!n_targets) vd_die("forward: %s: the first %d sequences hold no target token (all masked)", src, (int)B);

    vd_model model;
    vd_model_init(&model, be, &mc, host_params);
    free(host_params);
    vd_model_alloc_acts(&model, B, T);
    vd_adapter ad;
    vd_adapter_options ao;
    vd_cli_adapter_options(&ao, &cfg, mask, &model, adapter);
    vd_adapter_init(&ad, be, &model, &ao);
    vd_model_set_adapter(&model, &ad);
    vd_adapter_alloc_acts(&ad, N, N, VD_WEFF_AUTO);
    if (adapter) vd_cli_load_adapter(&ad, adapter);

    vd_fwd_ctx ctx = {0, 0, 0};
    vd_model_forward(&model, inputs, NULL, pos, B, &ctx);
    float *logits = mallocCheck(sizeof(float) * (size_t)N * V);
    be->to_host(logits, vd_model_logits(&model), sizeof(float) * (size_t)N * V);
    vd_adapter_zero_grads(&ad);
    /* as a training step does: the backward's dloss known to the forward (the fused head) */
    vd_fwd_ctx train_ctx = {0, 0, 0, (float)(1.0 / n_targets)};
    float loss = (float)(vd_model_forward(&model, inputs, targets, pos, B, &train_ctx) / n_targets);
    vd_model_backward(&model, train_ctx.dloss, &train_ctx);

    /* outputs: logits, loss, the batch, the saved tensors (vera_A, vera_B) and the gradient of
     * every trainable tensor, named by its PEFT key without "base_model.model." ("<module>.vera_lambda_b.grad") */
    float *grads = mallocCheck(sizeof(float) * ad.n_trainable);
    be->to_host(grads, ad.grads, sizeof(float) * ad.n_trainable);
    int32_t n = 5 + ad.n_saved + ad.n_tensors;
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    char (*names)[256] = callocCheck((size_t)n, 256);
    float **saved = callocCheck((size_t)(ad.n_saved ? ad.n_saved : 1), sizeof(float *));
    e[0] = (vd_st_entry){"logits", logits, 3, {B, T, V}};
    e[1] = (vd_st_entry){"loss", &loss, 1, {1}};
    /* the sequences as read (VD_TARGET_NONE = -1 where no loss is taken), as floats: every id and
     * position is far below 2^24, so they are exact */
    float *tf = mallocCheck(sizeof(float) * (size_t)N), *pf = mallocCheck(sizeof(float) * (size_t)N);
    float *inf = mallocCheck(sizeof(float) * (size_t)N);
    for (int32_t i = 0; i < N; i++) {
        tf[i] = (float)targets[i];
        pf[i] = (float)pos[i];
        inf[i] = (float)inputs[i];
    }
    e[2] = (vd_st_entry){"targets", tf, 2, {B, T}};
    e[3] = (vd_st_entry){"pos", pf, 2, {B, T}};
    e[4] = (vd_st_entry){"inputs", inf, 2, {B, T}};
    int32_t k = 5;
    for (int32_t i = 0; i < ad.n_saved; i++, k++) {
        const vd_adapter_saved *sv = &ad.saved[i];
        saved[i] = mallocCheck(sizeof(float) * sv->numel);
        be->to_host(saved[i], sv->data, sizeof(float) * sv->numel);
        const char *name = sv->peft_key;
        if (!strncmp(name, "base_model.", 11)) name += 11;
        snprintf(names[k], 256, "%s", name);
        e[k] = (vd_st_entry){names[k], saved[i], sv->ndim, {0}};
        for (int32_t d = 0; d < sv->ndim; d++) e[k].shape[d] = sv->shape[d];
    }
    for (int32_t i = 0; i < ad.n_tensors; i++, k++) {
        const vd_adapter_tensor *t = &ad.tensors[i];
        const char *name = t->peft_key;
        if (!strncmp(name, "base_model.model.", 17)) name += 17;
        else if (!strncmp(name, "base_model.", 11)) name += 11;
        snprintf(names[k], 256, "%s.grad", name);
        e[k] = (vd_st_entry){names[k], grads + t->offset, t->ndim, {0}};
        for (int32_t d = 0; d < t->ndim; d++) e[k].shape[d] = t->shape[d];
    }
    vd_safetensors_write_f32(out, e, n, NULL, 0);
    printf("forward: %d sequences of %d tokens, %d targets, loss %.6f, wrote %s\n", (int)B, (int)T, (int)n_targets,
           (double)loss, out);
    free(tf);
    free(pf);
    free(inf);
    free(names);
    free(e);
    for (int32_t i = 0; i < ad.n_saved; i++) free(saved[i]);
    free(saved);
    free(grads);
    free(logits);
    free(inputs);
    free(targets);
    free(pos);
    vd_adapter_free(&ad);
    vd_model_free(&model);
    if (tokens) vd_dataset_close(&ds);
    return 0;
}
