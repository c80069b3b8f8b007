/* inspect.c: `vera-dist inspect --model PATH [--r N --target_modules LIST ...]`: what a run
 * would adapt, train, communicate and hold in memory, from the model's shape alone
 * (config.json is enough: no weights are read for a Hugging Face directory). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/adapter.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/memory.h"
#include "vera/model.h"

static double inspect_gib(size_t bytes) { return (double)bytes / (double)(1ull << 30); }

/* the keys read below and by vd_memory_estimate_run */
static const char *const inspect_keys[] = {"model", "r", "target_modules", "projection_prng_key", "batch_size",
                                           "seq_len", "grad_accum", "vera_dropout", "precision", "recompute",
                                           VD_ADAPTER_SHAPE_KEYS, "lora_dropout", "vblora_dropout", NULL};
static const vd_config_uses inspect_uses = {"inspect", inspect_keys, NULL};

int vd_inspect_main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: vera-dist inspect --model DIR|FILE.gguf|FILE.bin [--r R] [--target_modules LIST]\n"
               "                         [--batch_size B --seq_len T --grad_accum K --vera_dropout P]\n"
               "                         [--projection_prng_key K] [--precision fp32|bf16] [--recompute none|block]\n"
               "                         [--config FILE]\n"
               "                         [--adapter_type vera|vblora|lora --lora_alpha A --use_rslora 0|1\n"
               "                          --num_vectors V --vector_length L --topk K]\n"
               "Prints the architecture, the frozen parameter count, the adapted layers, the trainable\n"
               "parameters (the method's count: adapter_type vera, vblora or lora), the all-reduce per optimizer step and the\n"
               "memory one rank needs (in the given precision), without loading the weights of a Hugging Face directory.\n"
               "Other configuration keys are refused on the command line; from a --config file they are\n"
               "ignored, so a training run's file can be inspected as is.\n");
        return 0;
    }
    vd_config cfg;
    vd_config_defaults(&cfg);
    vd_config_parse_for(&cfg, argc, argv, 1, &inspect_uses);
    if (!cfg.model[0]) vd_die("inspect: --model is required (a Hugging Face directory, a .gguf or an llm.c .bin file)");
    vd_model_config mc;
    vd_model_read_config(cfg.model, &mc);
    /* as the trainer does: a default seq_len gives way to a shorter context (one line) */
    vd_config_fit_default(&cfg, "seq_len", mc.max_seq_len, "the model's context (max positions)");
    const vd_model_family *f = vd_model_family_of(mc.arch);
    uint32_t mask = vd_model_targets_or_die(f, cfg.target_modules, sizeof(cfg.target_modules), cfg.model);
    int32_t r = cfg.r, n_adapted = 0;
    /* the method's own count (ops->size), the one vd_adapter_init checks its layout against */
    vd_adapter_options opt;
    vd_adapter_options_from_config(&opt, &cfg, mask);
    vd_adapter_size sz;
    vd_adapter_size_of(&mc, &opt, 1, 0, &sz, &n_adapted, NULL, NULL);
    size_t n_train = sz.n_trainable;
    size_t n_frozen = f->num_params(&mc);

    printf("model: %s\n", cfg.model);
    printf("architecture: %s (family %s)\n", mc.hf_architecture, f->name);
    if (mc.arch == VD_ARCH_LLAMA)
        printf("shape: %d layers, hidden %d, %d heads (%d key/value), head_dim %d, intermediate %d, vocab %d, "
               "context %d, %s head, rope_theta %g%s\n",
               (int)mc.n_layer, (int)mc.channels, (int)mc.n_head, (int)mc.n_kv_head, (int)mc.head_dim,
               (int)mc.intermediate, (int)mc.vocab_size, (int)mc.max_seq_len, mc.tied ? "tied" : "untied",
               (double)mc.rope_theta, mc.rope_type == VD_ROPE_LLAMA3 ? " (llama3 scaling)" : "");
    else
        printf("shape: %d layers, n_embd %d, %d heads, vocab %d, context %d\n", (int)mc.n_layer, (int)mc.channels,
               (int)mc.n_head, (int)mc.vocab_size, (int)mc.max_seq_len);
    printf("frozen parameters: %zu\n", n_frozen);
    printf("adapter_type: %s (trainable: %s)\n", vd_adapter_type_name(opt.type),
           vd_adapter_ops_of(opt.type)->trainable_formula);
    printf("target_modules: %s (r %d)\n", cfg.target_modules, (int)r);
    printf("adapted layers: %d\n", (int)n_adapted);
    for (int32_t k = 0; k < f->n_kinds; k++) {
        if (!(mask & (1u << k))) continue;
        int32_t in, out;
        f->kind_shape(&mc, k, &in, &out);
        printf("  %-18s x %d  in %d, out %d: %zu trainable each\n", f->kind_paths[k], (int)mc.n_layer, (int)in, (int)out,
               vd_adapter_module_trainable(&opt, in, out));
    }
    if (sz.shared[0]) printf("%s\n", sz.shared);
    if (sz.n_shared) printf("shared trainable parameters: %zu\n", sz.n_shared);
    printf("trainable parameters: %zu\n", n_train);
    size_t n_reduce = n_train + 2;
    printf("all-reduce per optimizer step: %zu floats = %zu bytes (gradients + loss + stop flag, one collective)\n",
           n_reduce, sizeof(float) * n_reduce);

    /* memory of one rank, fp32: what the trainer allocates, and checks before it does (memory.c) */
    vd_memory_estimate me;
    vd_memory_estimate_run(&mc, mask, &cfg, NULL, &me); /* the CPU backend's figure */
    size_t weights = me.weights, acts = me.acts, adapter = me.adapter, merged = me.merged, total = me.total;
    int bf16 = vd_precision_weight_dtype(cfg.precision) == VD_DTYPE_BF16;
    printf("memory per rank (%s, batch_size %d x seq_len %d, recompute %s): weights %.3f GiB%s, activations %.3f GiB, adapter + "
           "AdamW %.3f GiB, %s %.3f GiB; total %.3f GiB\n",
           cfg.precision, (int)cfg.batch_size, (int)cfg.seq_len, cfg.recompute, inspect_gib(weights),
           bf16 ? " (linear layers bf16)" : "", inspect_gib(acts), inspect_gib(adapter),
           bf16 ? "bf16 GEMM scratch" : "merged weights", inspect_gib(merged), inspect_gib(total));
    return 0;
}
