/* train.c: being written */
