/* cli.c: option handling shared by the sub-commands (conventions in include/vera/cli.h). */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "vera/adapter.h"
#include "vera/checkpoint.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/peft.h"

/* Drops argv[i .. i+n-1], keeping argv NULL-terminated. */
static void cli_remove(int *argc, char **argv, int i, int n) {
    for (int j = i; j + n < *argc; j++) argv[j] = argv[j + n];
    *argc -= n;
    argv[*argc] = NULL;
}

const char *vd_cli_take_option(int *argc, char **argv, const char *name) {
    size_t ln = strlen(name);
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        const char *value = NULL;
        int used = 0;
        if (!strncmp(a, "--", 2) && !strncmp(a + 2, name, ln) && a[2 + ln] == '=') {
            value = a + 3 + ln;
            used = 1;
        } else if (!strncmp(a, "--", 2) && !strcmp(a + 2, name)) {
            if (i + 1 >= *argc) vd_die("--%s: missing value", name);
            value = argv[i + 1];
            used = 2;
        }
        if (used) {
            cli_remove(argc, argv, i, used);
            return value;
        }
    }
    return NULL;
}

/* 1 / 0 for the spellings a flag's value may take, -1 for anything else. */
static int cli_bool(const char *v) {
    if (!strcmp(v, "1") || !strcmp(v, "true")) return 1;
    if (!strcmp(v, "0") || !strcmp(v, "false")) return 0;
    return -1;
}

int vd_cli_take_flag(int *argc, char **argv, const char *name, const char *who) {
    size_t ln = strlen(name);
    const char *sep = who ? ": " : "";
    if (!who) who = "";
    int value = -1;
    for (int i = 1; i < *argc;) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || strncmp(a + 2, name, ln) != 0 || (a[2 + ln] != 0 && a[2 + ln] != '=')) {
            i++;
            continue;
        }
        if (a[2 + ln] == '=') {
            value = cli_bool(a + 3 + ln);
            if (value < 0)
                vd_die("%s%s--%s: expected no value, or 1, 0, true or false, got '%s'", who, sep, name, a + 3 + ln);
            cli_remove(argc, argv, i, 1);
        } else if (i + 1 < *argc && strncmp(argv[i + 1], "--", 2) != 0) {
            /* no sub-command takes a bare word, so the next one can only be meant as the value */
            value = cli_bool(argv[i + 1]);
            if (value < 0)
                vd_die("%s%s--%s: expected no value, or 1, 0, true or false, got '%s'", who, sep, name, argv[i + 1]);
            cli_remove(argc, argv, i, 2);
        } else {
            value = 1;
            cli_remove(argc, argv, i, 1);
        }
    }
    return value;
}

void vd_cli_refuse_rest(int argc, char **argv, const char *who, const char *options) {
    if (argc > 1)
        vd_die("%s: unknown argument '%s' (it takes %s; see vera-dist %s --help)", who, argv[1], options, who);
}

void vd_cli_config_from_text(vd_config *cfg, const char *text, const char *path) {
    vd_config_defaults(cfg);
    const char *p = text;
    while (*p) {
        size_t len = strcspn(p, "\n");
        char line[VD_PATH_MAX + 128];
        snprintf(line, sizeof(line), "%.*s", (int)len, p);
        char *eq = strstr(line, " = ");
        if (eq) {
            *eq = 0;
            char err[512];
            if (vd_config_set(cfg, line, eq + 3, err, sizeof(err)) != 0)
                vd_die("%s: stored configuration: %s", path, err);
        }
        p += len + (p[len] == '\n');
    }
}

void vd_cli_load_adapter(vd_adapter *a, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) vd_die("--adapter: %s does not exist", path);
    if (S_ISDIR(st.st_mode)) vd_peft_load_dir(a, path);
    else vd_peft_load_tensors(a, path);
}

int vd_cli_adapter_from_dir(const vd_config *cfg, const char *path) {
    static const char *const shape_keys[] = {VD_ADAPTER_SHAPE_KEYS, "r", "target_modules", "d_initial",
                                             "projection_prng_key"};
    struct stat st;
    if (!path || stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return 0;
    for (size_t i = 0; i < sizeof(shape_keys) / sizeof(shape_keys[0]); i++)
        if (vd_config_user_set(cfg, shape_keys[i])) return 0; /* the run's, checked on load */
    return 1;
}

void vd_cli_adapter_options(vd_adapter_options *opt, const vd_config *cfg, uint32_t mask, const vd_model *m,
                            const char *path) {
    if (vd_cli_adapter_from_dir(cfg, path)) vd_peft_read_options(path, m, opt);
    else vd_adapter_options_from_config(opt, cfg, mask);
    opt->dropout = opt->lora_dropout = opt->vblora_dropout = 0.0f; /* inference */
}

void vd_cli_check_checkpoint_model(const char *who, const char *path, const vd_checkpoint *ck, uint64_t fingerprint,
                                   const char *model) {
    if (ck->model_fingerprint != fingerprint)
        vd_die("%s: %s was trained on another base model than %s (fingerprint %016llx, the model has %016llx; "
               "HINT: --model PATH of the base model it was trained on)", who, path, model,
               (unsigned long long)ck->model_fingerprint, (unsigned long long)fingerprint);
}

void vd_cli_check_checkpoint_adapter(const char *who, const char *path, const vd_checkpoint *ck, const vd_adapter *a) {
    char diff[512];
    if (vd_checkpoint_adapter_difference(ck, a, diff, sizeof(diff)))
        vd_die("%s: %s: the adapter regenerated from its stored configuration (adapter_type, r, target_modules, "
               "projection_prng_key) does not match it: %s", who, path, diff);
}
