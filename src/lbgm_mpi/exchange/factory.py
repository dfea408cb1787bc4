"""The exchange of a run's configuration (algorithm, scope, compressor)."""

import torch

from lbgm_mpi.algorithm.lbgm import scheduled_threshold
from lbgm_mpi.compress import ClientCompressors, make_compressor
from lbgm_mpi.compress.allreduce_powersgd import AllreducePowerSGD
from lbgm_mpi.exchange.base import Exchange
from lbgm_mpi.exchange.fedavg import FedAvgExchange
from lbgm_mpi.exchange.gather import CompressedFedAvgExchange
from lbgm_mpi.exchange.global_scope import GlobalExchange
from lbgm_mpi.exchange.lbgm import LbgmExchange, make_bank
from lbgm_mpi.exchange.recycling import RecyclingExchange
from lbgm_mpi.kernels import select_kernels

def client_compressors(spec, topology, layout) -> ClientCompressors | None:
    """The compressors of the clients this rank hosts, seeded by (run.seed, client id); None
    when algo.compressor is "none"."""
    algo = spec.algo
    if algo.compressor == "none":
        return None

    def build(seed: int):
        return make_compressor(algo.compressor, layout, ratio=algo.ratio, rank=algo.rank, seed=seed,
                               error_feedback=algo.error_feedback)

    return ClientCompressors(build, topology.local_clients, spec.run.seed)


def make_exchange(spec, comm, topology, layout, device="cpu", timer=None,
                  theta: torch.Tensor | None = None) -> Exchange:
    """The exchange of the configured algorithm and compressor, its tensors on ``device``;
    ``timer`` (a PhaseTimer) is charged with the exchange's phases; ``theta`` is the model vector,
    which FedLUAR reads to choose the layers it recycles."""
    if spec.algo.name == "fedavg" and spec.algo.compressor == "none":
        return FedAvgExchange(comm, topology, layout.size, device, timer)
    if spec.algo.scope == "global":
        return global_exchange(spec, comm, topology, layout, device, timer)
    if spec.algo.name == "fedluar":
        return RecyclingExchange(comm, topology, layout, theta, spec.algo.recycle_layers,
                                 spec.run.seed, device, timer)
    kernels = select_kernels(spec.system.kernels)
    compressors = client_compressors(spec, topology, layout)
    bounds = layout.bounds_tensor()
    if spec.algo.name == "fedavg":
        return CompressedFedAvgExchange(comm, topology, kernels, bounds[[0, -1]], device,
                                        compressors=compressors, timer=timer)
    bounds, scalar_ok = segments(spec, layout)
    bank, shared_delta = make_bank(spec, comm, topology, bounds, kernels, device)
    return LbgmExchange(comm, topology, kernels, bank, schedule(spec), compressors, scalar_ok,
                        timer, device, shared_delta)


def segments(spec, layout) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(segment bounds, which segments may go as a scalar or None for all) of algo.granularity."""
    bounds = layout.bounds_tensor()
    if spec.algo.granularity == "model":
        return bounds[[0, -1]], None
    # BatchNorm statistics are small: always sent in full, they average exactly
    return bounds, ~torch.tensor(layout.is_buffer(), dtype=torch.bool)


def schedule(spec):
    """round -> LBGM's threshold in that round (warm-up and decay applied)."""
    algo = spec.algo
    return lambda rnd: scheduled_threshold(algo.threshold, algo.threshold_decay,
                                           algo.warmup_rounds, rnd)


def global_exchange(spec, comm, topology, layout, device="cpu", timer=None) -> GlobalExchange:
    """LBGM on the aggregate (algo.name = "lbgm"), optionally refreshing by PowerSGD's
    Allreduce form; or that PowerSGD alone (algo.name = "fedavg")."""
    algo = spec.algo
    bounds, scalar_ok = segments(spec, layout)
    powersgd = AllreducePowerSGD(layout, algo.rank, spec.run.seed, device) \
        if algo.compressor == "powersgd" else None
    return GlobalExchange(comm, topology, bounds.tolist(),
                          algo.lookback, algo.sketch, spec.run.seed,
                          schedule(spec) if algo.name == "lbgm" else None, scalar_ok,
                          algo.error_feedback, powersgd, device, timer)
