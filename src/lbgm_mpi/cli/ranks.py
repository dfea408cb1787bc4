"""Which of the launcher's processes this one is, without starting MPI.

mpirun, srun and other launchers tell each process its rank and the job's size in environment
variables. The commands that need no MPI (report, plot, inspect, analyze, data) read them instead
of initialising MPI, so that under a launcher one process (rank 0) does the work and prints, and
alone (no launcher) the process is rank 0 of 1.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

# first found wins: Open MPI, PMIx (PRRTE), MPICH / Intel MPI (Hydra), SLURM's srun
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
# SLURM_NTASKS would also be set in a batch script that runs one process: only srun's step count
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")


def _first_int(environ: Mapping[str, str], keys: tuple[str, ...], default: int) -> int:
    for key in keys:
        try:
            return int(environ[key])
        except (KeyError, ValueError):
            continue
    return default


@dataclass(frozen=True)
class LaunchRank:
    """This process's rank among ``size`` processes started together (0 of 1 without a
    launcher); stands in for a Comm in the handlers of commands that need no MPI."""

    rank: int = 0
    size: int = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "LaunchRank":
        environ = os.environ if environ is None else environ
        rank = _first_int(environ, RANK_VARIABLES, 0)
        return cls(rank, max(_first_int(environ, SIZE_VARIABLES, 1), rank + 1))
