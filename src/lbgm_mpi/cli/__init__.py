"""Command line: ``lbgm-mpi COMMAND ...``, run alone or under mpirun / srun.

Each command lives in its own module with ``register(subparsers)``, which adds its parser and sets
``handler(comm, args, spec)``; commands that read a config also set ``needs_config=True`` (the
config is parsed and checked before anything starts), and the commands that train set
``uses_mpi=True``. Only those start MPI: the others (report, plot, inspect, analyze, data) never
import mpi4py; under a launcher they learn their rank from its environment (cli.ranks), rank 0
does the work, and an error is one line ``lbgm-mpi: error: ...`` from rank 0.

Until MPI has started, only rank 0 reports and exits non-zero: the other ranks exit 0 and leave
the job's status to it (a launcher ends the whole job at the first non-zero exit, which could kill
rank 0 before it printed why).
"""

import argparse
import contextlib
import io
import os
import sys

from lbgm_mpi import __version__
from lbgm_mpi.cli import analyze, data, inspect, plot, train
from lbgm_mpi.cli.ranks import LaunchRank
from lbgm_mpi.errors import UserError

COMMAND_MODULES = [train, inspect, analyze, plot, data]
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT (training.signals has the same)


class _ArgParseError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one-line UserErrors (reported once, by one rank)."""

    def error(self, message):
        command = self.prog.removeprefix("lbgm-mpi").strip()  # "" for the top-level parser
        where = f"{command}: " if command else ""
        raise _ArgParseError(f"{where}{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lbgm-mpi", description="Federated learning with LBGM over MPI: train "
                     "and compare run under mpirun or srun; report, plot, inspect, analyze and "
                     "data run as one process.")
    parser.add_argument("--version", action="version", version=f"lbgm-mpi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _parse(argv: list[str], here: LaunchRank) -> argparse.Namespace:
    """The parsed arguments; --help and --version print on rank 0 only."""
    quiet = contextlib.nullcontext() if here.is_root else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        return build_parser().parse_args(argv)


def _load_spec(args):
    """The config of a command that reads one (checked with the command's own rules), else None."""
    if not getattr(args, "needs_config", False):
        return None
    from lbgm_mpi.config import load_config
    spec = load_config(args.config, args.overrides)
    args.check(args, spec)
    return spec


def _error(err: UserError, here: LaunchRank) -> int:
    """Rank 0 prints the error and exits 2; the others exit 0 (see the module docstring)."""
    if not here.is_root:
        return 0
    print(f"lbgm-mpi: error: {err}", file=sys.stderr)
    return 2


def _closed_pipe() -> int:
    """The reader left (`lbgm-mpi report ... | head`): end quietly, as a tool that SIGPIPE killed
    would; stdout goes to /dev/null so that Python's final flush cannot fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + 13


def main(argv=None) -> int:
    here = LaunchRank.from_env()
    try:
        args = _parse(sys.argv[1:] if argv is None else list(argv), here)
    except UserError as err:
        return _error(err, here)
    if getattr(args, "uses_mpi", False):
        return _main_mpi(args)
    return _main_local(args, here)


def _main_local(args, here: LaunchRank) -> int:
    """A command that needs no MPI, on rank 0 (``here`` stands in for the communicator)."""
    if not here.is_root:
        return 0
    try:
        return args.handler(here, args, _load_spec(args)) or 0
    except UserError as err:
        return _error(err, here)
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT_CODE


def _main_mpi(args) -> int:
    """A command that trains: MPI starts here; errors are agreed on by every rank."""
    from lbgm_mpi.cli.agree import on_every_rank
    from lbgm_mpi.comm.mpi import Comm, install_abort_on_error
    comm = Comm()
    install_abort_on_error(comm)
    spec = on_every_rank(comm, lambda: _load_spec(args))
    try:
        return args.handler(comm, args, spec) or 0
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:  # Ctrl-C twice (training.signals): no checkpoint of this round
        print("lbgm-mpi: interrupted; the run keeps its last checkpoint", file=sys.stderr)
        if comm.size > 1:
            comm.abort(INTERRUPTED_EXIT_CODE)
        return INTERRUPTED_EXIT_CODE
