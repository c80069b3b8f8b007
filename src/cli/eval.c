/* eval.c: `vera-dist eval`: the mean loss and perplexity of a model (with a VeRA adapter from a
 * PEFT directory or a training checkpoint, or none) over the target tokens of token shards,
 * on any number of ranks. Sequences are split over ranks in chunks of batch_size (chunk c on
 * rank c % world, as the trainer's validation loss); each rank sums its token losses and counts
 * its targets, and one f64 all-reduce at the end gives the totals, so the result is the same
 * mean over the same tokens whatever the number of ranks or the batch size (up to float
 * rounding of the per-token losses). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/checkpoint.h"
#include "vera/cli.h"
#include "vera/comm.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/data.h"
#include "vera/model.h"

static void eval_usage(void) {
    printf("usage: vera-dist eval --model PATH --data GLOB [--adapter PEFT_DIR|FILE | --checkpoint FILE]\n"
           "                      [--seq_len T] [--batch_size B] [--pack 0|1] [--max_seqs N] [--json]\n"
           "                      [--threads N] [--r R --target_modules ... --projection_prng_key K (with --adapter)]\n"
           "Mean loss and perplexity exp(loss) over the target tokens of the token shards GLOB (masked targets,\n"
           "such as prompts and padding, take no loss), for the model alone, with a PEFT adapter (VeRA, LoRA,\n"
           "VB-LoRA: a directory gives its settings; adapter keys given must match its adapter_config.json), or with the vectors of a\n"
           "training checkpoint (HDF5; its stored r, target_modules and key are used, and --model must hold the\n"
           "base model it was trained on). --max_seqs N reads the first N sequences (0 = all). Runs on N ranks\n"
           "with mpirun -np N: the result does not depend on N or on batch_size. --json prints one JSON object.\n");
}

/* --checkpoint: the vectors and the VeRA options of a training checkpoint */
typedef struct {
    vd_checkpoint ck;
    int loaded;
} eval_ckpt;

static void eval_apply_checkpoint(eval_ckpt *e, const char *path, vd_config *cfg, int model_given) {
    char err[1024];
    if (vd_checkpoint_read(path, &e->ck, err, sizeof(err)) != 0) vd_die("--checkpoint: %s", err);
    e->loaded = 1;
    vd_config stored;
    vd_cli_config_from_text(&stored, e->ck.config_text, path);
    vd_adapter_config_copy(cfg, &stored);
    if (!model_given) snprintf(cfg->model, sizeof(cfg->model), "%s", stored.model);
}

static int64_t eval_parse_max_seqs(const char *s) {
    if (!s) return 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < 0) vd_die("--max_seqs: '%s' is not a non-negative integer (0 = every sequence)", s);
    return (int64_t)v;
}

/* the config keys eval reads; train_data is --data */
static const char *const eval_keys[] = {"model", "r", "d_initial", "projection_prng_key", "target_modules",
                                        "batch_size", "seq_len", "pack", "threads", VD_ADAPTER_SHAPE_KEYS, NULL};
static const vd_config_uses eval_uses = {"eval", eval_keys, "--data, --adapter, --checkpoint, --max_seqs, --json"};

int vd_eval_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            eval_usage();
            return 0;
        }
    vd_comm comm;
    vd_comm_init(&comm, &argc, &argv);
    const char *data = vd_cli_take_option(&argc, argv, "data");
    const char *adapter = vd_cli_take_option(&argc, argv, "adapter");
    const char *ckpath = vd_cli_take_option(&argc, argv, "checkpoint");
    int64_t max_seqs = eval_parse_max_seqs(vd_cli_take_option(&argc, argv, "max_seqs"));
    int json = vd_cli_take_flag(&argc, argv, "json", "eval") == 1;
    if (!data) vd_die("eval: --data GLOB is required (token shards; see vera-dist eval --help)");
    if (adapter && ckpath) vd_die("eval: --adapter and --checkpoint are exclusive (one source of the vectors)");
    vd_config cfg;
    vd_config_defaults(&cfg);
    vd_config_parse_for(&cfg, argc, argv, 1, &eval_uses);
    int model_given = cfg.model[0] != 0;
    eval_ckpt ek;
    memset(&ek, 0, sizeof(ek));
    if (ckpath) eval_apply_checkpoint(&ek, ckpath, &cfg, model_given);
    if (!cfg.model[0]) vd_die("eval: --model PATH is required");
    snprintf(cfg.train_data, sizeof(cfg.train_data), "%s", data);
    vd_config_validate(&cfg);
    const vd_backend *be = vd_backend_cpu_init(&comm);
    vd_backend_cpu_set_threads(vd_train_pick_threads(&cfg, &comm));

    vd_model_config mc;
    float *host_params = vd_model_load(cfg.model, &mc);
    if (vd_config_fit_default(&cfg, "seq_len", mc.max_seq_len, "the model's context (max positions)") < 0)
        vd_die("seq_len: %d is larger than the model's context (max positions %d, model %s)", (int)cfg.seq_len,
               (int)mc.max_seq_len, cfg.model);
    uint64_t fingerprint = vd_model_fingerprint(&mc, host_params);
    int with_adapter = adapter || ckpath;
    /* a PEFT directory with no adapter keys given names its own targets (vd_cli_adapter_options) */
    uint32_t mask = with_adapter && !vd_cli_adapter_from_dir(&cfg, adapter)
                        ? vd_model_targets_or_die(vd_model_family_of(mc.arch), cfg.target_modules,
                                                  sizeof(cfg.target_modules), cfg.model)
                        : 0;
    vd_dataset ds;
    vd_dataset_open(&ds, data, cfg.seq_len, mc.vocab_size, cfg.pack, "data");
    vd_dataset_validate_part(&ds, comm.rank, comm.world);
    uint64_t n = ds.n_seqs;
    if (max_seqs > 0 && (uint64_t)max_seqs < n) n = (uint64_t)max_seqs;
    int32_t B = cfg.batch_size, T = cfg.seq_len;

    vd_model model;
    vd_model_init(&model, be, &mc, host_params);
    free(host_params);
    vd_model_alloc_acts(&model, B, T);
    vd_adapter ad;
    memset(&ad, 0, sizeof(ad));
    if (with_adapter) {
        vd_adapter_options ao;
        vd_cli_adapter_options(&ao, &cfg, mask, &model, adapter);
        vd_adapter_init(&ad, be, &model, &ao);
        vd_model_set_adapter(&model, &ad);
        vd_adapter_alloc_acts(&ad, B * T, (int64_t)B * T, VD_WEFF_AUTO);
        if (adapter) {
            vd_cli_load_adapter(&ad, adapter);
        } else {
            vd_cli_check_checkpoint_model("eval", ckpath, &ek.ck, fingerprint, cfg.model);
            vd_cli_check_checkpoint_adapter("eval", ckpath, &ek.ck, &ad);
            be->to_device(ad.params, ek.ck.params, sizeof(float) * ek.ck.n_trainable);
            vd_adapter_refresh(&ad);
        }
    }

    int32_t *inputs = mallocCheck(sizeof(int32_t) * (size_t)B * T), *targets = mallocCheck(sizeof(int32_t) * (size_t)B * T);
    int32_t *pos = mallocCheck(sizeof(int32_t) * (size_t)B * T);
    double t0 = vd_time_s();
    double sums[2] = {0.0, 0.0}; /* loss sum, target tokens */
    vd_fwd_ctx ctx = {0, 0, 0};
    uint64_t chunks = (n + (uint64_t)B - 1) / (uint64_t)B;
    for (uint64_t c = (uint64_t)comm.rank; c < chunks; c += (uint64_t)comm.world) {
        uint64_t first = c * (uint64_t)B;
        int32_t nb = (int32_t)(n - first < (uint64_t)B ? n - first : (uint64_t)B);
        int32_t nt = 0;
        for (int32_t b = 0; b < nb; b++)
            vd_dataset_get(&ds, first + (uint64_t)b, inputs + (size_t)b * T, targets + (size_t)b * T,
                           pos + (size_t)b * T);
        for (int32_t i = 0; i < nb * T; i++) nt += targets[i] != VD_TARGET_NONE;
        if (!nt) continue; /* nothing to score: skip the forward */
        sums[0] += vd_model_forward(&model, inputs, targets, pos, nb, &ctx);
        sums[1] += nt;
    }
    vd_comm_allreduce_sum_f64(&comm, sums, 2);
    double seconds = vd_time_s() - t0;
    if (sums[1] == 0.0)
        vd_die("--data: %s: the %llu sequences read hold no target token (every target is masked; HINT: check the "
               "shards' loss masks or --max_seqs)", data, (unsigned long long)n);
    double loss = sums[0] / sums[1], ppl = exp(loss);
    uint64_t tokens = n * (uint64_t)T;
    if (comm.rank == 0) {
        const char *what = ckpath ? ckpath : adapter ? adapter : "none";
        if (json) {
            cJSON *o = cJSON_CreateObject();
            char num[64];
            snprintf(num, sizeof(num), "%.17g", loss); /* every digit: comparisons across runs are exact */
            cJSON_AddItemToObject(o, "loss", cJSON_CreateRaw(num));
            snprintf(num, sizeof(num), "%.17g", ppl);
            cJSON_AddItemToObject(o, "perplexity", cJSON_CreateRaw(num));
            cJSON_AddNumberToObject(o, "targets", sums[1]);
            cJSON_AddNumberToObject(o, "tokens", (double)tokens);
            cJSON_AddNumberToObject(o, "sequences", (double)n);
            cJSON_AddNumberToObject(o, "seq_len", T);
            cJSON_AddNumberToObject(o, "pack", cfg.pack);
            cJSON_AddNumberToObject(o, "ranks", comm.world);
            cJSON_AddStringToObject(o, "model", cfg.model);
            cJSON_AddStringToObject(o, "data", data);
            cJSON_AddStringToObject(o, "adapter", what);
            cJSON_AddNumberToObject(o, "seconds", seconds);
            char *text = cJSON_PrintUnformatted(o);
            if (!text) vd_die("out of memory writing the JSON result");
            printf("%s\n", text);
            free(text);
            cJSON_Delete(o);
        } else {
            printf("eval: %s (adapter %s) on %s: %llu sequences of %d tokens (pack %d), %llu tokens, %.0f targets, "
                   "%d rank(s)\n", cfg.model, what, data, (unsigned long long)n, (int)T, (int)cfg.pack,
                   (unsigned long long)tokens, sums[1], (int)comm.world);
            printf("eval: mean loss %.6f, perplexity %.4f (%.1f s, %.0f tok/s)\n", loss, ppl, seconds,
                   seconds > 0 ? (double)tokens / seconds : 0.0);
        }
        fflush(stdout);
    }
    free(inputs);
    free(targets);
    free(pos);
    if (with_adapter) vd_adapter_free(&ad);
    vd_model_free(&model);
    vd_dataset_close(&ds);
    if (ek.loaded) vd_checkpoint_free(&ek.ck);
    vd_comm_barrier(&comm);
    vd_comm_free(&comm);
    return 0;
}
