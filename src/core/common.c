/* common.c: one-line fatal errors that end every rank, checked allocation and I/O. */
#define _POSIX_C_SOURCE 200809L
#include "vera/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
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
    /* one printable line: names echoed from a hostile file may hold any byte */
    char safe[4 * sizeof(msg)];
    vd_escape_printable(safe, sizeof(safe), msg, strlen(msg));
    if (g_world > 1) fprintf(stderr, "vera-dist: error [rank %d]: %s%s\n", g_rank, where, safe);
    else fprintf(stderr, "vera-dist: error: %s%s\n", where, safe);
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
    char msg[2048], safe[4 * sizeof(msg)];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vd_escape_printable(safe, sizeof(safe), msg, strlen(msg));
    fprintf(stderr, "vera-dist: warning: %s\n", safe);
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

/* ---- escaping ---- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when the bytes there are not one
 * (overlong forms, surrogates and code points past U+10FFFF count as invalid). */
static size_t vd_utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

size_t vd_text_problem(const void *data, size_t n, int allow_newlines) {
    const unsigned char *s = data;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c < 0x20 || c == 0x7F) {
            if (allow_newlines && (c == '\n' || c == '\r' || c == '\t')) { i++; continue; }
            return i;
        }
        size_t len = vd_utf8_len(s + i, n - i);
        if (len == 0) return i;
        /* C1 controls (U+0080..U+009F) move terminals around just like C0 ones */
        if (len == 2 && c == 0xC2 && s[i + 1] < 0xA0) return i;
        i += len;
    }
    return n;
}

size_t vd_escape_printable(char *out, size_t cap, const char *in, size_t n) {
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0;
    if (cap == 0) return 0;
    for (size_t i = 0; i < n;) {
        size_t bad = vd_text_problem(s + i, n - i, 0);
        /* copy the printable run whole, then escape one byte */
        size_t run = bad;
        if (o + run >= cap) run = cap - 1 - o;
        memcpy(out + o, s + i, run);
        o += run;
        i += run;
        if (i >= n || o + 1 >= cap) break;
        char esc[8];
        unsigned c = s[i];
        if (c == '\n' || c == '\t') snprintf(esc, sizeof(esc), " "); /* one line */
        else snprintf(esc, sizeof(esc), "\\x%02x", c);
        size_t el = strlen(esc);
        if (o + el >= cap) break;
        memcpy(out + o, esc, el);
        o += el;
        i++;
    }
    out[o] = 0;
    return o;
}

/* ---- user-given paths ---- */

const char *vd_file_type_name(unsigned mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISREG(mode)) return "a regular file";
    return "not a regular file";
}

int vd_regular_file_problem(const char *path, char *why, size_t cap) {
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(why, cap, "cannot open (%s)", strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, cap, "not a regular file (it is %s)", vd_file_type_name((unsigned)st.st_mode));
        return -1;
    }
    return 0;
}

static void vd_die_not_regular(const char *label, const char *path, const char *what, const char *why) {
    char who[VD_PATH_MAX + 128];
    if (label && label[0]) snprintf(who, sizeof(who), "%s %s", label, path);
    else snprintf(who, sizeof(who), "%s", path);
    if (what && what[0]) vd_die("%s: %s; expected %s", who, why, what);
    vd_die("%s: %s", who, why);
}

void vd_require_regular_file(const char *path, const char *what) {
    char why[256];
    if (vd_regular_file_problem(path, why, sizeof(why)) != 0) vd_die_not_regular(NULL, path, what, why);
}

int vd_open_regular_as(const char *label, const char *path, const char *what) {
    /* stat first: opening a FIFO blocks until a writer comes, and opening a device can do
     * things; then O_NONBLOCK and fstat, in case the path was swapped in between */
    char why[256];
    if (vd_regular_file_problem(path, why, sizeof(why)) != 0) vd_die_not_regular(label, path, what, why);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, sizeof(why), "cannot open (%s)", strerror(errno));
        vd_die_not_regular(label, path, what, why);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, sizeof(why), "not a regular file (it is %s)", vd_file_type_name((unsigned)st.st_mode));
        close(fd);
        vd_die_not_regular(label, path, what, why);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

int vd_open_regular(const char *path, const char *what) { return vd_open_regular_as(NULL, path, what); }

FILE *vd_fopen_check(const char *path, const char *mode, const char *file, int line) {
    FILE *f;
    if (mode[0] == 'r' && !strchr(mode, '+')) {
        int fd = vd_open_regular(path, NULL);
        f = fdopen(fd, mode);
        if (!f) {
            int e = errno;
            close(fd);
            vd_die("%s: cannot open (%s) [%s:%d]", path, strerror(e), file, line);
        }
        return f;
    }
    /* writing: an existing FIFO or device would block or swallow the output */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        vd_die("%s: not a regular file (it is %s) [%s:%d]", path, vd_file_type_name((unsigned)st.st_mode), file, line);
    f = fopen(path, mode);
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
        if (strtof(out, NULL) == x) break;
    }
    /* whole numbers print whole: "20", not %g's "2e+01" */
    if (strchr(out, 'e') && strchr(out, '+') && fabsf(x) < 1e9f && x == truncf(x)) snprintf(out, cap, "%.0f", (double)x);
}

void *vd_mmap_file(const char *path, size_t min_size, const char *what, size_t *size_out) {
    int fd = vd_open_regular(path, what);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        vd_die("%s: cannot stat (%s)", path, strerror(e));
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
