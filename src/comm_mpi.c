/* comm_mpi.c: being written */
