/* train.c: the training driver. Owns the run: configuration, data, model, adapter, optimizer,
 * the one all-reduce per optimizer step, checkpoints, resume, preemption, logging and metrics.
 * Only rank 0 writes files. */
#define _GNU_SOURCE
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#ifdef VERA_HAVE_CUDA
#include "vera/backend_cuda.h"
#endif
#include "vera/checkpoint.h"
#include "vera/cli.h"
#include "vera/comm.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/data.h"
#include "vera/memory.h"
#include "vera/model.h"
#include "vera/optimizer.h"
#include "vera/peft.h"
#include "vera/prng.h"
#include "vera/safetensors.h"

/* ---- signals: SIGTERM / SIGUSR1 ask for a checkpoint and a clean stop ---- */
static volatile sig_atomic_t g_stop_signal = 0;

static void train_on_signal(int sig) {
    if (g_stop_signal) {
        /* second signal: leave now; checkpoint writes are atomic, so nothing is corrupted */
        static const char msg[] = "vera-dist: second signal received: exiting immediately\n";
        ssize_t ignored = write(2, msg, sizeof(msg) - 1);
        (void)ignored;
        _exit(128 + sig);
    }
    g_stop_signal = sig;
}

static void train_install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = train_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGUSR1, &sa, NULL) != 0)
        vd_die("cannot install signal handlers");
}

/* vd_train_pick_threads (cli.h): train and eval pick a rank's thread count here, one rule. */
int32_t vd_train_pick_threads(const vd_config *cfg, const vd_comm *comm) {
    if (cfg->threads > 0) return cfg->threads;
    cpu_set_t set;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1) online = 1;
    int bound = (int)online;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) bound = CPU_COUNT(&set);
    int32_t n = bound < online ? bound : (int32_t)(online / (comm->local_size < 1 ? 1 : comm->local_size));
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

/* The backend for `device` (docs/gpu.md): cpu; cuda (or a one-line error on every rank); auto =
 * cuda when a device is usable, else cpu, saying which and why. The only code that knows
 * whether this build has the CUDA backend. vd_backend_cuda_init is collective and answers the
 * same on every rank, so all ranks take the same branch. Then `precision`: tf32 is a cuBLAS
 * mode (refused on a backend without it); bf16 is how the model stores its weights
 * (train_weight_dtype), the same on every backend. */
static const vd_backend *train_pick_backend(const vd_config *cfg, const vd_comm *comm) {
    const char *dev = cfg->device;
    const vd_backend *be = NULL;
#ifdef VERA_HAVE_CUDA
    if (strcmp(dev, "cpu") != 0) {
        char why[768] = "";
        be = vd_backend_cuda_init(comm, why, sizeof(why));
        /* "no CUDA device (cudaGetDeviceCount: ...)" reads as "... is available (cudaGetDeviceCount: ...)" */
        const char *reason = why;
        size_t len = strlen(why);
        if (!strncmp(why, "no CUDA device (", 16) && len > 17 && why[len - 1] == ')') {
            why[len - 1] = 0;
            reason = why + 16;
        }
        if (!be && !strcmp(dev, "cuda"))
            vd_die("device: cuda requested but no CUDA device is available (%s) (HINT: --device cpu or auto)", reason);
        if (be && !strcmp(dev, "auto")) vd_log("device: auto -> cuda\n");
        if (!be) vd_log("device: auto -> cpu (no usable CUDA device: %s)\n", reason);
    }
#else
    if (!strcmp(dev, "cuda"))
        vd_die("device: 'cuda' requested but this build has no CUDA backend (HINT: use --device cpu or auto)");
    if (!strcmp(dev, "auto")) vd_log("device: auto -> cpu (this build has no CUDA backend)\n");
#endif
    if (!be) be = vd_backend_cpu_init(comm);
    if (!strcmp(cfg->precision, "tf32")) {
        if (!be->set_tf32)
            vd_die("precision: tf32 needs the cuda backend; the %s backend has no TF32 arithmetic (HINT: --precision "
                   "fp32 or bf16)", be->name);
        be->set_tf32(1);
    }
    return be;
}

/* Everything one run holds; functions below take it whole. */
typedef struct {
    vd_config cfg;
    vd_comm comm;
    const vd_backend *be;
    int32_t threads;
    vd_model_config mc;
    uint64_t model_fingerprint;
    vd_model model;
    uint32_t target_mask;      /* kinds of the family that get an adapter */
    vd_adapter ad;             /* the adapter (any method: the driver never asks which) */
    vd_adamw opt;
    vd_adamw_options ao;
    vd_dataset train, val;
    int has_val;
    int32_t B, T;
    uint64_t S;                /* sequences per optimizer step, global */
    int32_t *inputs, *targets, *pos; /* host (B*T) */
    char metrics_path[VD_PATH_MAX + 32], adapter_path[VD_PATH_MAX + 32], status_path[VD_PATH_MAX + 32];
    char config_text[1 << 16];
    FILE *metrics;
    int32_t step;              /* optimizer steps completed */
    float last_loss;
} train_run;

static void train_write_status(const train_run *run, const char *state) {
    if (run->comm.rank != 0) return;
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "{\"state\": \"%s\", \"step\": %d, \"max_steps\": %d}\n", state,
                     (int)run->step, (int)run->cfg.max_steps);
    vd_write_file_atomic(run->status_path, buf, (size_t)n);
}

/* Adapter tensors under PEFT's names, so the final file reads like a PEFT adapter. */
static void train_save_adapter(const char *path, const vd_adapter *a, const vd_config *cfg) {
    float *hp = mallocCheck(sizeof(float) * a->n_trainable);
    a->be->to_host(hp, a->params, sizeof(float) * a->n_trainable);
    char r[32], key[32];
    snprintf(r, sizeof(r), "%d", (int)a->opt.r);
    snprintf(key, sizeof(key), "%llu", (unsigned long long)a->opt.key);
    const char *meta[] = {"format", "pt", "r", r, "projection_prng_key", key, "target_modules", cfg->target_modules,
                          "adapter_type", cfg->adapter_type};
    vd_peft_write_safetensors(path, a, hp, 0, meta, 5);
    free(hp);
}

/* ---- checkpoints ---- */

static void train_write_checkpoint(train_run *run) {
    if (run->comm.rank != 0) return;
    const vd_backend *be = run->be;
    const vd_adapter *a = &run->ad;
    vd_checkpoint ck;
    memset(&ck, 0, sizeof(ck));
    ck.config_text = run->config_text;
    ck.config_hash = vd_hash64(run->config_text, strlen(run->config_text), 0);
    ck.model = run->mc;
    ck.model_fingerprint = run->model_fingerprint;
    vd_checkpoint_set_adapter(&ck, a, run->cfg.target_modules, run->cfg.save_projection);
    ck.step = run->step;
    ck.tokens_seen = (uint64_t)run->step * run->S * (uint64_t)run->T;
    ck.next_sequence = (uint64_t)run->step * run->S;
    ck.global_batch_seqs = run->S;
    ck.world_size = run->comm.world;
    ck.dropout_seed = run->cfg.seed;
    ck.adam_t = run->opt.t;
    ck.last_loss = run->last_loss;
    size_t bytes = sizeof(float) * a->n_trainable;
    ck.params = mallocCheck(bytes);
    ck.exp_avg = mallocCheck(bytes);
    ck.exp_avg_sq = mallocCheck(bytes);
    be->to_host(ck.params, a->params, bytes);
    be->to_host(ck.exp_avg, run->opt.m, bytes);
    be->to_host(ck.exp_avg_sq, run->opt.v, bytes);
    char path[VD_PATH_MAX + 64];
    vd_checkpoint_path(run->cfg.out_dir, run->step, path, sizeof(path));
    vd_checkpoint_write(path, &ck, run->cfg.ckpt_delay_ms);
    vd_checkpoint_prune(run->cfg.out_dir, run->cfg.keep_last);
    ck.config_text = NULL; /* borrowed */
    vd_checkpoint_free(&ck);
    vd_log("checkpoint: wrote %s\n", path);
}

/* Refuses a checkpoint whose math differs from this run's, naming the field. */
static void train_check_compatible(const train_run *run, const vd_checkpoint *ck, const char *path) {
    /* walk both canonical texts line by line (same keys, same order); only keys that change
     * the math must match; `model` may name another path when the fingerprint matches */
    const char *pa = ck->config_text, *pb = run->config_text;
    char model_was[1024] = "";
    while (*pa || *pb) {
        size_t la = strcspn(pa, "\n"), lb = strcspn(pb, "\n");
        if (la != lb || memcmp(pa, pb, la) != 0) {
            char lineA[1024], lineB[1024], key[128] = "?";
            snprintf(lineA, sizeof(lineA), "%.*s", (int)la, pa);
            snprintf(lineB, sizeof(lineB), "%.*s", (int)lb, pb);
            vd_config_first_difference(lineA, lineB, key, sizeof(key));
            if (vd_config_key_resume_same_model(key) && la > 0 && lb > 0)
                snprintf(model_was, sizeof(model_was), "%s", lineA);
            else if (la == 0 && !*pa && vd_config_line_is_default(pb, lb))
                ; /* a key added after the checkpoint was written (the last ones), at its default */
            else if (la == 0 && !*pa && !vd_config_key_resume_free(key))
                vd_die("resume: %s was written before the key '%s' existed (so with its default), this run has '%s' "
                       "(this changes the math; HINT: leave %s at its default, or --resume none --overwrite 1 to start "
                       "over)", path, key, lineB, key);
            else if (!vd_config_key_resume_free(key))
                vd_die("resume: %s was written with '%s', this run has '%s' (this changes the math; HINT: use the "
                       "checkpoint's value, or --resume none --overwrite 1 to start over)", path, lineA, lineB);
        }
        pa += la + (pa[la] == '\n');
        pb += lb + (pb[lb] == '\n');
    }
    if (ck->model_fingerprint != run->model_fingerprint) {
        char diff[512];
        if (vd_checkpoint_model_difference(&ck->model, ck->format_version, &run->mc, diff, sizeof(diff)))
            vd_die("resume: %s belongs to a base model of another shape: %s (model %s; HINT: resume with the "
                   "model it was trained on, or --resume none --overwrite 1 to start over)", path, diff, run->cfg.model);
        vd_die("resume: %s belongs to another base model: the same shape but other weights (fingerprint %016llx in "
               "the checkpoint, %016llx for %s; HINT: resume with the model it was trained on, or --resume none "
               "--overwrite 1 to start over)", path, (unsigned long long)ck->model_fingerprint,
               (unsigned long long)run->model_fingerprint, run->cfg.model);
    }
    if (ck->global_batch_seqs != run->S)
        vd_die("resume: %s used a global batch of %llu sequences; this run has batch_size %d x grad_accum %d x %d "
               "ranks = %llu (HINT: keep batch_size * grad_accum * ranks unchanged)", path,
               (unsigned long long)ck->global_batch_seqs, (int)run->B, (int)run->cfg.grad_accum,
               (int)run->comm.world, (unsigned long long)run->S);
    char diff[512];
    if (vd_checkpoint_adapter_difference(ck, &run->ad, diff, sizeof(diff)))
        vd_die("resume: %s belongs to another adapter: %s (HINT: resume with the checkpoint's adapter_type and "
               "settings, or --resume none --overwrite 1 to start over)", path, diff);
    if (model_was[0]) {
        const char *was = strchr(model_was, '=');
        was = was ? was + 1 + (was[1] == ' ') : model_was;
        vd_log("resume: note: the checkpoint was written with model %s; %s holds the same weights (fingerprint "
               "%016llx): continuing\n", was, run->cfg.model, (unsigned long long)run->model_fingerprint);
    }
}

/* Keeps the metrics rows up to `step`: rows a crashed run wrote past its last checkpoint go. */
static void train_trim_metrics(const char *path, int32_t step) {
    FILE *f = fopen(path, "rb");
    if (!f) return;
    size_t cap = 1 << 16, len = 0;
    char *buf = mallocCheck(cap), line[4096];
    while (fgets(line, sizeof(line), f)) {
        int s = -1;
        if (sscanf(line, "{\"step\": %d", &s) != 1 || s > step) continue;
        size_t n = strlen(line);
        if (len + n + 1 > cap) { cap = 2 * (len + n + 1); buf = realloc(buf, cap); if (!buf) vd_die("out of memory"); }
        memcpy(buf + len, line, n);
        len += n;
    }
    fclose(f);
    vd_write_file_atomic(path, buf, len);
    free(buf);
}

static char *train_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = mallocCheck(n);
    memcpy(p, s, n);
    return p;
}

/* "step_00000020.h5 (why); step_00000010.h5 (why)" for the one-line refusal: base names, each
 * reason without the path it repeats, cut to fit; the rest counted. */
static void train_list_refused(char *out, size_t cap, char **paths, char **why, int32_t n) {
    size_t len = 0;
    out[0] = 0;
    for (int32_t i = 0; i < n; i++) {
        const char *slash = strrchr(paths[i], '/');
        const char *base = slash ? slash + 1 : paths[i];
        const char *w = why[i] ? why[i] : "not verified";
        size_t lp = strlen(paths[i]);
        if (!strncmp(w, paths[i], lp) && w[lp] == ':') w += lp + 1 + (w[lp + 1] == ' ');
        char item[400];
        snprintf(item, sizeof(item), "%s%s (%.300s)", i ? "; " : "", base, w);
        size_t li = strlen(item);
        if (len + li + 40 >= cap) {
            snprintf(out + len, cap - len, "; and %d more", (int)(n - i));
            return;
        }
        memcpy(out + len, item, li + 1);
        len += li;
    }
}

/* Moves files that failed verification to out_dir/checkpoints/refused/, saying so. */
static void train_move_refused(const vd_config *cfg, char **paths, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        char moved[VD_PATH_MAX + 400];
        if (vd_checkpoint_move_refused(cfg->out_dir, paths[i], moved, sizeof(moved)) != 0)
            vd_die("%s: cannot move the refused checkpoint to %s/checkpoints/refused/ (%s)", paths[i], cfg->out_dir,
                   strerror(errno));
        vd_log("resume: %s failed verification: moved to %s (kept: delete it yourself once it is not needed)\n",
               paths[i], moved);
    }
}

/* Chooses where the run starts (rank 0 decides, everyone receives the state). */
static void train_resume(train_run *run) {
    const vd_config *cfg = &run->cfg;
    typedef struct { int32_t found, step, adam_t; float last_loss; } resume_head;
    resume_head head = {0, 0, 0, 0.0f};
    size_t n = run->ad.n_trainable;
    float *state = callocCheck(3 * n, sizeof(float)); /* params, exp_avg, exp_avg_sq */
    char chosen[VD_PATH_MAX + 64] = "";
    if (run->comm.rank == 0) {
        char **paths = NULL;
        int32_t np = vd_checkpoint_list(cfg->out_dir, &paths);
        int have_outputs = np > 0 || vd_path_exists(run->metrics_path) || vd_path_exists(run->adapter_path);
        vd_checkpoint ck;
        char err[1024];
        int ok = 0;
        char **bad_why = callocCheck((size_t)(np ? np : 1), sizeof(char *)); /* auto: why each was skipped */
        int32_t nbad = 0;
        if (!strcmp(cfg->resume, "none")) {
            if (have_outputs && !cfg->overwrite)
                vd_die("out_dir: %s already holds a run (%d checkpoint(s), metrics) and resume is 'none' "
                       "(HINT: --resume auto continues it; --overwrite 1 starts over and deletes it)",
                       cfg->out_dir, (int)np);
        } else if (!strcmp(cfg->resume, "auto")) {
            /* newest first; the first valid one wins */
            for (int32_t i = 0; i < np && !ok; i++) {
                if (vd_checkpoint_read(paths[i], &ck, err, sizeof(err)) == 0) {
                    ok = 1;
                    snprintf(chosen, sizeof(chosen), "%s", paths[i]);
                } else {
                    bad_why[nbad++] = train_strdup(err);
                }
            }
            if (ok) {
                for (int32_t i = 0; i < nbad; i++) vd_warn("resume: skipping invalid checkpoint: %s", bad_why[i]);
            } else if (np > 0) {
                /* checkpoint files exist and none is valid: starting over would destroy what a
                 * person may still recover, so stop, naming every file and why; with
                 * --overwrite 1 the block below moves them aside and the run starts over */
                char list[1100];
                train_list_refused(list, sizeof(list), paths, bad_why, np);
                if (!cfg->overwrite)
                    vd_die("resume: %s/checkpoints holds %d checkpoint file(s) and none is valid: %s; nothing was "
                           "changed (HINT: --resume FILE continues from a checkpoint you trust, or --resume none "
                           "--overwrite 1 starts over and moves these files to %s/checkpoints/refused/)",
                           cfg->out_dir, (int)np, list, cfg->out_dir);
                vd_log("resume: no valid checkpoint in %s/checkpoints: starting over (--overwrite 1)\n", cfg->out_dir);
            } else if (vd_path_exists(run->adapter_path) && !cfg->overwrite) {
                /* a finished run's outputs are never replaced without --overwrite */
                vd_die("out_dir: %s holds a finished run but no checkpoint to resume from "
                       "(HINT: --overwrite 1 starts over and deletes it)", cfg->out_dir);
            } else if (have_outputs) {
                /* no checkpoint file at all: a run (a requeued job) stopped before its first one */
                vd_log("resume: no checkpoint in %s (the run stopped before its first): starting over\n", cfg->out_dir);
            }
        } else {
            if (vd_checkpoint_read(cfg->resume, &ck, err, sizeof(err)) != 0) vd_die("resume: %s", err);
            ok = 1;
            snprintf(chosen, sizeof(chosen), "%s", cfg->resume);
        }
        if (ok) {
            train_check_compatible(run, &ck, chosen);
            if (ck.step > cfg->max_steps)
                vd_die("resume: %s is at step %lld, beyond max_steps %d (HINT: raise max_steps)", chosen,
                       (long long)ck.step, (int)cfg->max_steps);
            head = (resume_head){1, (int32_t)ck.step, ck.adam_t, ck.last_loss};
            memcpy(state, ck.params, sizeof(float) * n);
            memcpy(state + n, ck.exp_avg, sizeof(float) * n);
            memcpy(state + 2 * n, ck.exp_avg_sq, sizeof(float) * n);
            vd_checkpoint_free(&ck);
            /* files newer than the chosen one that failed verification would be overwritten
             * or pruned by this run's checkpoints: they go aside instead */
            train_move_refused(cfg, paths, nbad);
        } else if (have_outputs && cfg->overwrite) {
            /* --overwrite 1: the old run goes, so its checkpoints never mix with this one's; a
             * file that fails verification is moved aside, never deleted */
            nbad = 0;
            for (int32_t i = 0; i < np; i++) {
                if (vd_checkpoint_read(paths[i], &ck, err, sizeof(err)) == 0) {
                    vd_checkpoint_free(&ck);
                    if (unlink(paths[i]) != 0) vd_die("%s: cannot delete old checkpoint", paths[i]);
                } else {
                    char *t = paths[nbad];
                    paths[nbad++] = paths[i];
                    paths[i] = t;
                }
            }
            train_move_refused(cfg, paths, nbad);
            unlink(run->adapter_path);
        }
        for (int32_t i = 0; i < np; i++) free(bad_why[i]);
        free(bad_why);
        vd_checkpoint_list_free(paths, np);
    }
    vd_comm_bcast(&run->comm, &head, sizeof(head), 0);
    if (head.found) {
        vd_comm_bcast(&run->comm, state, sizeof(float) * 3 * n, 0);
        const vd_backend *be = run->be;
        be->to_device(run->ad.params, state, sizeof(float) * n);
        be->to_device(run->opt.m, state + n, sizeof(float) * n);
        be->to_device(run->opt.v, state + 2 * n, sizeof(float) * n);
        run->opt.t = head.adam_t;
        run->step = head.step;
        run->last_loss = head.last_loss;
        vd_adapter_refresh(&run->ad);
        vd_log("resume: continuing from %s at step %d\n", run->comm.rank == 0 ? chosen : "checkpoint", (int)head.step);
    } else if (run->cfg.init_adapter[0]) {
        vd_peft_load_dir(&run->ad, run->cfg.init_adapter);
        vd_adapter_check_trainable(&run->ad);
        vd_log("resume: starting fresh from the PEFT adapter %s\n", run->cfg.init_adapter);
    } else {
        vd_log("resume: starting fresh\n");
    }
    free(state);
}

typedef struct {
    const vd_comm *comm;
    vd_model *model;
    const vd_dataset *val;
    int32_t *inputs, *targets, *pos;
    int32_t B, T, eval_seqs;
} train_eval;

/* Validation sequences one evaluation reads: the first min(eval_seqs, n_seqs). */
static uint64_t train_eval_count(const vd_dataset *val, int32_t eval_seqs) {
    return val->n_seqs < (uint64_t)eval_seqs ? val->n_seqs : (uint64_t)eval_seqs;
}

/* Mean loss over the target tokens (not VD_TARGET_NONE) of the first eval_seqs validation
 * sequences, split across ranks in chunks of B: loss sum and target count ride in one f64
 * all-reduce, and the set of sequences does not depend on the world size. */
static double train_evaluate(train_eval *ev) {
    uint64_t n = train_eval_count(ev->val, ev->eval_seqs);
    double sums[2] = {0.0, 0.0};
    vd_fwd_ctx ctx = {0, 0, 0};
    uint64_t chunks = (n + (uint64_t)ev->B - 1) / (uint64_t)ev->B;
    for (uint64_t c = (uint64_t)ev->comm->rank; c < chunks; c += (uint64_t)ev->comm->world) {
        uint64_t first = c * (uint64_t)ev->B;
        int32_t nb = (int32_t)((n - first) < (uint64_t)ev->B ? (n - first) : (uint64_t)ev->B);
        for (int32_t b = 0; b < nb; b++)
            vd_dataset_get(ev->val, first + (uint64_t)b, ev->inputs + (size_t)b * ev->T, ev->targets + (size_t)b * ev->T,
                           ev->pos + (size_t)b * ev->T);
        sums[0] += vd_model_forward(ev->model, ev->inputs, ev->targets, ev->pos, nb, &ctx);
        for (int32_t b = 0; b < nb; b++) sums[1] += (double)vd_dataset_target_count(ev->val, first + (uint64_t)b);
    }
    vd_comm_allreduce_sum_f64(ev->comm, sums, 2);
    return sums[0] / sums[1];
}

static void train_format_eta(double seconds, char *out, size_t cap) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    else snprintf(out, cap, "%ld:%02ld", s / 60, s % 60);
}

/* Target tokens (not VD_TARGET_NONE) of the global batch of `step`: the S sequences step * S ..
 * step * S + S - 1 (docs/data-format.md, "Global batch order"). Every rank counts all of them
 * from the data it maps, so the step's normaliser needs no collective of its own. */
static uint64_t train_step_targets(const train_run *run, int32_t step) {
    uint64_t n = 0, first = (uint64_t)step * run->S;
    for (uint64_t i = 0; i < run->S; i++) n += vd_dataset_target_count(&run->train, first + i);
    return n;
}

/* One optimizer step: grad_accum micro-batches, the one all-reduce, AdamW. The loss is the
 * mean over the n_targets target tokens of the whole global batch: dloss = 1 / n_targets on
 * every token, whatever rank or micro-batch holds it. A global batch without any target
 * (everything masked) has no loss to take a mean of: every rank knows that from the data, so
 * all of them skip forward, backward and the AdamW update (*skipped = 1) and the step is
 * still counted (the next one reads the next sequences); the all-reduce still runs and
 * carries the stop flag. Returns 1 if any rank asked to stop (the request rides in the same
 * all-reduce). */
static int train_step(train_run *run, uint64_t n_targets, float *loss_out, float *lr_out, float *norm_out,
                      int *skipped) {
    const vd_backend *be = run->be;
    vd_adapter *ad = &run->ad;
    int32_t B = run->B, T = run->T, world = run->comm.world, rank = run->comm.rank, step = run->step;
    uint64_t S = run->S;
    vd_adapter_zero_grads(ad);
    double loss_sum = 0.0;
    *skipped = n_targets == 0;
    float dloss = n_targets ? (float)(1.0 / (double)n_targets) : 0.0f;
    for (int32_t micro = 0; micro < run->cfg.grad_accum && !*skipped; micro++) {
        /* rank k's part of the global batch: see docs/data-format.md, "Global batch order" */
        uint64_t first = (uint64_t)step * S + ((uint64_t)micro * world + rank) * (uint64_t)B;
        for (int32_t b = 0; b < B; b++)
            vd_dataset_get(&run->train, first + (uint64_t)b, run->inputs + (size_t)b * T, run->targets + (size_t)b * T,
                           run->pos + (size_t)b * T);
        vd_fwd_ctx ctx = {1, vd_mix64(run->cfg.seed ^ vd_mix64((uint64_t)step + 1)), first * (uint64_t)T, dloss};
        loss_sum += vd_model_forward(&run->model, run->inputs, run->targets, run->pos, B, &ctx);
        vd_model_backward(&run->model, dloss, &ctx);
    }
    float extra[2] = {(float)loss_sum, g_stop_signal ? 1.0f : 0.0f};
    be->to_device(ad->grads + ad->n_trainable, extra, sizeof(extra));
    /* the one collective of the step: every gradient, the loss and the stop flag, one buffer */
    vd_comm_set_step(&run->comm, step);
    be->allreduce_sum(ad->grads, ad->n_reduce);
    be->to_host(extra, ad->grads + ad->n_trainable, sizeof(extra));
    /* each optimizer group at its own peak, on the one schedule; the first group's is logged */
    size_t g_off[VD_ADAPTER_MAX_GROUPS], g_count[VD_ADAPTER_MAX_GROUPS];
    float g_lr[VD_ADAPTER_MAX_GROUPS];
    for (int32_t g = 0; g < ad->n_groups; g++) {
        vd_adamw_options go = run->ao;
        go.lr = ad->groups[g].lr;
        g_off[g] = ad->groups[g].offset;
        g_count[g] = ad->groups[g].count;
        g_lr[g] = vd_lr_schedule(&go, step);
    }
    *lr_out = g_lr[0];
    if (*skipped) {
        *loss_out = NAN;
        *norm_out = 0.0f;
    } else {
        *loss_out = (float)((double)extra[0] / (double)n_targets);
        *norm_out = vd_adamw_step_ranges(&run->opt, ad->params, ad->grads, g_off, g_count, g_lr, ad->n_groups);
        vd_adapter_refresh(ad);
    }
    run->step++;
    return extra[1] > 0.0f;
}

/* The collectives' patience (docs/multinode.md, "Lost and frozen nodes"): collective_timeout
 * seconds of waiting inside one collective, ten times that while the ranks may legitimately be
 * far apart: start-up (each rank loads the model and checks its part of the data; page caches
 * and file systems differ between nodes), the first step, and the end (rank 0 writes the last
 * checkpoint and the adapter while the others wait in the last barrier). */
#define TRAIN_SLOW_PHASE_FACTOR 10.0

static void train_set_patience(train_run *run, int slow_phase) {
    vd_comm_set_timeout(&run->comm, (double)run->cfg.collective_timeout * (slow_phase ? TRAIN_SLOW_PHASE_FACTOR : 1.0));
}

static void train_setup(train_run *run, int argc, char **argv) {
    vd_config *cfg = &run->cfg;
    vd_comm_init(&run->comm, &argc, &argv);
    vd_config_defaults(cfg);
    vd_config_parse(cfg, argc, argv, 1);
    vd_config_validate(cfg);
    train_set_patience(run, 1);
    train_check_config(cfg, &run->comm);
    vd_config_serialize(cfg, run->config_text, sizeof(run->config_text));

    run->be = train_pick_backend(cfg, &run->comm);
    run->threads = vd_train_pick_threads(cfg, &run->comm);
    vd_backend_cpu_set_threads(run->threads);
    snprintf(run->metrics_path, sizeof(run->metrics_path), "%s/metrics.jsonl", cfg->out_dir);
    snprintf(run->adapter_path, sizeof(run->adapter_path), "%s/adapter_final.safetensors", cfg->out_dir);
    snprintf(run->status_path, sizeof(run->status_path), "%s/status.json", cfg->out_dir);

    /* ---- model and data: everything is validated before anything is written ---- */
    float *host_params = vd_model_load(cfg->model, &run->mc);
    /* the default seq_len gives way to a model with a shorter context; a seq_len the user set does not */
    if (vd_config_fit_default(cfg, "seq_len", run->mc.max_seq_len, "the model's context (max positions)") < 0)
        vd_die("seq_len: %d is larger than the model's context (max positions %d, model %s)",
               (int)cfg->seq_len, (int)run->mc.max_seq_len, cfg->model);
    run->model_fingerprint = vd_model_fingerprint(&run->mc, host_params);
    /* target_modules names the family's layers: check them now, and store the canonical form */
    run->target_mask = vd_model_targets_or_die(vd_model_family_of(run->mc.arch), cfg->target_modules,
                                               sizeof(cfg->target_modules), cfg->model);
    vd_config_serialize(cfg, run->config_text, sizeof(run->config_text));
    memset(&run->val, 0, sizeof(run->val));
    vd_dataset_open(&run->train, cfg->train_data, cfg->seq_len, run->mc.vocab_size, cfg->pack, "train_data");
    run->has_val = cfg->val_data[0] != 0;
    if (run->has_val) vd_dataset_open(&run->val, cfg->val_data, cfg->seq_len, run->mc.vocab_size, cfg->pack, "val_data");
    /* every token id checked now, split over the ranks, so bad data never costs existing output */
    vd_dataset_validate_part(&run->train, run->comm.rank, run->comm.world);
    if (run->has_val) vd_dataset_validate_part(&run->val, run->comm.rank, run->comm.world);
    vd_comm_barrier(&run->comm);
    if (run->has_val) { /* a validation loss needs at least one target token to take a mean over */
        uint64_t nv = train_eval_count(&run->val, cfg->eval_seqs), targets = 0;
        for (uint64_t i = 0; i < nv; i++) targets += vd_dataset_target_count(&run->val, i);
        if (!targets)
            vd_die("val_data: %s: the %llu sequences an evaluation reads (eval_seqs %d) hold no target token (every "
                   "target is masked; HINT: check the shards' loss masks, or raise eval_seqs)", cfg->val_data,
                   (unsigned long long)nv, (int)cfg->eval_seqs);
    }

    run->B = cfg->batch_size;
    run->T = cfg->seq_len;
    run->S = (uint64_t)run->B * (uint64_t)cfg->grad_accum * (uint64_t)run->comm.world;
    /* refuse what cannot fit before allocating it (the kernel would kill the rank silently) */
    vd_memory_check_run(&run->mc, run->target_mask, cfg, run->comm.local_size, run->be);
    vd_model_init_typed(&run->model, run->be, &run->mc, host_params, vd_precision_weight_dtype(cfg->precision));
    free(host_params);
    vd_model_set_recompute(&run->model, strcmp(cfg->recompute, "block") == 0);
    vd_model_alloc_acts(&run->model, run->B, run->T);
    vd_adapter_options ao;
    vd_adapter_options_from_config(&ao, cfg, run->target_mask);
    vd_adapter_init(&run->ad, run->be, &run->model, &ao);
    vd_model_set_adapter(&run->model, &run->ad);
    vd_weff_policy policy = VD_WEFF_AUTO;
    const char *weff_env = getenv("VERA_WEFF"); /* debugging / benchmarking knob */
    if (weff_env && !strcmp(weff_env, "always")) policy = VD_WEFF_ALWAYS;
    if (weff_env && !strcmp(weff_env, "never")) policy = VD_WEFF_NEVER;
    vd_adapter_alloc_acts(&run->ad, run->B * run->T, (int64_t)run->B * run->T * cfg->grad_accum, policy);

    /* every rank generated the frozen state (VeRA's A and B) itself: it must agree */
    uint64_t *all = mallocCheck(sizeof(uint64_t) * (size_t)run->comm.world);
    vd_comm_allgather_u64(&run->comm, run->ad.identity_checksum, all);
    for (int32_t i = 0; i < run->comm.world; i++)
        if (all[i] != all[0])
            vd_die("projection checksum differs between rank 0 (%016llx) and rank %d (%016llx): the ranks "
                   "generated different A/B from projection_prng_key",
                   (unsigned long long)all[0], (int)i, (unsigned long long)all[i]);
    free(all);
    run->ao = (vd_adamw_options){cfg->lr, cfg->min_lr_ratio, cfg->warmup_steps, cfg->max_steps, cfg->beta1,
                                 cfg->beta2, cfg->adam_eps, cfg->weight_decay, cfg->grad_clip};
    vd_adamw_init(&run->opt, run->be, run->ad.n_trainable, &run->ao);
    run->inputs = mallocCheck(sizeof(int32_t) * (size_t)run->B * run->T);
    run->targets = mallocCheck(sizeof(int32_t) * (size_t)run->B * run->T);
    run->pos = mallocCheck(sizeof(int32_t) * (size_t)run->B * run->T);
}

static void train_print_summary(const train_run *run) {
    const vd_config *cfg = &run->cfg;
    const vd_adapter *v = &run->ad;
    int32_t n_weff = 0;
    for (int32_t i = 0; i < v->n_modules; i++) n_weff += v->modules[i].weff != NULL;
    vd_log("vera-dist: %d rank(s), %d thread(s) per rank, backend %s, BLAS OpenBLAS kernel %s%s\n",
           (int)run->comm.world, (int)run->threads, run->be->name, vd_blas_kernel_name(), vd_blas_kernel_note());
    vd_log("model: %s: %s (%s), %d layers, %d heads (%d kv), %d dim, vocab %d, context %d, %zu frozen parameters\n",
           cfg->model, run->mc.hf_architecture, run->model.family->name, (int)run->mc.n_layer, (int)run->mc.n_head,
           (int)(run->mc.n_kv_head ? run->mc.n_kv_head : run->mc.n_head), (int)run->mc.channels,
           (int)run->mc.vocab_size, (int)run->mc.max_seq_len, run->model.num_params);
    char method[256] = "";
    if (v->ops->describe) v->ops->describe(v, method, sizeof(method));
    vd_log("%s: r=%d, %d adapted layers (%s)%s\n", v->ops->name, (int)cfg->r, (int)v->n_modules, cfg->target_modules,
           method);
    vd_log("trainable parameters: %zu (%s)\n", v->n_trainable, v->ops->trainable_formula);
    for (int32_t g = 0; v->n_groups > 1 && g < v->n_groups; g++)
        vd_log("optimizer group %s: %zu values, peak lr %g\n", v->groups[g].name, v->groups[g].count,
               (double)v->groups[g].lr);
    vd_log("all-reduce per optimizer step: %zu floats = %zu bytes (trainable gradients + loss + stop flag)\n",
           v->n_reduce, sizeof(float) * v->n_reduce);
    vd_log("input gradient: merged W0+dW on %d of %d adapted layers, factored on the rest\n", (int)n_weff,
           (int)v->n_modules);
    if (!strcmp(cfg->precision, "bf16"))
        vd_log("precision: bf16: %zu frozen linear-layer weights stored bf16 (gemm_ex: bf16 inputs, fp32 accumulation); "
               "embeddings, norms, biases, adapter, gradients, AdamW and the residual stream fp32\n",
               vd_model_linear_params(&run->mc));
    else if (!strcmp(cfg->precision, "tf32"))
        vd_log("precision: tf32: fp32 storage, TF32 GEMMs (cuBLAS CUBLAS_COMPUTE_32F_FAST_TF32)\n");
    vd_log("data: %s: %llu sequences of %d tokens per epoch; global batch %llu sequences = %llu tokens\n",
           cfg->train_data, (unsigned long long)run->train.n_seqs, (int)run->T, (unsigned long long)run->S,
           (unsigned long long)(run->S * (uint64_t)run->T));
}

static void train_free(train_run *run) {
    free(run->inputs);
    free(run->targets);
    free(run->pos);
    vd_adamw_free(&run->opt);
    vd_adapter_free(&run->ad);
    vd_model_free(&run->model);
    vd_dataset_close(&run->train);
    if (run->has_val) vd_dataset_close(&run->val);
}

int vd_train_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            vd_config_print_help(stdout);
            return 0;
        }
    }
    /* before anything else, so a preemption signal during start-up is not fatal: the request
     * rides in the first step's all-reduce */
    train_install_signals();
    static train_run run; /* large (config text); static keeps it off the stack */
    memset(&run, 0, sizeof(run));
    train_setup(&run, argc, argv);
    train_print_summary(&run);
    const vd_config *cfg = &run.cfg;
    int32_t rank = run.comm.rank;
    if (rank == 0) vd_mkdir_p(cfg->out_dir);
    train_resume(&run);
    if (rank == 0) {
        if (run.step > 0) train_trim_metrics(run.metrics_path, run.step);
        run.metrics = fopenCheck(run.metrics_path, run.step > 0 ? "a" : "w");
    }
    train_write_status(&run, "running");

    train_eval ev = {&run.comm, &run.model, run.has_val ? &run.val : NULL, run.inputs, run.targets, run.pos, run.B, run.T,
                     cfg->eval_seqs};
    size_t allreduce_bytes = sizeof(float) * run.ad.n_reduce;
    uint64_t epoch = run.step > 0 ? vd_dataset_epoch(&run.train, (uint64_t)run.step * run.S - 1) : 0;
    int32_t first_step = run.step;
    double t_start = vd_time_s();
    int stopped = 0;
    while (run.step < cfg->max_steps) {
        double t0 = vd_time_s();
        uint64_t e_last = vd_dataset_epoch(&run.train, (uint64_t)run.step * run.S + run.S - 1);
        if (e_last > epoch) {
            epoch = e_last;
            vd_log("epoch %llu starts at step %d\n", (unsigned long long)epoch, (int)run.step + 1);
        }
        float loss, lr, norm;
        int skipped;
        uint64_t n_targets = train_step_targets(&run, run.step);
        stopped = train_step(&run, n_targets, &loss, &lr, &norm, &skipped);
        train_set_patience(&run, 0); /* the first step is done: from now on the ranks move in step */
        double ms = 1e3 * (vd_time_s() - t0);
        int32_t step = run.step; /* 1-based number of the step just taken */
        if (skipped) {
            vd_log("step %d: the global batch (sequences %llu..%llu) has no target token (everything masked): no "
                   "loss, update skipped on every rank\n", (int)step, (unsigned long long)((uint64_t)(step - 1) * run.S),
                   (unsigned long long)((uint64_t)step * run.S - 1));
        } else {
            if (!isfinite(loss)) vd_die("loss is %f at step %d (HINT: lower lr)", (double)loss, (int)step);
            run.last_loss = loss;
        }

        double val_loss = NAN;
        int do_eval = run.has_val && ((cfg->eval_every > 0 && step % cfg->eval_every == 0) || step == cfg->max_steps);
        if (do_eval) val_loss = train_evaluate(&ev);
        if (rank == 0) {
            double elapsed = vd_time_s() - t_start;
            /* tokens processed (inputs, masked or not); the targets that took a loss are logged too */
            double tok_s = (double)(run.S * (uint64_t)run.T) / (ms / 1e3);
            if (!skipped && (step % cfg->log_every == 0 || step == first_step + 1 || step == cfg->max_steps || do_eval)) {
                char eta[32];
                train_format_eta(elapsed / (step - first_step) * (cfg->max_steps - step), eta, sizeof(eta));
                printf("step %*d/%d | loss %.4f | lr %.2e | grad norm %.4f | %.0f tok/s | %.1f ms | ETA %s",
                       (int)snprintf(NULL, 0, "%d", (int)cfg->max_steps), (int)step, (int)cfg->max_steps,
                       (double)loss, (double)lr, (double)norm, tok_s, ms, eta);
                if (n_targets != run.S * (uint64_t)run.T) printf(" | %llu targets", (unsigned long long)n_targets);
                if (do_eval) printf(" | val loss %.4f", val_loss);
                printf("\n");
                fflush(stdout);
            }
            /* a skipped step has no loss: JSON null (and "skipped": true) */
            char loss_text[32];
            if (skipped) snprintf(loss_text, sizeof(loss_text), "null");
            else snprintf(loss_text, sizeof(loss_text), "%.9g", (double)loss);
            fprintf(run.metrics, "{\"step\": %d, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens\": %llu, "
                                 "\"targets\": %llu, \"ms\": %.3f, \"allreduce_bytes\": %zu, \"epoch\": %llu",
                    (int)step, loss_text, (double)lr, (double)norm,
                    (unsigned long long)((uint64_t)step * run.S * (uint64_t)run.T), (unsigned long long)n_targets, ms,
                    allreduce_bytes, (unsigned long long)epoch);
            if (skipped) fprintf(run.metrics, ", \"skipped\": true");
            if (do_eval) fprintf(run.metrics, ", \"val_loss\": %.9g", val_loss);
            fprintf(run.metrics, "}\n");
            if (fflush(run.metrics) != 0) vd_die("%s: write failed", run.metrics_path);
        }
        if (stopped) break;
        if (cfg->ckpt_every > 0 && step % cfg->ckpt_every == 0 && step < cfg->max_steps) {
            train_write_checkpoint(&run);
            train_write_status(&run, "running");
        }
    }

    train_set_patience(&run, 1);
    /* every rank must hold the same vectors: one hash per rank, compared */
    float *hp = mallocCheck(sizeof(float) * run.ad.n_trainable);
    run.be->to_host(hp, run.ad.params, sizeof(float) * run.ad.n_trainable);
    uint64_t h = vd_hash64(hp, sizeof(float) * run.ad.n_trainable, 0);
    free(hp);
    uint64_t *all = mallocCheck(sizeof(uint64_t) * (size_t)run.comm.world);
    vd_comm_allgather_u64(&run.comm, h, all);
    for (int32_t i = 0; i < run.comm.world; i++)
        if (all[i] != all[0]) vd_die("trainable vectors diverged: rank %d differs from rank 0", (int)i);
    free(all);

    train_write_checkpoint(&run);
    if (rank == 0) fcloseCheck(run.metrics, run.metrics_path);
    if (stopped) {
        train_write_status(&run, "preempted");
        vd_log("vera-dist: stopped by signal after step %d; checkpoint written; continue with --resume auto\n",
               (int)run.step);
    } else {
        if (rank == 0) train_save_adapter(run.adapter_path, &run.ad, cfg);
        train_write_status(&run, "finished");
        vd_log("done: %d steps, final loss %.4f, %.1f s; trainable vectors hash %016llx (identical on all %d "
               "ranks); wrote %s\n",
               (int)run.step, (double)run.last_loss, vd_time_s() - t_start, (unsigned long long)h,
               (int)run.comm.world, run.adapter_path);
    }
    vd_comm_barrier(&run.comm); /* nobody leaves before rank 0 has written */
    train_free(&run);
    vd_comm_free(&run.comm);
    return 0;
}
