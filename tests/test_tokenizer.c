/* test_tokenizer.c: the tokenizer's API on a hand-made tokenizer.json (tokenizer.c), and its
 * errors. The ids of real tokenizers are checked against Hugging Face in
 * tests/python/test_tokenizer.py; this covers the C interface without Python: merges by rank,
 * added tokens, offsets, the post-processor, decode, lookups, tokenizer_config.json, and a
 * one-line death for each kind of bad file.
 *
 * The tokenizer: vocab a b c Ġ ab abc Ġab (byte-level spelling, Ġ = space), merges "a b" (rank 0),
 * "ab c" (1), "Ġ ab" (2), an added special token <|x|>, GPT-2's ByteLevel pre-tokenizer and a
 * TemplateProcessing that puts <|x|> in front. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>

#include "test_util.h"
#include "vera/common.h"
#include "vera/tokenizer.h"

static char g_dir[1024]; /* short enough that every path below fits */

enum { ID_A = 0, ID_B = 1, ID_C = 2, ID_SP = 3, ID_AB = 4, ID_ABC = 5, ID_SPAB = 6, ID_X = 7 };

static const char *TOKENIZER_JSON =
    "{\"version\": \"1.0\", \"normalizer\": null,\n"
    " \"added_tokens\": [{\"id\": 7, \"content\": \"<|x|>\", \"single_word\": false, \"lstrip\": false,"
    "   \"rstrip\": false, \"normalized\": false, \"special\": true}],\n"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true},\n"
    " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<|x|>\", \"type_id\": 0}},"
    "   {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\": {\"<|x|>\": {\"id\": \"<|x|>\","
    "   \"ids\": [7], \"tokens\": [\"<|x|>\"]}}},\n"
    " \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"ignore_merges\": false,\n"
    "   \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"\\u0120\": 3, \"ab\": 4, \"abc\": 5, \"\\u0120ab\": 6},\n"
    "   \"merges\": [\"a b\", [\"ab\", \"c\"], \"\\u0120 ab\"]}}\n";

static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(s, f) < 0 || fclose(f) != 0) { perror(path); exit(1); }
}

/* a directory with tokenizer.json = TOKENIZER_JSON with `from` replaced by `to` */
static void write_variant(const char *name, const char *from, const char *to, char *dir_out) {
    snprintf(dir_out, VD_PATH_MAX, "%s/%s", g_dir, name);
    vd_mkdir_p(dir_out);
    const char *at = strstr(TOKENIZER_JSON, from);
    if (!at) { fprintf(stderr, "test bug: '%s' not in the tokenizer\n", from); exit(1); }
    size_t n = strlen(TOKENIZER_JSON) + strlen(to) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%.*s%s%s", (int)(at - TOKENIZER_JSON), TOKENIZER_JSON, to, at + strlen(from));
    char path[VD_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir_out);
    write_text(path, s);
    free(s);
}

static int ids_are(const vd_tokens *v, const int32_t *want, size_t n) {
    if (v->n != n) return 0;
    for (size_t i = 0; i < n; i++) if (v->ids[i] != want[i]) return 0;
    return 1;
}

static void load_path(void *arg) { vd_tokenizer_load((const char *)arg); }

/* Removes the temp tree: g_dir/<variant>/<file>, two levels. */
static void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) { unlink(path); return; }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[VD_PATH_MAX];
        snprintf(sub, sizeof(sub), "%.2000s/%.1000s", path, e->d_name);
        remove_tree(sub);
    }
    closedir(d);
    rmdir(path);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    if ((size_t)snprintf(g_dir, sizeof(g_dir), "%s/vd_tok_XXXXXX", tmp && *tmp ? tmp : "/tmp") >= sizeof(g_dir)) {
        fprintf(stderr, "test_tokenizer: TMPDIR too long\n");
        return 1;
    }
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    char dir[VD_PATH_MAX], path[VD_PATH_MAX + 64];
    write_variant("good", "\"normalizer\": null", "\"normalizer\": null", dir);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    write_text(path, "{\"bos_token\": \"<|x|>\", \"eos_token\": {\"content\": \"<|x|>\"}, \"chat_template\": \"T\"}");

    vd_tokenizer *t = vd_tokenizer_load(dir);
    CHECK(vd_tokenizer_vocab_size(t) == 8, "vocab size %d", (int)vd_tokenizer_vocab_size(t));

    /* "abc ab<|x|>cd": pieces abc | " ab" | <|x|> | c d; a+b (rank 0) then ab+c; Ġ+ab after a+b;
     * d is not in the vocabulary and there is no unk token: dropped, as tokenizers does */
    const char *text = "abc ab<|x|>cd";
    vd_tokens v = {0};
    vd_tokenizer_encode(t, text, strlen(text), VD_TOK_WITH_OFFSETS, &v);
    const int32_t want[] = {ID_ABC, ID_SPAB, ID_X, ID_C};
    const uint32_t want_off[] = {0, 3, 6, 11};
    CHECK(ids_are(&v, want, 4), "got %zu ids, first %d", v.n, v.n ? (int)v.ids[0] : -1);
    for (size_t i = 0; i < 4 && i < v.n; i++)
        CHECK(v.offsets && v.offsets[i] == want_off[i], "offset %zu = %u", i, v.offsets ? v.offsets[i] : 0);
    /* encode appends; ADD_SPECIAL puts the template's <|x|> in front */
    vd_tokenizer_encode(t, "ba", 2, VD_TOK_ADD_SPECIAL | VD_TOK_WITH_OFFSETS, &v);
    const int32_t want2[] = {ID_ABC, ID_SPAB, ID_X, ID_C, ID_X, ID_B, ID_A};
    CHECK(ids_are(&v, want2, 7), "after the second encode: %zu ids", v.n);
    /* an empty text gives nothing (or just the template's tokens) */
    vd_tokens e = {0};
    vd_tokenizer_encode(t, "", 0, 0, &e);
    CHECK(e.n == 0 && e.offsets == NULL, "empty text gave %zu ids", e.n);
    vd_tokenizer_encode(t, "", 0, VD_TOK_ADD_SPECIAL, &e);
    CHECK(e.n == 1 && e.ids[0] == ID_X, "empty text with ADD_SPECIAL gave %zu ids", e.n);
    vd_tokens_free(&e);

    /* an invalid UTF-8 byte matches no regex class: a piece of its own (here dropped: not in the
     * vocabulary), so "a\xffb" is a, b and not ab */
    vd_tokenizer_encode(t, "a\xff" "b", 3, 0, &e);
    CHECK(e.n == 2 && e.ids[0] == ID_A && e.ids[1] == ID_B, "invalid UTF-8 gave %zu ids", e.n);
    vd_tokens_free(&e);

    size_t len;
    char *s = vd_tokenizer_decode(t, v.ids, 4, 0, &len);
    CHECK(len == 12 && !strcmp(s, "abc ab<|x|>c"), "decode gave '%s'", s);
    free(s);
    s = vd_tokenizer_decode(t, v.ids, 4, 1, NULL);
    CHECK(!strcmp(s, "abc abc"), "decode skip_special gave '%s'", s);
    free(s);
    vd_tokens_free(&v);
    CHECK(v.ids == NULL && v.n == 0, "vd_tokens_free clears");

    const char *b = vd_tokenizer_token_bytes(t, ID_SPAB, &len);
    CHECK(b && len == 3 && !memcmp(b, " ab", 3), "bytes of Ġab");
    CHECK(vd_tokenizer_token_bytes(t, 8, &len) == NULL && vd_tokenizer_token_bytes(t, -1, &len) == NULL, "out of range");
    CHECK(vd_tokenizer_token_id(t, "\xc4\xa0" "ab") == ID_SPAB, "id of Ġab");
    CHECK(vd_tokenizer_token_id(t, "<|x|>") == ID_X && vd_tokenizer_token_id(t, "zz") == -1, "lookups");
    CHECK(vd_tokenizer_is_special(t, ID_X) && !vd_tokenizer_is_special(t, ID_A) && !vd_tokenizer_is_special(t, 99), "special");
    CHECK(vd_tokenizer_bos(t) == ID_X && vd_tokenizer_eos(t) == ID_X, "bos %d eos %d", (int)vd_tokenizer_bos(t),
          (int)vd_tokenizer_eos(t));
    CHECK(!strcmp(vd_tokenizer_bos_text(t), "<|x|>") && !strcmp(vd_tokenizer_eos_text(t), "<|x|>"), "bos / eos text");
    CHECK(vd_tokenizer_chat_template(t) && !strcmp(vd_tokenizer_chat_template(t), "T"), "chat template");
    vd_tokenizer_free(t);

    /* the file itself (no config beside it: no bos, no template) */
    write_variant("plain", "\"normalizer\": null", "\"normalizer\": null", dir);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    t = vd_tokenizer_load(path);
    CHECK(vd_tokenizer_bos(t) == -1 && !strcmp(vd_tokenizer_bos_text(t), "") && !vd_tokenizer_chat_template(t), "no config");
    vd_tokenizer_free(t);

    /* bad input: one line naming the file and the problem */
    static char p[16][VD_PATH_MAX + 64];
    snprintf(p[0], sizeof(p[0]), "%s/missing", g_dir);
    CHECK_DIES(load_path, p[0], "missing: cannot open");
    snprintf(p[1], sizeof(p[1]), "%s", g_dir); /* a directory without tokenizer.json */
    CHECK_DIES(load_path, p[1], "no tokenizer.json in this directory");
    const struct { const char *name, *from, *to, *needle; } bad[] = {
        {"wordpiece", "\"type\": \"BPE\"", "\"type\": \"WordPiece\"", "model type WordPiece is not supported"},
        {"lower", "\"normalizer\": null", "\"normalizer\": {\"type\": \"Lowercase\"}", "normalizer Lowercase is not supported"},
        {"meta", "\"pre_tokenizer\": {\"type\": \"ByteLevel\"", "\"pre_tokenizer\": {\"type\": \"Metaspace\"",
         "pre_tokenizer Metaspace is not supported"},
        {"merge", "\"\\u0120 ab\"", "\"\\u0120 zz\"", "merge 2 '\xc4\xa0 zz' names a token that is not in the vocabulary"},
        {"dropout", "\"dropout\": null", "\"dropout\": 0.1", "dropout"},
        {"decoder", "\"decoder\": {\"type\": \"ByteLevel\"", "\"decoder\": {\"type\": \"WordPiece\"",
         "decoder WordPiece is not supported"},
        {"roberta", "\"post_processor\": {\"type\": \"TemplateProcessing\"", "\"post_processor\": {\"type\": \"RobertaProcessing\"",
         "post_processor RobertaProcessing is not supported"},
        {"truncated", "\"model\": {", "\"model\": [", "not a JSON object"},
        {"split", "\"pre_tokenizer\": {\"type\": \"ByteLevel\"",
         "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}, \"x\": {\"type\": \"ByteLevel\"",
         "Split regex does not compile"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_variant(bad[i].name, bad[i].from, bad[i].to, dir);
        snprintf(p[2 + i], sizeof(p[2 + i]), "%s/tokenizer.json", dir);
        CHECK_DIES(load_path, p[2 + i], bad[i].needle);
        CHECK_DIES(load_path, p[2 + i], p[2 + i]); /* names the file */
    }
    if (vd_test_failures == 0) remove_tree(g_dir); /* kept to look at when a check failed */
    TEST_END();
}
