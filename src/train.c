/* train.c: the training driver. Owns the run: configuration, data, model, adapter, optimizer,
 * the one all-reduce per optimizer step, logging and metrics. Only rank 0 writes files. */
#define _GNU_SOURCE
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/cli.h"
#include "vera/comm.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/data.h"
#include "vera/model.h"
#include "vera/optimizer.h"
#include "vera/prng.h"
#include "vera/safetensors.h"

/* This rank's share of the node's cores: the cores it is bound to when the launcher binds
 * ranks, otherwise the node's cores divided by the ranks MPI says share the node. */
static int32_t train_pick_threads(const vd_config *cfg, const vd_comm *comm) {
    if (cfg->threads > 0) return cfg->threads;
    cpu_set_t set;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1) online = 1;
    int bound = (int)online;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) bound = CPU_COUNT(&set);
    int32_t n = bound < online ? bound : (int32_t)(online / comm->local_size);
    return n < 1 ? 1 : n;
}

/* Every rank must run the same configuration: compare hashes, and name the first key that
 * differs if they do not match. */
static void train_check_config(const vd_config *cfg, const vd_comm *comm) {
    static char mine[1 << 16], root[1 << 16];
    size_t len = vd_config_serialize(cfg, mine, sizeof(mine));
    uint64_t h = vd_hash64(mine, len, 0);
    uint64_t *all = mallocCheck(sizeof(uint64_t) * (size_t)comm->world);
    vd_comm_allgather_u64(comm, h, all);
    int differs = 0;
    for (int32_t i = 0; i < comm->world; i++) differs |= all[i] != all[0];
    free(all);
    if (!differs) return;
    memcpy(root, mine, sizeof(root));
    vd_comm_bcast(comm, root, sizeof(root), 0);
    if (h != vd_hash64(root, strlen(root), 0)) {
        char key[128] = "?";
        vd_config_first_difference(root, mine, key, sizeof(key));
        vd_die("ranks started with different configurations: key '%s' differs from rank 0 "
               "(HINT: every rank must get the same --config file and options)", key);
    }
    vd_comm_barrier(comm); /* ranks that match wait here until the one that differs aborts the job */
    vd_die("ranks started with different configurations");
}

static void train_check_projections(const vd_vera *v, const vd_comm *comm) {
    uint64_t *all = mallocCheck(sizeof(uint64_t) * (size_t)comm->world);
    vd_comm_allgather_u64(comm, v->proj_checksum, all);
    for (int32_t i = 0; i < comm->world; i++)
        if (all[i] != all[0])
            vd_die("projection checksum differs between rank 0 (%016llx) and rank %d (%016llx): the ranks "
                   "generated different A/B from projection_prng_key",
                   (unsigned long long)all[0], (int)i, (unsigned long long)all[i]);
    free(all);
}

/* Adapter tensors under PEFT's names, so the final file reads like a PEFT adapter. */
static void train_save_adapter(const char *path, const vd_vera *v, const vd_config *cfg) {
    const vd_backend *be = v->be;
    float *hp = mallocCheck(sizeof(float) * v->n_trainable);
    be->to_host(hp, v->params, sizeof(float) * v->n_trainable);
    vd_st_entry *e = callocCheck((size_t)v->n_modules * 2, sizeof(vd_st_entry));
    char (*names)[160] = callocCheck((size_t)v->n_modules * 2, 160);
    for (int32_t i = 0; i < v->n_modules; i++) {
        const vd_vera_module *md = &v->modules[i];
        snprintf(names[2 * i], 160, "base_model.model.%s.vera_lambda_b", md->name);
        snprintf(names[2 * i + 1], 160, "base_model.model.%s.vera_lambda_d", md->name);
        e[2 * i] = (vd_st_entry){names[2 * i], hp + md->off_b, 1, {md->out}};
        e[2 * i + 1] = (vd_st_entry){names[2 * i + 1], hp + md->off_d, 1, {v->opt.r}};
    }
    char r[32], key[32];
    snprintf(r, sizeof(r), "%d", (int)v->opt.r);
    snprintf(key, sizeof(key), "%llu", (unsigned long long)v->opt.key);
    const char *meta[] = {"format", "pt", "r", r, "projection_prng_key", key, "target_modules", cfg->target_modules};
    vd_safetensors_write_f32(path, e, v->n_modules * 2, meta, 4);
    free(names);
    free(e);
    free(hp);
}

typedef struct {
    const vd_comm *comm;
    vd_gpt2 *model;
    const vd_dataset *val;
    int32_t *inputs, *targets;  /* host (B*T) */
    int32_t B, T, eval_seqs;
} train_eval;

/* Mean loss over the first eval_seqs validation sequences, split across ranks in chunks of
 * B; the set of sequences does not depend on the world size. */
static double train_evaluate(train_eval *ev) {
    uint64_t n = ev->val->n_seqs < (uint64_t)ev->eval_seqs ? ev->val->n_seqs : (uint64_t)ev->eval_seqs;
    double sums[2] = {0.0, 0.0};
    vd_fwd_ctx ctx = {0, 0, 0};
    uint64_t chunks = (n + (uint64_t)ev->B - 1) / (uint64_t)ev->B;
    for (uint64_t c = (uint64_t)ev->comm->rank; c < chunks; c += (uint64_t)ev->comm->world) {
        uint64_t first = c * (uint64_t)ev->B;
        int32_t nb = (int32_t)((n - first) < (uint64_t)ev->B ? (n - first) : (uint64_t)ev->B);
        for (int32_t b = 0; b < nb; b++)
            vd_dataset_get(ev->val, first + (uint64_t)b, ev->inputs + (size_t)b * ev->T, ev->targets + (size_t)b * ev->T);
        sums[0] += vd_gpt2_forward(ev->model, ev->inputs, ev->targets, nb, &ctx);
        sums[1] += (double)nb * ev->T;
    }
    vd_comm_allreduce_sum_f64(ev->comm, sums, 2);
    return sums[0] / sums[1];
}

static void train_format_eta(double seconds, char *out, size_t cap) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    else snprintf(out, cap, "%ld:%02ld", s / 60, s % 60);
}

int vd_train_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            vd_config_print_help(stdout);
            return 0;
        }
    }
    vd_comm comm;
    vd_comm_init(&comm, &argc, &argv);
    vd_config cfg;
    vd_config_defaults(&cfg);
    vd_config_parse(&cfg, argc, argv, 1);
    vd_config_validate(&cfg);
    train_check_config(&cfg, &comm);

    if (!strcmp(cfg.device, "cuda"))
        vd_die("device: 'cuda' requested but this build has no CUDA backend (HINT: use --device cpu or auto)");
    const vd_backend *be = vd_backend_cpu();
    int32_t threads = train_pick_threads(&cfg, &comm);
    vd_backend_cpu_set_threads(threads);

    /* ---- outputs: refuse to overwrite before anything is loaded or written ---- */
    char metrics_path[VD_PATH_MAX + 32], adapter_path[VD_PATH_MAX + 32];
    snprintf(metrics_path, sizeof(metrics_path), "%s/metrics.jsonl", cfg.out_dir);
    snprintf(adapter_path, sizeof(adapter_path), "%s/adapter_final.safetensors", cfg.out_dir);
    if (comm.rank == 0 && !cfg.overwrite && (vd_path_exists(metrics_path) || vd_path_exists(adapter_path)))
        vd_die("out_dir: %s already holds a run (metrics.jsonl / adapter_final.safetensors) "
               "(HINT: choose another out_dir or pass --overwrite 1)", cfg.out_dir);

    /* ---- model and data ---- */
    vd_gpt2_config mc;
    float *host_params = vd_gpt2_load_hf(cfg.model, &mc);
    if (cfg.seq_len > mc.max_seq_len)
        vd_die("seq_len: %d is larger than the model's context n_positions = %d (%s/config.json)",
               (int)cfg.seq_len, (int)mc.max_seq_len, cfg.model);
    vd_dataset train, val;
    memset(&val, 0, sizeof(val));
    vd_dataset_open(&train, cfg.train_data, cfg.seq_len, mc.vocab_size, "train_data");
    int has_val = cfg.val_data[0] != 0;
    if (has_val) vd_dataset_open(&val, cfg.val_data, cfg.seq_len, mc.vocab_size, "val_data");

    int32_t B = cfg.batch_size, T = cfg.seq_len, world = comm.world, rank = comm.rank;
    uint64_t S = (uint64_t)B * (uint64_t)cfg.grad_accum * (uint64_t)world; /* sequences per step */
    vd_gpt2 model;
    vd_gpt2_init(&model, be, &mc, host_params);
    free(host_params);
    vd_gpt2_alloc_acts(&model, B, T);
    vd_vera vera;
    vd_vera_options vo = {cfg.r, cfg.d_initial, cfg.projection_prng_key, cfg.target_mask, cfg.vera_dropout};
    vd_vera_init(&vera, be, &model, &vo);
    vd_weff_policy policy = VD_WEFF_AUTO;
    const char *weff_env = getenv("VERA_WEFF"); /* debugging / benchmarking knob */
    if (weff_env && !strcmp(weff_env, "always")) policy = VD_WEFF_ALWAYS;
    if (weff_env && !strcmp(weff_env, "never")) policy = VD_WEFF_NEVER;
    vd_vera_alloc_acts(&vera, B * T, (int64_t)B * T * cfg.grad_accum, policy);
    train_check_projections(&vera, &comm);
    vd_adamw_options ao = {cfg.lr, cfg.min_lr_ratio, cfg.warmup_steps, cfg.max_steps, cfg.beta1, cfg.beta2,
                           cfg.adam_eps, cfg.weight_decay, cfg.grad_clip};
    vd_adamw opt;
    vd_adamw_init(&opt, be, vera.n_trainable, &ao);

    size_t allreduce_bytes = sizeof(float) * vera.n_reduce;
    int32_t n_weff = 0;
    for (int32_t i = 0; i < vera.n_modules; i++) n_weff += vera.modules[i].weff != NULL;
    vd_log("vera-dist: %d rank(s), %d thread(s) per rank, backend %s\n", (int)world, (int)threads, be->name);
    vd_log("model: %s: %d layers, %d heads, %d dim, vocab %d, context %d, %zu frozen parameters\n", cfg.model,
           (int)mc.n_layer, (int)mc.n_head, (int)mc.channels, (int)mc.vocab_size, (int)mc.max_seq_len,
           model.num_params);
    vd_log("vera: r=%d, %d adapted layers (%s), A %dx%d, B %dx%d, projection checksum %016llx\n", (int)cfg.r,
           (int)vera.n_modules, cfg.target_modules, (int)cfg.r, (int)vera.max_in, (int)vera.max_out, (int)cfg.r,
           (unsigned long long)vera.proj_checksum);
    vd_log("trainable parameters: %zu (sum over adapted layers of out + r)\n", vera.n_trainable);
    vd_log("all-reduce per optimizer step: %zu floats = %zu bytes (trainable gradients + loss)\n", vera.n_reduce,
           allreduce_bytes);
    vd_log("input gradient: merged W0+dW on %d of %d adapted layers, factored on the rest\n", (int)n_weff,
           (int)vera.n_modules);
    vd_log("data: %s: %llu sequences of %d tokens per epoch; global batch %llu sequences = %llu tokens\n",
           cfg.train_data, (unsigned long long)train.n_seqs, (int)T, (unsigned long long)S,
           (unsigned long long)(S * (uint64_t)T));

    FILE *metrics = NULL;
    if (rank == 0) {
        vd_mkdir_p(cfg.out_dir);
        metrics = fopenCheck(metrics_path, "w");
    }

    int32_t *inputs = mallocCheck(sizeof(int32_t) * (size_t)B * T);
    int32_t *targets = mallocCheck(sizeof(int32_t) * (size_t)B * T);
    train_eval ev = {&comm, &model, has_val ? &val : NULL, inputs, targets, B, T, cfg.eval_seqs};
    float dloss = 1.0f / (float)(S * (uint64_t)T);
    uint64_t epoch = 0;
    double t_start = vd_time_s();
    float last_loss = 0.0f;
    for (int32_t step = 0; step < cfg.max_steps; step++) {
        double t0 = vd_time_s();
        uint64_t e_last = vd_dataset_epoch(&train, (uint64_t)step * S + S - 1);
        if (e_last > epoch) {
            epoch = e_last;
            vd_log("epoch %llu starts at step %d\n", (unsigned long long)epoch, (int)step + 1);
        }
        vd_vera_zero_grads(&vera);
        double loss_sum = 0.0;
        for (int32_t micro = 0; micro < cfg.grad_accum; micro++) {
            /* rank k's part of the global batch: see docs/data-format.md, "Global batch order" */
            uint64_t first = (uint64_t)step * S + ((uint64_t)micro * world + rank) * (uint64_t)B;
            for (int32_t b = 0; b < B; b++)
                vd_dataset_get(&train, first + (uint64_t)b, inputs + (size_t)b * T, targets + (size_t)b * T);
            vd_fwd_ctx ctx = {1, vd_mix64(cfg.seed ^ vd_mix64((uint64_t)step + 1)), first * (uint64_t)T};
            loss_sum += vd_gpt2_forward(&model, inputs, targets, B, &ctx);
            vd_gpt2_backward(&model, dloss, &ctx);
        }
        float loss_slot = (float)loss_sum;
        be->to_device(vera.grads + vera.n_trainable, &loss_slot, sizeof(float));
        /* the one collective of the step: every gradient and the loss, one buffer */
        vd_comm_allreduce_sum_f32(&comm, vera.grads, vera.n_reduce);
        be->to_host(&loss_slot, vera.grads + vera.n_trainable, sizeof(float));
        float loss = loss_slot / (float)(S * (uint64_t)T);
        float lr = vd_lr_schedule(&ao, step);
        float norm = vd_adamw_step(&opt, vera.params, vera.grads, lr);
        vd_vera_refresh(&vera);
        double ms = 1e3 * (vd_time_s() - t0);
        if (!isfinite(loss)) vd_die("loss is %f at step %d (HINT: lower lr)", (double)loss, (int)step + 1);
        last_loss = loss;

        double val_loss = NAN;
        int do_eval = has_val && ((cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0) || step + 1 == cfg.max_steps);
        if (do_eval) val_loss = train_evaluate(&ev);
        uint64_t tokens = (uint64_t)(step + 1) * S * (uint64_t)T;
        if (rank == 0) {
            double elapsed = vd_time_s() - t_start;
            double tok_s = (double)(S * (uint64_t)T) / (ms / 1e3);
            if ((step + 1) % cfg.log_every == 0 || step == 0 || step + 1 == cfg.max_steps || do_eval) {
                char eta[32];
                train_format_eta(elapsed / (step + 1) * (cfg.max_steps - step - 1), eta, sizeof(eta));
                printf("step %*d/%d | loss %.4f | lr %.2e | grad norm %.4f | %.0f tok/s | %.1f ms | ETA %s",
                       (int)snprintf(NULL, 0, "%d", (int)cfg.max_steps), (int)step + 1, (int)cfg.max_steps,
                       (double)loss, (double)lr, (double)norm, tok_s, ms, eta);
                if (do_eval) printf(" | val loss %.4f", val_loss);
                printf("\n");
                fflush(stdout);
            }
            fprintf(metrics, "{\"step\": %d, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens\": %llu, "
                             "\"ms\": %.3f, \"allreduce_bytes\": %zu, \"epoch\": %llu",
                    (int)step + 1, (double)loss, (double)lr, (double)norm, (unsigned long long)tokens, ms,
                    allreduce_bytes, (unsigned long long)epoch);
            if (do_eval) fprintf(metrics, ", \"val_loss\": %.9g", val_loss);
            fprintf(metrics, "}\n");
            if (fflush(metrics) != 0) vd_die("%s: write failed", metrics_path);
        }
    }

    /* every rank must hold the same vectors: one hash per rank, compared */
    float *hp = mallocCheck(sizeof(float) * vera.n_trainable);
    be->to_host(hp, vera.params, sizeof(float) * vera.n_trainable);
    uint64_t h = vd_hash64(hp, sizeof(float) * vera.n_trainable, 0);
    free(hp);
    uint64_t *all = mallocCheck(sizeof(uint64_t) * (size_t)world);
    vd_comm_allgather_u64(&comm, h, all);
    for (int32_t i = 0; i < world; i++)
        if (all[i] != all[0]) vd_die("trainable vectors diverged: rank %d differs from rank 0", (int)i);
    free(all);
    if (rank == 0) {
        fcloseCheck(metrics, metrics_path);
        train_save_adapter(adapter_path, &vera, &cfg);
        vd_log("done: %d steps, final loss %.4f, %.1f s; trainable vectors hash %016llx (identical on all %d "
               "ranks); wrote %s\n",
               (int)cfg.max_steps, (double)last_loss, vd_time_s() - t_start, (unsigned long long)h, (int)world,
               adapter_path);
    }
    free(inputs);
    free(targets);
    vd_adamw_free(&opt);
    vd_vera_free(&vera);
    vd_gpt2_free(&model);
    vd_dataset_close(&train);
    if (has_val) vd_dataset_close(&val);
    vd_comm_free(&comm);
    return 0;
}
