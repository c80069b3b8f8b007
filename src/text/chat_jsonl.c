/* chat_jsonl.c: one line of instruction data (JSONL) -> the conversation it stands for.
 *
 * The three layouts that instruction datasets use (include/vera/chat.h): Hugging Face's
 * "messages", TRL's "prompt"/"completion", and Alpaca's "instruction"/"input"/"output". Every
 * problem is one line naming FILE:LINE and what was expected; a line is never half-used. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "vera/chat.h"
#include "vera/common.h"

typedef struct {
    const char *path;
    unsigned long long line;
} where;

#define DIE_AT(w, fmt, ...) vd_die("%s:%llu: " fmt, (w)->path, (w)->line, __VA_ARGS__)

static const char *type_name(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "a list";
    if (cJSON_IsObject(v)) return "an object";
    return "an unknown value";
}

static void push(vd_chat_example *ex, size_t *cap, const char *role, const char *content) {
    if (ex->n == *cap) {
        *cap = *cap ? 2 * *cap : 4;
        vd_chat_message *p = realloc(ex->messages, *cap * sizeof(vd_chat_message));
        if (!p) vd_die("out of memory (chat messages)");
        ex->messages = p;
    }
    ex->messages[ex->n++] = (vd_chat_message){role, content};
}

/* A string field that must be present (what names it in errors). */
static const char *need_string(const where *w, const cJSON *obj, const char *key, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v)) DIE_AT(w, "%s \"%s\" is %s (expected a string)", what, key, type_name(v));
    return v->valuestring;
}

/* Appends a list of {role, content} messages (HF chat format). */
static void add_messages(const where *w, vd_chat_example *ex, size_t *cap, const cJSON *list, const char *key) {
    if (!cJSON_IsArray(list)) DIE_AT(w, "\"%s\" is %s (expected a list of {\"role\", \"content\"} messages)", key,
                                     type_name(list));
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, list) {
        if (!cJSON_IsObject(m))
            DIE_AT(w, "\"%s\"[%d] is %s (expected {\"role\": ..., \"content\": ...})", key, i, type_name(m));
        char what[64];
        snprintf(what, sizeof(what), "\"%s\"[%d]", key, i);
        const char *role = need_string(w, m, "role", what);
        const char *content = need_string(w, m, "content", what);
        if (strcmp(role, "system") != 0 && strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) {
            char r[64];
            vd_escape_printable(r, sizeof(r), role, strlen(role));
            DIE_AT(w, "%s has role '%s' (expected system, user or assistant)", what, r);
        }
        push(ex, cap, role, content);
        i++;
    }
    if (i == 0) DIE_AT(w, "\"%s\" is an empty list (expected at least one message)", key);
}

void vd_chat_example_parse(vd_chat_example *ex, const char *line, size_t len, const char *path, unsigned long long lineno) {
    memset(ex, 0, sizeof(*ex));
    where w = {path, lineno};
    /* cJSON would cut a string at an escaped NUL without saying so */
    if (memchr(line, 0, len)) DIE_AT(&w, "%s", "a NUL byte in the line (expected one JSON object of text)");
    for (size_t i = 0; i + 6 <= len; i++) {
        if (line[i] == '\\' && memcmp(line + i, "\\u0000", 6) == 0)
            DIE_AT(&w, "%s", "\\u0000 in a string (NUL characters are not supported)");
        if (line[i] == '\\') i++; /* skip the escaped character, so \\u0000 is text */
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    if (!j) {
        size_t at = end && end >= line ? (size_t)(end - line) : 0;
        DIE_AT(&w, "not valid JSON near byte %zu (expected one JSON object per line)", at + 1);
    }
    ex->json = j;
    if (end) {
        while ((size_t)(end - line) < len && (*end == ' ' || *end == '\t' || *end == '\r')) end++;
        if ((size_t)(end - line) < len) DIE_AT(&w, "text after the JSON object at byte %zu (expected one object per line)",
                                               (size_t)(end - line) + 1);
    }
    if (!cJSON_IsObject(j)) DIE_AT(&w, "the line is %s (expected a JSON object)", type_name(j));

    size_t cap = 0;
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(j, "messages");
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    const cJSON *instruction = cJSON_GetObjectItemCaseSensitive(j, "instruction");
    int kinds = (messages != NULL) + (prompt != NULL) + (instruction != NULL);
    if (kinds > 1)
        DIE_AT(&w, "%s", "the line mixes \"messages\", \"prompt\" and \"instruction\" (expected one of the three formats)");
    if (messages) {
        add_messages(&w, ex, &cap, messages, "messages");
    } else if (prompt) {
        const cJSON *completion = cJSON_GetObjectItemCaseSensitive(j, "completion");
        if (!completion) DIE_AT(&w, "%s", "\"prompt\" without \"completion\" (expected both)");
        if (cJSON_IsString(prompt)) push(ex, &cap, "user", prompt->valuestring);
        else add_messages(&w, ex, &cap, prompt, "prompt");
        if (cJSON_IsString(completion)) push(ex, &cap, "assistant", completion->valuestring);
        else add_messages(&w, ex, &cap, completion, "completion");
    } else if (instruction) {
        const char *ins = need_string(&w, j, "instruction", "the Alpaca field");
        const cJSON *input = cJSON_GetObjectItemCaseSensitive(j, "input");
        if (input && !cJSON_IsString(input) && !cJSON_IsNull(input))
            DIE_AT(&w, "the Alpaca field \"input\" is %s (expected a string)", type_name(input));
        const char *out = need_string(&w, j, "output", "the Alpaca field");
        const char *in = cJSON_IsString(input) ? input->valuestring : "";
        if (in[0]) {
            size_t a = strlen(ins), b = strlen(in);
            ex->joined = mallocCheck(a + 2 + b + 1);
            memcpy(ex->joined, ins, a);
            memcpy(ex->joined + a, "\n\n", 2);
            memcpy(ex->joined + a + 2, in, b + 1);
            push(ex, &cap, "user", ex->joined);
        } else {
            push(ex, &cap, "user", ins);
        }
        push(ex, &cap, "assistant", out);
    } else {
        DIE_AT(&w, "%s", "no \"messages\", \"prompt\"/\"completion\" or \"instruction\"/\"output\" (expected one of "
                         "the three instruction formats)");
    }
    int has_assistant = 0;
    for (size_t i = 0; i < ex->n; i++) has_assistant |= strcmp(ex->messages[i].role, "assistant") == 0;
    if (!has_assistant) DIE_AT(&w, "%s", "no assistant message (nothing would take a loss)");
}

void vd_chat_example_free(vd_chat_example *ex) {
    cJSON_Delete(ex->json);
    free(ex->messages);
    free(ex->joined);
    memset(ex, 0, sizeof(*ex));
}
