/* data.c: being written */
