/* chat.c: the chat templates vera-dist recognises, rendered in C (include/vera/chat.h).
 *
 * Recognising: both the template given and each known one are reduced to a canonical form --
 * text outside tags kept byte for byte; inside {{ }} / {% %} whitespace dropped (one space
 * kept between two identifier characters) and every string literal re-quoted as '...' with
 * \n \t \r \\ \' escapes -- and compared. So tokenizer_config.json's "\n" (a real newline in
 * the string) and a Jinja '\n' escape are the same template, but a template that differs in
 * what it writes is not. The ChatML family with a default system prompt is matched around the
 * prompt, which is then read out of the template itself.
 *
 * Rendering is the loop each template's Jinja spells out, plus the byte spans of the assistant
 * turns (content and end-of-turn token) that prepare-data turns into loss flags. */
#include "vera/chat.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"

#define SYS_MARK "@@DEFAULT_SYSTEM@@"

/* The templates as their authors publish them (tokenizer_config.json, GGUF metadata). */
static const char CHATML_SYSTEM_TEMPLATE[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" SYS_MARK "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
static const char CHATML_TEMPLATE[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
static const char LLAMA3_TEMPLATE[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
static const char SMOLLM2_SYSTEM[] = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
static const char QWEN2_SYSTEM[] = "You are a helpful assistant.";

const char *vd_chat_template_names(void) {
    return "smollm2 / qwen2 (ChatML with a default system prompt), chatml, llama3 (Meta-Llama-3-Instruct)";
}

/* ---- a growing byte buffer ---- */

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void buf_add(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) vd_die("out of memory (%zu bytes for a chat text)", cap);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void buf_str(buf *b, const char *s) { buf_add(b, s, strlen(s)); }

/* ---- canonical form ---- */

static int is_ident(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Canonical form of template text s (see the file comment). Returns NULL for what cannot be a
 * template we know: an unclosed tag or string, an escape other than \n \t \r \\ \' \". */
static char *canonicalize(const char *s) {
    buf b = {0};
    buf_add(&b, "", 0);
    size_t i = 0, n = strlen(s);
    while (i < n) {
        if (s[i] != '{' || i + 1 >= n || (s[i + 1] != '{' && s[i + 1] != '%' && s[i + 1] != '#')) {
            buf_add(&b, s + i, 1);
            i++;
            continue;
        }
        char kind = s[i + 1];
        char close = kind == '{' ? '}' : kind;
        buf_add(&b, s + i, 2);
        i += 2;
        if (kind == '#') { /* a comment: kept as written */
            const char *end = strstr(s + i, "#}");
            if (!end) goto fail;
            buf_add(&b, s + i, (size_t)(end - (s + i)) + 2);
            i = (size_t)(end - s) + 2;
            continue;
        }
        int pending_space = 0, closed = 0;
        while (i < n) {
            char c = s[i];
            if (c == close && i + 1 < n && s[i + 1] == '}') {
                buf_add(&b, s + i, 2);
                i += 2;
                closed = 1;
                break;
            }
            if (is_space(c)) {
                pending_space = 1;
                i++;
                continue;
            }
            if (pending_space && b.n > 0 && is_ident(b.p[b.n - 1]) && is_ident(c)) buf_add(&b, " ", 1);
            pending_space = 0;
            if (c == '\'' || c == '"') {
                char q = c;
                buf_add(&b, "'", 1);
                i++;
                for (;;) {
                    if (i >= n) goto fail;
                    char d = s[i++];
                    if (d == q) break;
                    if (d == '\\') {
                        if (i >= n) goto fail;
                        char e = s[i++];
                        d = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
                        if (e != 'n' && e != 't' && e != 'r' && e != '\\' && e != '\'' && e != '"') goto fail;
                    }
                    if (d == '\n') buf_str(&b, "\\n");
                    else if (d == '\t') buf_str(&b, "\\t");
                    else if (d == '\r') buf_str(&b, "\\r");
                    else if (d == '\\') buf_str(&b, "\\\\");
                    else if (d == '\'') buf_str(&b, "\\'");
                    else buf_add(&b, &d, 1);
                }
                buf_add(&b, "'", 1);
                continue;
            }
            buf_add(&b, &c, 1);
            i++;
        }
        if (!closed) goto fail;
    }
    return b.p;
fail:
    free(b.p);
    return NULL;
}

/* The body of a canonical string literal (between its quotes) decoded, or NULL if body is not
 * one literal's body (an unescaped quote would mean it spans code). */
static char *decode_literal_body(const char *s, size_t n) {
    buf b = {0};
    buf_add(&b, "", 0);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\'') {
            free(b.p);
            return NULL;
        }
        if (c == '\\') {
            if (++i >= n) {
                free(b.p);
                return NULL;
            }
            char e = s[i];
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        }
        buf_add(&b, &c, 1);
    }
    return b.p;
}

static void set_chatml_system(vd_chat_template *tpl, const char *system) {
    tpl->kind = VD_CHAT_CHATML_SYSTEM;
    size_t n = strlen(system) + 1;
    tpl->default_system = mallocCheck(n);
    memcpy(tpl->default_system, system, n);
    const char *who = strcmp(system, SMOLLM2_SYSTEM) == 0 ? "SmolLM2" : strcmp(system, QWEN2_SYSTEM) == 0 ? "Qwen2" : "";
    if (who[0]) snprintf(tpl->name, sizeof(tpl->name), "chatml-system (%s)", who);
    else snprintf(tpl->name, sizeof(tpl->name), "chatml-system");
}

void vd_chat_template_recognise(vd_chat_template *tpl, const char *template_text, const char *what) {
    memset(tpl, 0, sizeof(*tpl));
    if (!template_text || !template_text[0])
        vd_die("%s: the tokenizer has no chat template (name one instead, e.g. prepare-data --chat_template: %s)",
               what, vd_chat_template_names());
    char *c = canonicalize(template_text);
    char *ref = NULL;
    int found = 0;
    if (c) {
        ref = canonicalize(LLAMA3_TEMPLATE);
        if (ref && strcmp(c, ref) == 0) {
            tpl->kind = VD_CHAT_LLAMA3;
            snprintf(tpl->name, sizeof(tpl->name), "llama3");
            found = 1;
        }
        free(ref);
        ref = canonicalize(CHATML_TEMPLATE);
        if (!found && ref && strcmp(c, ref) == 0) {
            tpl->kind = VD_CHAT_CHATML;
            snprintf(tpl->name, sizeof(tpl->name), "chatml");
            found = 1;
        }
        free(ref);
        ref = canonicalize(CHATML_SYSTEM_TEMPLATE);
        if (!found && ref) {
            /* prefix + escaped prompt + suffix, the prompt being the body of one literal */
            char *mark = strstr(ref, SYS_MARK);
            vd_require(mark != NULL);
            size_t pre = (size_t)(mark - ref), suf = strlen(mark + strlen(SYS_MARK)), n = strlen(c);
            if (n >= pre + suf && strncmp(c, ref, pre) == 0 && strcmp(c + n - suf, mark + strlen(SYS_MARK)) == 0) {
                char *system = decode_literal_body(c + pre, n - pre - suf);
                if (system) {
                    set_chatml_system(tpl, system);
                    free(system);
                    found = 1;
                }
            }
        }
        free(ref);
    }
    free(c);
    if (!found) {
        char head[64];
        vd_escape_printable(head, sizeof(head), template_text, strlen(template_text) < 60 ? strlen(template_text) : 60);
        vd_die("%s: chat template not recognised (Jinja is not implemented; recognised: %s; or name one with "
               "--chat_template); it starts '%s'", what, vd_chat_template_names(), head);
    }
}

int vd_chat_template_by_name(vd_chat_template *tpl, const char *name) {
    memset(tpl, 0, sizeof(*tpl));
    if (strcmp(name, "smollm2") == 0) set_chatml_system(tpl, SMOLLM2_SYSTEM);
    else if (strcmp(name, "qwen2") == 0) set_chatml_system(tpl, QWEN2_SYSTEM);
    else if (strcmp(name, "chatml") == 0) {
        tpl->kind = VD_CHAT_CHATML;
        snprintf(tpl->name, sizeof(tpl->name), "chatml");
    } else if (strcmp(name, "llama3") == 0) {
        tpl->kind = VD_CHAT_LLAMA3;
        snprintf(tpl->name, sizeof(tpl->name), "llama3");
    } else return 0;
    return 1;
}

void vd_chat_template_free(vd_chat_template *tpl) {
    free(tpl->default_system);
    memset(tpl, 0, sizeof(*tpl));
}

/* ---- rendering ---- */

/* Length in bytes of the Unicode whitespace character (Python's str.isspace, which Jinja's trim
 * uses) that starts at s[0..n), or 0. */
static size_t space_at(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return 1;
    if (n >= 2 && c == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3 && c == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3;                        /* U+1680 */
    if (n >= 3 && c == 0xe2 && s[1] == 0x80 &&
        ((s[2] >= 0x80 && s[2] <= 0x8a) || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))
        return 3;                                                                               /* U+2000-200A, 2028, 2029, 202F */
    if (n >= 3 && c == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3;                        /* U+205F */
    if (n >= 3 && c == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3;                        /* U+3000 */
    return 0;
}

/* Whitespace character ending at s[n-1], or 0. */
static size_t space_before(const unsigned char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        if (space_at(s + n - k, k) == k) return k;
    }
    return 0;
}

/* Jinja's trim: Python's str.strip() of the content. */
static void trimmed(const char *s, const char **begin, size_t *len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), k;
    while ((k = space_at(p, n)) > 0) {
        p += k;
        n -= k;
    }
    while ((k = space_before(p, n)) > 0) n -= k;
    *begin = (const char *)p;
    *len = n;
}

static void add_span(vd_chat_span **spans, size_t *n, size_t *cap, size_t begin, size_t end) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        vd_chat_span *p = realloc(*spans, *cap * sizeof(vd_chat_span));
        if (!p) vd_die("out of memory (chat spans)");
        *spans = p;
    }
    (*spans)[(*n)++] = (vd_chat_span){begin, end};
}

char *vd_chat_render(const vd_chat_template *tpl, const vd_chat_message *messages, size_t n, int add_generation_prompt,
                     const char *bos_text, const char *eos_text, size_t *len_out, vd_chat_span **spans_out,
                     size_t *n_spans_out) {
    (void)eos_text; /* none of the recognised templates writes it */
    buf b = {0};
    buf_add(&b, "", 0);
    vd_chat_span *spans = NULL;
    size_t n_spans = 0, cap_spans = 0;
    for (size_t i = 0; i < n; i++) {
        const vd_chat_message *m = &messages[i];
        vd_require(m->role != NULL && m->content != NULL);
        int assistant = strcmp(m->role, "assistant") == 0;
        size_t begin;
        if (tpl->kind == VD_CHAT_LLAMA3) {
            /* bos_token + '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content|trim + '<|eot_id|>' */
            if (i == 0) buf_str(&b, bos_text ? bos_text : "");
            buf_str(&b, "<|start_header_id|>");
            buf_str(&b, m->role);
            buf_str(&b, "<|end_header_id|>\n\n");
            const char *c;
            size_t len;
            trimmed(m->content, &c, &len);
            begin = b.n;
            buf_add(&b, c, len);
            buf_str(&b, "<|eot_id|>");
        } else {
            /* '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n', after the default
             * system turn when the conversation does not open with one */
            if (i == 0 && tpl->kind == VD_CHAT_CHATML_SYSTEM && strcmp(messages[0].role, "system") != 0) {
                buf_str(&b, "<|im_start|>system\n");
                buf_str(&b, tpl->default_system);
                buf_str(&b, "<|im_end|>\n");
            }
            buf_str(&b, "<|im_start|>");
            buf_str(&b, m->role);
            buf_str(&b, "\n");
            begin = b.n;
            buf_str(&b, m->content);
            buf_str(&b, "<|im_end|>");
        }
        if (assistant) add_span(&spans, &n_spans, &cap_spans, begin, b.n);
        if (tpl->kind != VD_CHAT_LLAMA3) buf_str(&b, "\n");
    }
    if (add_generation_prompt)
        buf_str(&b, tpl->kind == VD_CHAT_LLAMA3 ? "<|start_header_id|>assistant<|end_header_id|>\n\n"
                                                : "<|im_start|>assistant\n");
    if (len_out) *len_out = b.n;
    if (spans_out) {
        *spans_out = spans;
        *n_spans_out = n_spans;
    } else {
        free(spans);
    }
    return b.p;
}
