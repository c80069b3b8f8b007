/* export.c: `vera-dist export --checkpoint FILE --format peft|merged|lora --out DIR`.
 * peft:   adapter_config.json + adapter_model.safetensors that PeftModel.from_pretrained loads;
 * merged: the base model with W0 + dW folded into each adapted weight, in the Hugging Face
 *         format of its family, which transformers loads without PEFT;
 * lora:   the same dW as a PEFT LoRA adapter (every LoRA server can serve it): VeRA's update
 *         rewritten as LoRA; a LoRA checkpoint's own adapter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vera/adapter.h"
#include "vera/backend.h"
#include "vera/checkpoint.h"
#include "vera/cli.h"
#include "vera/common.h"
#include "vera/config.h"
#include "vera/model.h"
#include "vera/peft.h"

int vd_export_main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: vera-dist export --checkpoint FILE --format peft|merged|lora --out DIR [--model DIR]\n"
               "                        [--save_projection [0|1]] [--save_only_topk_weights [0|1]] [--overwrite [0|1]]\n"
               "peft:   DIR/adapter_config.json + adapter_model.safetensors for PeftModel.from_pretrained\n"
               "        (save_projection 1, the default, also stores vera_A/vera_B; VB-LoRA:\n"
               "        save_only_topk_weights 1 stores only the top-k indices and weights, for merging\n"
               "        and inference only; default: the checkpoint's configuration)\n"
               "merged: DIR/config.json + model.safetensors with W0 + dW merged, for transformers alone\n"
               "lora:   DIR/adapter_config.json + adapter_model.safetensors, a PEFT LoRA adapter with the same\n"
               "        dW (lora_A = diag(d) A, lora_B = diag(b) B, lora_alpha = r) for LoRA-only servers\n"
               "--model overrides the base model directory recorded in the checkpoint. --overwrite (or\n"
               "--overwrite 1) replaces an existing export in DIR.\n");
        return 0;
    }
    const char *ckpath = vd_cli_take_option(&argc, argv, "checkpoint");
    const char *format = vd_cli_take_option(&argc, argv, "format");
    const char *out = vd_cli_take_option(&argc, argv, "out");
    const char *model_dir = vd_cli_take_option(&argc, argv, "model");
    int save_projection = vd_cli_take_flag(&argc, argv, "save_projection", "export");
    int topk_only = vd_cli_take_flag(&argc, argv, "save_only_topk_weights", "export");
    int force = vd_cli_take_flag(&argc, argv, "overwrite", "export") == 1;
    vd_cli_refuse_rest(argc, argv, "export",
                       "--checkpoint, --format, --out, --model, --save_projection, --save_only_topk_weights, --overwrite");
    if (!ckpath) vd_die("export: --checkpoint FILE is required");
    if (!out) vd_die("export: --out DIR is required");
    if (!format || (strcmp(format, "peft") != 0 && strcmp(format, "merged") != 0 && strcmp(format, "lora") != 0))
        vd_die("export: --format must be peft, merged or lora, got '%s'", format ? format : "");
    if (save_projection < 0) save_projection = 1; /* PEFT's default */
    char probe[VD_PATH_MAX + 64];
    snprintf(probe, sizeof(probe), "%s/%s", out, strcmp(format, "merged") ? "adapter_model.safetensors" : "model.safetensors");
    if (vd_path_exists(probe) && !force) vd_die("export: %s already exists (HINT: --overwrite replaces it)", probe);

    vd_checkpoint ck;
    char err[1024];
    if (vd_checkpoint_read(ckpath, &ck, err, sizeof(err)) != 0) vd_die("export: %s", err);
    vd_config cfg;
    vd_cli_config_from_text(&cfg, ck.config_text, ckpath);
    if (model_dir) snprintf(cfg.model, sizeof(cfg.model), "%s", model_dir);

    const vd_backend *be = vd_backend_cpu();
    vd_model_config mc;
    float *host = vd_model_load(cfg.model, &mc);
    vd_cli_check_checkpoint_model("export", ckpath, &ck, vd_model_fingerprint(&mc, host), cfg.model);
    uint32_t mask = vd_model_targets_or_die(vd_model_family_of(mc.arch), cfg.target_modules, sizeof(cfg.target_modules),
                                            cfg.model);
    vd_model model;
    vd_model_init(&model, be, &mc, host);
    vd_adapter ad;
    vd_adapter_options ao;
    vd_adapter_options_from_config(&ao, &cfg, mask);
    if (topk_only >= 0) {
        if (topk_only == 1 && (ao.type != VD_ADAPTER_VBLORA || strcmp(format, "peft") != 0))
            vd_die("export: --save_only_topk_weights applies to --format peft of a vblora checkpoint; %s is a %s "
                   "checkpoint, --format %s", ckpath, vd_adapter_type_name(ao.type), format);
        ao.save_only_topk_weights = topk_only;
    }
    vd_adapter_init(&ad, be, &model, &ao);
    vd_cli_check_checkpoint_adapter("export", ckpath, &ck, &ad);
    be->to_device(ad.params, ck.params, sizeof(float) * ck.n_trainable);

    if (!strcmp(format, "peft") || (!strcmp(format, "lora") && ad.type == VD_ADAPTER_LORA)) {
        vd_peft_save_dir(out, &ad, ck.params, save_projection, cfg.model);
        printf("export: wrote PEFT %s adapter %s (step %lld, %d layers", ad.ops->peft_type, out, (long long)ck.step,
               (int)ad.n_modules);
        if (ad.n_saved) printf(", save_projection %d", save_projection);
        printf(")\n");
    } else if (!strcmp(format, "lora")) {
        if (ad.type != VD_ADAPTER_VERA)
            vd_die("export: --format lora writes VeRA's update as LoRA; %s is a %s checkpoint (HINT: --format peft or "
                   "merged)", ckpath, ad.ops->name);
        vd_peft_save_lora_dir(out, &ad, ck.params, cfg.model);
        printf("export: wrote PEFT LoRA adapter %s (step %lld, %d layers, r %d, lora_alpha %d)\n", out,
               (long long)ck.step, (int)ad.n_modules, (int)ad.opt.r, (int)ad.opt.r);
    } else {
        /* the merged weights are exactly what the trainer's merged backward uses; a merge is for
         * inference, where no method drops its input, so a run trained with dropout merges too */
        vd_adapter_alloc_acts(&ad, 1, 1, VD_WEFF_INFERENCE);
        for (int32_t i = 0; i < ad.n_modules; i++) {
            const vd_adapter_module *md = &ad.modules[i];
            vd_require(md->weff != NULL);
            size_t off = vd_model_site_host_offset(&model, md->site);
            be->to_host(host + off, md->weff, sizeof(float) * (size_t)md->in * md->out);
        }
        vd_model_save_hf(out, &mc, host);
        printf("export: wrote merged model %s (step %lld, %d layers merged)\n", out, (long long)ck.step,
               (int)ad.n_modules);
    }
    free(host);
    vd_adapter_free(&ad);
    vd_model_free(&model);
    vd_checkpoint_free(&ck);
    return 0;
}
