/* main.c: vera-dist entry point; dispatches the sub-commands in include/vera/cli.h. */
#include <stdio.h>
#include <string.h>

#include "vera/backend.h"
#include "vera/cli.h"

int main(int argc, char **argv) {
    vd_blas_ensure_kernel(argv); /* may execute argv again with a better OpenBLAS kernel */
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("vera-dist 0.1.0 (BLAS: OpenBLAS kernel %s%s)\n", vd_blas_kernel_name(), vd_blas_kernel_note());
        return 0;
    }
    if (argc >= 2 && argv[1][0] != '-') {
        /* shift the sub-command out so each main sees its own options from argv[1] */
        const char *sub = argv[1];
        argv[1] = argv[0];
        if (!strcmp(sub, "init-model")) return vd_init_model_main(argc - 1, argv + 1);
        if (!strcmp(sub, "prepare-data")) return vd_prepare_data_main(argc - 1, argv + 1);
        if (!strcmp(sub, "train")) return vd_train_main(argc - 1, argv + 1);
        if (!strcmp(sub, "forward")) return vd_forward_main(argc - 1, argv + 1);
        if (!strcmp(sub, "export")) return vd_export_main(argc - 1, argv + 1);
        if (!strcmp(sub, "inspect")) return vd_inspect_main(argc - 1, argv + 1);
        if (!strcmp(sub, "generate")) return vd_generate_main(argc - 1, argv + 1);
        if (!strcmp(sub, "tokenize")) return vd_tokenize_main(argc - 1, argv + 1);
        if (!strcmp(sub, "eval")) return vd_eval_main(argc - 1, argv + 1);
        fprintf(stderr, "vera-dist: error: unknown sub-command '%s' (expected train, init-model, prepare-data, forward, export, inspect, tokenize, eval or generate; "
                        "see vera-dist --help)\n", sub);
        return 1;
    }
    return vd_train_main(argc, argv);
}
