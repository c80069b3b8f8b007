/* adapter.c: being written */
