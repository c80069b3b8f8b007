/* checkpoint.c: being written */
