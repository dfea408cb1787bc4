"""Rank-dependent facts, decided once at start-up and passed down (nothing else asks MPI)."""

import os
from dataclasses import dataclass

import torch

from lbgm_mpi.errors import ConfigError


@dataclass(frozen=True)
class Topology:
    """Where every client lives: ``host[k]`` is the rank that trains client k. ``star``: the
    root is the server, the only rank that aggregates (else every rank is a server replica)."""

    rank: int
    size: int
    root: int
    host: tuple[int, ...]
    star: bool = False

    @property
    def aggregates(self) -> bool:
        """Whether this rank forms the aggregate itself (a replica, or the star's server)."""
        return not self.star or self.is_root

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


def check_hosts(num_clients: int, size: int, first: int = 0) -> None:
    """Raise ConfigError unless ranks first..size-1 exist and each can host a client."""
    hosts = size - first
    if hosts < 1:
        raise ConfigError(f"system.server: \"dedicated\" keeps rank 0 for the server, so it "
                          f"needs at least 2 MPI ranks (this job has {size})")
    if num_clients < hosts:
        raise ConfigError(f"clients.count: {num_clients} clients cannot occupy {hosts} MPI ranks; "
                          f"run with at most {num_clients + first} ranks or raise clients.count")


def place_clients(num_clients: int, size: int, placement: str,
                  first: int = 0) -> tuple[int, ...]:
    """Host rank of each client among ranks first..size-1: cyclic (k mod P) or contiguous
    blocks."""
    check_hosts(num_clients, size, first)
    hosts = size - first
    if placement == "cyclic":
        return tuple(first + k % hosts for k in range(num_clients))
    base, extra = divmod(num_clients, hosts)
    host = []
    for r in range(hosts):
        host += [first + r] * (base + (1 if r < extra else 0))
    return tuple(host)


def make_topology(rank: int, size: int, num_clients: int, placement: str,
                  topology: str = "replicated", server: str = "shared") -> Topology:
    """Build the topology of this rank (raises ConfigError if there are more client ranks than
    clients). ``server = "dedicated"`` (star only) leaves rank 0 without clients."""
    first = 1 if server == "dedicated" else 0
    return Topology(rank, size, 0, place_clients(num_clients, size, placement, first),
                    star=topology == "star")


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
