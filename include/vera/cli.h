/* cli.h: the sub-commands of the vera-dist executable (dispatched in main.c). Each takes the
 * argv after the sub-command name removed (argv[0] stays the program name) and returns the
 * process exit code; bad input dies through vd_die with a one-line message.
 *
 * Conventions every sub-command follows (new ones too: generate, eval, tokenize, ...):
 *
 *  * Options are --name value or --name=value. Yes/no options are flags read with
 *    vd_cli_take_flag: bare `--overwrite` means 1, and `--overwrite 1|0|true|false` (or
 *    `--overwrite=0`) is accepted too, the same in every sub-command.
 *
 *  * A sub-command that takes configuration keys (config.h: --model, --r, --seq_len, ...) declares
 *    the keys it reads and parses with them, so a key it would ignore is refused instead, with one
 *    line naming it and listing what the sub-command takes:
 *
 *        static const char *const forward_keys[] = {"model", "r", "seq_len", ..., NULL};
 *        static const vd_config_uses forward_uses = {"forward", forward_keys, "--tokens, --out, --adapter"};
 *        ...take the sub-command's own options out of argv with vd_cli_take_option / _flag...
 *        vd_config cfg;
 *        vd_config_defaults(&cfg);
 *        vd_config_parse_for(&cfg, argc, argv, 1, &forward_uses);
 *
 *    List a key only if the sub-command's code reads it (the list is what "used" means). Keys from
 *    a --config file that the sub-command does not read are ignored: that file describes a whole
 *    training run, and inspect/forward/eval may be pointed at it. train reads every key
 *    (vd_config_parse, no list).
 *
 *  * A sub-command without configuration keys takes its own options out with vd_cli_take_option
 *    and vd_cli_take_flag, then calls vd_cli_refuse_rest, which refuses whatever is left. */
#ifndef VERA_CLI_H
#define VERA_CLI_H

#include <stdint.h>

#include "vera/adapter.h"

int vd_train_main(int argc, char **argv);        /* train.c  : vera-dist [train] --config ... */
int vd_init_model_main(int argc, char **argv);   /* init_model.c : vera-dist init-model --out DIR ... */
int vd_prepare_data_main(int argc, char **argv); /* prepare_data.c : vera-dist prepare-data --in TEXT --out DIR */
int vd_forward_main(int argc, char **argv);      /* forward.c : vera-dist forward --tokens GLOB --out FILE ... */
int vd_export_main(int argc, char **argv);       /* export.c : vera-dist export --checkpoint FILE --format F --out DIR */
int vd_inspect_main(int argc, char **argv);      /* inspect.c : vera-dist inspect --model PATH [--r N ...] */
int vd_generate_main(int argc, char **argv);     /* generate.c : vera-dist generate --model PATH --prompt ... */
int vd_tokenize_main(int argc, char **argv);     /* tokenize.c : vera-dist tokenize --tokenizer PATH (--text S | --in F) */
int vd_eval_main(int argc, char **argv);         /* eval.c : vera-dist eval --model PATH --data GLOB ... */

/* cli.c. Removes "--name value" / "--name=value" from argv (compacting it) and returns the value, or
 * NULL if absent. Lets a sub-command take its own options before the shared config parser. */
const char *vd_cli_take_option(int *argc, char **argv, const char *name);
/* Removes every "--name" (= 1), "--name=V" and "--name V" with V one of 1, 0, true, false from
 * argv and returns the last one's value (0 or 1), or -1 if absent. "--name" followed by any other
 * word that is not an option (--name yes) dies naming the flag and what it accepts. `who`
 * prefixes messages ("prepare-data"; NULL for none). */
int vd_cli_take_flag(int *argc, char **argv, const char *name, const char *who);
/* Dies if argv holds anything past argv[0]: "<who>: unknown argument 'X' (it takes <options>;
 * see vera-dist <who> --help)". */
void vd_cli_refuse_rest(int argc, char **argv, const char *who, const char *options);

struct vd_config;
struct vd_adapter;
struct vd_comm;
/* train.c. This rank's thread count, the one rule train and eval share: cfg->threads when set,
 * else the cores the rank is bound to when the launcher binds ranks (fewer than the node's),
 * else the node's cores divided by the ranks MPI says share the node; at least 1. */
int32_t vd_train_pick_threads(const struct vd_config *cfg, const struct vd_comm *comm);
/* A checkpoint's stored configuration text (vd_config_serialize lines) back into cfg, over the
 * defaults; path names the file in errors. */
void vd_cli_config_from_text(struct vd_config *cfg, const char *text, const char *path);
/* --adapter: a PEFT adapter directory (adapter_config.json checked against the run) or a single
 * safetensors file with PEFT's key names, into a. */
void vd_cli_load_adapter(struct vd_adapter *a, const char *path);
/* The options of the adapter a sub-command rebuilds to load `--adapter path` into (forward, eval),
 * inference only (no dropout): a PEFT directory gives them (its adapter_config.json: method,
 * targets, r and the method's keys, as generate reads them) unless the command line or --config
 * sets a key that shapes the adapter (VD_ADAPTER_SHAPE_KEYS, r, target_modules, d_initial,
 * projection_prng_key): then cfg's, which vd_cli_load_adapter checks against the directory, naming
 * each field that differs. A safetensors file, or no path: cfg's, with target mask `mask`. */
/* 1 when vd_cli_adapter_options takes them from the directory path (then the caller's mask is unused). */
int vd_cli_adapter_from_dir(const struct vd_config *cfg, const char *path);
void vd_cli_adapter_options(vd_adapter_options *opt, const struct vd_config *cfg, uint32_t mask, const vd_model *m,
                            const char *path);
struct vd_checkpoint;
/* A checkpoint given to export, eval or generate: it belongs to this base model (fingerprint of
 * the weights in `model`), and to the adapter a regenerated from its stored adapter_type, r,
 * target_modules and projection_prng_key (vd_checkpoint_adapter_difference). Each dies naming `who`
 * ("export"), the file and what differs. */
void vd_cli_check_checkpoint_model(const char *who, const char *path, const struct vd_checkpoint *ck,
                                   uint64_t fingerprint, const char *model);
void vd_cli_check_checkpoint_adapter(const char *who, const char *path, const struct vd_checkpoint *ck,
                                     const struct vd_adapter *a);

#endif
