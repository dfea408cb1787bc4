"""LBGM as a PyTorch DDP communication hook: the Look-back Gradient Multiplier in your own script.

Two lines in an existing DistributedDataParallel script::

    state = LBGMHookState(threshold=0.2, lookback=3, start_iter=10)
    model.register_comm_hook(state, lbgm_hook)

Per DDP bucket (keyed by the bucket's index) the hook keeps the trainer's global-scope state
(lbgm_mpi.algorithm.global_lookback, imported, not copied): an orthonormal look-back bank of
the bucket's last ``lookback`` dense averaged gradients, a count sketch, and this rank's
error-feedback residual. Each step, per bucket:

1. a_p = g_p / P + e_p: this rank's bucket gradient, already divided by the world size P (as
   the default Allreduce hook does), plus its residual. The sum over ranks of a_p is the
   averaged gradient (plus the ranks' residuals);
2. while the bank is empty (or threshold = 0) nothing else: one dense Allreduce of a_p, exactly
   the default hook's. Otherwise ONE small Allreduce of a float64 record: the ``lookback``
   coefficients <a_p, q_j> and a count sketch of a_p - sum_j <a_p, q_j> q_j. The sums are the
   average's exact coefficients and its residual's sketch, so every rank takes the same
   decision (``decide_global``: scalar iff the estimated sin^2 of the angle between the average
   and the bank's span is at or below ``threshold``);
3. scalar: the bucket's gradient is sum_j c_j q_j and nothing else is sent; the rank keeps its
   own residual a_p - Q^T Q a_p (the ranks' residuals sum to the average's). Dense: one
   Allreduce of a_p, whose result joins the bank, and the residual becomes zero.

Plain averaging Allreduce runs until ``start_iter`` (DDP rebuilds its buckets after the first
iteration). The returned future holds the AVERAGED gradient, as DDP expects.

The record Allreduce is waited for inside the hook (every collective is issued from the thread
that runs the hooks, in bucket order, so the ranks' collectives always pair up); the dense
Allreduce runs asynchronously, like the default hook's.

``init_process_group_from_env`` starts the process group under torchrun, mpirun or srun.
"""

import dataclasses
import os
import sys
import warnings
import weakref
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from lbgm_mpi.algorithm.global_lookback import (CountSketch, GlobalBank, decide_global,
                                                sketch_widths)

__all__ = ["LBGMHookState", "LBGMHookError", "lbgm_hook", "init_process_group_from_env",
           "DistInfo", "DEFAULT_MASTER_ADDR", "DEFAULT_MASTER_PORT"]

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
STATE_VERSION = 1
COUNTERS = ("iterations", "bytes", "record_bytes", "dense_bytes", "allreduce_bytes",
            "dense_buckets", "scalar_buckets", "allreduce_buckets")


class LBGMHookError(RuntimeError):
    """A use of the LBGM hook it does not support (the message says what and how to fix it)."""


class _Bucket:
    """One DDP bucket's LBGM state: its size, look-back bank and count sketch (identical on every
    rank), this rank's error-feedback residual, and (when known) its parameters' positions in
    DDP's first, one-bucket layout."""

    def __init__(self, size: int, lookback: int, sketch: int, seed: int, index: int, device,
                 error_feedback: bool, params: list[int] | None, shapes: list[list[int]]):
        self.size, self.params, self.shapes = size, params, shapes
        self.bank = GlobalBank([0, size], lookback, device)
        self.sketch = CountSketch([size], sketch_widths([size], sketch),
                                  seed * 1_000_003 + index)
        self.residual = torch.zeros(size, dtype=torch.float32, device=device) \
            if error_feedback else None

    def state(self) -> dict:
        bank = {k: v.detach().to("cpu", copy=True) for k, v in self.bank.state().items()}
        return {"size": self.size, "bank": bank,
                "residual": None if self.residual is None else self.residual.to("cpu", copy=True),
                "params": None if self.params is None else list(self.params),
                "shapes": [list(s) for s in self.shapes]}


class LBGMHookState:
    """The LBGM hook's state, shared by all of a DDP model's buckets.

    process_group: the group the hook reduces over (None: the default group);
    threshold: a bucket goes as a scalar when the estimated sin^2 of the angle between its
        averaged gradient and the bank's span is at or below it (0: always dense, no record);
    lookback: dense averaged gradients kept per bucket (m, the bank's rank);
    start_iter: iterations of plain averaging Allreduce first (>= 1: DDP rebuilds its buckets
        after the first);
    error_feedback: keep each rank's part the scalar reconstruction missed, add it next step;
    sketch: count-sketch buckets of the residual per DDP bucket (at most numel / 16);
    seed: of the count sketch (the same on every rank);
    keep_history: record (iteration, bucket, "scalar"/"dense"/"allreduce", sin^2) per bucket.

    Counters (``counters()``, also attributes), all this rank's: bytes handed to the collectives
    (``bytes`` = record + dense + allreduce), ``dense_buckets`` and ``scalar_buckets`` after
    start_iter, ``allreduce_buckets`` of plain Allreduce (before start_iter), ``iterations``.
    """

    def __init__(self, process_group=None, threshold: float = 0.2, lookback: int = 3,
                 start_iter: int = 10, error_feedback: bool = True, sketch: int = 1024,
                 seed: int = 0, keep_history: bool = False):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold = {threshold}: a sin^2 bound, between 0 and 1")
        if lookback < 1:
            raise ValueError(f"lookback = {lookback}: keep at least one gradient")
        if start_iter < 1:
            raise ValueError(f"start_iter = {start_iter}: DDP rebuilds its buckets after the "
                             "first iteration, so LBGM can start at iteration 1 at the earliest")
        if sketch < 1:
            raise ValueError(f"sketch = {sketch}: at least one bucket")
        self.process_group = process_group
        self.threshold, self.lookback, self.start_iter = float(threshold), lookback, start_iter
        self.error_feedback, self.sketch, self.seed = error_feedback, sketch, seed
        self.world_size = self.rank = None
        if process_group is not None or (dist.is_available() and dist.is_initialized()):
            self._bind(self._group())
        self.iter = 0
        for name in COUNTERS[1:]:
            setattr(self, name, 0)
        self.history = [] if keep_history else None
        self.buckets: dict[int, _Bucket] = {}
        self._pending: dict[int, dict] = {}   # loaded bucket states, built on their device later
        self._first_lbgm_iter = None          # the iteration that built the bucket layout
        self._param_index: dict[int, int] = {}  # id(parameter) -> position in the one bucket
        self._param_refs: list = []             # ... while these parameters are alive
        self._resuming = False                # loaded, and DDP's first iteration not over
        self._warned = False

    # ---- counters ----------------------------------------------------------------------------

    @property
    def iterations(self) -> int:
        return self.iter

    def counters(self) -> dict[str, int]:
        """This rank's counters: bytes handed to the collectives (all, record, dense, plain
        Allreduce) and buckets sent dense, as a scalar, by plain Allreduce."""
        return {name: int(getattr(self, name)) for name in COUNTERS}

    # ---- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """This rank's state (CPU tensor copies): iteration, counters, and per bucket its bank
        and this rank's residual. Save every rank's own (the residuals differ)."""
        buckets = {i: b.state() for i, b in self.buckets.items()}
        buckets.update({i: s for i, s in self._pending.items() if i not in buckets})
        return {"version": STATE_VERSION, "iter": self.iter, "world_size": self.world_size,
                "rank": self.rank, "lookback": self.lookback,
                "first_lbgm_iter": self._first_lbgm_iter, "counters": self.counters(),
                "buckets": buckets}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` of the same rank, at the same world size and lookback.
        Call it before the first backward of the new DDP model."""
        if state.get("version") != STATE_VERSION:
            raise LBGMHookError(f"LBGM hook state version {state.get('version')!r}, this code "
                                f"reads version {STATE_VERSION}")
        if self.world_size is None and dist.is_available() and dist.is_initialized():
            self._bind(self._group())
        saved_ws, saved_rank = state["world_size"], state["rank"]
        if saved_ws is not None and self.world_size is not None and saved_ws != self.world_size:
            raise LBGMHookError(f"the LBGM hook state was saved by a process group of "
                                f"{saved_ws} processes; this one has {self.world_size}: the "
                                "per-rank residuals cannot be shared out again")
        if saved_rank is not None and self.rank is not None and saved_rank != self.rank:
            raise LBGMHookError(f"this is rank {self.rank}, the LBGM hook state was saved by "
                                f"rank {saved_rank}: load each rank's own state")
        if state["buckets"] and state["lookback"] != self.lookback:
            raise LBGMHookError(f"the LBGM hook state keeps lookback = {state['lookback']}, "
                                f"this state was built with lookback = {self.lookback}")
        self.iter = int(state["iter"])
        for name, value in state["counters"].items():
            if name != "iterations":
                setattr(self, name, int(value))
        self._first_lbgm_iter = state["first_lbgm_iter"]
        self.buckets, self._pending = {}, {int(i): s for i, s in state["buckets"].items()}
        self._resuming = True

    # ---- internals ---------------------------------------------------------------------------

    def _group(self):
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def _bind(self, group) -> None:
        self.world_size, self.rank = group.size(), group.rank()

    def _check_group(self):
        group = self._group()
        if self.world_size is None:
            self._bind(group)
        elif group.size() != self.world_size:
            raise LBGMHookError(f"the LBGM hook state was built for a process group of "
                                f"{self.world_size} processes; the hook now runs on one of "
                                f"{group.size()}: build a new LBGMHookState for it")
        return group

    def _number(self, params: list) -> None:
        """Number the parameters by their position in DDP's first, one-bucket layout (the model's
        parameter order), once per set of parameter objects: a rebuilt single bucket of the same
        parameters (in gradient-ready order) does not renumber them."""
        alive = self._param_refs and all(r() is not None for r in self._param_refs)
        if alive and {id(p) for p in params} == set(self._param_index):
            return
        self._param_index = {id(p): i for i, p in enumerate(params)}
        self._param_refs = [weakref.ref(p) for p in params]

    def _params_of(self, bucket) -> list[int] | None:
        """The bucket's parameters as positions in DDP's one-bucket layout (None: unknown)."""
        if not all(r() is not None for r in self._param_refs):
            return None
        pos = [self._param_index.get(id(p)) for p in bucket.parameters()]
        return None if not pos or None in pos else pos

    @staticmethod
    def _shapes_of(bucket) -> list[list[int]]:
        return [list(p.shape) for p in bucket.parameters()]

    def _new_bucket(self, index: int, size: int, device, params, shapes) -> _Bucket:
        return _Bucket(size, self.lookback, self.sketch, self.seed, index, device,
                       self.error_feedback, params, shapes)

    def _materialise(self, index: int, device) -> _Bucket | None:
        """The loaded state of bucket ``index`` on ``device`` (None if there is none)."""
        saved = self._pending.pop(index, None)
        if saved is None:
            return self.buckets.get(index)
        b = self._new_bucket(index, int(saved["size"]), device, saved["params"],
                             saved["shapes"])
        b.bank.load_state(saved["bank"])
        if b.residual is not None and saved["residual"] is not None:
            b.residual.copy_(saved["residual"])
        self.buckets[index] = b
        return b

    def _record(self, index: int, kind: str, sin2=None) -> None:
        if self.history is not None:
            self.history.append((self.iter, index, kind, sin2))

    def _done(self, tensor: torch.Tensor) -> torch.futures.Future:
        fut = torch.futures.Future(devices=[tensor.device] if tensor.is_cuda else None)
        fut.set_result(tensor)
        return fut

    def _allreduce(self, group, buf: torch.Tensor, index: int) -> torch.futures.Future:
        """Plain averaging Allreduce (the default hook)."""
        self.allreduce_bytes += buf.numel() * buf.element_size()
        self.bytes += buf.numel() * buf.element_size()
        self.allreduce_buckets += 1
        self._record(index, "allreduce")
        return default_hooks._allreduce_fut(group, buf)

    # ---- one bucket --------------------------------------------------------------------------

    def _lbgm(self, group, b: _Bucket, index: int, buf: torch.Tensor) -> torch.futures.Future:
        """LBGM on one bucket's flat gradient ``buf`` (replaced by the averaged gradient)."""
        work = buf if buf.dtype == torch.float32 else buf.to(torch.float32)
        work.div_(group.size())
        if b.residual is not None:
            work.add_(b.residual)
        usable = b.bank.usable() if self.threshold > 0 else None
        if usable is not None and bool(usable.any()):
            m = self.lookback
            coefs = b.bank.coefficients(work)
            record = torch.zeros(m + b.sketch.size, dtype=torch.float64, device=work.device)
            record[:m] = coefs.reshape(-1).to(work.device)
            b.bank.residual(work, coefs, b.sketch, record[m:], keep=b.residual)
            self.record_bytes += record.numel() * record.element_size()
            self.bytes += record.numel() * record.element_size()
            dist.all_reduce(record, group=group)
            total = record.cpu()
            coefs = total[:m].view(1, m)
            refresh, sin2 = decide_global(coefs, b.sketch.norms2(total[m:]), usable,
                                          self.threshold)
            if not bool(refresh[0]):
                self.scalar_buckets += 1
                self._record(index, "scalar", float(sin2[0]))
                b.bank.combine(coefs, work, [0])
                if work is not buf:
                    buf.copy_(work)
                return self._done(buf)
            self._record(index, "dense", float(sin2[0]))
        else:
            self._record(index, "dense")
        if b.residual is not None:
            b.residual.zero_()
        self.dense_buckets += 1
        self.dense_bytes += work.numel() * work.element_size()
        self.bytes += work.numel() * work.element_size()
        keep = self.threshold > 0

        def joined(fut):
            total = fut.value()[0]
            if keep:
                b.bank.add(0, total)
            if total is not buf:
                buf.copy_(total)
            return buf

        return dist.all_reduce(work, group=group, async_op=True).get_future().then(joined)

    def _remap(self, group, bucket) -> torch.futures.Future:
        """DDP's first iteration after a resume holds the whole model in one bucket (in the
        model's parameter order): run each saved bucket on its parameters' values, in bucket
        order, exactly as the saved layout would have, and write the results back."""
        buf = bucket.buffer()
        offsets, at = [], 0
        for p in bucket.parameters():
            offsets.append((at, p.numel()))
            at += p.numel()
        for index in sorted(self._pending):
            b = self._materialise(index, buf.device)
            spans = [offsets[i] for i in b.params]
            x = torch.cat([buf[lo:lo + n] for lo, n in spans])
            out = self._lbgm(group, b, index, x).wait()
            at = 0
            for lo, n in spans:
                buf[lo:lo + n].copy_(out[at:at + n])
                at += n
        return self._done(buf)

    def _can_remap(self, bucket) -> bool:
        """Whether this one-bucket iteration holds exactly the saved buckets' parameters."""
        if not (bucket.index() == 0 and bucket.is_last()) or not self._pending:
            return False
        shapes = self._shapes_of(bucket)
        seen = []
        for saved in self._pending.values():
            pos = saved["params"]
            if pos is None or any(not 0 <= i < len(shapes) for i in pos) \
                    or [shapes[i] for i in pos] != saved["shapes"]:
                return False
            seen += pos
        return sorted(seen) == list(range(len(shapes)))

    def hook(self, bucket) -> torch.futures.Future:
        group = self._check_group()
        buf, index = bucket.buffer(), bucket.index()
        if index == 0 and bucket.is_last():
            self._number(bucket.parameters())
        if buf.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise LBGMHookError(f"bucket {index} holds {buf.dtype} gradients: the LBGM hook "
                                "takes floating-point buckets")
        if self.iter < self.start_iter:
            return self._allreduce(group, buf, index)
        if self._resuming:
            return self._resume(group, bucket)
        b = self._materialise(index, buf.device)
        if b is None:
            if self._first_lbgm_iter is None:
                self._first_lbgm_iter = self.iter
            if self._first_lbgm_iter != self.iter:
                raise LBGMHookError(f"DDP bucket {index} ({buf.numel()} values) appeared at "
                                    f"iteration {self.iter}, after the LBGM hook took DDP's "
                                    f"bucket layout at iteration {self._first_lbgm_iter}: the "
                                    "layout must not change once LBGM has started")
            b = self.buckets[index] = self._new_bucket(index, buf.numel(), buf.device,
                                                       self._params_of(bucket),
                                                       self._shapes_of(bucket))
        elif b.size != buf.numel():
            raise LBGMHookError(f"DDP bucket {index} changed size: it held {b.size} values when "
                                f"the LBGM hook's state for it was built and holds "
                                f"{buf.numel()} now (iteration {self.iter}). The bucket layout "
                                "must not change once LBGM has started: the same model, "
                                "bucket_cap_mb and find_unused_parameters for the whole run")
        return self._lbgm(group, b, index, buf)

    def _resume(self, group, bucket) -> torch.futures.Future:
        """The new DDP model's first iteration after load_state_dict: a bucket the same as a
        saved one (size, parameter shapes and positions) goes on from its state; DDP's
        one-bucket first layout is remapped onto the saved buckets exactly; anything else goes
        by plain Allreduce this iteration, and the saved state resumes at the next."""
        buf, index = bucket.buffer(), bucket.index()
        saved, params = self._pending.get(index), self._params_of(bucket)
        if saved is not None and saved["size"] == buf.numel() \
                and saved["shapes"] == self._shapes_of(bucket) \
                and (saved["params"] is None or params is None or saved["params"] == params):
            return self._lbgm(group, self._materialise(index, buf.device), index, buf)
        if self._can_remap(bucket):
            return self._remap(group, bucket)
        if not self._warned:
            self._warned = True
            warnings.warn(f"LBGM hook: DDP's bucket {index} ({buf.numel()} values) matches no "
                          "saved bucket in the first iteration after load_state_dict; this "
                          "iteration uses plain Allreduce, the saved state resumes at the next",
                          stacklevel=2)
        return self._allreduce(group, buf, index)


def lbgm_hook(state: LBGMHookState,
              bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP communication hook: ``model.register_comm_hook(state, lbgm_hook)``. Returns a
    future holding the bucket's averaged gradient (see the module docstring)."""
    try:
        return state.hook(bucket)
    finally:
        if bucket.is_last():
            state.iter += 1
            state._resuming = False


# ---- process groups from a launcher's environment ------------------------------------------

@dataclasses.dataclass(frozen=True)
class DistInfo:
    """What ``init_process_group_from_env`` found and started."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str  # "torchrun", "mpirun", "mpich", "srun" or "single"


def _launcher_env(env) -> tuple[str, int, int, int]:
    """(launcher, rank, world size, local rank) from a launcher's environment variables."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return ("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]),
                int(env.get("LOCAL_RANK", 0)))
    if "OMPI_COMM_WORLD_RANK" in env:
        return ("mpirun", int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)))
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return ("mpich", int(env["PMI_RANK"]), int(env["PMI_SIZE"]),
                int(env.get("MPI_LOCALRANKID", env.get("PMI_LOCAL_RANK", 0))))
    if "SLURM_PROCID" in env:
        return ("srun", int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", 1)),
                int(env.get("SLURM_LOCALID", 0)))
    return "single", 0, 1, 0


def end_process(code: int) -> None:
    """Flush stdout and stderr and end the process with ``code`` at once, skipping the
    interpreter's teardown: after destroy_process_group, gloo's threads can still abort that
    teardown ("terminate called without an active exception", about one exit in ten). Call it
    last, once everything is printed and saved."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def init_process_group_from_env(backend: str | None = None,
                                timeout: timedelta | None = None) -> DistInfo:
    """Start the default process group from the launcher's environment; return DistInfo.

    Rank and world size come from RANK / WORLD_SIZE / LOCAL_RANK (torchrun), else
    OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK (Open MPI's mpirun), else PMI_RANK / PMI_SIZE
    (MPICH, Intel MPI), else SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (srun); none of them:
    one process. The rendezvous is MASTER_ADDR:MASTER_PORT, by default 127.0.0.1 (one node;
    on several nodes set MASTER_ADDR to the first node's address) and 29500. RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT are set in os.environ for the rest of the script.

    backend: None picks "nccl" when CUDA is available, else "gloo". With CUDA each process takes
    device LOCAL_RANK (modulo the visible devices) and makes it current. If the default group
    is already up, only DistInfo is returned."""
    launcher, rank, world_size, local_rank = _launcher_env(os.environ)
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda and backend != "gloo":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device,
                        dist.get_backend(), launcher)
    os.environ.setdefault("MASTER_ADDR", DEFAULT_MASTER_ADDR)
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_MASTER_PORT))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                            **kwargs)
    return DistInfo(rank, world_size, local_rank, device, backend, launcher)
