/* test_util.h: minimal checks for ctest executables. Every failed CHECK is printed with
 * file:line and counted; TEST_END returns non-zero if any failed. */
#ifndef VERA_TEST_UTIL_H
#define VERA_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int vd_test_failures = 0;

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); vd_test_failures++; } } while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_CLOSE(a, b, rtol, atol, what) do { double a_ = (a), b_ = (b); \
    if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_))) { \
        fprintf(stderr, "FAIL %s:%d: %s: got %.9g want %.9g\n", __FILE__, __LINE__, (what), a_, b_); \
        vd_test_failures++; } } while (0)

#define TEST_END() do { if (vd_test_failures) { fprintf(stderr, "%d check(s) failed\n", vd_test_failures); return 1; } \
    printf("all checks passed\n"); return 0; } while (0)

/* Runs fn(arg) in a child process and checks that it exits non-zero with `needle` in its
 * stderr (the one-line error). Returns 1 on success. */
typedef void (*vd_test_fn)(void *arg);
__attribute__((unused)) static int vd_expect_die(vd_test_fn fn, void *arg, const char *needle) {
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); return 0; }
    fflush(stdout); fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 0; }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    char buf[8192]; size_t len = 0; ssize_t k;
    while ((k = read(fds[0], buf + len, sizeof(buf) - 1 - len)) > 0) { len += (size_t)k; if (len >= sizeof(buf) - 1) break; }
    buf[len] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int died = WIFEXITED(status) ? WEXITSTATUS(status) != 0 : 1;
    int found = needle == NULL || strstr(buf, needle) != NULL;
    if (!died || !found) {
        fprintf(stderr, "  expected a non-zero exit with \"%s\"; exit %s, stderr: %s\n", needle ? needle : "",
                died ? "non-zero" : "zero", buf);
    }
    return died && found;
}
#define CHECK_DIES(fn, arg, needle) CHECK(vd_expect_die((fn), (arg), (needle)), "expected death with '%s'", (needle))

#endif
