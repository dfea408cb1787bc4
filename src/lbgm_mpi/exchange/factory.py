"""The exchange of a run's configuration (algorithm, scope, compressor)."""

import torch

from lbgm_mpi.algorithm.lbgm import scheduled_threshold
from lbgm_mpi.compress import ClientCompressors, make_compressor
from lbgm_mpi.exchange.base import Exchange
from lbgm_mpi.exchange.fedavg import FedAvgExchange
from lbgm_mpi.exchange.gather import CompressedFedAvgExchange
from lbgm_mpi.exchange.lbgm import LbgmExchange, make_bank
from lbgm_mpi.exchange.recycling import RecyclingExchange
from lbgm_mpi.kernels import select_kernels

# config name -> name in lbgm_mpi.compress, where the two differ
COMPRESSOR_NAMES = {"lowrank": "atomo"}


def client_compressors(spec, topology, layout) -> ClientCompressors | None:
    """The compressors of the clients this rank hosts, seeded by (run.seed, client id); None
    when algo.compressor is "none"."""
    algo = spec.algo
    if algo.compressor == "none":
        return None
    name = COMPRESSOR_NAMES.get(algo.compressor, algo.compressor)

    def build(seed: int):
        return make_compressor(name, layout, ratio=algo.ratio, rank=algo.rank, seed=seed,
                               error_feedback=algo.error_feedback)

    return ClientCompressors(build, topology.local_clients, spec.run.seed)


def make_exchange(spec, comm, topology, layout, device="cpu", timer=None,
                  theta: torch.Tensor | None = None) -> Exchange:
    """The exchange of the configured algorithm and compressor, its tensors on ``device``;
    ``timer`` (a PhaseTimer) is charged with the exchange's phases; ``theta`` is the model vector,
    which FedLUAR reads to choose the layers it recycles."""
    if spec.algo.name == "fedavg" and spec.algo.compressor == "none":
        return FedAvgExchange(comm, topology, layout.size, device, timer)
    if spec.algo.name == "fedluar":
        return RecyclingExchange(comm, topology, layout, theta, spec.algo.recycle_layers,
                                 spec.run.seed, device, timer)
    kernels = select_kernels(spec.system.kernels)
    compressors = client_compressors(spec, topology, layout)
    bounds = layout.bounds_tensor()
    if spec.algo.name == "fedavg":
        return CompressedFedAvgExchange(comm, topology, kernels, bounds[[0, -1]], device,
                                        compressors=compressors, timer=timer)
    scalar_ok = None
    if spec.algo.granularity == "model":
        bounds = bounds[[0, -1]]
    else:  # BatchNorm statistics are small: always sent in full, they average exactly
        scalar_ok = ~torch.tensor(layout.is_buffer(), dtype=torch.bool)
    bank, shared_delta = make_bank(spec, comm, topology, bounds, kernels, device)
    algo = spec.algo
    schedule = lambda rnd: scheduled_threshold(algo.threshold, algo.threshold_decay,
                                               algo.warmup_rounds, rnd)
    return LbgmExchange(comm, topology, kernels, bank, schedule, compressors, scalar_ok, timer,
                        device, shared_delta)
