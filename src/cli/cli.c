/* cli.c: option handling shared by the sub-commands. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "vera/adapter.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/peft.h"

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
            for (int j = i; j + used < *argc; j++) argv[j] = argv[j + used];
            *argc -= used;
            argv[*argc] = NULL;
            return value;
        }
    }
    return NULL;
}

int vd_cli_take_flag(int *argc, char **argv, const char *name) {
    for (int i = 1; i < *argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0 || strcmp(argv[i] + 2, name) != 0) continue;
        for (int j = i; j + 1 < *argc; j++) argv[j] = argv[j + 1];
        (*argc)--;
        argv[*argc] = NULL;
        return 1;
    }
    return 0;
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

void vd_cli_load_adapter(vd_vera *v, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) vd_die("--adapter: %s does not exist", path);
    if (S_ISDIR(st.st_mode)) vd_peft_load_dir(v, path);
    else vd_peft_load_vectors(v, path);
}
