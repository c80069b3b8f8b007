/* test_chat.c: chat templates (chat.c) and instruction lines (chat_jsonl.c).
 *
 * Rendered texts are written out by hand from each template's Jinja (tests/python/
 * test_prepare_data.py compares them with transformers' apply_chat_template on many more
 * conversations); the spans must cover exactly the assistant content and end token. Every bad
 * JSONL line must end the process with one line naming FILE:LINE and what was expected. */
#include <stdint.h>

#include "test_util.h"
#include "vera/chat.h"
#include "vera/common.h"

static const char *span_text(const char *text, const vd_chat_span *s, char *out, size_t cap) {
    size_t n = s->end - s->begin < cap - 1 ? s->end - s->begin : cap - 1;
    memcpy(out, text + s->begin, n);
    out[n] = 0;
    return out;
}

static void test_render(void) {
    vd_chat_message conv[4] = {
        {"user", "Hi"}, {"assistant", " Hello! "}, {"user", "More?"}, {"assistant", "\xe3\x80\x80No.\n"}};
    char buf[256];
    vd_chat_template tpl;
    size_t len, n_spans;
    vd_chat_span *spans;

    CHECK(vd_chat_template_by_name(&tpl, "smollm2"), "smollm2 by name");
    char *t = vd_chat_render(&tpl, conv, 2, 1, "<|im_start|>", "<|im_end|>", &len, &spans, &n_spans);
    const char *want_smol = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                            "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n Hello! <|im_end|>\n"
                            "<|im_start|>assistant\n";
    CHECK(strcmp(t, want_smol) == 0 && len == strlen(want_smol), "smollm2 text: %s", t);
    CHECK(n_spans == 1 && strcmp(span_text(t, &spans[0], buf, sizeof(buf)), " Hello! <|im_end|>") == 0,
          "smollm2 span '%s'", n_spans ? buf : "");
    free(t);
    free(spans);
    /* a system turn replaces the default one */
    vd_chat_message sys[2] = {{"system", "S"}, {"user", "U"}};
    t = vd_chat_render(&tpl, sys, 2, 0, "", "", &len, &spans, &n_spans);
    CHECK(strcmp(t, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n") == 0 && n_spans == 0,
          "smollm2 with a system turn: %s", t);
    free(t);
    free(spans);
    vd_chat_template_free(&tpl);

    CHECK(vd_chat_template_by_name(&tpl, "llama3"), "llama3 by name");
    t = vd_chat_render(&tpl, conv, 4, 0, "<|begin_of_text|>", "<|eot_id|>", &len, &spans, &n_spans);
    const char *want_llama = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                             "<|start_header_id|>user<|end_header_id|>\n\nMore?<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\nNo.<|eot_id|>";
    CHECK(strcmp(t, want_llama) == 0, "llama3 text (content trimmed, U+3000 included): %s", t);
    CHECK(n_spans == 2 && strcmp(span_text(t, &spans[0], buf, sizeof(buf)), "Hello!<|eot_id|>") == 0,
          "llama3 span 0 '%s'", buf);
    CHECK(n_spans == 2 && strcmp(span_text(t, &spans[1], buf, sizeof(buf)), "No.<|eot_id|>") == 0,
          "llama3 span 1 '%s'", buf);
    free(t);
    free(spans);
    t = vd_chat_render(&tpl, conv, 1, 1, "<|begin_of_text|>", "", NULL, NULL, NULL);
    CHECK(strcmp(t, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n") == 0, "llama3 generation prompt: %s", t);
    free(t);
    vd_chat_template_free(&tpl);
    CHECK(!vd_chat_template_by_name(&tpl, "jinja"), "unknown name");

    /* recognised from the text, whatever the spacing inside the tags */
    const char *qwen = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                       "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                       "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                       "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    vd_chat_template_recognise(&tpl, qwen, "test");
    CHECK(tpl.kind == VD_CHAT_CHATML_SYSTEM && strcmp(tpl.default_system, "You are a helpful assistant.") == 0 &&
              strcmp(tpl.name, "chatml-system (Qwen2)") == 0, "qwen2 recognised: %s", tpl.name);
    vd_chat_template_free(&tpl);
}

static void die_recognise(void *arg) {
    vd_chat_template tpl;
    vd_chat_template_recognise(&tpl, arg, "prepare-data: --tokenizer tok.json");
}

typedef struct {
    const char *line;
    int n;                   /* expected messages, for good lines */
    const char *roles[4];
    const char *contents[4];
} line_case;

static void die_parse(void *arg) {
    vd_chat_example ex;
    vd_chat_example_parse(&ex, arg, strlen(arg), "data/train.jsonl", 7);
}

static void test_jsonl(void) {
    const line_case good[] = {
        {"{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"Q\"},"
         " {\"role\": \"assistant\", \"content\": \"A\"}]}",
         3, {"system", "user", "assistant"}, {"S", "Q", "A"}},
        {"{\"prompt\": \"Q?\", \"completion\": \"A.\", \"extra\": 1}", 2, {"user", "assistant"}, {"Q?", "A."}},
        {"{\"prompt\": [{\"role\": \"user\", \"content\": \"Q\"}], \"completion\": [{\"role\": \"assistant\", "
         "\"content\": \"A\"}]}", 2, {"user", "assistant"}, {"Q", "A"}},
        {"{\"instruction\": \"Add\", \"input\": \"2 2\", \"output\": \"4\"}", 2, {"user", "assistant"},
         {"Add\n\n2 2", "4"}},
        {"{\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"hi\"}  \r", 2, {"user", "assistant"},
         {"Say hi", "hi"}},
        {"{\"instruction\": \"Say hi\", \"output\": \"h\\u00e9\\\\u0000\"}", 2, {"user", "assistant"},
         {"Say hi", "h\xc3\xa9\\u0000"}},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        vd_chat_example ex;
        vd_chat_example_parse(&ex, good[i].line, strlen(good[i].line), "x.jsonl", 1);
        int ok = ex.n == (size_t)good[i].n;
        for (size_t k = 0; ok && k < ex.n; k++)
            ok = strcmp(ex.messages[k].role, good[i].roles[k]) == 0 && strcmp(ex.messages[k].content, good[i].contents[k]) == 0;
        CHECK(ok, "good line %zu: %zu messages", i, ex.n);
        vd_chat_example_free(&ex);
    }
    struct {
        const char *line, *needle;
    } bad[] = {
        {"{\"messages\": [", "data/train.jsonl:7: not valid JSON near byte"},
        {"[1, 2]", "data/train.jsonl:7: the line is a list (expected a JSON object)"},
        {"{\"a\": 1} {\"b\": 2}", "data/train.jsonl:7: text after the JSON object at byte 10"},
        {"{\"text\": \"hello\"}", "data/train.jsonl:7: no \"messages\", \"prompt\"/\"completion\" or \"instruction\"/\"output\""},
        {"{\"messages\": \"hi\"}", "data/train.jsonl:7: \"messages\" is a string (expected a list of"},
        {"{\"messages\": []}", "data/train.jsonl:7: \"messages\" is an empty list"},
        {"{\"messages\": [3]}", "data/train.jsonl:7: \"messages\"[0] is a number (expected {\"role\""},
        {"{\"messages\": [{\"role\": \"user\"}]}", "data/train.jsonl:7: \"messages\"[0] \"content\" is nothing (expected a string)"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
         "data/train.jsonl:7: \"messages\"[0] \"content\" is a list (expected a string)"},
        {"{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}",
         "data/train.jsonl:7: \"messages\"[0] has role 'bot' (expected system, user or assistant)"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", "data/train.jsonl:7: no assistant message"},
        {"{\"prompt\": \"x\"}", "data/train.jsonl:7: \"prompt\" without \"completion\""},
        {"{\"prompt\": 5, \"completion\": \"y\"}", "data/train.jsonl:7: \"prompt\" is a number (expected a list"},
        {"{\"instruction\": \"x\"}", "data/train.jsonl:7: the Alpaca field \"output\" is nothing (expected a string)"},
        {"{\"instruction\": \"x\", \"input\": 3, \"output\": \"y\"}", "data/train.jsonl:7: the Alpaca field \"input\" is a number"},
        {"{\"instruction\": \"x\", \"output\": \"y\", \"messages\": []}", "data/train.jsonl:7: the line mixes"},
        {"{\"prompt\": \"a\\u0000b\", \"completion\": \"y\"}", "data/train.jsonl:7: \\u0000 in a string"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) CHECK_DIES(die_parse, (void *)bad[i].line, bad[i].needle);

    CHECK_DIES(die_recognise, "{{ messages }}", "prepare-data: --tokenizer tok.json: chat template not recognised");
    CHECK_DIES(die_recognise, NULL, "prepare-data: --tokenizer tok.json: the tokenizer has no chat template");
}

int main(void) {
    test_render();
    test_jsonl();
    TEST_END();
}
