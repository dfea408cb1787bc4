"""Which device a rank uses.

Pure helpers: the caller gathers the facts (environment, local rank and size, GPU count) once at
start-up and passes them in; nothing here asks MPI who it is. How device buffers reach MPI
(CUDA-aware or staged through host memory) is the comm package's: lbgm_mpi.comm.device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# Launchers' variables for the rank's index among the ranks of its node, in the order we trust
# them: Open MPI's mpirun, SLURM's srun, MPICH/Intel MPI's Hydra, then PMI.
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID",
                        "PMI_LOCAL_RANK")


def local_rank_from_env(environ: Mapping[str, str]) -> int | None:
    """The node-local rank set by the launcher in ``environ``, or None when no launcher set one."""
    for key in LOCAL_RANK_VARIABLES:
        value = environ.get(key, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{key}={value!r} is not an integer local rank") from None
    return None


def pick_device(pref: str, local_rank: int, local_size: int, n_gpus: int, allow_sharing: bool,
                cuda_visible_devices: str | None = None) -> torch.device:
    """The device for a rank, from ``system.device`` (auto|cpu|cuda) and the node's facts.

    auto takes GPU ``local_rank % n_gpus`` when the node has GPUs and the CPU otherwise; cuda
    insists on a GPU. More ranks than GPUs on a node is an error unless ``allow_sharing``.
    ``cuda_visible_devices`` (the variable's value, None if unset) only enriches the error.
    """
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"system.device must be 'auto', 'cpu' or 'cuda', got {pref!r}")
    if pref == "cpu" or (pref == "auto" and n_gpus == 0):
        return torch.device("cpu")
    if n_gpus == 0:
        visible = "<unset>" if cuda_visible_devices is None else repr(cuda_visible_devices)
        raise RuntimeError("system.device = 'cuda' but no CUDA device is visible on this node "
                           f"(CUDA_VISIBLE_DEVICES={visible})")
    if local_size > n_gpus and not allow_sharing:
        raise RuntimeError(f"{local_size} ranks on this node but only {n_gpus} GPU(s): start at "
                           f"most {n_gpus} ranks per node, or set system.allow_gpu_sharing = true "
                           "to let ranks share a GPU")
    return torch.device("cuda", local_rank % n_gpus)
