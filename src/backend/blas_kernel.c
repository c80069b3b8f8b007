/* blas_kernel.c: never run on OpenBLAS's generic kernels silently.
 *
 * OpenBLAS (DYNAMIC_ARCH) picks its kernels from the CPU model number when the library loads;
 * a build older than the CPU (Debian 12's 0.3.21 on a Xeon of family 6 model 207) falls back to
 * "Prescott", the SSE3 kernels: 5x slower GEMMs on a CPU with AVX-512 (docs/benchmarks.md, "BLAS
 * kernel"). OPENBLAS_CORETYPE overrides the choice, but only in the environment before the
 * library loads, so the fix is to execute this program again, once, with it set: the kernel is
 * chosen from the CPU's features (SkylakeX with AVX-512, Haswell with AVX2 + FMA). A user's own
 * OPENBLAS_CORETYPE is kept, and VERA_BLAS_FIX=0 turns the restart off. The restart happens
 * before MPI_Init (exec keeps the process id, so a launcher still sees its rank). */
#define _GNU_SOURCE
#include "vera/backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* OpenBLAS's own query functions (declared here: not every cblas.h has them). */
char *openblas_get_corename(void);
char *openblas_get_config(void);

/* How much vector width a kernel name stands for: 0 SSE-era generic, 1 AVX, 2 AVX2, 3 AVX-512. */
static int blas_kernel_level(const char *core) {
    static const char *const avx512[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const avx2[] = {"Haswell", "Zen", "Skylake", NULL};
    static const char *const avx[] = {"Sandybridge", "Bulldozer", "Piledriver", "Steamroller", "Excavator", NULL};
    const char *const *lists[3] = {avx, avx2, avx512};
    for (int lv = 2; lv >= 0; lv--)
        for (const char *const *n = lists[lv]; *n; n++)
            if (!strcasecmp(core, *n)) return lv + 1;
    return 0;
}

/* The kernel this CPU's features allow (NULL when it has neither AVX2 nor AVX-512). */
static const char *blas_kernel_for_cpu(int *level) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        *level = 3;
        return "SkylakeX";
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *level = 2;
        return "Haswell";
    }
    *level = 0;
    return NULL;
}

/* What the startup summary says about the kernel (filled by vd_blas_ensure_kernel). */
static char g_blas_note[192];

const char *vd_blas_kernel_name(void) {
    const char *c = openblas_get_corename();
    return c ? c : "unknown";
}

const char *vd_blas_kernel_note(void) { return g_blas_note; }

void vd_blas_ensure_kernel(char **argv) {
    const char *fix = getenv("VERA_BLAS_FIX");
    if (fix && !strcmp(fix, "0")) return;
    const char *core = vd_blas_kernel_name();
    int want_level = 0;
    const char *want = blas_kernel_for_cpu(&want_level);
    int have_level = blas_kernel_level(core);
    const char *user = getenv("OPENBLAS_CORETYPE");
    const char *picked = getenv("VERA_BLAS_RESTARTED");
    if (picked) {
        /* the second start: OpenBLAS had picked `picked`; the summary says so. The variable stays
         * for children, so they do not restart again for nothing. */
        snprintf(g_blas_note, sizeof(g_blas_note), " (OpenBLAS picked %s on this CPU: restarted with OPENBLAS_CORETYPE=%s)",
                 picked, user ? user : "?");
        return;
    }
    if (!want || have_level >= want_level) return;
    if (user && *user) {
        snprintf(g_blas_note, sizeof(g_blas_note), " (OPENBLAS_CORETYPE=%s is set: kept, though this CPU can run %s; HINT: unset it for the faster kernels)",
                 user, want);
        return;
    }
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0 || setenv("VERA_BLAS_RESTARTED", core, 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc?): carry on with the slow kernels, but say so */
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("VERA_BLAS_RESTARTED");
    snprintf(g_blas_note, sizeof(g_blas_note), " (generic: restarting with OPENBLAS_CORETYPE=%s failed: %s; HINT: export it)",
             want, strerror(errno));
}
