"""Rank 2 raises while the other ranks wait in a collective: the whole job must abort."""

from lbgm_mpi.comm.mpi import Comm, install_abort_on_error
from lbgm_mpi.errors import UserError

comm = Comm()
install_abort_on_error(comm)
if comm.rank == 2:
    raise UserError("deliberate failure on one rank")
comm.barrier()  # never completes: rank 2 is gone
