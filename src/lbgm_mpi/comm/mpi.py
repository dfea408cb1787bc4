"""The one module that talks to MPI.

``Comm`` wraps a communicator with the handful of collectives the trainer needs. Each data
collective adds the size of the buffer this rank hands to MPI to ``bytes_sent``, and what this
rank's network link carries under the collective's usual algorithm to ``link_bytes``: a ring
Allreduce of n bytes moves 2 (P - 1) / P x n through every rank's link, an Allgatherv brings every
rank all the bytes but its own (at least total - own, whatever the algorithm); in the star
topology, ``gather_stream`` sends each rank's payload to the root alone and ``send_to_all`` the
root's aggregate to each rank, point to point (``link_up`` / ``link_down`` keep each direction,
``link_bytes`` each collective's busier one); control traffic
(byte-counter totals, model-hash checks, stop agreement, checkpoint gathers) is counted apart in
``control_bytes`` so that the reported figures compare the algorithms' own exchanges. Works at
size 1.

No call hands MPI more than ``max_message_bytes`` at once (see comm/chunking.py): payloads of
any size, past 2^31 bytes too, move in steps, on Open MPI 5 (no large-count routines) and on
MPIs that have them alike. The byte ledger counts the payload once, however many steps it took.
"""

import hashlib
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np
import torch

# Open MPI: the node-shared bank needs only shared-memory windows (osc/sm); without this, osc/ucx
# is tried first and prints an error on machines without UCX devices. A user's setting wins.
os.environ.setdefault("OMPI_MCA_osc", "sm")
from mpi4py import MPI  # noqa: E402  (MPI reads the variable when it starts)

from lbgm_mpi.comm.chunking import (
    ALIGN,
    check_limit,
    displacements,
    element_chunks,
    gather_steps,
)
from lbgm_mpi.errors import UserError

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # bounds every step's buffers as well as MPI's counts
STAR_TAG = 77  # the point-to-point messages of the star topology

# sink(rank, offset, data): ``data`` (1-D uint8 tensor, valid only during the call) holds bytes
# [offset, offset + len(data)) of rank ``rank``'s payload
Sink = Callable[[int, int, torch.Tensor], None]


class Comm:
    """Byte-counting collectives over an mpi4py communicator (default: COMM_WORLD)."""

    def __init__(self, comm: MPI.Comm | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self._comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self.root = 0
        self.bytes_sent = 0      # data bytes this rank handed to MPI
        self.link_bytes = 0      # data bytes this rank's link carries (see the module docstring)
        self.link_up = 0         # of those, what leaves this rank (its uplink)
        self.link_down = 0       # and what reaches it (its downlink)
        self.control_bytes = 0   # bookkeeping bytes this rank handed to MPI
        self.seconds = 0.0       # wall time this rank spent inside data collectives
        self.cuda_aware = False  # hand CUDA buffers to MPI directly (else stage through host)
        self.max_message_bytes = max_message_bytes
        self._staging = None
        self._node = None

    @property
    def is_root(self) -> bool:
        return self.rank == self.root

    @property
    def max_message_bytes(self) -> int:
        """The most bytes handed to MPI in one call (a limit of the whole job)."""
        return self._limit

    @max_message_bytes.setter
    def max_message_bytes(self, limit: int) -> None:
        check_limit(limit, self.size)
        self._limit = limit
        if getattr(self, "_node", None) is not None:
            self._node.max_message_bytes = limit

    # ---- data collectives (counted in bytes_sent) --------------------------------------------

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` over ranks into a new array (``buf`` is not changed)."""
        buf = np.ascontiguousarray(buf).reshape(-1)
        out = np.empty_like(buf)
        self._allreduce(buf, out, buf.itemsize)
        return out

    def allreduce_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a 1-D tensor over ranks into a new tensor on its device (``t`` is not changed)."""
        if not t.is_cuda:
            return torch.from_numpy(self.allreduce_sum(t.numpy()))
        out = torch.empty_like(t)
        if self.cuda_aware:
            _sync(t)
            self._allreduce(t, out, t.element_size())
        else:
            summed = self.allreduce_sum(self.staging.to_host("allreduce", t))
            self.staging.to_device("allreduce", summed, out)
        return out

    def _allreduce(self, buf, out, itemsize: int) -> None:
        ring = 2 * (self.size - 1) * len(buf) * itemsize // self.size
        self._link(ring, ring)
        for lo, hi in element_chunks(len(buf), itemsize, self._limit):
            self._timed((hi - lo) * itemsize,
                        lambda: self._comm.Allreduce(buf[lo:hi], out[lo:hi], op=MPI.SUM))

    def allgatherv_bytes(self, send: np.ndarray, counts: list[int]) -> np.ndarray:
        """Concatenate every rank's ``send`` bytes in rank order into a new array; ``counts[r]``
        (bytes) must be known to every rank and equal rank r's ``send.nbytes``. For small data
        (records): the result is held whole."""
        send = np.ascontiguousarray(send).view(np.uint8).reshape(-1)
        out = np.empty(int(sum(counts)), dtype=np.uint8)
        starts = displacements(counts)

        def keep(rank: int, offset: int, data: torch.Tensor) -> None:
            out[starts[rank] + offset:starts[rank] + offset + len(data)] = data.numpy()

        self.allgatherv_stream([torch.from_numpy(send)], counts, keep)
        return out

    def allgatherv_stream(self, pieces: Sequence[torch.Tensor], counts: list[int],
                          sink: Sink) -> None:
        """Every rank's payload to every rank, in steps of at most ``max_message_bytes``.

        This rank's payload is the concatenation of ``pieces`` (1-D uint8 tensors, on the host or
        a GPU; not changed), ``counts[r]`` bytes for rank r (known to every rank). ``sink`` is
        called with each received part of every rank's payload (this rank's own included), in
        rank order within a step and in payload order for each rank; nothing holds the whole
        gathered payload."""
        nbytes = sum(p.numel() for p in pieces)
        if nbytes != counts[self.rank]:
            raise RuntimeError(f"rank {self.rank}: sends {nbytes} bytes but every rank "
                               f"expects {counts[self.rank]}")
        self._link(sum(counts) - nbytes, sum(counts) - nbytes)  # a ring forwards all but its own
        device = pieces[0].device if pieces else torch.device("cpu")
        on_device = device.type == "cuda" and self.cuda_aware
        for ranges in gather_steps(counts, self._limit):
            step = [hi - lo for lo, hi in ranges]
            recv = self._step_buffer("recv", sum(step), device if on_device else None)
            send = _byte_range(pieces, *ranges[self.rank], self, on_device)
            if on_device:
                _sync(send)
            self._timed(len(send), lambda: self._comm.Allgatherv(
                [_buf(send), MPI.BYTE], [_buf(recv), (step, displacements(step)), MPI.BYTE]))
            for r, (lo, hi), start in zip(range(self.size), ranges, displacements(step)):
                if hi > lo:
                    sink(r, lo, recv[start:start + hi - lo])

    # ---- the star: every rank to the root, the root to every rank -----------------------------

    def gather_stream(self, pieces: Sequence[torch.Tensor], counts: list[int] | None,
                      sink: Sink) -> None:
        """Every rank's payload to the root only, by point-to-point messages of bounded size.

        This rank's payload is the concatenation of ``pieces`` (1-D uint8 tensors). The root
        passes ``counts[r]``, the bytes rank r sends (the other ranks need not know them: pass
        None). ``sink`` is called on the root with each part of every rank's payload (its own
        included, which never goes through MPI), in rank order within a wave and in payload order
        for each rank; on every other rank it is called with its own payload's parts. A wave
        receives at most ``max_message_bytes`` in all, so the root never holds the payloads
        whole. Link ledger: a rank's uplink carries its payload, the root's downlink all others."""
        nbytes = sum(p.numel() for p in pieces)
        chunk = self._star_chunk()
        if not self.is_root:
            self._link(nbytes, 0)
            for lo in range(0, nbytes, chunk):
                send = _byte_range(pieces, lo, min(nbytes, lo + chunk), self, False)
                self._timed(len(send), lambda: self._comm.Send([_buf(send), MPI.BYTE],
                                                                dest=self.root, tag=STAR_TAG))
                sink(self.rank, lo, send)
            return
        if nbytes != counts[self.rank]:
            raise RuntimeError(f"rank {self.rank}: sends {nbytes} bytes but the root expects "
                               f"{counts[self.rank]}")
        self._link(0, sum(counts) - nbytes)
        for lo in range(0, nbytes, chunk):
            sink(self.rank, lo, _byte_range(pieces, lo, min(nbytes, lo + chunk), self, False))
        others = [r for r in range(self.size) if r != self.root and counts[r]]
        for lo in range(0, max([counts[r] for r in others], default=0), chunk):
            wave = [(r, min(counts[r], lo + chunk) - lo) for r in others if counts[r] > lo]
            recv = self._step_buffer("recv", sum(n for _, n in wave), None)
            starts = displacements([n for _, n in wave])
            requests = [self._comm.Irecv([recv[s:s + n].numpy(), MPI.BYTE], source=r,
                                         tag=STAR_TAG) for (r, n), s in zip(wave, starts)]
            self._timed(0, lambda: MPI.Request.Waitall(requests))
            for (r, n), s in zip(wave, starts):
                sink(r, lo, recv[s:s + n])

    def send_to_all(self, t: torch.Tensor) -> torch.Tensor:
        """The root's 1-D tensor ``t`` on every rank, by one point-to-point message per rank and
        step (a star: the root's uplink carries it P - 1 times, every other downlink once).
        Other ranks pass a tensor of the same size and dtype to receive into; returns it."""
        flat = t.reshape(-1)
        host = flat.cpu() if flat.is_cuda else flat  # a copy only for a CUDA tensor
        data = host.view(torch.uint8)
        n = data.numel()
        if self.is_root:
            self._link((self.size - 1) * n, 0)
        else:
            self._link(0, n)
        for lo, hi in element_chunks(n, 1, self._limit):
            part = data[lo:hi].numpy()
            if self.is_root:
                requests = [self._comm.Isend([part, MPI.BYTE], dest=r, tag=STAR_TAG)
                            for r in range(self.size) if r != self.root]
                self._timed(len(part) * len(requests), lambda: MPI.Request.Waitall(requests))
            else:
                self._timed(0, lambda: self._comm.Recv([part, MPI.BYTE], source=self.root,
                                                       tag=STAR_TAG))
        if flat.is_cuda and not self.is_root:
            flat.copy_(host)
        return t

    def _star_chunk(self) -> int:
        """Bytes per message of a star gather: a wave of one message per rank fits the limit."""
        return max(ALIGN, self._limit // self.size // ALIGN * ALIGN)

    def _link(self, up: int, down: int) -> None:
        """Add one collective's traffic to this rank's link ledger (link_bytes: its busier
        direction, which paces it)."""
        self.link_up += up
        self.link_down += down
        self.link_bytes += max(up, down)

    def _step_buffer(self, name: str, nbytes: int, device) -> torch.Tensor:
        """A reused uint8 buffer of ``nbytes`` (host, or ``device`` for CUDA-aware MPI)."""
        if device is None:
            return self.staging.buffer(name, nbytes, torch.uint8)
        return torch.empty(nbytes, dtype=torch.uint8, device=device)

    def _timed(self, nbytes: int, call) -> None:
        """Run a data collective, counting the bytes handed to MPI and the time inside it."""
        self.bytes_sent += nbytes
        start = time.perf_counter()
        call()
        self.seconds += time.perf_counter() - start

    @property
    def staging(self):
        """Reused host buffers (pinned where CUDA is present) for steps and for CUDA tensors when
        MPI is not CUDA-aware."""
        if self._staging is None:
            from lbgm_mpi.comm.device import HostStaging
            self._staging = HostStaging()
        return self._staging

    # ---- bookkeeping collectives (counted in control_bytes) ----------------------------------

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

    def control_gather_bytes(self, send: np.ndarray) -> list[np.ndarray] | None:
        """Every rank's bytes to the root, in steps (any size): the root gets one new uint8 array
        per rank, the others None (bookkeeping traffic, e.g. client states for a checkpoint)."""
        send = np.ascontiguousarray(send).view(np.uint8).reshape(-1)
        counts = self.control_gather_int(send.nbytes)
        parts = [np.empty(c, dtype=np.uint8) for c in counts] if self.is_root else None
        for ranges in gather_steps(counts, self._limit):
            step = [hi - lo for lo, hi in ranges]
            recv = np.empty(sum(step) if self.is_root else 0, dtype=np.uint8)
            lo, hi = ranges[self.rank]
            self.control_bytes += hi - lo
            self._comm.Gatherv(send[lo:hi], [recv, (step, displacements(step)), MPI.BYTE]
                               if self.is_root else None, root=self.root)
            if self.is_root:
                for part, (a, b), start in zip(parts, ranges, displacements(step)):
                    part[a:b] = recv[start:start + b - a]
        return parts

    def control_bcast(self, obj):
        """Broadcast a picklable object from the root, in steps (any size; bookkeeping)."""
        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.is_root else None
        nbytes = self._comm.bcast(len(data) if self.is_root else None, root=self.root)
        buf = data if self.is_root else np.empty(nbytes, dtype=np.uint8)
        for lo, hi in element_chunks(nbytes, 1, self._limit):
            self.control_bytes += hi - lo if self.is_root else 0
            self._comm.Bcast(buf[lo:hi], root=self.root)
        return obj if self.is_root else pickle.loads(buf.tobytes())

    def check_same(self, array: np.ndarray, what: str) -> None:
        """Raise on every rank if ``array`` differs between ranks (compares a 63-bit hash)."""
        digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=8).digest()
        hashes = self.control_gather_int(int.from_bytes(digest, "little") >> 1)
        if len(set(hashes)) > 1:
            odd = [r for r, h in enumerate(hashes) if h != hashes[self.root]]
            raise RuntimeError(f"{what} differs between ranks: ranks {odd} disagree with rank "
                               f"{self.root}")

    def library_version(self) -> str:
        """The MPI library's name and version ("Open MPI v5.0.11")."""
        return MPI.Get_library_version().strip().splitlines()[0].split(",")[0]

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)

    # ---- the node ----------------------------------------------------------------------------

    @property
    def node(self) -> "Comm":
        """The ranks of this rank's node (one shared-memory domain), as a Comm; built once."""
        if self._node is None:
            self._node = Comm(self._comm.Split_type(MPI.COMM_TYPE_SHARED), self._limit)
        return self._node

    def node_rank_and_size(self) -> tuple[int, int]:
        """This rank's index among the ranks of its node, and their number."""
        return self.node.rank, self.node.size

    def node_count(self) -> int:
        """How many nodes the job spans (collective)."""
        return sum(self.control_gather_int(int(self.node.rank == 0)))

    def shared_memory(self, nbytes: int, what: str):
        """``nbytes`` new bytes shared by the ranks of this node, of undefined value (collective
        over the node); ``what`` names their use in the error if they cannot be had."""
        from lbgm_mpi.comm.shared import SharedMemory
        return SharedMemory(self.node._comm, nbytes, what)


def _byte_range(pieces: Sequence[torch.Tensor], lo: int, hi: int, comm: Comm,
                on_device: bool) -> torch.Tensor:
    """Bytes [lo, hi) of the concatenation of ``pieces``: a view when they lie in one piece,
    else a copy into a reused buffer; on the host unless MPI takes device buffers."""
    start = 0
    for piece in pieces:
        if start <= lo and hi <= start + piece.numel() and (on_device or not piece.is_cuda):
            return piece[lo - start:hi - start]
        start += piece.numel()
    out = comm._step_buffer("send", hi - lo, pieces[0].device if on_device else None)
    start, filled = 0, 0
    for piece in pieces:
        a, b = max(lo, start), min(hi, start + piece.numel())
        if a < b:
            out[filled:filled + b - a].copy_(piece[a - start:b - start])
            filled += b - a
        start += piece.numel()
    return out


def _buf(t: torch.Tensor):
    """What mpi4py reads or writes for a tensor: NumPy's view of host memory, the tensor itself
    on a GPU (through DLPack / the CUDA array interface)."""
    return t if t.is_cuda else t.numpy()


def _sync(t: torch.Tensor) -> None:
    """Wait for the queued work that writes ``t`` before MPI reads it (CUDA only)."""
    from lbgm_mpi.comm.device import sync_for_mpi
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
