/* chat.h: chat templates, rendered in C.
 *
 * Jinja is not implemented. A tokenizer's chat template (tokenizer_config.json "chat_template"
 * or GGUF tokenizer.chat_template) is recognised by its text (whitespace inside {{ }} / {% %}
 * and the quoting of string literals do not matter) and rendered by the C function written for
 * it, with the same output as transformers' apply_chat_template(messages, tokenize=False,
 * add_generation_prompt=...). Recognised (docs/data-prep.md):
 *   chatml-system  ChatML that adds a default system prompt when the conversation has none
 *                  (SmolLM2-Instruct: "You are a helpful AI assistant named SmolLM, trained by
 *                  Hugging Face"; Qwen1.5 / Qwen2-Instruct: "You are a helpful assistant.")
 *   chatml         ChatML without a default system prompt (transformers' old default)
 *   llama3         Meta-Llama-3-8B-Instruct: bos + <|start_header_id|>role<|end_header_id|>\n\n
 *                  + content|trim + <|eot_id|>
 * Anything else is refused with one line naming these. */
#ifndef VERA_CHAT_H
#define VERA_CHAT_H

#include <stddef.h>

typedef struct {
    const char *role;    /* "system", "user", "assistant", ... */
    const char *content; /* UTF-8 */
} vd_chat_message;

/* A byte range [begin, end) of the rendered text that takes a loss: an assistant turn's content
 * and its end-of-turn token (<|im_end|>, <|eot_id|>), not its role header. */
typedef struct {
    size_t begin, end;
} vd_chat_span;

typedef enum { VD_CHAT_CHATML_SYSTEM, VD_CHAT_CHATML, VD_CHAT_LLAMA3 } vd_chat_kind;

typedef struct {
    vd_chat_kind kind;
    char name[64];        /* "chatml-system (SmolLM2)", "llama3", ... for logs */
    char *default_system; /* chatml-system: the default system prompt (malloc'd) */
} vd_chat_template;

/* Recognises template_text. what names the source in errors ("prepare-data: --tokenizer X").
 * Dies with one line when template_text is NULL (the tokenizer has none) or not recognised. */
void vd_chat_template_recognise(vd_chat_template *tpl, const char *template_text, const char *what);
/* The templates by name, for a tokenizer without one: "smollm2", "qwen2", "chatml", "llama3".
 * Returns 0 for an unknown name. */
int vd_chat_template_by_name(vd_chat_template *tpl, const char *name);
void vd_chat_template_free(vd_chat_template *tpl);
/* "smollm2, qwen2, chatml, llama3": for usage and error text. */
const char *vd_chat_template_names(void);

/* Renders messages[0..n) as the template does. bos_text / eos_text: the tokenizer's bos_token /
 * eos_token strings (templates may write them; "" when there is none). add_generation_prompt
 * appends the header of an assistant turn (for generation). Returns the text (malloc'd,
 * NUL-terminated; *len_out bytes, may be NULL); when spans_out is not NULL, *spans_out
 * (malloc'd, may be NULL when none) and *n_spans_out get the spans of the assistant turns, in
 * order. */
char *vd_chat_render(const vd_chat_template *tpl, const vd_chat_message *messages, size_t n, int add_generation_prompt,
                     const char *bos_text, const char *eos_text, size_t *len_out, vd_chat_span **spans_out,
                     size_t *n_spans_out);



/* ---- instruction data: one JSONL line -> a conversation (src/text/chat_jsonl.c) ----
 * Accepted line formats (docs/data-prep.md):
 *   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   (HF chat format)
 *   {"prompt": "...", "completion": "..."}       -> user prompt, assistant completion
 *     (prompt / completion may also be message lists, TRL's conversational form)
 *   {"instruction": "...", "input": "...", "output": "..."}   (Alpaca; input optional)
 *     -> user = instruction, plus "\n\n" + input when input is not empty; assistant = output */
typedef struct {
    vd_chat_message *messages; /* (n) pointing into json / joined */
    size_t n;
    void *json;   /* the parsed line (cJSON), owns the strings */
    char *joined; /* Alpaca's instruction + "\n\n" + input */
} vd_chat_example;

/* Parses line[0..len) (no newline). Dies with "FILE:LINE: <what was expected>" naming path and
 * lineno (1-based) on anything else, including a conversation without an assistant turn. */
void vd_chat_example_parse(vd_chat_example *ex, const char *line, size_t len, const char *path, unsigned long long lineno);
void vd_chat_example_free(vd_chat_example *ex);
#endif
