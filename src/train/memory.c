/* memory.c: the memory one rank needs (what inspect prints) and what it can have; the trainer
 * refuses a run that does not fit before allocating it (see memory.h). */
#define _POSIX_C_SOURCE 200809L
#include "vera/memory.h"

#include "vera/adapter.h"
#include "vera/backend.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "vera/common.h"

void vd_memory_estimate_run(const vd_model_config *mc, uint32_t mask, const vd_config *cfg, const vd_backend *be,
                            vd_memory_estimate *e) {
    memset(e, 0, sizeof(*e));
    const vd_model_family *f = vd_model_family_of(mc->arch);
    /* what the trainer allocates (model.c, adapter.c and the method's file, optimizer.c) */
    size_t N = (size_t)cfg->batch_size * (size_t)cfg->seq_len;
    int bf16 = vd_precision_weight_dtype(cfg->precision) == VD_DTYPE_BF16;
    vd_adapter_options opt;
    vd_adapter_options_from_config(&opt, cfg, mask);
    vd_adapter_size sz;
    vd_adapter_size_of(mc, &opt, N, bf16, &sz, NULL, NULL, NULL);
    size_t n_lin = vd_model_linear_params(mc);
    e->weights = sizeof(float) * f->num_params(mc) - (bf16 ? (sizeof(float) - sizeof(uint16_t)) * n_lin : 0);
    e->acts = vd_model_act_bytes(mc, cfg->batch_size, cfg->seq_len, strcmp(cfg->recompute, "block") == 0, be);
    e->adapter = sizeof(float) * (4 * sz.n_trainable + 2) /* params, grads (+ loss, stop flag), AdamW m, v */
                 + sz.state_bytes;
    /* merged W0 + dW on the layers where it pays (built in place: no scratch) */
    int64_t tokens_per_step = (int64_t)N * cfg->grad_accum;
    if (!bf16) /* never merged into a bf16 W0 */
        for (int32_t k = 0; k < f->n_kinds; k++) {
            if (!(mask & (1u << k))) continue;
            int32_t in, out;
            f->kind_shape(mc, k, &in, &out);
            if (vd_adapter_merge_pays(sz.merge_dropout, tokens_per_step, VD_WEFF_AUTO, in, out))
                e->merged += sizeof(float) * (size_t)mc->n_layer * (size_t)in * (size_t)out;
        }
    if (bf16) { /* the CPU's gemm_ex scratch: the widest weight and the widest input, as fp32 */
        size_t wmax = 0, imax = 0;
        for (int32_t k = 0; k < f->n_kinds; k++) {
            int32_t in, out;
            f->kind_shape(mc, k, &in, &out);
            if ((size_t)in * out > wmax) wmax = (size_t)in * out;
            if ((size_t)(in > out ? in : out) > imax) imax = (size_t)(in > out ? in : out);
        }
        e->merged = sizeof(float) * (wmax + N * imax);
    }
    e->total = e->weights + e->acts + e->adapter + e->merged;
}

/* The first unsigned number in a small file ("max" and missing files give 0). */
static uint64_t memory_read_u64(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (end == buf || errno) return 0;
    return (uint64_t)v;
}

/* A "Key: N kB" line of /proc/self/status, in kB (0 when absent). */
static uint64_t memory_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    size_t kl = strlen(key);
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, key, kl)) { kb = strtoull(line + kl, NULL, 10); break; }
    fclose(f);
    return (uint64_t)kb;
}

/* This process's cgroup directory under /sys/fs/cgroup (v2: "0::/path"; v1: the memory
 * controller's line). 0 when there is none. */
static int memory_cgroup_dir(char *out, size_t cap, int *v2) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return 0;
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = 0;
        *c2 = 0;
        const char *ctrls = c1 + 1, *rel = c2 + 1;
        if (!strcmp(line, "0") && !ctrls[0]) {
            snprintf(out, cap, "/sys/fs/cgroup%s", rel);
            *v2 = 1;
            found = 1;
        } else if (strstr(ctrls, "memory")) {
            snprintf(out, cap, "/sys/fs/cgroup/memory%s", rel);
            *v2 = 0;
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

size_t vd_memory_rank_available(int32_t ranks_on_node, char *how, size_t cap) {
    if (ranks_on_node < 1) ranks_on_node = 1;
    const char *env = getenv("VERA_MEMORY_LIMIT_BYTES");
    if (env && env[0]) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(env, &end, 10);
        if (end == env || *end || errno) vd_die("VERA_MEMORY_LIMIT_BYTES: '%s' is not a number of bytes", env);
        snprintf(how, cap, "VERA_MEMORY_LIMIT_BYTES");
        return (size_t)v;
    }
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) { avail = (uint64_t)kb * 1024; break; }
        fclose(f);
    }
    const char *src = "MemAvailable";
    char dir[768], path[900];
    int v2 = 0;
    if (memory_cgroup_dir(dir, sizeof(dir), &v2)) {
        snprintf(path, sizeof(path), "%s/%s", dir, v2 ? "memory.max" : "memory.limit_in_bytes");
        /* in a container the path is the host's and the mount shows our own cgroup at its root */
        if (access(path, R_OK) != 0) snprintf(dir, sizeof(dir), "%s", v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory");
        /* v2 limits nest (Slurm sets the job's, its steps may have none): the tightest of this
         * cgroup and its ancestors; v1's limit_in_bytes is the cgroup's own */
        const char *root = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
        for (;;) {
            snprintf(path, sizeof(path), "%s/%s", dir, v2 ? "memory.max" : "memory.limit_in_bytes");
            uint64_t limit = memory_read_u64(path);
            snprintf(path, sizeof(path), "%s/%s", dir, v2 ? "memory.current" : "memory.usage_in_bytes");
            uint64_t used = memory_read_u64(path);
            /* v1 says "no limit" with a huge number: anything past the machine's memory is none */
            if (limit > 0 && limit < (UINT64_C(1) << 60)) {
                uint64_t room = limit > used ? limit - used : 0;
                if (avail == 0 || room < avail) {
                    avail = room;
                    src = v2 ? "the cgroup's memory.max" : "the cgroup's memory limit";
                }
            }
            char *slash = strrchr(dir, '/');
            if (!v2 || strlen(dir) <= strlen(root) || !slash) break;
            *slash = 0;
        }
    }
    if (avail == 0) {
        snprintf(how, cap, "unknown");
    } else if (ranks_on_node > 1) {
        snprintf(how, cap, "%s / %d ranks on this node", src, (int)ranks_on_node);
        avail /= (uint64_t)ranks_on_node;
    } else {
        snprintf(how, cap, "%s", src);
    }
    /* this process's own limits (ulimit -d / -v): what it has mapped already counts against them */
    static const struct { int res; const char *name, *status_key; } lims[] = {
        {RLIMIT_DATA, "RLIMIT_DATA (ulimit -d)", "VmData:"}, {RLIMIT_AS, "RLIMIT_AS (ulimit -v)", "VmSize:"}};
    for (size_t i = 0; i < sizeof(lims) / sizeof(lims[0]); i++) {
        struct rlimit rl;
        if (getrlimit(lims[i].res, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) continue;
        uint64_t used = memory_status_kb(lims[i].status_key) * 1024;
        uint64_t room = (uint64_t)rl.rlim_cur > used ? (uint64_t)rl.rlim_cur - used : 0;
        if (avail == 0 || room < avail) {
            avail = room;
            snprintf(how, cap, "%s", lims[i].name);
        }
    }
    return (size_t)avail;
}

static double memory_gib(size_t b) { return (double)b / (double)(1ull << 30); }

static void memory_refuse_if(const vd_memory_estimate *e, size_t can, const char *how, const char *extra,
                             const vd_config *cfg) {
    if (e->total <= can) return;
    vd_die("memory: this rank needs about %.3f GiB (%zu bytes: weights %.3f, activations %.3f, adapter + AdamW %.3f, "
           "merged weights %.3f GiB at batch_size %d x seq_len %d) but can have %.3f GiB (%zu bytes: %s%s); "
           "HINT: a smaller batch_size with more grad_accum keeps the same global batch in less memory "
           "(activations grow with batch_size x seq_len), or use fewer ranks per node",
           memory_gib(e->total), e->total, memory_gib(e->weights), memory_gib(e->acts), memory_gib(e->adapter),
           memory_gib(e->merged), (int)cfg->batch_size, (int)cfg->seq_len, memory_gib(can), can, how, extra);
}

void vd_memory_check_or_die(const vd_memory_estimate *e, size_t held_bytes, int32_t ranks_on_node,
                            const vd_config *cfg) {
    char how[128];
    size_t free_now = vd_memory_rank_available(ranks_on_node, how, sizeof(how));
    if (!strcmp(how, "unknown")) return; /* cannot tell: let it try */
    int from_env = !strcmp(how, "VERA_MEMORY_LIMIT_BYTES"); /* a per-rank limit, all of it */
    size_t can = from_env ? free_now : free_now + held_bytes;
    memory_refuse_if(e, can, how, from_env ? "" : ", plus the weights it already holds", cfg);
}

void vd_memory_check_run(const vd_model_config *mc, uint32_t target_mask, const vd_config *cfg,
                         int32_t ranks_on_node, const vd_backend *be) {
    vd_memory_estimate e;
    vd_memory_estimate_run(mc, target_mask, cfg, be, &e);
    if (!be->device_free_bytes) {
        /* held: the loaded host buffer, fp32 whatever the precision */
        vd_memory_check_or_die(&e, sizeof(float) * vd_model_family_of(mc->arch)->num_params(mc), ranks_on_node, cfg);
        return;
    }
    /* a GPU backend holds weights, activations and the adapter in device memory: compare with
     * what the device has free now (ranks sharing one GPU each see the same free figure) */
    const char *env = getenv("VERA_MEMORY_LIMIT_BYTES");
    char how[128];
    size_t can = env && env[0] ? vd_memory_rank_available(ranks_on_node, how, sizeof(how)) : be->device_free_bytes();
    if (!(env && env[0])) snprintf(how, sizeof(how), "free memory of the %s device", be->name);
    memory_refuse_if(&e, can, how, "", cfg);
}
