"""The one module that talks to MPI.

``Comm`` wraps a communicator with the handful of collectives the trainer needs. Each data
collective adds the size of the buffer this rank hands to MPI to ``bytes_sent``; control traffic
(byte-counter totals, model-hash checks, stop agreement) is counted apart in ``control_bytes`` so
that the reported figures compare the algorithms' own exchanges. Works at size 1.
"""

import hashlib
import os
import sys
import time
import traceback

import numpy as np
import torch
from mpi4py import MPI

from lbgm_mpi.errors import UserError


class Comm:
    """Byte-counting collectives over an mpi4py communicator (default: COMM_WORLD)."""

    def __init__(self, comm: MPI.Comm | None = None):
        self._comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self.root = 0
        self.bytes_sent = 0      # data bytes this rank handed to MPI
        self.control_bytes = 0   # bookkeeping bytes this rank handed to MPI
        self.seconds = 0.0       # wall time this rank spent inside data collectives
        self.cuda_aware = False  # hand CUDA buffers to MPI directly (else stage through host)
        self._staging = None

    @property
    def is_root(self) -> bool:
        return self.rank == self.root

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` over ranks into a new array (``buf`` is not changed)."""
        buf = np.ascontiguousarray(buf)
        out = np.empty_like(buf)
        self._timed(buf.nbytes, lambda: self._comm.Allreduce(buf, out, op=MPI.SUM))
        return out

    def allgatherv_bytes(self, send: np.ndarray, counts: list[int]) -> np.ndarray:
        """Concatenate every rank's ``send`` bytes in rank order; ``counts[r]`` (in bytes) must be
        known to every rank beforehand and equal rank r's ``send.nbytes``."""
        send = np.ascontiguousarray(send).view(np.uint8).reshape(-1)
        out = np.empty(int(sum(counts)), dtype=np.uint8)
        self._allgatherv(send, out, send.nbytes, counts)
        return out

    def allreduce_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks into a new tensor on its device (``t`` is not changed)."""
        if not t.is_cuda:
            return torch.from_numpy(self.allreduce_sum(t.numpy()))
        out = torch.empty_like(t)
        if self.cuda_aware:
            _sync(t)
            self._timed(t.numel() * t.element_size(),
                        lambda: self._comm.Allreduce(t, out, op=MPI.SUM))
        else:
            summed = self.allreduce_sum(self.staging.to_host("allreduce", t))
            self.staging.to_device("allreduce", summed, out)
        return out

    def allgatherv_tensor(self, send: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``allgatherv_bytes`` for a 1-D uint8 tensor; the result is on its device."""
        if not send.is_cuda:
            return torch.from_numpy(self.allgatherv_bytes(send.numpy(), counts))
        out = torch.empty(int(sum(counts)), dtype=torch.uint8, device=send.device)
        if self.cuda_aware:
            _sync(send)
            self._allgatherv(send, out, send.numel(), counts)
        else:
            got = self.allgatherv_bytes(self.staging.to_host("gather", send), counts)
            self.staging.to_device("gather", got, out)
        return out

    @property
    def staging(self):
        """Reused (pinned) host buffers for CUDA tensors when MPI is not CUDA-aware."""
        if self._staging is None:
            from lbgm_mpi.gpu import HostStaging
            self._staging = HostStaging()
        return self._staging

    def _allgatherv(self, send, out, nbytes: int, counts: list[int]) -> None:
        if nbytes != counts[self.rank]:
            raise RuntimeError(f"rank {self.rank}: sends {nbytes} bytes but every rank "
                               f"expects {counts[self.rank]}")
        displs = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64).tolist()
        self._timed(nbytes, lambda: self._comm.Allgatherv(
            [send, MPI.BYTE], [out, (list(counts), displs), MPI.BYTE]))

    def _timed(self, nbytes: int, call) -> None:
        """Run a data collective, counting the bytes handed to MPI and the time inside it."""
        self.bytes_sent += nbytes
        start = time.perf_counter()
        call()
        self.seconds += time.perf_counter() - start

    def node_rank_and_size(self) -> tuple[int, int]:
        """This rank's index among the ranks of its node, and their number (start-up only)."""
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()

    def control_gather_int(self, value: int) -> list[int]:
        """Gather one int64 from every rank to every rank (bookkeeping traffic)."""
        return [row[0] for row in self.control_gather_ints([value])]

    def control_gather_ints(self, values: list[int]) -> list[list[int]]:
        """Gather a few int64 from every rank to every rank (bookkeeping traffic)."""
        send = np.array(values, dtype=np.int64)
        out = np.empty((self.size, len(values)), dtype=np.int64)
        self.control_bytes += send.nbytes
        self._comm.Allgather(send, out)
        return out.tolist()

    def control_gather_objects(self, obj) -> list | None:
        """Gather one small object per rank to the root (None elsewhere); bookkeeping traffic
        such as client states for a checkpoint."""
        return self._comm.gather(obj, root=self.root)

    def control_bcast(self, obj):
        """Broadcast a small picklable object from the root (bookkeeping traffic)."""
        return self._comm.bcast(obj, root=self.root)

    def check_same(self, array: np.ndarray, what: str) -> None:
        """Raise on every rank if ``array`` differs between ranks (compares a 63-bit hash)."""
        digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=8).digest()
        hashes = self.control_gather_int(int.from_bytes(digest, "little") >> 1)
        if len(set(hashes)) > 1:
            odd = [r for r, h in enumerate(hashes) if h != hashes[self.root]]
            raise RuntimeError(f"{what} differs between ranks: ranks {odd} disagree with rank "
                               f"{self.root}")

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)


def _sync(t: torch.Tensor) -> None:
    """Wait for the queued work that writes ``t`` before MPI reads it (CUDA only)."""
    from lbgm_mpi.kernels.cupy_ops import sync_for_mpi
    sync_for_mpi(t)


def install_abort_on_error(comm: Comm) -> None:
    """Make an uncaught exception on any rank abort the whole job, after printing it once with
    the rank that raised it (one line for a UserError, the traceback for anything else)."""

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, UserError):
            text = f"lbgm-mpi: error on rank {comm.rank}: {exc}\n"
        else:
            text = (f"lbgm-mpi: rank {comm.rank} raised {exc_type.__name__}: {exc}\n"
                    + "".join(traceback.format_exception(exc_type, exc, tb)))
        sys.stderr.write(text)
        sys.stderr.flush()
        if comm.size > 1:
            comm.abort(1)
        os._exit(1)

    sys.excepthook = hook
