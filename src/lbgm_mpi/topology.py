"""Rank-dependent facts, decided once at start-up and passed down (nothing else asks MPI)."""

import os
from dataclasses import dataclass

import torch

from lbgm_mpi.errors import ConfigError


@dataclass(frozen=True)
class Topology:
    """Where every client lives: ``host[k]`` is the rank that trains client k."""

    rank: int
    size: int
    root: int
    host: tuple[int, ...]

    @property
    def is_root(self) -> bool:
        return self.rank == self.root

    @property
    def local_clients(self) -> tuple[int, ...]:
        """Ids of the clients this rank trains, ascending."""
        return tuple(k for k, r in enumerate(self.host) if r == self.rank)

    def clients_on(self, participants, rank: int) -> list[int]:
        """The participants hosted by ``rank``, ascending."""
        return [k for k in participants if self.host[k] == rank]


def place_clients(num_clients: int, size: int, placement: str) -> tuple[int, ...]:
    """Host rank of each client: cyclic (k mod P) or contiguous blocks."""
    if num_clients < size:
        raise ConfigError(f"clients.count: {num_clients} clients cannot occupy {size} MPI ranks; "
                          f"run with at most {num_clients} ranks or raise clients.count")
    if placement == "cyclic":
        return tuple(k % size for k in range(num_clients))
    base, extra = divmod(num_clients, size)
    host = []
    for r in range(size):
        host += [r] * (base + (1 if r < extra else 0))
    return tuple(host)


def make_topology(rank: int, size: int, num_clients: int, placement: str) -> Topology:
    """Build the topology of this rank (raises ConfigError if there are more ranks than clients)."""
    return Topology(rank, size, 0, place_clients(num_clients, size, placement))


def choose_device(comm, system) -> torch.device:
    """The device of this rank, from system.device and the node's facts (called once).

    The node-local rank comes from the launcher's variables (mpirun, srun), else from MPI's
    shared-memory split; each rank takes GPU local_rank mod (GPUs on the node). Sets
    comm.cuda_aware from system.cuda_aware_mpi when the device is a GPU."""
    from lbgm_mpi.comm.device import cuda_aware_mpi
    from lbgm_mpi.gpu import local_rank_from_env, pick_device
    node_rank, node_size = comm.node_rank_and_size()
    local_rank = local_rank_from_env(os.environ)
    n_gpus = torch.cuda.device_count() if system.device != "cpu" else 0
    try:
        device = pick_device(system.device, node_rank if local_rank is None else local_rank,
                             node_size, n_gpus, system.allow_gpu_sharing,
                             cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    except RuntimeError as err:
        raise ConfigError(f"system.device: {err}") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
        comm.cuda_aware = cuda_aware_mpi(system.cuda_aware_mpi)
    return device
