/* data.h: llm.c token shards. Header: 256 int32 (magic 20240520, version 1, token count),
 * then uint16 tokens. Shards are selected by a glob (sorted by name) and memory-mapped.
 *
 * A sequence is seq_len + 1 consecutive tokens (inputs and shifted targets) that never
 * crosses a shard: shard s holds (n_tokens_s - 1) / seq_len sequences, numbered globally in
 * shard order. Global sequence index n (any uint64) maps to n mod n_seqs: epoch = n / n_seqs. */
#ifndef VERA_DATA_H
#define VERA_DATA_H

#include <stddef.h>
#include <stdint.h>

#define VD_SHARD_MAGIC 20240520
#define VD_SHARD_VERSION 1
#define VD_SHARD_HEADER_INTS 256
#define VD_TARGET_NONE (-1) /* a target position that takes no loss (transformers' -100) */

typedef struct {
    int32_t n_shards;
    char **paths;              /* (n_shards) */
    void **maps;               /* (n_shards) mmap of each file */
    size_t *map_sizes;         /* (n_shards) bytes */
    const uint16_t **tokens;   /* (n_shards) pointer past the header */
    uint64_t *n_tokens;        /* (n_shards) */
    uint64_t *seq_start;       /* (n_shards + 1) first global sequence of each shard */
    uint64_t n_seqs;           /* sequences in one epoch */
    int32_t seq_len;
    int32_t vocab_size;
    char what[32];             /* "train_data" / "val_data": named in errors */
} vd_dataset;

/* Opens every file matching pattern. Dies naming the key (what) / file and what was expected:
 * no match, truncated file, wrong magic/version, size not matching the header, no full sequence.
 * pack (the `pack` key): for shards of examples, several examples per sequence (docs/data-format.md). */
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

/* Writes one shard (header + tokens) atomically. */
void vd_shard_write(const char *path, const uint16_t *tokens, uint64_t n_tokens);

#endif
