"""All MPI traffic of the trainer goes through lbgm_mpi.comm.mpi.Comm, which counts its bytes."""
