/* init_model.c: being written */
