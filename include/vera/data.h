/* data.h: token shards (docs/data-format.md).
 *
 * v1 (llm.c): header 256 int32 (magic 20240520, version 1, token count), then uint16 tokens.
 * v2: the same magic, version 2, a 64-bit count, uint16 or uint32 tokens, the tokenizer's vocab
 * size, a 64-bit hash of the payload, and optionally one flag byte per token after the tokens
 * (VD_TOKEN_TARGET: this token is a loss target; VD_TOKEN_EXAMPLE_START: it starts an example).
 * Shards are selected by a glob (sorted by name) and memory-mapped.
 *
 * Sequences never cross a shard. A plain-text shard holds (n_tokens - 1) / seq_len windows of
 * seq_len + 1 tokens; a shard of examples holds one sequence per example (pack 0) or per greedy
 * run of consecutive examples whose lengths sum to <= seq_len (pack 1). They are numbered
 * globally in shard order. Global sequence index n (any uint64) maps to n mod n_seqs:
 * epoch = n / n_seqs. */
#ifndef VERA_DATA_H
#define VERA_DATA_H

#include <stddef.h>
#include <stdint.h>

#define VD_SHARD_MAGIC 20240520
#define VD_SHARD_VERSION 1 /* llm.c's: uint16 tokens, int32 count */
#define VD_SHARD_VERSION_2 2
#define VD_SHARD_HEADER_INTS 256
#define VD_TARGET_NONE (-1) /* a target position that takes no loss (transformers' -100) */

/* v2 header: int32 slots (the 64-bit fields are little-endian pairs of slots) */
enum {
    VD_SHARD_H_MAGIC = 0,
    VD_SHARD_H_VERSION = 1,
    VD_SHARD_H_COUNT = 2,       /* slots 2-3: uint64 token count */
    VD_SHARD_H_TOKEN_BYTES = 4, /* 2 (uint16) or 4 (uint32) */
    VD_SHARD_H_FLAGS = 5,       /* VD_SHARD_* bits */
    VD_SHARD_H_VOCAB = 6,       /* the tokenizer's vocab size: every id is below it */
    VD_SHARD_H_HASH = 8,        /* slots 8-9: uint64 vd_hash64(payload, bytes, 0) */
    VD_SHARD_H_RESERVED = 10,   /* slots 7 and 10..255: zero */
};
/* header flags (slot 5) */
enum {
    VD_SHARD_HAS_FLAGS = 1, /* the payload ends with one flag byte per token */
    VD_SHARD_EXAMPLES = 2,  /* the flag bytes mark examples (VD_TOKEN_EXAMPLE_START); needs HAS_FLAGS */
};
/* per-token flag byte */
enum {
    VD_TOKEN_TARGET = 1,        /* predicting this token takes a loss */
    VD_TOKEN_EXAMPLE_START = 2, /* this token is the first of an example */
};

/* One opened shard. */
typedef struct {
    const uint8_t *tokens;  /* (n_tokens * token_bytes) little-endian ids, inside the map */
    const uint8_t *flags;   /* (n_tokens) VD_TOKEN_* bytes, or NULL: every target takes a loss */
    uint64_t n_tokens;
    int32_t token_bytes;    /* 2 or 4 */
    int32_t version;        /* 1 or 2 */
    int32_t tokenizer_vocab;/* v2 header's vocab size (0 for v1) */
    int32_t examples;       /* 1: a shard of examples (ex_start / seq_ex are set) */
    uint64_t n_examples;
    uint64_t *ex_start;     /* (n_examples + 1) token offset of each example; the last = n_tokens */
    uint64_t n_seqs;        /* sequences of this shard */
    uint64_t *seq_ex;       /* (n_seqs + 1) examples: sequence k holds examples seq_ex[k] .. seq_ex[k+1]-1
                               (NULL when unpacked: sequence k is example k) */
} vd_shard;

typedef struct {
    int32_t n_shards;
    char **paths;              /* (n_shards) */
    void **maps;               /* (n_shards) mmap of each file */
    size_t *map_sizes;         /* (n_shards) bytes */
    vd_shard *shards;          /* (n_shards) */
    uint64_t *n_tokens;        /* (n_shards) */
    uint64_t *seq_start;       /* (n_shards + 1) first global sequence of each shard */
    uint64_t n_seqs;           /* sequences in one epoch */
    uint64_t n_truncated;      /* examples longer than seq_len (cut to seq_len tokens) */
    int32_t seq_len;
    int32_t vocab_size;
    int32_t pack;
    char what[32];             /* "train_data" / "val_data": named in errors */
} vd_dataset;

/* Opens every file matching pattern. Dies naming the key (what) / file and what was expected:
 * no match, truncated file, wrong magic/version/width/flags, size not matching the header, a
 * payload whose hash differs from the header's, flag bytes with unknown bits, a shard of
 * examples whose first token does not start one, a tokenizer vocab above the model's, no full
 * sequence. pack (the `pack` key): for shards of examples, several examples per sequence. */
void vd_dataset_open(vd_dataset *ds, const char *pattern, int32_t seq_len, int32_t vocab_size, int32_t pack,
                     const char *what);
/* Copies sequence n (wrapped by epoch) into inputs[seq_len], targets[seq_len] and pos[seq_len]:
 * targets[t] = VD_TARGET_NONE where no loss is taken (masked prompt, padding, example end);
 * pos[t] = the token's position inside its example (t for plain text; it restarts at 0 where a
 * packed example begins, which also bounds attention: query t sees keys t - pos[t] .. t).
 * Dies naming the shard and token offset if an id >= vocab_size. */
void vd_dataset_get(const vd_dataset *ds, uint64_t n, int32_t *inputs, int32_t *targets, int32_t *pos);
/* Targets of sequence n that carry a loss (targets[t] != VD_TARGET_NONE): every rank counts
 * the whole global batch from the data, so the step's mean needs no extra collective. */
uint32_t vd_dataset_target_count(const vd_dataset *ds, uint64_t n);
uint64_t vd_dataset_epoch(const vd_dataset *ds, uint64_t n);
/* Checks every token id of every shard against vocab_size (vd_dataset_get checks only the
 * sequences it returns, since a full scan of a large dataset is slow). Dies like vd_dataset_get. */
void vd_dataset_validate_all(const vd_dataset *ds);
/* The same over shards part, part + parts, ...: ranks split the scan (part = rank, parts =
 * world) so a whole dataset is checked before a run writes anything. */
void vd_dataset_validate_part(const vd_dataset *ds, int32_t part, int32_t parts);
void vd_dataset_close(vd_dataset *ds);

/* Writes one v1 shard (header + uint16 tokens) atomically. */
void vd_shard_write(const char *path, const uint16_t *tokens, uint64_t n_tokens);

/* What vd_shard_write_v2 writes. */
typedef struct {
    const int32_t *tokens;  /* (n_tokens) ids in [0, vocab_size) */
    const uint8_t *flags;   /* (n_tokens) VD_TOKEN_* bytes, or NULL (no flag array: plain text) */
    uint64_t n_tokens;
    int32_t vocab_size;     /* the tokenizer's; picks the width (uint16 when every id fits, else uint32) */
    int32_t examples;       /* 1: flags mark examples (flags[0] must have VD_TOKEN_EXAMPLE_START) */
} vd_shard_data;
/* Writes one v2 shard atomically (temporary file, fsync, rename). Dies naming path on ids out
 * of range or flags the reader would refuse, so a written shard always reads back. */
void vd_shard_write_v2(const char *path, const vd_shard_data *s);
/* The token width a vocab needs: 2 while every id fits uint16 (vocab <= 65536), else 4. */
int32_t vd_shard_token_bytes(int32_t vocab_size);

#endif
