"""Command line: ``lbgm-mpi COMMAND ...``, run alone or under mpirun / srun.

Each command lives in its own module with ``register(subparsers)``, which adds its parser and sets
``handler(comm, args)``; commands that train also set ``needs_config=True`` so that the config is
parsed and checked on every rank before anything starts.
"""

import argparse
import os
import sys

from lbgm_mpi import __version__
from lbgm_mpi.cli import analyze, data, inspect, plot, train
from lbgm_mpi.cli.agree import on_every_rank
from lbgm_mpi.errors import UserError

COMMAND_MODULES = [train, inspect, analyze, plot, data]


class _ArgParseError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one-line UserErrors (reported once, by one rank)."""

    def error(self, message):
        command = self.prog.removeprefix("lbgm-mpi").strip()  # "" for the top-level parser
        where = f"{command}: " if command else ""
        raise _ArgParseError(f"{where}{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lbgm-mpi", description="Federated learning with LBGM over MPI.")
    parser.add_argument("--version", action="version", version=f"lbgm-mpi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _setup(comm, argv):
    """Parse arguments (and the config, where needed) on every rank; fail together."""
    from lbgm_mpi.config import load_config

    def parse():
        args = build_parser().parse_args(argv)
        spec = None
        if getattr(args, "needs_config", False):
            spec = load_config(args.config, args.overrides)
            args.check(args, spec)
        return args, spec

    return on_every_rank(comm, parse)


def main(argv=None) -> int:
    from lbgm_mpi.comm.mpi import Comm, install_abort_on_error
    from lbgm_mpi.training.signals import INTERRUPTED_EXIT_CODE
    comm = Comm()
    install_abort_on_error(comm)
    args, spec = _setup(comm, sys.argv[1:] if argv is None else argv)
    try:
        return args.handler(comm, args, spec) or 0
    except BrokenPipeError:
        # the reader left (`lbgm-mpi report ... | head`): end quietly, as a tool that SIGPIPE
        # killed would; stdout goes to /dev/null so that Python's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except KeyboardInterrupt:  # Ctrl-C twice (training.signals): no checkpoint of this round
        print("lbgm-mpi: interrupted; the run keeps its last checkpoint", file=sys.stderr)
        if comm.size > 1:
            comm.abort(INTERRUPTED_EXIT_CODE)
        return INTERRUPTED_EXIT_CODE
