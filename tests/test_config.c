/* test_config.c: defaults, the INI file, the command line, every error path (each must die
 * with one line naming the key), target_modules parsing, validation, and the canonical
 * serialization (round trip and first difference). */
#define _POSIX_C_SOURCE 200809L
#include "vera/config.h"
#include "vera/cli.h"
#include "vera/model.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

/* ---- temporary INI files under /tmp, removed at the end ---- */

static char g_tmp[64][64];
static int g_ntmp = 0;

static const char *write_ini(const char *text) {
    if (g_ntmp == 64) { fprintf(stderr, "too many temp files\n"); exit(1); }
    char *path = g_tmp[g_ntmp++];
    snprintf(path, 64, "/tmp/vd_test_config_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); exit(1); }
    size_t n = strlen(text);
    if (write(fd, text, n) != (ssize_t)n) { perror("write"); exit(1); }
    close(fd);
    return path;
}

static void remove_tmp(void) {
    for (int i = 0; i < g_ntmp; i++) unlink(g_tmp[i]);
}

/* ---- helpers that run in the child of CHECK_DIES ---- */

static int argc_of(char **argv) { int n = 0; while (argv[n]) n++; return n; }

static void parse_fn(void *arg) {
    char **argv = arg;
    vd_config c;
    vd_config_defaults(&c);
    vd_config_parse(&c, argc_of(argv), argv, 1);
}

static void parse_validate_fn(void *arg) {
    char **argv = arg;
    vd_config c;
    vd_config_defaults(&c);
    vd_config_parse(&c, argc_of(argv), argv, 1);
    vd_config_validate(&c);
}

/* The program name is argv[0]; the options start at 1. */
#define ARGV(...) ((void *)(const char *[]){"vera-dist", __VA_ARGS__, NULL})
#define PARSE_DIES(needle, ...) CHECK_DIES(parse_fn, ARGV(__VA_ARGS__), (needle))
#define VALIDATE_DIES(needle, ...) CHECK_DIES(parse_validate_fn, ARGV(__VA_ARGS__), (needle))

/* Parses an INI file holding `text` in a child; it must die with "<path>:<line>: <needle>". */
static void ini_dies(const char *text, int line, const char *needle, int src_line) {
    const char *path = write_ini(text);
    char want[512];
    snprintf(want, sizeof(want), "%s:%d: %s", path, line, needle);
    if (!vd_expect_die(parse_fn, ARGV("--config", path), want)) {
        fprintf(stderr, "FAIL %s:%d: INI error not reported as '%s'\n", __FILE__, src_line, want);
        vd_test_failures++;
    }
}
#define INI_DIES(text, line, needle) ini_dies((text), (line), (needle), __LINE__)

/* A struct edited by code (not the parser) must still be caught by vd_config_validate. */
typedef struct { void (*edit)(vd_config *); } edit_arg;
static void validate_edited_fn(void *arg) {
    vd_config c;
    vd_config_defaults(&c);
    snprintf(c.model, sizeof(c.model), "m");
    snprintf(c.train_data, sizeof(c.train_data), "t");
    ((edit_arg *)arg)->edit(&c);
    vd_config_validate(&c);
}
static void edit_r0(vd_config *c) { c->r = 0; }
static void edit_lr_nan(vd_config *c) { c->lr = NAN; }
static void edit_mask(vd_config *c) { snprintf(c->target_modules, sizeof(c->target_modules), "mlp.c_fc, attn.c_attn"); }
static void edit_device(vd_config *c) { snprintf(c->device, sizeof(c->device), "gpu"); }
static void edit_bool(vd_config *c) { c->overwrite = 2; }

static void set_or_fail(vd_config *c, const char *key, const char *value, int line) {
    char err[512];
    if (vd_config_set(c, key, value, err, sizeof(err)) != 0) {
        fprintf(stderr, "FAIL %s:%d: vd_config_set(%s, %s): %s\n", __FILE__, line, key, value, err);
        vd_test_failures++;
    }
}
#define SET(c, k, v) set_or_fail((c), (k), (v), __LINE__)

/* Serializes into a static-size buffer, checking it fit. */
static void serialize(const vd_config *c, char *buf, size_t cap) {
    size_t n = vd_config_serialize(c, buf, cap);
    CHECK(n < cap, "serialized config needs %zu bytes", n);
    CHECK(strlen(buf) == n, "serialize returned %zu but wrote %zu", n, strlen(buf));
}

/* Applies "key = value" lines through vd_config_set. */
static void apply_lines(vd_config *c, const char *text) {
    char line[8192];
    while (*text) {
        size_t n = strcspn(text, "\n");
        CHECK(n < sizeof(line), "line too long");
        memcpy(line, text, n);
        line[n] = 0;
        char *eq = strstr(line, " = ");
        CHECK(eq != NULL, "no ' = ' in '%s'", line);
        if (eq) {
            *eq = 0;
            SET(c, line, eq + 3);
        }
        text += n + (text[n] == '\n');
    }
}

/* ---------------------------------------------------------------------------------------- */

static void test_defaults(void) {
    vd_config c;
    vd_config_defaults(&c);
    CHECK(strcmp(c.config_path, "") == 0, "config_path '%s'", c.config_path);
    CHECK(strcmp(c.model, "") == 0 && strcmp(c.train_data, "") == 0 && strcmp(c.val_data, "") == 0, "paths");
    CHECK(strcmp(c.out_dir, "out") == 0, "out_dir '%s'", c.out_dir);
    CHECK(c.r == 256, "r %d", c.r);
    CHECK(c.d_initial == 0.1f, "d_initial %g", c.d_initial);
    CHECK(c.projection_prng_key == 0, "key");
    CHECK(strcmp(c.target_modules, "attn.c_attn") == 0, "target_modules '%s'", c.target_modules);
    CHECK(c.vera_dropout == 0.0f, "vera_dropout");
    CHECK(c.batch_size == 4 && c.seq_len == 64 && c.grad_accum == 1, "batch %d seq %d accum %d", c.batch_size,
          c.seq_len, c.grad_accum);
    CHECK(c.lr == 4e-3f && c.min_lr_ratio == 0.1f, "lr %g min_lr_ratio %g", c.lr, c.min_lr_ratio);
    CHECK(c.warmup_steps == 10 && c.max_steps == 100, "warmup %d max %d", c.warmup_steps, c.max_steps);
    CHECK(c.weight_decay == 0.0f && c.beta1 == 0.9f && c.beta2 == 0.999f && c.adam_eps == 1e-8f, "adamw");
    CHECK(c.grad_clip == 1.0f, "grad_clip %g", c.grad_clip);
    CHECK(c.seed == 1337, "seed");
    CHECK(c.log_every == 1 && c.eval_every == 0 && c.eval_seqs == 64 && c.overwrite == 0, "log");
    CHECK(c.threads == 0 && strcmp(c.device, "cpu") == 0, "system");
    /* the defaults alone lack the model and data, with a hint on how to set them */
    VALIDATE_DIES("model is not set. HINT: pass --model DIR or set [model] model in the config", "--seed", "1");
    /* with those two set, the defaults are a valid configuration */
    snprintf(c.model, sizeof(c.model), "m");
    snprintf(c.train_data, sizeof(c.train_data), "t");
    vd_config_validate(&c); /* dies (failing the test) if not */
}

static void test_ini(void) {
    const char *path = write_ini(
        "; a comment\n"
        "# another comment\n"
        "\n"
        "[model]\n"
        "model = models/gpt2   ; inline comment\n"
        "[data]\n"
        "train_data = 'data/train_*.bin'\n"
        "val_data = \"data/val_*.bin\"   # inline comment\n"
        "    out_dir = out/x\n" /* indented: an ordinary line, not a continuation */
        "[vera]\r\n"
        "r = 64\r\n"
        "target_modules = mlp.c_fc , attn.c_attn\n"
        "projection_prng_key = 18446744073709551615\n"
        "d_initial = 1.5 # comment\n"
        "[train]\n"
        "lr = 1e-2\n"
        "max_steps: 150\n"
        "[log]\n"
        "overwrite = true\n"
        "[system]\n"
        "device = auto\n");
    vd_config c;
    vd_config_defaults(&c);
    char *argv[] = {"vera-dist", "--config", (char *)path, NULL};
    vd_config_parse(&c, 3, argv, 1);
    CHECK(strcmp(c.config_path, path) == 0, "config_path '%s'", c.config_path);
    CHECK(strcmp(c.model, "models/gpt2") == 0, "model '%s'", c.model);
    CHECK(strcmp(c.train_data, "data/train_*.bin") == 0, "train_data '%s'", c.train_data);
    CHECK(strcmp(c.val_data, "data/val_*.bin") == 0, "val_data '%s'", c.val_data);
    CHECK(strcmp(c.out_dir, "out/x") == 0, "out_dir '%s'", c.out_dir);
    CHECK(c.r == 64, "r %d", c.r);
    CHECK(strcmp(c.target_modules, "attn.c_attn,mlp.c_fc") == 0, "target_modules '%s'", c.target_modules);
    CHECK(c.projection_prng_key == UINT64_MAX, "key %llu", (unsigned long long)c.projection_prng_key);
    CHECK(c.d_initial == 1.5f, "d_initial %g", c.d_initial);
    CHECK(c.lr == 1e-2f, "lr %g", c.lr);
    CHECK(c.max_steps == 150, "max_steps %d", c.max_steps);
    CHECK(c.overwrite == 1, "overwrite %d", c.overwrite);
    CHECK(strcmp(c.device, "auto") == 0, "device '%s'", c.device);
    CHECK(c.batch_size == 4 && c.warmup_steps == 10, "untouched keys keep their defaults");

    /* a long (but not too long) path fits through libinih */
    char text[512], want[200];
    memset(want, 'y', 150);
    want[150] = 0;
    snprintf(text, sizeof(text), "[data]\ntrain_data = %s\n", want);
    char *argv5[] = {"vera-dist", "--config", (char *)write_ini(text), NULL};
    vd_config_defaults(&c);
    vd_config_parse(&c, 3, argv5, 1);
    CHECK(strcmp(c.train_data, want) == 0, "150-character path '%s'", c.train_data);

    /* the command line wins, wherever --config appears; --key=value and --config=FILE work */
    char cfgeq[128];
    snprintf(cfgeq, sizeof(cfgeq), "--config=%s", path);
    char *argv2[] = {"vera-dist", "--r", "8", "--lr=0.5", cfgeq, "--model=a=b", "--r=16", "--overwrite", "false", NULL};
    vd_config_defaults(&c);
    vd_config_parse(&c, argc_of(argv2), argv2, 1);
    CHECK(c.r == 16, "last --r wins, got %d", c.r);
    CHECK(c.lr == 0.5f, "--lr=0.5 over the INI, got %g", c.lr);
    CHECK(strcmp(c.model, "a=b") == 0, "--model=a=b gives '%s'", c.model);
    CHECK(c.overwrite == 0, "--overwrite false over the INI");
    CHECK(c.max_steps == 150, "INI value kept where the command line is silent");

    /* `first` skips a sub-command; an empty command line leaves the defaults */
    char *argv3[] = {"vera-dist", "train", "--seq_len", "128", NULL};
    vd_config_defaults(&c);
    vd_config_parse(&c, 4, argv3, 2);
    CHECK(c.seq_len == 128 && c.config_path[0] == 0, "seq_len %d", c.seq_len);
    vd_config_parse(&c, 1, argv3, 1);
    CHECK(c.seq_len == 128, "no arguments changes nothing");
    /* a value may start with a single dash; the range check then decides */
    char *argv4[] = {"vera-dist", "--model", "-weird-dir", NULL};
    vd_config_parse(&c, 3, argv4, 1);
    CHECK(strcmp(c.model, "-weird-dir") == 0, "model '%s'", c.model);
}

static void test_ini_errors(void) {
    INI_DIES("[train]\nlrr = 1\n", 2, "unknown key 'lrr' (did you mean 'lr'?)");
    INI_DIES("[train]\nzzzzzzzzz = 1\n", 2, "unknown key 'zzzzzzzzz'");
    INI_DIES("[vera]\n\n; c\nlr = 0.1\n", 4, "key 'lr' belongs in section [train], not [vera]");
    INI_DIES("r = 4\n", 1, "key 'r' is outside any section; put it under [vera]");
    INI_DIES("[trian]\nlr = 0.1\n", 2, "unknown section [trian] (did you mean [train]?)");
    INI_DIES("[train]\nthis line has no equals sign\n", 2, "syntax error");
    INI_DIES("[train\nlr = 1\n", 1, "syntax error");
    /* the first error wins even when a later line fails in our handler */
    INI_DIES("[train]\nbad line\nlrr = 1\n", 2, "syntax error");
    INI_DIES("[train]\nlrr = 1\nbad line\n", 2, "unknown key 'lrr'");
    INI_DIES("[vera]\nr = 8\nr = 16\n", 3, "key 'r' is set twice (first at line 2)");
    INI_DIES("[vera]\nr = 0\n", 2, "r: expected an integer in [1, 65536], got '0'");
    INI_DIES("[vera]\nr =\n", 2, "r: expected an integer in [1, 65536], got ''");
    INI_DIES("[vera]\nr = 64 junk\n", 2, "r: expected an integer in [1, 65536], got '64 junk'");
    INI_DIES("[train]\nlr = abc\n", 2, "lr: expected a number in (0, 10], got 'abc'");
    INI_DIES("[vera]\ntarget_modules = attn.c_attn, attn.c_attn\n", 2, "target_modules: 'attn.c_attn' is listed twice");
    INI_DIES("[model]\nmodel = 'models/gpt2\n", 2, "model: the value opens a quote (') that is never closed");
    INI_DIES("[model]\nmodel = 'a' b\n", 2, "model: unexpected text 'b' after the closing quote");
    INI_DIES("[log]\noverwrite = yes\n", 2, "overwrite: expected 0, 1, true or false, got 'yes'");
    /* a line longer than libinih's buffer must not be split silently */
    char longline[2048];
    int n = snprintf(longline, sizeof(longline), "[data]\ntrain_data = ");
    for (int i = 0; i < 1000; i++) longline[n++] = 'x';
    snprintf(longline + n, sizeof(longline) - (size_t)n, "\n");
    INI_DIES(longline, 2, "line is longer than the INI reader's limit");
    /* ... while a long comment is only a comment */
    longline[7] = ';';
    const char *cpath = write_ini(longline);
    char *cargv[] = {"vera-dist", "--config", (char *)cpath, NULL};
    vd_config c;
    vd_config_defaults(&c);
    vd_config_parse(&c, 3, cargv, 1);
    CHECK(strcmp(c.train_data, "") == 0, "a long comment line set train_data '%s'", c.train_data);
    PARSE_DIES("--config /tmp/vd_test_config_does_not_exist: cannot open", "--config",
               "/tmp/vd_test_config_does_not_exist");
}

static void test_cli_errors(void) {
    /* the example from the brief, whole line */
    PARSE_DIES("vera-dist: error: --r: expected an integer in [1, 65536], got 'abc'", "--r", "abc");
    PARSE_DIES("--r: expected an integer in [1, 65536], got '0'", "--r", "0");
    PARSE_DIES("--r: expected an integer in [1, 65536], got '65537'", "--r", "65537");
    PARSE_DIES("--r: expected an integer", "--r", "64k");
    PARSE_DIES("--r: expected an integer", "--r", "1e3");
    PARSE_DIES("--r: expected an integer", "--r", "99999999999999999999");
    PARSE_DIES("--r: expected an integer", "--r", "");
    PARSE_DIES("--max_steps: expected an integer in [1, 1000000000], got '0'", "--max_steps", "0");
    PARSE_DIES("--lr: expected a number in (0, 10], got '0'", "--lr", "0");
    PARSE_DIES("--lr: expected a number in (0, 10], got '1e-50'", "--lr", "1e-50"); /* 0 as a float */
    PARSE_DIES("--collective_timeout: expected a number in [0, 86400], got '-1'", "--collective_timeout", "-1");
    PARSE_DIES("--collective_timeout: expected a number in [0, 86400], got 'soon'", "--collective_timeout", "soon");
    PARSE_DIES("--lr: expected a number", "--lr", "nan");
    PARSE_DIES("--lr: expected a number", "--lr", "inf");
    PARSE_DIES("--lr: expected a number", "--lr", "0.1x");
    PARSE_DIES("--lr: expected a number", "--lr", "11");
    PARSE_DIES("--beta1: expected a number in [0, 1), got '1'", "--beta1", "1");
    PARSE_DIES("--beta2: expected a number in [0, 1)", "--beta2", "0.9999999999"); /* 1.0f */
    PARSE_DIES("--adam_eps: expected a number in (0, 1]", "--adam_eps", "0");
    PARSE_DIES("--vera_dropout: expected a number in [0, 1)", "--vera_dropout", "1");
    PARSE_DIES("--d_initial: expected a number in (0, 100]", "--d_initial", "-0.5");
    PARSE_DIES("--seed: expected an integer in [0, 18446744073709551615], got '-1'", "--seed", "-1");
    PARSE_DIES("--seed: expected an integer", "--seed", "18446744073709551616");
    PARSE_DIES("--projection_prng_key: expected an integer", "--projection_prng_key", "0x10");
    PARSE_DIES("--overwrite: expected no value, or 1, 0, true or false, got 'yes'", "--overwrite", "yes");
    PARSE_DIES("--overwrite: expected no value, or 1, 0, true or false, got '2'", "--overwrite=2");
    PARSE_DIES("--save_projection: expected no value, or 1, 0, true or false, got 'on'", "--save_projection", "on");
    PARSE_DIES("--device: expected one of cpu, cuda, auto, got 'gpu'", "--device", "gpu");
    PARSE_DIES("--model: value contains a control character", "--model", "a\nb");
    /* unknown keys, with a hint when one is close */
    PARSE_DIES("--lrr: unknown option (did you mean --lr?)", "--lrr", "1");
    PARSE_DIES("--max-steps: unknown option (did you mean --max_steps?)", "--max-steps", "5");
    PARSE_DIES("--zzzzzzzzzz: unknown option", "--zzzzzzzzzz", "1");
    PARSE_DIES("--help: unknown option", "--help", "x"); /* --help is the caller's job */
    /* target_modules */
    PARSE_DIES("--target_modules: unknown module 'mlp.fc' (did you mean 'mlp.c_fc'?)", "--target_modules", "mlp.fc");
    PARSE_DIES("--target_modules: 'mlp.c_fc' is listed twice", "--target_modules", "mlp.c_fc,mlp.c_proj,mlp.c_fc");
    PARSE_DIES("--target_modules: empty value; accepted: all, all-linear, or", "--target_modules", "");
    PARSE_DIES("--target_modules: empty entry", "--target_modules", "attn.c_attn,,mlp.c_fc");
    PARSE_DIES("--target_modules: empty entry", "--target_modules", "attn.c_attn,");
    PARSE_DIES("--target_modules: 'all' cannot be combined", "--target_modules", "all,mlp.c_fc");
    /* shape of the command line */
    PARSE_DIES("--r: missing value", "--model", "m", "--r");
    PARSE_DIES("--model: missing value (the next argument is the option '--r')", "--model", "--r", "5");
    PARSE_DIES("--config: missing value", "--config");
    PARSE_DIES("--config: missing value", "--config=");
    PARSE_DIES("unexpected argument 'train.ini'", "train.ini");
    PARSE_DIES("unexpected argument 'x'", "--r", "8", "x");
    PARSE_DIES("unexpected argument '-r': options take two dashes", "-r", "5");
    PARSE_DIES("unexpected argument '--'", "--");
    PARSE_DIES("--config: given twice", "--config", "a.ini", "--config", "b.ini");
}

static void test_validate(void) {
    VALIDATE_DIES("train_data is not set. HINT: pass --train_data GLOB", "--model", "m");
    VALIDATE_DIES("out_dir is empty", "--model", "m", "--train_data", "t", "--out_dir", "");
    /* both set by the user: refused (one of them a default: see test_defaults_give_way) */
    VALIDATE_DIES("warmup_steps (200) must be <= max_steps (100)", "--model", "m", "--train_data", "t",
                  "--warmup_steps", "200", "--max_steps", "100");
    VALIDATE_DIES("eval_every = 5 but val_data is empty", "--model", "m", "--train_data", "t", "--eval_every", "5");
    VALIDATE_DIES("batch_size * seq_len", "--model", "m", "--train_data", "t", "--batch_size", "65536",
                  "--seq_len", "1048576");
    CHECK_DIES(validate_edited_fn, &(edit_arg){edit_r0}, "r = 0 is out of range [1, 65536]");
    CHECK_DIES(validate_edited_fn, &(edit_arg){edit_lr_nan}, "lr = nan is out of range (0, 10]");
    CHECK_DIES(validate_edited_fn, &(edit_arg){edit_mask}, "is not in normalized form");
    CHECK_DIES(validate_edited_fn, &(edit_arg){edit_device}, "device: expected one of cpu, cuda, auto");
    CHECK_DIES(validate_edited_fn, &(edit_arg){edit_bool}, "overwrite = 2: expected 0 or 1");
}

/* ---- defaults give way to values the user set (issue 14, item 8.1) ---- */

/* Runs fn(arg) with stdout sent to a temporary file; returns what it printed (static buffer). */
static const char *capture_stdout(void (*fn)(void *), void *arg) {
    static char out[4096];
    fflush(stdout);
    FILE *f = tmpfile();
    int saved = dup(1);
    if (!f || saved < 0) { perror("capture_stdout"); exit(1); }
    dup2(fileno(f), 1);
    fn(arg);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    rewind(f);
    size_t n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = 0;
    fclose(f);
    return out;
}

static vd_config g_parsed;
static void parse_into_global(void *arg) {
    char **argv = arg;
    vd_config_defaults(&g_parsed);
    vd_config_parse(&g_parsed, argc_of(argv), argv, 1);
    vd_config_validate(&g_parsed);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_defaults_give_way(void) {
    /* the reported case: --max_steps 5 alone; the default warmup_steps (10) gives way */
    const char *log = capture_stdout(parse_into_global, ARGV("--model", "m", "--train_data", "t", "--max_steps", "5"));
    CHECK(g_parsed.max_steps == 5 && g_parsed.warmup_steps == 5, "warmup %d max %d", g_parsed.warmup_steps,
          g_parsed.max_steps);
    CHECK(count_lines(log) == 1 && strstr(log, "config: max_steps = 5, below the default warmup_steps = 10: using "
                                               "warmup_steps = 5\n") != NULL, "one log line, got '%s'", log);
    /* the other way round: an explicit warmup_steps raises the default max_steps */
    log = capture_stdout(parse_into_global, ARGV("--model", "m", "--train_data", "t", "--warmup_steps", "200"));
    CHECK(g_parsed.max_steps == 200 && g_parsed.warmup_steps == 200, "warmup %d max %d", g_parsed.warmup_steps,
          g_parsed.max_steps);
    CHECK(strstr(log, "warmup_steps = 200, above the default max_steps = 100: using max_steps = 200") != NULL,
          "log '%s'", log);
    /* no conflict: nothing changes, nothing is logged */
    log = capture_stdout(parse_into_global, ARGV("--model", "m", "--train_data", "t", "--max_steps", "50"));
    CHECK(g_parsed.warmup_steps == 10 && log[0] == 0, "warmup %d, log '%s'", g_parsed.warmup_steps, log);
    /* a value from the INI file counts as set: INI max_steps 5 lowers the default warmup... */
    const char *ini = write_ini("[train]\nmax_steps = 5\n");
    log = capture_stdout(parse_into_global, ARGV("--config", ini, "--model", "m", "--train_data", "t"));
    CHECK(g_parsed.warmup_steps == 5 && strstr(log, "using warmup_steps = 5"), "INI: warmup %d", g_parsed.warmup_steps);
    /* ...and refuses a command-line warmup above it: both were set */
    VALIDATE_DIES("warmup_steps (8) must be <= max_steps (5)", "--config", ini, "--model", "m", "--train_data", "t",
                  "--warmup_steps", "8");

    /* who set what */
    vd_config c;
    vd_config_defaults(&c);
    CHECK(!vd_config_user_set(&c, "max_steps") && !vd_config_user_set(&c, "overwrite"), "defaults are not set");
    char *argv[] = {"vera-dist", "--config", (char *)write_ini("[vera]\nr = 8\n"), "--lr", "0.1", "--overwrite", NULL};
    vd_config_parse(&c, argc_of(argv), argv, 1);
    CHECK(vd_config_user_set(&c, "r") && vd_config_user_set(&c, "lr") && vd_config_user_set(&c, "overwrite"),
          "INI, --key value and a bare flag count as set");
    CHECK(!vd_config_user_set(&c, "seq_len") && !vd_config_user_set(&c, "warmup_steps"), "others stay defaults");
    SET(&c, "seq_len", "16");
    CHECK(vd_config_user_set(&c, "seq_len"), "vd_config_set counts as set");

    /* a limit known later (the model's context): a default gives way, a set value is the caller's error */
    vd_config_defaults(&c);
    int got = vd_config_fit_default(&c, "seq_len", 32, "the model's context");
    CHECK(got == 1 && c.seq_len == 32, "default seq_len lowered: %d, seq_len %d", got, c.seq_len);
    CHECK(vd_config_fit_default(&c, "seq_len", 64, "the model's context") == 0 && c.seq_len == 32, "fits");
    SET(&c, "seq_len", "128");
    CHECK(vd_config_fit_default(&c, "seq_len", 32, "the model's context") == -1 && c.seq_len == 128,
          "a seq_len the user set is not changed");
}

/* ---- booleans are flags on the command line (item 8.3) ---- */
static void test_flags(void) {
    vd_config c;
    char *a1[] = {"vera-dist", "--overwrite", "--r", "8", NULL};
    vd_config_defaults(&c);
    vd_config_parse(&c, argc_of(a1), a1, 1);
    CHECK(c.overwrite == 1 && c.r == 8, "bare --overwrite before an option: overwrite %d r %d", c.overwrite, c.r);
    char *a2[] = {"vera-dist", "--r", "8", "--overwrite", NULL};
    vd_config_defaults(&c);
    vd_config_parse(&c, argc_of(a2), a2, 1);
    CHECK(c.overwrite == 1, "bare --overwrite last");
    char *a3[] = {"vera-dist", "--overwrite", "1", "--save_projection=false", "--overwrite", "0", NULL};
    vd_config_defaults(&c);
    vd_config_parse(&c, argc_of(a3), a3, 1);
    CHECK(c.overwrite == 0 && c.save_projection == 0, "values, last wins: overwrite %d save_projection %d",
          c.overwrite, c.save_projection);
    /* the command line wins over the INI for flags too */
    char *a4[] = {"vera-dist", "--overwrite", "--config", (char *)write_ini("[log]\noverwrite = 0\n"), NULL};
    vd_config_defaults(&c);
    vd_config_parse(&c, argc_of(a4), a4, 1);
    CHECK(c.overwrite == 1, "bare --overwrite over the INI's 0");

    /* the shared helper itself, as init-model / prepare-data / export use it */
    char *b[] = {"vera-dist", "--out", "d", "--overwrite", "true", "--seed", "1", NULL};
    int n = argc_of(b);
    CHECK(vd_cli_take_flag(&n, b, "overwrite", "x") == 1 && n == 5 && !strcmp(b[3], "--seed") && b[5] == NULL,
          "--overwrite true taken out, argc %d", n);
    CHECK(vd_cli_take_flag(&n, b, "overwrite", "x") == -1 && n == 5, "absent: -1");
    char *b2[] = {"vera-dist", "--overwrite=0", "--overwriter", "1", NULL};
    n = argc_of(b2);
    CHECK(vd_cli_take_flag(&n, b2, "overwrite", NULL) == 0 && n == 3 && !strcmp(b2[1], "--overwriter"),
          "--overwrite=0; --overwriter is another option");
}

/* ---- sub-commands refuse the keys they do not read (item 8.4) ---- */
static const char *const t_keys[] = {"model", "r", "seq_len", NULL};
static const vd_config_uses t_uses = {"forward", t_keys, "--tokens, --out"};
static void parse_for_fn(void *arg) {
    char **argv = arg;
    vd_config c;
    vd_config_defaults(&c);
    vd_config_parse_for(&c, argc_of(argv), argv, 1, &t_uses);
}
#define PARSE_FOR_DIES(needle, ...) CHECK_DIES(parse_for_fn, ARGV(__VA_ARGS__), (needle))

static void test_uses(void) {
    PARSE_FOR_DIES("vera-dist: error: forward: --init_adapter is not used by forward (it takes --tokens, --out and "
                   "the config keys --model, --r, --seq_len; see vera-dist forward --help)",
                   "--model", "m", "--init_adapter", "dir");
    PARSE_FOR_DIES("forward: --overwrite is not used by forward", "--overwrite");
    PARSE_FOR_DIES("forward: --lr is not used by forward", "--lr=0.1");
    PARSE_FOR_DIES("forward: --nope: unknown option (it takes", "--nope", "1");
    PARSE_FOR_DIES("--seq_lenn: unknown option (did you mean --seq_len?)", "--seq_lenn", "1");
    /* the keys it reads work, and a --config file's other keys are ignored (the file is a run's) */
    vd_config c;
    vd_config_defaults(&c);
    char *argv[] = {"vera-dist", "--config", (char *)write_ini("[train]\nlr = 0.5\nmax_steps = 3\n[vera]\nr = 8\n"),
                    "--seq_len", "16", NULL};
    vd_config_parse_for(&c, argc_of(argv), argv, 1, &t_uses);
    CHECK(c.r == 8 && c.seq_len == 16 && c.lr == 0.5f, "r %d seq_len %d lr %g", c.r, c.seq_len, c.lr);
}

/* target_modules: config.c checks the spelling against every family's names; the family of
 * the model decides the layers (vd_model_parse_targets). */
static uint32_t gpt2_targets(const char *s) {
    char err[256];
    return vd_model_parse_targets(&vd_family_gpt2, s, err, sizeof(err));
}
static uint32_t llama_targets(const char *s) {
    char err[256];
    return vd_model_parse_targets(&vd_family_llama, s, err, sizeof(err));
}

static void test_targets(void) {
    CHECK(gpt2_targets("all") == 0xF && gpt2_targets("all-linear") == 0xF, "all");
    CHECK(gpt2_targets("attn.c_attn") == 1 && gpt2_targets("c_attn") == 1, "qkv");
    CHECK(gpt2_targets("attn.c_proj") == 2, "attn proj");
    CHECK(gpt2_targets("c_proj") == (2 | 8), "c_proj selects both projections (PEFT suffix rule)");
    CHECK(gpt2_targets(" mlp.c_proj ,\tattn.c_attn ") == (8 | 1), "subset");
    CHECK(gpt2_targets("mlp.c_proj,mlp.c_fc,attn.c_proj,attn.c_attn") == 0xF, "all four");
    CHECK(gpt2_targets("q_proj") == 0, "a Llama name selects no GPT-2 layer");
    CHECK(gpt2_targets("proj") == 0, "a partial component matches nothing");
    CHECK(llama_targets("all-linear") == 0x7F, "llama all");
    CHECK(llama_targets("q_proj,v_proj") == (1 | 4), "llama q, v");
    CHECK(llama_targets("self_attn.o_proj,down_proj") == (8 | 64), "llama full path and short name");
    CHECK(llama_targets("c_attn") == 0, "a GPT-2 name selects no Llama layer");
    char canon[256];
    vd_model_format_targets(&vd_family_gpt2, 0xF, canon, sizeof(canon));
    CHECK(!strcmp(canon, "all"), "canonical all: %s", canon);
    vd_model_format_targets(&vd_family_gpt2, 8 | 1, canon, sizeof(canon));
    CHECK(!strcmp(canon, "attn.c_attn,mlp.c_proj"), "canonical gpt2: %s", canon);
    vd_model_format_targets(&vd_family_llama, 1 | 4 | 32, canon, sizeof(canon));
    CHECK(!strcmp(canon, "mlp.up_proj,self_attn.q_proj,self_attn.v_proj"), "canonical llama: %s", canon);
    /* the config parser: spelling, duplicates, normal form */
    vd_config c;
    char terr[512];
    vd_config_defaults(&c);
    CHECK(vd_config_set(&c, "target_modules", "mlp.c_fc,mlp.c_fc", terr, sizeof(terr)) != 0, "duplicate");
    CHECK(vd_config_set(&c, "target_modules", "all,all", terr, sizeof(terr)) != 0, "duplicate all");
    CHECK(vd_config_set(&c, "target_modules", "", terr, sizeof(terr)) != 0, "empty");
    CHECK(vd_config_set(&c, "target_modules", " , ", terr, sizeof(terr)) != 0, "empty entries");
    CHECK(vd_config_set(&c, "target_modules", "ATTN.C_ATTN", terr, sizeof(terr)) != 0, "case matters");
    CHECK(vd_config_set(&c, "target_modules", "attn.c_attn mlp.c_fc", terr, sizeof(terr)) != 0, "space is not a separator");
    CHECK(vd_config_set(&c, "target_modules", "v_proj, q_proj", terr, sizeof(terr)) == 0 &&
              !strcmp(c.target_modules, "q_proj,v_proj"), "llama names normalize: %s", c.target_modules);
    CHECK(vd_config_set(&c, "target_modules", "all-linear", terr, sizeof(terr)) == 0 && !strcmp(c.target_modules, "all"),
          "all-linear normalizes to all");

    /* the serialized form is canonical: same mask, same text */
    vd_config a, b;
    vd_config_defaults(&a);
    vd_config_defaults(&b);
    SET(&a, "target_modules", "mlp.c_fc, attn.c_attn");
    SET(&b, "target_modules", "attn.c_attn,mlp.c_fc");
    static char sa[16384], sb[16384];
    serialize(&a, sa, sizeof(sa));
    serialize(&b, sb, sizeof(sb));
    CHECK(strcmp(sa, sb) == 0, "order of target_modules changes the serialization");
    CHECK(strstr(sa, "\ntarget_modules = attn.c_attn,mlp.c_fc\n") != NULL, "canonical order:\n%s", sa);
    SET(&a, "target_modules", "mlp.c_proj,mlp.c_fc,attn.c_proj,attn.c_attn");
    serialize(&a, sa, sizeof(sa));
    /* which names make "all" depends on the family: the trainer writes the family's canonical
     * form (vd_model_format_targets: "all") once the model is read */
    CHECK(strstr(sa, "\ntarget_modules = attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj\n") != NULL, "all four sorted:\n%s", sa);

    /* vd_config_set leaves the struct untouched on failure */
    char err[512];
    vd_config before = b;
    CHECK(vd_config_set(&b, "target_modules", "attn.c_attn,bogus", err, sizeof(err)) == -1, "bad targets accepted");
    CHECK(memcmp(&before, &b, sizeof(b)) == 0, "struct changed by a failed set");
    CHECK(strstr(err, "target_modules: unknown module 'bogus'") != NULL, "err: %s", err);
    CHECK(vd_config_set(&b, "r", "0", err, sizeof(err)) == -1 && b.r == 256, "r = 0 accepted");
    CHECK(strstr(err, "r: expected an integer in [1, 65536], got '0'") != NULL, "err: %s", err);
    CHECK(vd_config_set(&b, "lrr", "1", err, sizeof(err)) == -1, "unknown key accepted");
    CHECK(strcmp(err, "unknown key 'lrr' (did you mean 'lr'?)") == 0, "err: %s", err);
    CHECK(vd_config_set(&b, "config_path", "x", err, sizeof(err)) == -1, "config_path is not a key");
}

static void test_serialize(void) {
    vd_config a;
    vd_config_defaults(&a);
    SET(&a, "model", "models/gpt2 small");
    SET(&a, "train_data", "data/train_*.bin");
    SET(&a, "r", "1024");
    SET(&a, "d_initial", "0.1");
    SET(&a, "projection_prng_key", "18446744073709551615");
    SET(&a, "target_modules", "mlp.c_proj, attn.c_attn");
    SET(&a, "vera_dropout", "0.05");
    SET(&a, "lr", "3.14159265358979");
    SET(&a, "adam_eps", "1.17549435e-38"); /* FLT_MIN */
    SET(&a, "beta2", "0.99999");
    SET(&a, "grad_clip", "-0"); /* serialized as 0 */
    SET(&a, "seed", "42");
    SET(&a, "overwrite", "true");
    SET(&a, "device", "cuda");
    static char s1[16384], s2[16384];
    serialize(&a, s1, sizeof(s1));

    /* one "key = value" line per key, in table order */
    CHECK(strncmp(s1, "model = models/gpt2 small\ntrain_data = data/train_*.bin\n", 55) == 0, "start:\n%s", s1);
    CHECK(strstr(s1, "\nprojection_prng_key = 18446744073709551615\n") != NULL, "u64 max");
    CHECK(strstr(s1, "\noverwrite = 1\n") != NULL, "bool as 0/1");
    CHECK(strstr(s1, "\nlr = 3.1415927\n") != NULL, "shortest text that reads back as the same float");
    CHECK(strstr(s1, "\nd_initial = 0.1\n") != NULL, "shortest float text");
    CHECK(strstr(s1, "\ngrad_clip = 0\n") != NULL, "-0 serializes as 0");
    CHECK(strstr(s1, "config") == NULL, "config_path is not part of the serialized config");
    int lines = 0;
    for (const char *p = s1; *p; p++) lines += *p == '\n';
    CHECK(lines == 50, "%d lines", lines);

    /* round trip through vd_config_set */
    vd_config b;
    vd_config_defaults(&b);
    apply_lines(&b, s1);
    serialize(&b, s2, sizeof(s2));
    CHECK(strcmp(s1, s2) == 0, "round trip differs:\n%s\nvs\n%s", s1, s2);
    CHECK(memcmp(&a.lr, &b.lr, sizeof(float)) == 0 && memcmp(&a.adam_eps, &b.adam_eps, sizeof(float)) == 0 &&
          memcmp(&a.beta2, &b.beta2, sizeof(float)) == 0, "float bits differ after the round trip");
    CHECK(!strcmp(b.target_modules, a.target_modules) && b.projection_prng_key == a.projection_prng_key, "targets / key");

    /* every float in a range survives text and back bit for bit */
    uint32_t state = 12345;
    int bad = 0;
    for (int i = 0; i < 20000; i++) {
        state = state * 1664525u + 1013904223u;
        float x = (float)(state >> 8) / 16777216.0f; /* [0, 1) */
        if (x == 0.0f) continue;
        vd_config t;
        vd_config_defaults(&t);
        char txt[64];
        snprintf(txt, sizeof(txt), "%.9g", (double)x);
        SET(&t, "min_lr_ratio", txt);
        char out[4096];
        vd_config_serialize(&t, out, sizeof(out));
        const char *line = strstr(out, "min_lr_ratio = ");
        vd_config u;
        vd_config_defaults(&u);
        char val[64];
        snprintf(val, sizeof(val), "%.*s", (int)strcspn(line + 15, "\n"), line + 15);
        SET(&u, "min_lr_ratio", val);
        bad += memcmp(&u.min_lr_ratio, &x, sizeof(float)) != 0;
    }
    CHECK(bad == 0, "%d floats did not round-trip", bad);

    /* snprintf semantics: the full length even when the buffer is short, always terminated */
    size_t need = vd_config_serialize(&a, NULL, 0);
    CHECK(need == strlen(s1), "size query %zu vs %zu", need, strlen(s1));
    char small[16];
    CHECK(vd_config_serialize(&a, small, sizeof(small)) == need, "short buffer length");
    CHECK(strlen(small) == sizeof(small) - 1 && strncmp(small, s1, sizeof(small) - 1) == 0, "short buffer '%s'", small);

    /* first_difference names the key */
    char key[64];
    CHECK(vd_config_first_difference(s1, s2, key, sizeof(key)) == NULL, "equal configs differ");
    vd_config d = a;
    SET(&d, "lr", "0.5");
    serialize(&d, s2, sizeof(s2));
    const char *k = vd_config_first_difference(s1, s2, key, sizeof(key));
    CHECK(k == key && strcmp(key, "lr") == 0, "first difference '%s'", k ? key : "(none)");
    d = a;
    SET(&d, "model", "other");
    SET(&d, "device", "cpu");
    serialize(&d, s2, sizeof(s2));
    k = vd_config_first_difference(s1, s2, key, sizeof(key));
    CHECK(k && strcmp(key, "model") == 0, "first of two differences '%s'", k ? key : "(none)");
    d = a;
    SET(&d, "device", "auto");
    serialize(&d, s2, sizeof(s2));
    k = vd_config_first_difference(s1, s2, key, sizeof(key));
    CHECK(k && strcmp(key, "device") == 0, "last key '%s'", k ? key : "(none)");
    /* one side shorter (an older checkpoint): the first missing key is named */
    char *cut = strstr(s2, "\nr = ");
    cut[1] = 0;
    k = vd_config_first_difference(s1, s2, key, sizeof(key));
    CHECK(k && strcmp(key, "r") == 0, "missing line '%s'", k ? key : "(none)");
    k = vd_config_first_difference(s2, s1, key, sizeof(key));
    CHECK(k && strcmp(key, "r") == 0, "missing line, other side '%s'", k ? key : "(none)");
    char tiny[3];
    k = vd_config_first_difference("projection_prng_key = 1\n", "projection_prng_key = 2\n", tiny, sizeof(tiny));
    CHECK(k && strcmp(tiny, "pr") == 0, "key truncated to the buffer '%s'", k ? tiny : "(none)");

    /* resume rules: model may move (the trainer compares the fingerprint), math keys may not */
    CHECK(vd_config_key_resume_same_model("model") && !vd_config_key_resume_free("model"),
          "model: compared by fingerprint on resume, not free");
    CHECK(!vd_config_key_resume_same_model("r") && !vd_config_key_resume_free("r"), "r must match on resume");
    CHECK(!vd_config_key_resume_same_model("out_dir") && vd_config_key_resume_free("out_dir"), "out_dir is free");
    CHECK(!vd_config_key_resume_same_model("no_such_key") && !vd_config_key_resume_free("no_such_key"),
          "unknown keys must match");
    /* pack changes the data: it must match, but a checkpoint from before the key accepts its default */
    CHECK(!vd_config_key_resume_free("pack"), "pack must match on resume");
    CHECK(vd_config_line_is_default("pack = 0", 8) && !vd_config_line_is_default("pack = 1", 8),
          "pack = 0 is the default line, pack = 1 is not");
    CHECK(!vd_config_line_is_default("pack = 0x", 8 + 1), "a longer line is not a default");
    /* pack, then collective_timeout, then the adapter keys end the table: checkpoints written before
     * they existed line up key by key; collective_timeout (how long to wait for a lost rank) never
     * changes the math */
    {
        vd_config d;
        vd_config_defaults(&d);
        static char sd[16384];
        serialize(&d, sd, sizeof(sd));
        const char *tail = "pack = 0\ncollective_timeout = 20\nadapter_type = vera\nlora_alpha = 8\n"
                           "lora_dropout = 0\nuse_rslora = 0\n"
                           "num_vectors = 256\nvector_length = 256\ntopk = 2\ninit_vector_bank_bound = 0.02\n"
                           "init_logits_std = 0.1\nvblora_dropout = 0\nlr_vector_bank = 0\nsave_only_topk_weights = 0\n"
                           "recompute = none\n";
        size_t n = strlen(sd), nt = strlen(tail);
        CHECK(n > nt && !strcmp(sd + n - nt, tail), "pack, collective_timeout and the adapter keys are the last keys:\n%s", sd);
        CHECK(vd_config_line_is_default("adapter_type = vera", 19), "adapter_type = vera is the default line");
        CHECK(!vd_config_key_resume_free("adapter_type"), "adapter_type must match on resume");
        /* recompute never changes the results (bit-identical, recompute_exact.sh): free on resume */
        CHECK(vd_config_key_resume_free("recompute"), "recompute may differ on resume");
        CHECK(vd_config_line_is_default("recompute = none", 16), "recompute = none is the default line");
    }
    CHECK(vd_config_key_resume_free("collective_timeout"), "collective_timeout may change on resume");
}

static void test_help(void) {
    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile");
    if (!f) return;
    vd_config_print_help(f);
    long n = ftell(f);
    rewind(f);
    char *text = malloc((size_t)n + 1);
    size_t got = fread(text, 1, (size_t)n, f);
    text[got] = 0;
    fclose(f);
    CHECK(strstr(text, "usage: vera-dist [train] --config FILE [--key value ...]") != NULL, "usage line");
    CHECK(strstr(text, "init-model") && strstr(text, "prepare-data"), "sub-commands");
    const char *sections[] = {"[model]", "[data]", "[vera]", "[train]", "[log]", "[system]"};
    for (int i = 0; i < 6; i++) CHECK(strstr(text, sections[i]) != NULL, "section %s", sections[i]);
    /* every serialized key appears as an option */
    vd_config c;
    vd_config_defaults(&c);
    char ser[16384];
    vd_config_serialize(&c, ser, sizeof(ser));
    for (const char *p = ser; *p;) {
        size_t len = strcspn(p, " ");
        char opt[80];
        snprintf(opt, sizeof(opt), "--%.*s ", (int)len, p);
        CHECK(strstr(text, opt) != NULL, "help lacks %s", opt);
        p += strcspn(p, "\n") + 1;
    }
    CHECK(strstr(text, "--r INT") && strstr(text, "range [1, 65536]"), "type and range of r");
    CHECK(strstr(text, "--lr FLOAT") && strstr(text, "range (0, 10]"), "type and range of lr");
    free(text);
}

/* The shipped example configs must parse and validate as the keys evolve. The repository root
 * is found from this file's path (CMake compiles it by absolute path). */
static void test_shipped_configs(void) {
    const char *names[] = {"configs/gpt2-vera.ini", "configs/demo-tiny.ini", "configs/demo.ini", "configs/smollm2-vera.ini",
                           "configs/smollm2-demo.ini"};
    char root[4096];
    snprintf(root, sizeof(root), "%s", __FILE__);
    char *cut = strstr(root, "tests/test_config.c");
    if (root[0] != '/' || !cut) {
        printf("note: %s is not an absolute path; shipped configs not checked\n", __FILE__);
        return;
    }
    *cut = 0;
    for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++) {
        char path[4200];
        snprintf(path, sizeof(path), "%s%s", root, names[i]);
        char *argv[] = {"vera-dist", "--config", path, NULL};
        vd_config c;
        vd_config_defaults(&c);
        vd_config_parse(&c, 3, argv, 1); /* dies (failing the test) on any bad key */
        vd_config_validate(&c);
        CHECK(c.model[0] && c.train_data[0], "%s", names[i]);
        if (i == 1) {
            CHECK(strcmp(c.model, "out/demo-tiny/model") == 0 && c.r == 64 && !strcmp(c.target_modules, "all") &&
                      c.grad_accum == 2 && c.max_steps == 150 && c.eval_every == 50,
                  "demo-tiny.ini values");
        }
    }
}

static void parse_in_5s(void *arg) {
    alarm(5); /* a FIFO opened for reading would block the child for good */
    parse_fn(arg);
}

/* An INI that is not text is refused as such (not "unknown key ''"); a FIFO is refused unopened. */
static void test_ini_hostile(void) {
    char path[64];
    snprintf(path, sizeof(path), "/tmp/vd_test_config_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); exit(1); }
    static const unsigned char garbage[] = {0x12, 0x8b, 0x00, 0x00, 0xff, 'a', '=', 'b', '\n', 0x00, 0x01};
    if (write(fd, garbage, sizeof(garbage)) != (ssize_t)sizeof(garbage)) { perror("write"); exit(1); }
    close(fd);
    char want[256];
    snprintf(want, sizeof(want), "--config %s: not a text configuration file (byte 0 is 0x12, a control character", path);
    CHECK_DIES(parse_fn, ARGV("--config", path), want);
    unlink(path);

    const char *nul = write_ini("[train]\nlr = 0.001\n");
    /* a NUL after valid lines: append one byte */
    FILE *f = fopen(nul, "ab");
    if (!f || fputc(0, f) == EOF || fclose(f) != 0) { perror(nul); exit(1); }
    snprintf(want, sizeof(want), "--config %s: not a text configuration file (byte 19 is 0x00, a NUL byte", nul);
    CHECK_DIES(parse_fn, ARGV("--config", nul), want);

    const char *latin1 = write_ini("[train]\n; r\xe9glages\nlr = 0.001\n");
    snprintf(want, sizeof(want), "--config %s: not a text configuration file (byte 11 is 0xe9, not valid UTF-8", latin1);
    CHECK_DIES(parse_fn, ARGV("--config", latin1), want);

    const char *esc = write_ini("[train]\nlr = 0.001 \x1b[2J\n");
    snprintf(want, sizeof(want), "--config %s: not a text configuration file (byte 19 is 0x1b, a control character", esc);
    CHECK_DIES(parse_fn, ARGV("--config", esc), want);

    /* UTF-8 comments, CRLF line ends and tabs are text */
    const char *ok = write_ini("; r\xc3\xa9glages \xe8\xa8\xad\xe5\xae\x9a\r\n[train]\r\nlr\t= 0.002\r\n");
    vd_config c;
    vd_config_defaults(&c);
    vd_config_parse(&c, 3, (char **)(const char *[]){"vera-dist", "--config", ok, NULL}, 1);
    CHECK(c.lr == 0.002f, "lr from a UTF-8 INI with CRLF: %g", (double)c.lr);

    char fifo[64];
    snprintf(fifo, sizeof(fifo), "/tmp/vd_test_config_fifo_%ld", (long)getpid());
    if (mkfifo(fifo, 0644) != 0) { perror(fifo); exit(1); }
    snprintf(want, sizeof(want), "--config %s: not a regular file (it is a FIFO", fifo);
    CHECK_DIES(parse_in_5s, ARGV("--config", fifo), want);
    unlink(fifo);
}

int main(void) {
    test_defaults();
    test_ini();
    test_ini_errors();
    test_cli_errors();
    test_validate();
    test_defaults_give_way();
    test_flags();
    test_uses();
    test_targets();
    test_serialize();
    test_help();
    test_shipped_configs();
    test_ini_hostile();
    remove_tmp();
    TEST_END();
}
