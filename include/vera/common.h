/* common.h: error handling, checked allocation and I/O, hashing.
 * Every fatal error goes through vd_die(), which prints one line and ends all ranks
 * (comm registers an abort hook that calls MPI_Abort), so no rank is left hanging. */
#ifndef VERA_COMMON_H
#define VERA_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define VD_PATH_MAX 4096

/* Prints "vera-dist: error: <message>" (with "[rank k]" when world > 1) and ends the job. */
void vd_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* Like vd_die, for internal failures: adds file:line. */
void vd_die_at(const char *file, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
/* Printed on rank 0 only (or always when rank unknown). */
void vd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vd_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* comm installs these so vd_die can abort every rank and prefix the rank. */
void vd_set_abort_hook(void (*hook)(int code));
void vd_set_rank_info(int rank, int world);
int vd_rank(void);

void *vd_malloc_check(size_t size, const char *file, int line);
void *vd_calloc_check(size_t n, size_t size, const char *file, int line);
FILE *vd_fopen_check(const char *path, const char *mode, const char *file, int line);
void vd_fread_check(void *ptr, size_t size, size_t n, FILE *f, const char *path, const char *file, int line);
void vd_fwrite_check(const void *ptr, size_t size, size_t n, FILE *f, const char *path, const char *file, int line);
void vd_fclose_check(FILE *f, const char *path, const char *file, int line);
#define mallocCheck(n) vd_malloc_check((n), __FILE__, __LINE__)
#define callocCheck(n, s) vd_calloc_check((n), (s), __FILE__, __LINE__)
#define fopenCheck(p, m) vd_fopen_check((p), (m), __FILE__, __LINE__)
#define freadCheck(ptr, s, n, f, p) vd_fread_check((ptr), (s), (n), (f), (p), __FILE__, __LINE__)
#define fwriteCheck(ptr, s, n, f, p) vd_fwrite_check((ptr), (s), (n), (f), (p), __FILE__, __LINE__)
#define fcloseCheck(f, p) vd_fclose_check((f), (p), __FILE__, __LINE__)
/* Internal invariant (never user input): dies with file:line. */
#define vd_require(cond) do { if (!(cond)) vd_die_at(__FILE__, __LINE__, "internal check failed: %s", #cond); } while (0)

/* Writes a whole file atomically: tmp name in the same directory, fsync, rename.
 * A crash leaves either the old file or the new one, never a half-written one. */
void vd_write_file_atomic(const char *path, const void *data, size_t n);
/* mkdir -p; dies with the path on failure. */
void vd_mkdir_p(const char *path);
/* Maps a regular file read-only (MAP_PRIVATE). Dies with one line naming path on a missing,
 * non-regular or shorter-than-min_size file ("expected <what>"). Unmap with munmap. */
void *vd_mmap_file(const char *path, size_t min_size, const char *what, size_t *size_out);
int vd_path_exists(const char *path);

/* ---- user-given paths: every file a user names is opened through these ----
 * A FIFO, device, socket or directory is refused with one line naming it, before it is opened
 * (opening a FIFO for reading blocks until a writer comes, so every rank would hang). */
/* 0 when path is a regular file; else -1 and why ("not a regular file (it is a FIFO ...)",
 * "cannot open (No such file ...)") in why. */
int vd_regular_file_problem(const char *path, char *why, size_t cap);
/* Dies "<path>: <why>; expected <what>" unless path is a regular file (what may be NULL). */
void vd_require_regular_file(const char *path, const char *what);
/* vd_require_regular_file, then open(O_RDONLY) without ever blocking; returns the descriptor. */
int vd_open_regular(const char *path, const char *what);
/* The same with label before the path in the message ("--config PATH: ..."). */
int vd_open_regular_as(const char *label, const char *path, const char *what);
/* "a directory", "a FIFO (named pipe)", ... for a st_mode. */
const char *vd_file_type_name(unsigned mode);

/* ---- printable text ----
 * Offset of the first byte of data[0..n) that is not printable text (a C0/C1 control
 * character, DEL, or invalid UTF-8; tab, CR and LF allowed when allow_newlines), or n. */
size_t vd_text_problem(const void *data, size_t n, int allow_newlines);
/* Copies in[0..n) to out (NUL-terminated, at most cap-1 bytes) with every byte that is not
 * printable written as \xNN (newline and tab as a space); valid UTF-8 is kept. vd_die and
 * vd_warn pass every message through it, so names echoed from a file stay one clean line.
 * Returns the length written. */
size_t vd_escape_printable(char *out, size_t cap, const char *in, size_t n);

/* 64-bit FNV-1a over bytes, chained by seed; used for configuration hashes and checksums. */
uint64_t vd_hash64(const void *data, size_t n, uint64_t seed);

double vd_time_s(void); /* monotonic seconds */

/* The shortest "%.Ng" that reads back as exactly x (1e-5f -> "1e-05", 0.1f -> "0.1", as Python
 * prints); a function of the float's bits only, so serialized configs stay deterministic. */
void vd_format_float_shortest(char *out, size_t cap, float x);

#endif
