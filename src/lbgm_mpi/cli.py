"""Command line: ``lbgm-mpi train|compare ...``, run alone or under mpirun / srun."""

import argparse
import sys
import time
from pathlib import Path

from lbgm_mpi.errors import UserError

METHODS = {"fedavg": {"name": "fedavg"}, "lbgm": {"name": "lbgm"}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbgm-mpi", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one run (FedAvg or LBGM) over MPI")
    compare = sub.add_parser("compare", help="run several methods on the same data and seed")
    for q in (train, compare):
        q.add_argument("config", help="TOML config file (see configs/)")
        q.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
        q.add_argument("--out", default=None, help="run folder (default runs/<config>-<time>)")
        q.add_argument("--quiet", action="store_true", help="no progress lines")
    compare.add_argument("--methods", default="fedavg,lbgm",
                         help=f"comma-separated, from: {', '.join(METHODS)}")
    return p


class _ArgParseError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ArgParseError(message)


def _parse_args(argv):
    parser = _parser()
    parser.__class__ = _Parser
    for action in parser._subparsers._group_actions:
        for sp in action.choices.values():
            sp.__class__ = _Parser
    return parser.parse_args(argv)


def _setup(comm, argv):
    """Parse arguments and config on every rank; agree on failure so no rank is left waiting."""
    from lbgm_mpi.config import load_config
    error = None
    args = spec = None
    try:
        args = _parse_args(argv)
        spec = load_config(args.config, args.overrides)
        if args.command == "compare":
            _methods(args.methods)
    except UserError as err:
        error = err
    failed = comm.control_gather_int(int(error is not None))
    if any(failed):
        first = failed.index(1)
        if comm.rank == first:
            print(f"lbgm-mpi: error: {error}", file=sys.stderr)
        raise SystemExit(2)
    return args, spec


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UserError(f"--methods: unknown {unknown} (choose from {', '.join(METHODS)})")
    return names


def _out_dir(comm, args) -> Path:
    if args.out:
        return Path(args.out)
    stamp = comm.control_bcast(time.strftime("%Y%m%d-%H%M%S"))
    return Path("runs") / f"{Path(args.config).stem}-{stamp}"


def _build_trainer(comm, spec, out_dir, quiet):
    """Construct a Trainer; a UserError on any rank ends every rank with one message."""
    from lbgm_mpi.training.loop import Trainer
    error = trainer = None
    try:
        trainer = Trainer(spec, comm, out_dir, quiet=quiet)
    except UserError as err:
        error = err
    failed = comm.control_gather_int(int(error is not None))
    if any(failed):
        if comm.rank == failed.index(1):
            print(f"lbgm-mpi: error on rank {comm.rank}: {error}", file=sys.stderr)
        raise SystemExit(2)
    return trainer


def cmd_train(comm, args, spec) -> int:
    out = _out_dir(comm, args)
    summary = _build_trainer(comm, spec, out, args.quiet).run()
    if comm.is_root:
        print(f"run folder: {out}  best accuracy {100 * summary['best_acc']:.2f}%  "
              f"uplink {summary['total_uplink_bytes']} B  MPI {summary['total_mpi_bytes']} B")
    return 0


def cmd_compare(comm, args, spec) -> int:
    from lbgm_mpi.analysis.report import compare_table, format_table
    out = _out_dir(comm, args)
    folders = []
    for method in _methods(args.methods):
        folder = out / method
        variant = spec.replace(algo=METHODS[method], run={"label": method})
        _build_trainer(comm, variant, folder, args.quiet).run()
        folders.append(folder)
    if comm.is_root:
        print(format_table(compare_table(folders)))
        print(f"run folders: {out}/{{{','.join(f.name for f in folders)}}}")
    return 0


def main(argv=None) -> int:
    from lbgm_mpi.comm.mpi import Comm, install_abort_on_error
    comm = Comm()
    install_abort_on_error(comm)
    args, spec = _setup(comm, sys.argv[1:] if argv is None else argv)
    return {"train": cmd_train, "compare": cmd_compare}[args.command](comm, args, spec)
