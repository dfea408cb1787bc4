"""Several lbgm-mpi commands, one after the other, in one MPI job (conftest.lbgm_batch).

    mpirun -n N python tests/mpi/batch.py '[["train", "configs/default.toml", ...], [...]]'

Each command is ``lbgm_mpi.cli.main(ARGS)`` on every rank, as ``python -m lbgm_mpi ARGS`` runs it
and as ``compare`` runs its methods (one process trains one run after another, each with its own
communicator, run folder and lock). What the tests read from these runs (their metrics and
summaries) is what separate launches write: only the launch and the imports are shared. The job
stops at the first command that returns non-zero, with its status, after naming it on stderr.
"""

import json
import sys

from lbgm_mpi.cli import main


def run(commands: list[list[str]]) -> int:
    for i, args in enumerate(commands):
        status = main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        if status:
            print(f"batch: command {i + 1} of {len(commands)} exited {status}: {args}",
                  file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(run(json.loads(sys.argv[1])))
