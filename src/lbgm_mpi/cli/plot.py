"""``lbgm-mpi plot`` (figures) and ``lbgm-mpi report`` (the comparison table; with --seeds
the table of each method's mean and spread over seeds; with --phases the seconds of each phase of
the round) for run folders.

Both read run folders (metrics.jsonl, and summary.json or, for a run still running or stopped,
config.toml) and need no config. Shell globs are welcome: a folder that holds run folders (a
compare's OUT, a seed-S folder of compare --seeds; two levels down at most) gives its runs, and
anything else that is not a run folder (the PNGs and tables written next to runs, a checkpoints
folder, an empty folder) is left out with a one-line note on stderr; only a path that does not
exist is an error. A FedAvg run is a baseline only for runs of its setting (analysis.report,
check_baseline). They need no MPI (see lbgm_mpi.cli): under a launcher rank 0 does the work.
"""

import json
import os
import re
import sys
from pathlib import Path

from lbgm_mpi.errors import UserError

SEARCH_DEPTH = 2  # levels below an argument searched for run folders: OUT/seed-S/METHOD

_RUNS_HELP = ("run folders (finished or not), or folders holding them (a compare's OUT, a seed-S "
              "folder); other arguments are left out with a note")


def register(sub) -> None:
    plot = sub.add_parser("plot", help="accuracy vs uplink bytes and vs round (PNG) for runs")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help=_RUNS_HELP)
    plot.add_argument("--out", metavar="PREFIX", default=None,
                      help="write PREFIX_acc_vs_bytes.png, PREFIX_acc_vs_round.png (and "
                      "PREFIX_sweep.png); default: PREFIX = <the runs' common folder>/plot "
                      "(for one run, inside its folder, where train writes them)")
    plot.add_argument("--sweep", action="store_true",
                      help="also plot accuracy drop vs uplink savings against the one FedAvg run "
                      "(of the same data, model, clients and rounds)")
    report = sub.add_parser("report", help="print the table comparing runs with their FedAvg run "
                            "(--seeds: mean and spread over seeds; --phases: seconds per phase)",
                            description="Print the table comparing runs with the FedAvg run "
                            "among them. That baseline must share the runs' data.*, model.*, "
                            "clients.count, clients.per_round, clients.update, "
                            "clients.local_epochs and run.rounds (run.seed may differ; a "
                            "different data.root, clients.lr, clients.batch_size or server.* "
                            "gives a warning).")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help=_RUNS_HELP)
    report.add_argument("--target", type=_accuracy, default=None, metavar="ACC",
                        help="target accuracy for 'uplink to target', as a fraction (0.9) or in "
                        "percent (90); default 0.95 x FedAvg's best accuracy")
    report.add_argument("--json", metavar="FILE", default=None,
                        help="also write the table's raw numbers to FILE")
    report.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="one row per method (run label) with its mean and spread over these "
                        "seeds (each method needs a run of every seed; other seeds are left out)")
    report.add_argument("--phases", action="store_true",
                        help="instead, the mean seconds per round of each phase (training, "
                        "decision, collectives, bank, aggregation, evaluation, checkpoint) and "
                        "LBGM's own phases in percent of training")
    plot.set_defaults(handler=cmd_plot)
    report.set_defaults(handler=cmd_report)


def _accuracy(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--target: {text!r} is not a number") from None
    value = value / 100.0 if value > 1.0 else value
    if not 0.0 < value <= 1.0:
        raise UserError(f"--target: {text} is not an accuracy (a fraction in (0, 1] or a percent)")
    return value


def _not_a_run(path: Path) -> str | None:
    """Why the folder ``path`` is not a run folder; None if it is one."""
    if not (path / "metrics.jsonl").is_file():
        if not any(path.iterdir()):
            return "an empty folder"
        return ("no metrics.jsonl: not a run folder, or its run has not finished a round yet")
    if not any((path / name).is_file() for name in ("summary.json", "config.toml")):
        return "neither summary.json nor config.toml: not a run folder"
    return None


def _natural(path: Path):
    """Sort key: seed-2 before seed-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _runs_below(folder: Path, depth: int) -> list[Path]:
    """The run folders under ``folder``, ``depth`` levels down at most, in natural order."""
    found = []
    for child in sorted((p for p in folder.iterdir() if p.is_dir()), key=_natural):
        if _not_a_run(child) is None:
            found.append(child)
        elif depth > 1:
            found += _runs_below(child, depth - 1)
    return found


def _note(text: str) -> None:
    print(f"lbgm-mpi: {text}", file=sys.stderr)


def run_folders(paths: list[str]) -> list[Path]:
    """The run folders among ``paths`` (see the module docstring); a note on stderr for each
    argument left out or searched. A path that does not exist is an error, and so is finding no
    run folder at all."""
    folders, files, skipped, notes = [], [], [], []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif not path.is_dir():
            raise UserError(f"run folder {path} does not exist")
        elif (why := _not_a_run(path)) is None:
            folders.append(path)
        elif below := _runs_below(path, SEARCH_DEPTH):
            folders += below
            notes.append(f"taking the {len(below)} run folder(s) in {path}: "
                         f"{', '.join(str(p.relative_to(path)) for p in below)}")
        else:
            skipped.append(f"{path} ({why})")
    first = {}
    for folder in folders:  # one run named twice (DIR and DIR/METHOD) is taken once
        first.setdefault(folder.resolve(), folder)
    unique = list(first.values())
    if not unique:
        left = [*skipped, *(f"{f} (a file)" for f in files)]
        raise UserError(f"no run folder among the arguments: {'; '.join(left[:4])}"
                        f"{'; ...' if len(left) > 4 else ''}")
    for text in notes:
        _note(text)
    if files:
        _note(f"left out {len(files)} file(s), not run folders: {', '.join(map(str, files))}")
    for text in skipped:
        _note(f"left out {text}")
    return unique


def _warn(text: str) -> None:
    _note(f"warning: {text}")


def _default_prefix(folders: list[Path]) -> Path:
    return Path(os.path.commonpath([f.resolve() for f in folders])) / "plot"


def cmd_plot(comm, args, spec) -> int:
    if not comm.is_root:
        return 0
    from lbgm_mpi.analysis.plots import plot_runs, plot_sweep
    folders = run_folders(args.runs)
    prefix = Path(args.out) if args.out else _default_prefix(folders)
    try:
        written = plot_runs(folders, prefix)
        if args.sweep:
            written.append(plot_sweep(folders, f"{prefix}_sweep.png", _warn))
    except ValueError as err:  # --sweep without, with several, or with an unlike FedAvg run
        raise UserError(str(err)) from None
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_report(comm, args, spec) -> int:
    if not comm.is_root:
        return 0
    from lbgm_mpi.analysis.report import compare_table, format_table
    folders = run_folders(args.runs)
    if args.phases:
        return _report_phases(folders, args)
    if args.seeds is not None:
        return _report_seeds(folders, args)
    try:
        rows = compare_table(folders, args.target, _warn)
    except ValueError as err:  # several FedAvg runs, or one unlike the others
        raise UserError(str(err)) from None
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"run_dir": str(f), **row} for f, row in zip(folders, rows)], indent=1))
    return 0


def _report_seeds(folders: list[Path], args) -> int:
    """The table over seeds (analysis/seeds.py) of the runs in ``folders``."""
    from lbgm_mpi.analysis.report import load_run
    from lbgm_mpi.analysis.seeds import (
        format_seed_table,
        parse_seeds,
        rows_to_json,
        seed_table,
    )
    if args.target is not None:
        raise UserError("--target applies to the one-seed table: leave it out with --seeds")
    try:
        rows = seed_table([load_run(f) for f in folders], parse_seeds(args.seeds), _warn)
    except ValueError as err:  # a bad --seeds, a missing seed, a label twice for one seed, a
        raise UserError(f"--seeds: {err}") from None  # FedAvg run unlike its seed's others
    print(format_seed_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows_to_json(rows), indent=1))
    return 0


def _report_phases(folders: list[Path], args) -> int:
    """The per-phase seconds (lbgm_mpi.analysis.report.phase_table) of the runs in ``folders``."""
    from lbgm_mpi.analysis.report import format_phase_table, phase_table
    if args.seeds is not None or args.target is not None:
        raise UserError("--phases shows each run's seconds: leave out --seeds and --target")
    rows = phase_table(folders)
    print(format_phase_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"run_dir": str(f), **row} for f, row in zip(folders, rows)], indent=1))
    return 0
