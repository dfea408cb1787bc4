"""lbgm-mpi: federated and distributed training with the Look-back Gradient Multiplier over MPI."""

__version__ = "0.1.0"
