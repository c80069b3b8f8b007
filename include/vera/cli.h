/* cli.h: the sub-commands of the vera-dist executable (dispatched in main.c). Each takes the
 * argv after the sub-command name removed (argv[0] stays the program name) and returns the
 * process exit code; bad input dies through vd_die with a one-line message. */
#ifndef VERA_CLI_H
#define VERA_CLI_H

int vd_train_main(int argc, char **argv);        /* train.c  : vera-dist [train] --config ... */
int vd_init_model_main(int argc, char **argv);   /* init_model.c : vera-dist init-model --out DIR ... */
int vd_prepare_data_main(int argc, char **argv); /* prepare_data.c : vera-dist prepare-data --in TEXT --out DIR */
int vd_forward_main(int argc, char **argv);      /* forward.c : vera-dist forward --tokens GLOB --out FILE ... */
int vd_export_main(int argc, char **argv);       /* export.c : vera-dist export --checkpoint FILE --format F --out DIR */
int vd_inspect_main(int argc, char **argv);      /* inspect.c : vera-dist inspect --model PATH [--r N ...] */
int vd_eval_main(int argc, char **argv);         /* eval.c : vera-dist eval --model PATH --data GLOB ... */
int vd_tokenize_main(int argc, char **argv);     /* tokenize.c : vera-dist tokenize --tokenizer PATH (--text S | --in F) */

/* cli.c. Removes "--name value" / "--name=value" from argv (compacting it) and returns the value, or
 * NULL if absent. Lets a sub-command take its own options before the shared config parser. */
const char *vd_cli_take_option(int *argc, char **argv, const char *name);
/* Removes a bare "--name" flag from argv; returns 1 if it was there. */
int vd_cli_take_flag(int *argc, char **argv, const char *name);

struct vd_config;
struct vd_vera;
/* A checkpoint's stored configuration text (vd_config_serialize lines) back into cfg, over the
 * defaults; path names the file in errors. */
void vd_cli_config_from_text(struct vd_config *cfg, const char *text, const char *path);
/* --adapter: a PEFT adapter directory (adapter_config.json checked against the run) or a single
 * safetensors file with PEFT's key names, into v. */
void vd_cli_load_adapter(struct vd_vera *v, const char *path);

#endif
