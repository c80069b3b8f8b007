/* chat_render.c: renders one conversation with src/text/chat.c, for tests/python/test_prepare_data.py
 * (which compares it with transformers' apply_chat_template). Not a ctest.
 *
 * usage: chat_render REQUEST.json
 *   {"template": "<jinja text>" | "name": "llama3", "messages": [{"role", "content"}...],
 *    "add_generation_prompt": bool, "bos": "...", "eos": "..."}
 * prints {"name": ..., "text": ..., "spans": [[begin, end], ...]} (byte offsets into text's UTF-8).
 * An unrecognised template ends with vd_die's one-line error, as prepare-data would. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/chat.h"
#include "vera/common.h"

static const char *str_field(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: chat_render REQUEST.json\n");
        return 2;
    }
    FILE *f = fopenCheck(argv[1], "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = mallocCheck((size_t)n + 1);
    freadCheck(text, 1, (size_t)n, f, argv[1]);
    text[n] = 0;
    fcloseCheck(f, argv[1]);
    cJSON *req = cJSON_Parse(text);
    if (!req) vd_die("%s: not JSON", argv[1]);

    vd_chat_template tpl;
    const char *name = str_field(req, "name");
    if (name) {
        if (!vd_chat_template_by_name(&tpl, name)) vd_die("unknown template name '%s'", name);
    } else {
        vd_chat_template_recognise(&tpl, str_field(req, "template"), "chat_render");
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    int count = cJSON_GetArraySize(msgs);
    vd_chat_message *m = callocCheck((size_t)count + 1, sizeof(vd_chat_message));
    for (int i = 0; i < count; i++) {
        const cJSON *o = cJSON_GetArrayItem(msgs, i);
        m[i].role = str_field(o, "role");
        m[i].content = str_field(o, "content");
        if (!m[i].role || !m[i].content) vd_die("message %d needs string role and content", i);
    }
    const char *bos = str_field(req, "bos"), *eos = str_field(req, "eos");
    int gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "add_generation_prompt"));
    size_t len = 0, n_spans = 0;
    vd_chat_span *spans = NULL;
    char *out = vd_chat_render(&tpl, m, (size_t)count, gen, bos ? bos : "", eos ? eos : "", &len, &spans, &n_spans);

    cJSON *res = cJSON_CreateObject();
    cJSON_AddStringToObject(res, "name", tpl.name);
    cJSON_AddStringToObject(res, "text", out);
    cJSON *arr = cJSON_AddArrayToObject(res, "spans");
    for (size_t i = 0; i < n_spans; i++) {
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)spans[i].begin));
        cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)spans[i].end));
        cJSON_AddItemToArray(arr, pair);
    }
    char *json = cJSON_PrintUnformatted(res);
    printf("%s\n", json);
    free(json);
    cJSON_Delete(res);
    cJSON_Delete(req);
    free(out);
    free(spans);
    free(m);
    free(text);
    vd_chat_template_free(&tpl);
    return 0;
}
