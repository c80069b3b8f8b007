/* prng.c: being written */
