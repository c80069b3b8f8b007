/* forward.c: `vera-dist forward`: one forward and backward on the first batch_size sequences
 * of a token shard, written to a safetensors file (logits, loss, A, B, and the gradient of every
 * lambda_b / lambda_d). The PEFT conformance tests compare it with transformers + PEFT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/data.h"
#include "vera/model.h"
#include "vera/peft.h"
#include "vera/safetensors.h"

int vd_forward_main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: vera-dist forward --model DIR|FILE.gguf|FILE.bin --tokens GLOB --out FILE.safetensors [--adapter FILE|DIR]\n"
               "                         [--batch_size B --seq_len T --r R --target_modules ... (any config key)]\n"
               "One forward + backward on the first batch_size sequences of the token shards; writes logits\n"
               "[B,T,V], loss [1], vera_A, vera_B and <module>.vera_lambda_b.grad / .vera_lambda_d.grad\n"
               "(gradients of the mean loss over the target tokens: masked targets take none; --pack 1 packs\n"
               "shards of examples, with positions restarting per example) to FILE, and targets [B,T], pos [B,T].\n");
        return 0;
    }
    const char *tokens = vd_cli_take_option(&argc, argv, "tokens");
    const char *out = vd_cli_take_option(&argc, argv, "out");
    const char *adapter = vd_cli_take_option(&argc, argv, "adapter");
    if (!tokens) vd_die("forward: --tokens GLOB is required (llm.c token shards)");
    if (!out) vd_die("forward: --out FILE is required");
    vd_config cfg;
    vd_config_defaults(&cfg);
    vd_config_parse(&cfg, argc, argv, 1);
    snprintf(cfg.train_data, sizeof(cfg.train_data), "%s", tokens);
    vd_config_validate(&cfg);
    const vd_backend *be = vd_backend_cpu();
    if (cfg.threads > 0) vd_backend_cpu_set_threads(cfg.threads);

    vd_model_config mc;
    float *host_params = vd_model_load(cfg.model, &mc);
    if (cfg.seq_len > mc.max_seq_len)
        vd_die("seq_len: %d is larger than the model's context (max positions %d)", (int)cfg.seq_len, (int)mc.max_seq_len);
    uint32_t mask = vd_model_targets_or_die(vd_model_family_of(mc.arch), cfg.target_modules, sizeof(cfg.target_modules),
                                            cfg.model);
    vd_dataset ds;
    vd_dataset_open(&ds, tokens, cfg.seq_len, mc.vocab_size, cfg.pack, "tokens");
    int32_t B = cfg.batch_size, T = cfg.seq_len, V = mc.vocab_size, N = B * T;
    if ((uint64_t)B > ds.n_seqs) vd_die("--tokens: %s holds %llu sequences, batch_size is %d", tokens, (unsigned long long)ds.n_seqs, (int)B);
    int32_t *inputs = mallocCheck(sizeof(int32_t) * (size_t)N), *targets = mallocCheck(sizeof(int32_t) * (size_t)N);
    int32_t *pos = mallocCheck(sizeof(int32_t) * (size_t)N);
    for (int32_t b = 0; b < B; b++)
        vd_dataset_get(&ds, (uint64_t)b, inputs + (size_t)b * T, targets + (size_t)b * T, pos + (size_t)b * T);
    int32_t n_targets = 0;
    for (int32_t i = 0; i < N; i++) n_targets += targets[i] != VD_TARGET_NONE;
    if (!n_targets) vd_die("--tokens: %s: the first %d sequences hold no target token (all masked)", tokens, (int)B);

    vd_model model;
    vd_model_init(&model, be, &mc, host_params);
    free(host_params);
    vd_model_alloc_acts(&model, B, T);
    vd_vera vera;
    vd_vera_options vo = {cfg.r, cfg.d_initial, cfg.projection_prng_key, mask, 0.0f};
    vd_vera_init(&vera, be, &model, &vo);
    vd_model_set_adapter(&model, &vera);
    vd_vera_alloc_acts(&vera, N, N, VD_WEFF_AUTO);
    if (adapter) vd_cli_load_adapter(&vera, adapter);

    vd_fwd_ctx ctx = {0, 0, 0};
    vd_model_forward(&model, inputs, NULL, pos, B, &ctx);
    float *logits = mallocCheck(sizeof(float) * (size_t)N * V);
    be->to_host(logits, vd_model_logits(&model), sizeof(float) * (size_t)N * V);
    vd_vera_zero_grads(&vera);
    float loss = (float)(vd_model_forward(&model, inputs, targets, pos, B, &ctx) / n_targets);
    vd_model_backward(&model, (float)(1.0 / n_targets), &ctx);

    size_t na = (size_t)cfg.r * vera.max_in, nbm = (size_t)vera.max_out * cfg.r;
    float *A = mallocCheck(sizeof(float) * na), *Bm = mallocCheck(sizeof(float) * nbm);
    float *grads = mallocCheck(sizeof(float) * vera.n_trainable);
    be->to_host(A, vera.A, sizeof(float) * na);
    be->to_host(Bm, vera.B, sizeof(float) * nbm);
    be->to_host(grads, vera.grads, sizeof(float) * vera.n_trainable);
    int32_t n = 6 + 2 * vera.n_modules;
    vd_st_entry *e = callocCheck((size_t)n, sizeof(vd_st_entry));
    char (*names)[192] = callocCheck((size_t)n, 192);
    e[0] = (vd_st_entry){"logits", logits, 3, {B, T, V}};
    e[1] = (vd_st_entry){"loss", &loss, 1, {1}};
    e[2] = (vd_st_entry){"vera_A", A, 2, {cfg.r, vera.max_in}};
    e[3] = (vd_st_entry){"vera_B", Bm, 2, {vera.max_out, cfg.r}};
    /* the sequences as read (VD_TARGET_NONE = -1 where no loss is taken), as floats: every id and
     * position is far below 2^24, so they are exact */
    float *tf = mallocCheck(sizeof(float) * (size_t)N), *pf = mallocCheck(sizeof(float) * (size_t)N);
    for (int32_t i = 0; i < N; i++) {
        tf[i] = (float)targets[i];
        pf[i] = (float)pos[i];
    }
    e[4] = (vd_st_entry){"targets", tf, 2, {B, T}};
    e[5] = (vd_st_entry){"pos", pf, 2, {B, T}};
    for (int32_t i = 0; i < vera.n_modules; i++) {
        const vd_vera_module *md = &vera.modules[i];
        snprintf(names[2 * i], 192, "%s.vera_lambda_b.grad", md->name);
        snprintf(names[2 * i + 1], 192, "%s.vera_lambda_d.grad", md->name);
        e[6 + 2 * i] = (vd_st_entry){names[2 * i], grads + md->off_b, 1, {md->out}};
        e[7 + 2 * i] = (vd_st_entry){names[2 * i + 1], grads + md->off_d, 1, {cfg.r}};
    }
    vd_safetensors_write_f32(out, e, n, NULL, 0);
    printf("forward: %d sequences of %d tokens, %d targets, loss %.6f, wrote %s\n", (int)B, (int)T, (int)n_targets,
           (double)loss, out);
    free(tf);
    free(pf);
    free(names);
    free(e);
    free(A);
    free(Bm);
    free(grads);
    free(logits);
    free(inputs);
    free(targets);
    free(pos);
    vd_vera_free(&vera);
    vd_model_free(&model);
    vd_dataset_close(&ds);
    return 0;
}
