/* optimizer.c: being written */
