"""Memory shared by the ranks of one node: an MPI shared-memory window on the node's
communicator (``MPI.Win.Allocate_shared``). The node's first rank allocates the bytes, every rank
maps them, and all of them read and write the same memory through NumPy views. ``sync`` is the
point after which every rank of the node sees every other's writes: it closes a phase of writes
before a phase of reads.
"""

import numpy as np
from mpi4py import MPI

from lbgm_mpi.errors import UserError


class SharedMemory:
    """``nbytes`` bytes shared by the ranks of ``node_comm`` (collective over it). MPI does not
    promise their values: the users zero what they own (so that no rank touches every page)."""

    def __init__(self, node_comm: MPI.Comm, nbytes: int, what: str):
        self._comm = node_comm
        try:
            self._win = MPI.Win.Allocate_shared(nbytes if node_comm.Get_rank() == 0 else 0, 1,
                                                comm=node_comm)
        except MPI.Exception as err:
            raise UserError(f"cannot allocate {nbytes / 2**30:.2f} GiB of node-shared memory "
                            f"for {what} ({err.Get_error_string().strip()}): check the free "
                            "space of /dev/shm, or keep a bank per rank "
                            "(system.bank = \"replicated\")") from None
        memory, _ = self._win.Shared_query(0)
        self._bytes = np.ndarray(nbytes, dtype=np.uint8, buffer=memory)
        self._win.Lock_all(MPI.MODE_NOCHECK)  # one passive epoch for the window's whole life

    def view(self, offset: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A NumPy array of ``shape`` and ``dtype`` over the bytes from ``offset`` on."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self._bytes[offset:offset + count].view(dtype).reshape(shape)

    def sync(self) -> None:
        """Collective over the node: every rank's writes so far are visible to all after it."""
        self._win.Sync()
        self._comm.Barrier()
        self._win.Sync()
