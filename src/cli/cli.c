/* cli.c: option handling shared by the sub-commands. */
#include <string.h>

#include "vera/cli.h"
#include "vera/common.h"

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
