"""``lbgm-mpi train`` (one run) and ``lbgm-mpi compare`` (several methods, same data and seed)."""

import sys
import time
from pathlib import Path

from lbgm_mpi.cli.agree import on_every_rank
from lbgm_mpi.errors import UserError
from lbgm_mpi.training.methods import METHODS, method_overrides


def register(sub) -> None:
    train = sub.add_parser("train", help="train one run (FedAvg or LBGM) over MPI")
    compare = sub.add_parser("compare", help="run several methods on the same data and seed")
    for q in (train, compare):
        q.add_argument("config", help="TOML config file (see configs/)")
        q.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
        q.add_argument("--out", default=None, help="run folder (default runs/<config>-<time>)")
        q.add_argument("--quiet", action="store_true", help="no progress lines")
    train.add_argument("--resume", default=None, metavar="PATH|latest",
                       help="continue from a checkpoint; 'latest' = newest in OUT/checkpoints "
                            "(a fresh start if there is none)")
    compare.add_argument("--methods", default="fedavg,lbgm",
                         help=f"comma-separated, from: {', '.join(METHODS)}")
    train.set_defaults(handler=cmd_train, needs_config=True, check=_check_train)
    compare.set_defaults(handler=cmd_compare, needs_config=True,
                         check=lambda args, spec: _methods(args.methods))


def _check_train(args, spec) -> None:
    if args.resume is not None and args.out is None:
        raise UserError("--resume needs --out: the run folder to continue")


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UserError(f"--methods: unknown {unknown} (choose from {', '.join(METHODS)})")
    if len(set(names)) != len(names):
        raise UserError(f"--methods: {text!r} names a method twice")
    return names


def _out_dir(comm, args) -> Path:
    if args.out:
        return Path(args.out)
    stamp = comm.control_bcast(time.strftime("%Y%m%d-%H%M%S"))
    return Path("runs") / f"{Path(args.config).stem}-{stamp}"


def build_trainer(comm, spec, out_dir, quiet, resume=None, stop=None):
    """Construct a Trainer (resumed from a checkpoint if asked); a UserError on any rank ends
    every rank with one message."""
    from lbgm_mpi.training.loop import Trainer

    def build():
        trainer = Trainer(spec, comm, out_dir, quiet=quiet, stop=stop)
        _resume(trainer, resume)
        return trainer

    return on_every_rank(comm, build, where="rank")


def _resume(trainer, resume) -> None:
    """Resume from the checkpoint named by --resume, as the root resolves it (so every rank
    loads the same file); without --resume, insist on a folder no other run has used."""
    from lbgm_mpi.checkpoint.state import resolve
    if resume is None:
        trainer.check_fresh_folder()
        return
    root_path = resolve(resume, trainer.checkpoint_dir) if trainer.comm.is_root else None
    path = trainer.comm.control_bcast(root_path)
    if path is None:
        trainer.progress.note(f"no checkpoint in {trainer.checkpoint_dir} yet: starting fresh")
        return
    trainer.resume(path)


def _plot(folders, prefix) -> None:
    """Accuracy against cumulative uplink bytes and against round, as PNGs next to the runs."""
    from lbgm_mpi.analysis.plots import plot_runs
    for png in plot_runs(folders, prefix):
        print(f"plot: {png}")


def cmd_train(comm, args, spec) -> int:
    from lbgm_mpi.training.signals import PREEMPTED_EXIT_CODE, Preempted, StopFlag
    out = _out_dir(comm, args)
    trainer = build_trainer(comm, spec, out, args.quiet, args.resume, StopFlag().install())
    try:
        summary = trainer.run()
    except Preempted as stop:
        if comm.is_root:
            print(f"lbgm-mpi: {stop} (exit {PREEMPTED_EXIT_CODE}: resume with --resume latest)",
                  file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if comm.is_root:
        _plot([out], out / "plot")
        print(f"run folder: {out}  best accuracy {100 * summary['best_acc']:.2f}%  "
              f"uplink {summary['total_uplink_bytes']} B  MPI {summary['total_mpi_bytes']} B")
    return 0


def cmd_compare(comm, args, spec) -> int:
    from lbgm_mpi.analysis.report import compare_table, format_table
    out = _out_dir(comm, args)
    folders = []
    for method in _methods(args.methods):
        folder = out / method
        variant = spec.replace(**method_overrides(method))
        build_trainer(comm, variant, folder, args.quiet).run()
        folders.append(folder)
    if comm.is_root:
        _plot(folders, out / "compare")
        print(format_table(compare_table(folders)))
        print(f"run folders: {out}/{{{','.join(f.name for f in folders)}}}")
    return 0
