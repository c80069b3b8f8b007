/* make_sft_shards: deterministic shards of instruction examples for the integration tests
 * (tests/integration/masked_world_size.sh, bench/): no tokenizer, no python.
 *
 *   make_sft_shards OUT_DIR N_EXAMPLES VOCAB SEED [MIN_LEN MAX_LEN] [NO_TARGET_FIRST]
 *
 * writes OUT_DIR/train_000.bin (N_EXAMPLES examples) and OUT_DIR/val_000.bin (N_EXAMPLES / 8),
 * v2 shards of examples (docs/data-format.md): each example is a prompt (no loss) followed by
 * a response whose tokens are loss targets, lengths in [MIN_LEN, MAX_LEN] (default 6..40), ids
 * in [1, VOCAB). The first NO_TARGET_FIRST examples of the train shard (default 0) have no
 * target at all (a global batch made only of them has nothing to take a mean over). The
 * responses repeat a pattern of the prompt (token + 1), so a model can learn them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/common.h"
#include "vera/data.h"
#include "vera/prng.h"

static int arg_int(const char *s, const char *what, long lo, long hi) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) vd_die("make_sft_shards: %s: '%s' is not an integer in [%ld, %ld]", what, s, lo, hi);
    return (int)v;
}

static void write_examples(const char *path, int n_ex, int vocab, uint64_t seed, int min_len, int max_len,
                           int no_target_first) {
    size_t cap = (size_t)n_ex * (size_t)max_len;
    int32_t *tok = mallocCheck(sizeof(int32_t) * cap);
    uint8_t *flags = mallocCheck(cap);
    size_t n = 0, n_targets = 0;
    for (int e = 0; e < n_ex; e++) {
        uint64_t h = vd_mix64(seed * 0x9E3779B97F4A7C15ULL + (uint64_t)e + 1);
        int len = min_len + (int)(h % (uint64_t)(max_len - min_len + 1));
        int prompt = 1 + (int)((h >> 20) % (uint64_t)(len / 2));
        for (int i = 0; i < len; i++) {
            int32_t id;
            if (i < prompt) id = 1 + (int32_t)(vd_mix64(h + (uint64_t)i * 7919) % (uint64_t)(vocab - 1));
            else id = 1 + (tok[n - (size_t)prompt] % (vocab - 1)); /* the prompt token `prompt` back, + 1 */
            tok[n] = id;
            flags[n] = (uint8_t)((i == 0 ? VD_TOKEN_EXAMPLE_START : 0) |
                                 (i >= prompt && e >= no_target_first ? VD_TOKEN_TARGET : 0));
            n_targets += (flags[n] & VD_TOKEN_TARGET) != 0;
            n++;
        }
    }
    vd_shard_data s = {tok, flags, n, vocab, 1};
    vd_shard_write_v2(path, &s);
    printf("make_sft_shards: %s: %d examples, %zu tokens, %zu target flags\n", path, n_ex, n, n_targets);
    free(tok);
    free(flags);
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 7 && argc != 8) {
        fprintf(stderr, "usage: make_sft_shards OUT_DIR N_EXAMPLES VOCAB SEED [MIN_LEN MAX_LEN] [NO_TARGET_FIRST]\n");
        return 2;
    }
    const char *dir = argv[1];
    int n_ex = arg_int(argv[2], "N_EXAMPLES", 8, 10000000);
    int vocab = arg_int(argv[3], "VOCAB", 3, 1 << 24);
    uint64_t seed = (uint64_t)arg_int(argv[4], "SEED", 0, 1L << 30);
    int min_len = argc >= 7 ? arg_int(argv[5], "MIN_LEN", 2, 1 << 20) : 6;
    int max_len = argc >= 7 ? arg_int(argv[6], "MAX_LEN", min_len, 1 << 20) : 40;
    int no_target_first = argc == 8 ? arg_int(argv[7], "NO_TARGET_FIRST", 0, n_ex) : 0;
    vd_mkdir_p(dir);
    char path[VD_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/train_000.bin", dir);
    write_examples(path, n_ex, vocab, seed, min_len, max_len, no_target_first);
    snprintf(path, sizeof(path), "%s/val_000.bin", dir);
    write_examples(path, n_ex / 8, vocab, seed + 1000, min_len, max_len, 0);
    return 0;
}
