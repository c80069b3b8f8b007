/* common.c: one-line fatal errors that end every rank, checked allocation and I/O. */
#define _POSIX_C_SOURCE 200809L
#include "vera/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void (*g_abort_hook)(int) = NULL;
static int g_rank = 0, g_world = 1;

void vd_set_abort_hook(void (*hook)(int code)) { g_abort_hook = hook; }
void vd_set_rank_info(int rank, int world) { g_rank = rank; g_world = world; }
int vd_rank(void) { return g_rank; }

__attribute__((noreturn)) static void vd_vdie(const char *where, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* one line: collapse newlines a caller may have let through */
    for (char *p = msg; *p; p++) if (*p == '\n') *p = ' ';
    if (g_world > 1) fprintf(stderr, "vera-dist: error [rank %d]: %s%s\n", g_rank, where, msg);
    else fprintf(stderr, "vera-dist: error: %s%s\n", where, msg);
    fflush(stderr);
    fflush(stdout);
    if (g_abort_hook) g_abort_hook(1);
    exit(1);
}

void vd_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vd_vdie("", fmt, ap);
}

void vd_die_at(const char *file, int line, const char *fmt, ...) {
    char where[512];
    snprintf(where, sizeof(where), "%s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vd_vdie(where, fmt, ap);
}

void vd_log(const char *fmt, ...) {
    if (g_rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

void vd_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "vera-dist: warning: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void *vd_malloc_check(size_t size, const char *file, int line) {
    void *p = malloc(size ? size : 1);
    if (!p) vd_die_at(file, line, "out of memory allocating %zu bytes", size);
    return p;
}

void *vd_calloc_check(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) vd_die_at(file, line, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

FILE *vd_fopen_check(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f) vd_die("%s: cannot open (%s) [%s:%d]", path, strerror(errno), file, line);
    return f;
}

void vd_fread_check(void *ptr, size_t size, size_t n, FILE *f, const char *path, const char *file, int line) {
    size_t got = fread(ptr, size, n, f);
    if (got != n) {
        if (feof(f)) vd_die("%s: file is truncated (read %zu of %zu items) [%s:%d]", path, got, n, file, line);
        vd_die("%s: read failed (%s) [%s:%d]", path, strerror(errno), file, line);
    }
}

void vd_fwrite_check(const void *ptr, size_t size, size_t n, FILE *f, const char *path, const char *file, int line) {
    if (fwrite(ptr, size, n, f) != n) vd_die("%s: write failed (%s) [%s:%d]", path, strerror(errno), file, line);
}

void vd_fclose_check(FILE *f, const char *path, const char *file, int line) {
    if (fclose(f) != 0) vd_die("%s: close failed (%s) [%s:%d]", path, strerror(errno), file, line);
}

void vd_write_file_atomic(const char *path, const void *data, size_t n) {
    char tmp[VD_PATH_MAX + 64];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) vd_die("%s: cannot create (%s)", tmp, strerror(errno));
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            vd_die("%s: write failed (%s)", tmp, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) { unlink(tmp); vd_die("%s: fsync/close failed (%s)", tmp, strerror(errno)); }
    if (rename(tmp, path) != 0) { int e = errno; unlink(tmp); vd_die("%s: rename from %s failed (%s)", path, tmp, strerror(e)); }
    /* fsync the directory so the rename itself survives a crash */
    char dir[VD_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    int dfd = open(dirname(dir), O_RDONLY);
    if (dfd >= 0) { fsync(dfd); close(dfd); }
}

void vd_mkdir_p(const char *path) {
    char buf[VD_PATH_MAX];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) vd_die("%s: path too long", path);
    size_t len = strlen(buf);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) vd_die("%s: cannot create directory (%s)", buf, strerror(errno));
            buf[i] = c;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) vd_die("%s: exists and is not a directory", path);
}

int vd_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

uint64_t vd_hash64(const void *data, size_t n, uint64_t seed) {
    /* FNV-1a's multiply-xor over 8-byte little-endian words in four independent lanes (so the
     * multiplies overlap), then the tail bytes; fast enough to fingerprint a whole model. */
    const uint8_t *p = data;
    const uint64_t prime = 1099511628211ULL;
    uint64_t lane[4] = {14695981039346656037ULL ^ seed, 0x9E3779B97F4A7C15ULL ^ seed, 0xC2B2AE3D27D4EB4FULL ^ seed,
                        0x165667B19E3779F9ULL ^ seed};
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int k = 0; k < 4; k++) {
            uint64_t w = 0;
            for (int b = 7; b >= 0; b--) w = (w << 8) | p[i + 8 * (size_t)k + (size_t)b];
            lane[k] = (lane[k] ^ w) * prime;
        }
    }
    uint64_t h = lane[0];
    for (int k = 1; k < 4; k++) h = (h ^ (lane[k] >> 29) ^ lane[k]) * prime;
    for (; i < n; i++) h = (h ^ p[i]) * prime;
    h ^= (uint64_t)n;
    return (h ^ (h >> 32)) * prime;
}

double vd_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void vd_format_float_shortest(char *out, size_t cap, float x) {
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(out, cap, "%.*g", prec, (double)x);
        if (strtof(out, NULL) == x) return;
    }
}

void *vd_mmap_file(const char *path, size_t min_size, const char *what, size_t *size_out) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) vd_die("%s: cannot open (%s)", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        vd_die("%s: cannot stat (%s)", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        vd_die("%s: not a regular file (expected %s)", path, what);
    }
    uint64_t file_size = (uint64_t)sb.st_size;
    if (file_size < min_size) {
        close(fd);
        vd_die("%s: file is truncated (%llu bytes; %s has at least %zu)", path, (unsigned long long)file_size, what,
               min_size);
    }
    void *map = mmap(NULL, (size_t)file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) vd_die("%s: mmap failed (%s)", path, strerror(map_errno));
    *size_out = (size_t)file_size;
    return map;
}
