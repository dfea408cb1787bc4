"""Checks made on every rank before a run allocates anything large, and before its run folder is
made, each ending in one line that names the cause: there are enough clients for the ranks, the
device exists (system.device = "cuda" needs a GPU), the kernel back end exists, the data set can
be read (its files, an HDF5 file's layout), the run fits in this node's memory (the model counted
on PyTorch's "meta" device, which has shapes but no storage), and the model fits the data (one
sample through it).

The memory figure is a lower bound: per-client bookkeeping, the look-back bank (clients x slots x
parameters x bytes per value, on every rank or once per node), the model, the updates of the
participants a rank trains at once, and its share of the data. A run refused here could never have
run; a run admitted may still need more (the exchange's buffers), but no longer grows until the
machine kills it, as clients.count = 10^9 did.
"""

import math
import os
from pathlib import Path

import torch

from lbgm_mpi.errors import ConfigError, UserError
from lbgm_mpi.units import FLOAT_BYTES, human_bytes

PER_CLIENT_BYTES = 256  # partition index array, label histogram, placement: Python objects each
BANK_BYTES = {"float32": 4, "bfloat16": 2}


def check_run(spec, ranks: int, ranks_on_node: int) -> int:
    """Run every check for ``spec`` on ``ranks`` ranks (``ranks_on_node`` of them here); return
    the model's parameter count. Raises UserError naming the first problem found."""
    _check_ranks(spec, ranks)
    _check_device(spec.system, ranks_on_node)
    _check_kernels(spec.system)
    bookkeeping = spec.clients.count * PER_CLIENT_BYTES
    _check_memory({"client bookkeeping": bookkeeping}, spec, ranks_on_node)  # before the data
    from lbgm_mpi.data.datasets import describe
    in_shape, num_classes, samples = describe(spec.data)
    params = model_parameters(spec, in_shape, num_classes)
    _check_memory(_needs(spec, ranks, ranks_on_node, params, math.prod(in_shape) * samples,
                         bookkeeping), spec, ranks_on_node)
    check_forward(spec, in_shape, num_classes)
    return params


def _check_ranks(spec, ranks: int) -> None:
    """Every client rank hosts at least one client, and a dedicated server has a rank of its
    own (the same check the trainer's topology makes, later)."""
    from lbgm_mpi.topology import check_hosts
    check_hosts(spec.clients.count, ranks, 1 if spec.system.server == "dedicated" else 0)


def _check_device(system, ranks_on_node: int) -> None:
    """system.device can be had on this node (topology.choose_device picks it, later)."""
    if system.device == "cpu":
        return
    from lbgm_mpi.gpu import pick_device
    try:
        pick_device(system.device, 0, ranks_on_node, torch.cuda.device_count(),
                    system.allow_gpu_sharing, os.environ.get("CUDA_VISIBLE_DEVICES"))
    except RuntimeError as err:
        raise ConfigError(f"system.device: {err}") from None


def _check_kernels(system) -> None:
    if system.kernels != "cupy":
        return
    from lbgm_mpi.kernels.cupy_ops import cupy_available
    if not cupy_available():
        raise UserError("system.kernels = 'cupy' needs CuPy and a CUDA GPU visible to every rank; "
                        "none found here: use system.kernels = 'torch' (or 'auto', which takes "
                        "CuPy where it works)")


def model_parameters(spec, in_shape, num_classes: int) -> int:
    """Values in the flat model vector (parameters and float buffers) of ``spec``'s model, built
    on the "meta" device (no storage); raises UserError if it cannot be built for such data."""
    from lbgm_mpi.models import build_model
    try:
        with torch.device("meta"):
            model = build_model(spec.model, in_shape, num_classes, spec.run.seed)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"{_misfit(spec, in_shape, num_classes)}: {str(err).splitlines()[0]}") \
            from None
    return sum(t.numel() for t in (*model.parameters(), *model.buffers())
               if t.is_floating_point())


def check_forward(spec, in_shape, num_classes: int) -> None:
    """Raise UserError unless ``spec``'s model, built on the CPU, maps one sample of ``in_shape``
    to ``num_classes`` outputs. Called once the memory check has admitted the model; a forward on
    "meta" would import PyTorch's symbolic shapes (sympy, 800 modules, 70 MB on every rank)."""
    from lbgm_mpi.models import build_model
    try:
        with torch.no_grad():
            model = build_model(spec.model, in_shape, num_classes, spec.run.seed)
            out = model.eval()(torch.zeros((1, *in_shape)))
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"{_misfit(spec, in_shape, num_classes)}: {str(err).splitlines()[0]}") \
            from None
    if tuple(out.shape) != (1, num_classes):
        raise UserError(f"{_misfit(spec, in_shape, num_classes)}: it outputs "
                        f"{tuple(out.shape[1:])} per sample")


def _misfit(spec, in_shape, num_classes: int) -> str:
    return (f"model.name = {spec.model.name!r} does not fit data.name = {spec.data.name!r} "
            f"(inputs {'x'.join(map(str, in_shape))}, {num_classes} classes)")


def _needs(spec, ranks: int, ranks_on_node: int, params: int, sample_values: int,
           bookkeeping: int) -> dict:
    """What one rank needs at least, by part, in bytes (host memory); a node-shared bank
    counts once per node, so a rank's part is its share."""
    on_host = spec.system.device == "cpu"  # elsewhere the bank and the model live on the GPU
    shared = spec.system.bank == "shared"  # in host memory wherever the model lives
    local = math.ceil(spec.clients.participants / ranks)
    needs = {"client bookkeeping": bookkeeping,
             "its share of the training data": sample_values * FLOAT_BYTES // ranks}
    if on_host:
        needs["model, server state and updates"] = (3 + local) * params * FLOAT_BYTES
    if (on_host or shared) and spec.algo.name == "lbgm":
        bank = (spec.clients.count * spec.algo.lookback * params
                * BANK_BYTES[spec.system.bank_dtype])
        where = f", one per node shared by {ranks_on_node} rank(s)" if shared else ""
        share = bank // ranks_on_node if shared else bank
        if spec.system.topology == "star":  # the server's whole bank; elsewhere own rows only
            hosts = ranks - (1 if spec.system.server == "dedicated" else 0)
            own = bank * math.ceil(spec.clients.count / hosts) // spec.clients.count
            where = (f"; in a star the server's, a client rank's {human_bytes(own)} of own rows, "
                     f"averaged over the node's {ranks_on_node} rank(s)")
            share = (bank + (ranks_on_node - 1) * own) // ranks_on_node
        needs[f"look-back bank ({spec.clients.count} clients x {spec.algo.lookback} slot(s) x "
              f"{params} values x {BANK_BYTES[spec.system.bank_dtype]} bytes{where})"] = share
    return needs


def available_memory() -> int | None:
    """MemAvailable of this node in bytes, or None where /proc/meminfo does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(needs: dict, spec, ranks_on_node: int) -> None:
    available = available_memory()
    per_rank = sum(needs.values())
    if available is None or per_rank * ranks_on_node <= available:
        return
    parts = ", ".join(f"{name} {human_bytes(n)}" for name, n in needs.items() if n)
    raise UserError(f"this run needs at least {human_bytes(per_rank * ranks_on_node)} of memory "
                    f"on this node ({ranks_on_node} rank(s) x {human_bytes(per_rank)}: {parts}), "
                    f"but only {human_bytes(available)} is available: lower clients.count "
                    f"({spec.clients.count}), use a smaller model, system.bank_dtype = "
                    "'bfloat16', system.bank = 'shared', or more nodes")
