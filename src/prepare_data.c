/* prepare_data.c: being written */
