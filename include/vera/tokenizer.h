/* tokenizer.h: a model's own byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3, Qwen2), read
 * from a Hugging Face tokenizer.json (+ tokenizer_config.json / chat_template.jinja beside it)
 * or from the tokenizer metadata of a GGUF file. Ids equal Hugging Face `tokenizers` on the
 * same text (transformers' GGUF tokenizer for a GGUF). What is supported and refused:
 * docs/tokenizer.md. One tokenizer must not encode on two threads at once (it caches pieces);
 * give each thread its own. */
#ifndef VERA_TOKENIZER_H
#define VERA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct vd_tokenizer vd_tokenizer;

/* Encoded ids (and, when asked for, the byte offset in the text where each token starts: the
 * offset of its first byte; after NFC, of the input character it is aligned with; a token the
 * post-processor adds: 0 in front, the text's length behind). */
typedef struct {
    int32_t *ids;      /* (n) */
    uint32_t *offsets; /* (n) byte offset of each token's first byte in the input, or NULL */
    size_t n, cap;
} vd_tokens;

/* path: a directory holding tokenizer.json, a tokenizer.json file, or a .gguf file. Dies naming
 * the file and what was expected (missing file, a model type other than BPE, a pre-tokenizer or
 * normalizer it does not implement: refused by name rather than tokenized differently). */
vd_tokenizer *vd_tokenizer_load(const char *path);
void vd_tokenizer_free(vd_tokenizer *t);

/* Flags of vd_tokenizer_encode. */
enum {
    VD_TOK_ADD_SPECIAL = 1,   /* add what the tokenizer's post-processor adds (BOS ...), as tokenizer(text) */
    VD_TOK_WITH_OFFSETS = 2,  /* fill out->offsets */
};
/* Appends the ids of text[0..len) to out (special / added tokens written in the text are
 * recognised, as tokenizer.encode(text, add_special_tokens=False) does). The text should be
 * UTF-8 (Hugging Face takes nothing else); an invalid byte is tokenized as itself. Start with
 * out = {0}; reuse it to append. */
void vd_tokenizer_encode(const vd_tokenizer *t, const char *text, size_t len, int flags, vd_tokens *out);
void vd_tokens_free(vd_tokens *v);

/* The bytes a token stands for (byte-level decoded; special tokens give their text). Returns
 * NULL for an id out of range. Decoding is the concatenation of these bytes, so a caller that
 * streams can print bytes as they come (a UTF-8 character may span tokens). */
const char *vd_tokenizer_token_bytes(const vd_tokenizer *t, int32_t id, size_t *len);
/* decode(ids): malloc'd, NUL-terminated; *len_out = bytes (may be NULL). skip_special drops
 * special tokens (tokenizer.decode(ids, skip_special_tokens=True)). */
char *vd_tokenizer_decode(const vd_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len_out);

int32_t vd_tokenizer_vocab_size(const vd_tokenizer *t);   /* ids are < this (base vocab + added) */
int32_t vd_tokenizer_token_id(const vd_tokenizer *t, const char *token); /* -1 if absent */
int32_t vd_tokenizer_bos(const vd_tokenizer *t);           /* -1 if none */
int32_t vd_tokenizer_eos(const vd_tokenizer *t);           /* -1 if none */
int vd_tokenizer_is_special(const vd_tokenizer *t, int32_t id);
/* The chat template (tokenizer_config.json "chat_template", or GGUF tokenizer.chat_template),
 * or NULL when the tokenizer has none. */
const char *vd_tokenizer_chat_template(const vd_tokenizer *t);
/* The text of the bos / eos token ("" if none): chat templates write them. */
const char *vd_tokenizer_bos_text(const vd_tokenizer *t);
const char *vd_tokenizer_eos_text(const vd_tokenizer *t);

#endif
