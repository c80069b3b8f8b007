/* backend_cpu.c: being written */
