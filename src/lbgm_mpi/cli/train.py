"""``lbgm-mpi train`` (one run) and ``lbgm-mpi compare`` (several methods, same data and seed;
with --seeds, once per seed, and a table of the mean and spread over the seeds).

Both check the run on every rank first (training.preflight: clients for the ranks, the device,
the data, memory, the model against the data; the checkpoint --resume names), and only then make
the run folder (--out) and hold it locked while they run, so a start that fails a check leaves no
folder behind. A stop signal ends them after the current round with a checkpoint and exit 75, and
the same command with ``--resume latest`` continues (compare reads back the methods that finished,
continues the interrupted one and runs the rest); under jobs/mpirun-local.sh the command printed
to continue is the launcher's (it sets LBGM_MPI_LAUNCHER).

Runs are named by RunSpec.label() (the algorithm and its parameters), by train and compare alike.
"""

import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from lbgm_mpi.cli.agree import on_every_rank, root_decides
from lbgm_mpi.errors import AgreedError, UserError
from lbgm_mpi.runs.methods import METHODS, known_method, method_overrides

LAUNCHER_VARIABLE = "LBGM_MPI_LAUNCHER"  # the launcher's own words, e.g. "bash jobs/mpirun-local.sh 4"


def register(sub) -> None:
    train = sub.add_parser("train", help="train one run over MPI (algo.name: fedavg, lbgm or "
                           "fedluar; any algo.compressor)",
                           description="Train one federated run on the ranks of this MPI job: "
                           "FedAvg, LBGM or FedLUAR (algo.name), with any algo.compressor.")
    compare = sub.add_parser("compare", help="run several methods (--methods) on the same data "
                             "and seed, or once per seed (--seeds), and print their table",
                             description="Run several methods on the same data and seed, one "
                             "after the other, into OUT/METHOD (OUT/seed-S/METHOD with --seeds), "
                             "then print the comparison table and write the plots.")
    for q in (train, compare):
        q.add_argument("config", help="TOML config file (see configs/)")
        q.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
        q.add_argument("--out", default=None, help="run folder (default runs/<config>-<time>)")
        q.add_argument("--quiet", action="store_true", help="no progress lines")
        q.set_defaults(needs_config=True, check=_check, uses_mpi=True)
    train.add_argument("--resume", default=None, metavar="PATH|latest",
                       help="continue from a checkpoint (needs --out); 'latest' = newest good "
                            "one in OUT/checkpoints (a fresh start if there is none)")
    compare.add_argument("--resume", default=None, choices=["latest"],
                         help="continue a stopped compare in OUT: finished methods are kept, the "
                              "interrupted one continues from its newest checkpoint")
    compare.add_argument("--methods", default="fedavg,lbgm",
                         help=f"comma-separated, from: {', '.join(METHODS)}; add \"@star\" "
                         "to run one in the star topology (fedavg@star)")
    compare.add_argument("--seeds", default=None, metavar="S,S,...",
                         help="run every method once per seed (run.seed), into OUT/seed-S/METHOD, "
                              "and print each method's mean and spread over the seeds")
    train.set_defaults(handler=cmd_train)
    compare.set_defaults(handler=cmd_compare)


def _check(args, spec) -> None:
    if args.resume is not None and args.out is None:
        raise UserError("--resume needs --out: the run folder to continue")
    if args.resume not in (None, "latest"):
        path = Path(args.resume)
        if not path.exists():
            raise UserError(f"--resume {path}: no such checkpoint file (name an .h5 file in "
                            "OUT/checkpoints, or pass --resume latest)")
        if path.is_dir():
            raise UserError(f"--resume {path} is a folder: name a checkpoint file in it "
                            "(round-NNNNNN.h5), or pass --resume latest")
    if args.command == "compare":
        _methods(args.methods)
        _seeds(args.seeds)


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if not known_method(m)]
    if unknown or not names:
        raise UserError(f"--methods: unknown {unknown} (choose from {', '.join(METHODS)}; any "
                        f"of them + \"@star\" runs it in the star topology)")
    if len(set(names)) != len(names):
        raise UserError(f"--methods: {text!r} names a method twice")
    return names


def _seeds(text: str | None) -> list[int] | None:
    """The seeds of --seeds (None without it)."""
    from lbgm_mpi.analysis.seeds import parse_seeds
    if text is None:
        return None
    try:
        return parse_seeds(text)
    except ValueError as err:
        raise UserError(f"--seeds: {err}") from None


def _out_dir(comm, args) -> Path:
    if args.out:
        return Path(args.out)
    stamp = comm.control_bcast(time.strftime("%Y%m%d-%H%M%S"))
    return Path("runs") / f"{Path(args.config).stem}-{stamp}"


def _tell(comm, text: str) -> None:
    """A notice from the root, shown even with --quiet."""
    if comm.is_root:
        print(f"lbgm-mpi: {text}", file=sys.stderr, flush=True)


def _launcher() -> list[str]:
    """The words that start lbgm-mpi under the launcher that set LBGM_MPI_LAUNCHER, else []."""
    try:
        return shlex.split(os.environ.get(LAUNCHER_VARIABLE, ""))
    except ValueError:  # unbalanced quotes: not a command we could print
        return []


def _continue_command(args, out: Path) -> str:
    """The command line that continues this train or compare after a stop: under
    jobs/mpirun-local.sh the launcher's whole command, else lbgm-mpi's (for the same launcher)."""
    words = [*(_launcher() or ["lbgm-mpi"]), args.command, args.config]
    for override in args.overrides:
        words += ["--set", override]
    if args.command == "compare":
        words += ["--methods", args.methods]
        words += ["--seeds", args.seeds] if args.seeds else []
    return shlex.join([*words, "--out", str(out), "--resume", "latest"])


@contextmanager
def _run_folder(comm, args, out: Path):
    """Collective: run the block with the folder ``out`` locked (by the root) and stop signals
    caught; yields the StopFlag.

    A stop becomes exit 75 with the command that continues; a failure that every rank raised
    together (AgreedError) becomes one line from the root and exit 2."""
    from lbgm_mpi.runs.lock import RunLock
    from lbgm_mpi.runs.signals import PREEMPTED_EXIT_CODE, Preempted, StopFlag
    lock = on_every_rank(comm, lambda: RunLock(out).acquire() if comm.is_root else None)
    try:
        for note in lock.notes() if lock else []:
            _tell(comm, note)
        yield StopFlag().install()
    except Preempted as stop:
        how = "" if _launcher() else ", under the same launcher,"
        _tell(comm, f"{stop}; exit {PREEMPTED_EXIT_CODE}. Continue it{how} with: "
                    f"{_continue_command(args, out)}")
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except AgreedError as err:
        _tell(comm, f"error: {err}")
        raise SystemExit(2) from None
    finally:
        if lock is not None:
            lock.release()


def preflight(comm, specs) -> None:
    """Check each run of ``specs`` (training.preflight) on every rank, before anything is written;
    a UserError on any rank ends every rank with one message."""
    from lbgm_mpi.runs.preflight import check_run
    ranks_on_node = comm.node_rank_and_size()[1]
    # a compare over seeds repeats each method's config but for run.seed, which no check reads
    distinct = {s.replace(run={"seed": 0, "label": ""}): s for s in specs}.values()
    on_every_rank(comm, lambda: [check_run(s, comm.size, ranks_on_node) for s in distinct],
                  where="rank")


def build_trainer(comm, spec, out_dir, quiet, resume=None, stop=None):
    """Construct a Trainer (resumed from a checkpoint if asked) for a run that passed preflight();
    a UserError on any rank ends every rank with one message."""
    from lbgm_mpi.training.loop import Trainer

    def build():
        trainer = Trainer(spec, comm, out_dir, quiet=quiet, stop=stop)
        _resume(trainer, resume)
        return trainer

    return on_every_rank(comm, build, where="rank")


def _resume(trainer, resume) -> None:
    """Resume from the checkpoint named by --resume, as the root resolves it (so every rank
    loads the same file), and set aside the checkpoints newer than it; without --resume, insist
    on a folder no other run has used."""
    from lbgm_mpi.checkpoint.resume import resolve
    from lbgm_mpi.checkpoint.store import set_aside_newer
    comm, folder = trainer.comm, trainer.checkpoint_dir
    if resume is None:
        trainer.check_fresh_folder()
        return
    path, notes = root_decides(comm, lambda: resolve(resume, folder))
    for note in notes:
        _tell(comm, note)
    if path is None:
        trainer.progress.note(f"no checkpoint in {folder} yet: starting fresh")
        return
    trainer.resume(path)
    moved = root_decides(comm, lambda: set_aside_newer(folder, trainer.round))
    if moved:
        _tell(comm, f"set aside {len(moved)} checkpoint(s) newer than round {trainer.round}, "
                    f"which this run replaces: {', '.join(p.name for p in moved)}")


def _plot(folders, prefix) -> None:
    """Accuracy against cumulative uplink bytes and against round, as PNGs next to the runs."""
    from lbgm_mpi.analysis.plots import plot_runs
    try:
        written = plot_runs(folders, prefix)
    except OSError as err:
        raise UserError(f"cannot write the plots {prefix}_*.png: {err.strerror or err}") from None
    for png in written:
        print(f"plot: {png}")


def cmd_train(comm, args, spec) -> int:
    out = _out_dir(comm, args)
    preflight(comm, [spec])
    with _run_folder(comm, args, out) as stop:
        trainer = build_trainer(comm, spec, out, args.quiet, args.resume, stop)
        summary = trainer.run()
    if comm.is_root:
        if spec.run.plots:
            _plot([out], out / "plot")
        print(f"run folder: {out}  best accuracy {100 * summary['best_acc']:.2f}%  "
              f"uplink {summary['total_uplink_bytes']} B  MPI {summary['total_mpi_bytes']} B")
    return 0


def _method_labels(spec, methods: list[str]) -> dict[str, str]:
    """The run.label of each method of a compare: "" (RunSpec.label() names the run, as train
    does), except where two methods come to the same name (the same config, such as lbgm and
    lbgm-model): those are told apart by the method, "lbgm(t=0.2) [lbgm-model]"."""
    derived = {}
    for m in methods:
        sections = method_overrides(m)
        sections["run"]["label"] = ""
        derived[m] = spec.replace(**sections).label()
    names = list(derived.values())
    return {m: "" if names.count(name) == 1 else f"{name} [{m}]" for m, name in derived.items()}


def _compare_plan(spec, out: Path, methods: list[str], seeds: list[int] | None):
    """(run folder, config) of each run of a compare: OUT/METHOD, or OUT/seed-S/METHOD for each
    of ``seeds`` (seed by seed)."""
    labels = _method_labels(spec, methods)
    plan = []
    for seed in [None] if seeds is None else seeds:
        for m in methods:
            sections = method_overrides(m)
            sections["run"]["label"] = labels[m]
            if seed is None:
                plan.append((out / m, spec.replace(**sections)))
            else:
                sections["run"]["seed"] = seed
                plan.append((out / f"seed-{seed}" / m, spec.replace(**sections)))
    return plan


def cmd_compare(comm, args, spec) -> int:
    out = _out_dir(comm, args)
    seeds = _seeds(args.seeds)
    plan = _compare_plan(spec, out, _methods(args.methods), seeds)
    preflight(comm, [variant for _, variant in plan])
    with _run_folder(comm, args, out) as stop:
        for folder, variant in plan:
            build_trainer(comm, variant, folder, args.quiet, args.resume, stop).run()
    if comm.is_root:
        folders = [folder for folder, _ in plan]
        if seeds is None:
            _report_one_seed(out, folders, spec.run.plots)
        else:
            _report_seeds(out, folders, seeds, spec.run.plots)
    return 0


def _report_one_seed(out: Path, folders: list[Path], plots: bool) -> None:
    from lbgm_mpi.analysis.report import compare_table, format_table
    if plots:
        _plot(folders, out / "compare")
    print(format_table(compare_table(folders)))
    print(f"run folders: {out}/{{{','.join(f.name for f in folders)}}}")


def _report_seeds(out: Path, folders: list[Path], seeds: list[int], plots: bool) -> None:
    """Each seed's plots in its folder; the table over seeds, and its spread plot in OUT."""
    from lbgm_mpi.analysis.report import load_run
    from lbgm_mpi.analysis.seeds import format_seed_table, group_by_method, seed_table
    runs = [load_run(f) for f in folders]
    if plots:
        from lbgm_mpi.analysis.plots import plot_seed_spread
        for seed in seeds:
            _plot([f for f in folders if f.parent.name == f"seed-{seed}"], out / f"seed-{seed}" /
                  "compare")
        print(f"plot: {plot_seed_spread(group_by_method(runs, seeds), out / 'compare_seeds.png')}")
    print(format_seed_table(seed_table(runs, seeds)))
    print(f"run folders: {out}/seed-{{{','.join(map(str, seeds))}}}/"
          f"{{{','.join(dict.fromkeys(f.name for f in folders))}}}")
