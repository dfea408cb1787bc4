"""``lbgm-mpi plot`` (figures) and ``lbgm-mpi report`` (the comparison table; with --seeds
the table of each method's mean and spread over seeds; with --phases the seconds of each phase of
the round) for run folders.

Both read run folders (metrics.jsonl, and summary.json or, for a run still running or stopped,
config.toml) and need no config; files among the arguments (the PNGs and tables written next to
runs, as a shell's DIR/* lists them) are left out. Under mpirun only the root rank does the work.
"""

import json
import os
import sys
from pathlib import Path

from lbgm_mpi.errors import UserError


def register(sub) -> None:
    plot = sub.add_parser("plot", help="accuracy vs uplink bytes and vs round (PNG) for runs")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (finished or not)")
    plot.add_argument("--out", metavar="PREFIX", default=None,
                      help="write PREFIX_acc_vs_bytes.png, PREFIX_acc_vs_round.png (and "
                      "PREFIX_sweep.png); default: <folder holding the runs>/plot")
    plot.add_argument("--sweep", action="store_true",
                      help="also plot accuracy drop vs uplink savings against the one FedAvg run")
    report = sub.add_parser("report", help="print the comparison table of runs against FedAvg")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (finished or not)")
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


def run_folders(paths: list[str]) -> list[Path]:
    """The run folders among ``paths``, checked; files are left out, with a note on stderr."""
    folders, files = [], []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif not path.is_dir():
            raise UserError(f"run folder {path} does not exist")
        elif not (path / "metrics.jsonl").is_file():
            raise UserError(f"{path} has no metrics.jsonl: not a run folder, or its run has not "
                            "finished a round yet")
        elif not any((path / name).is_file() for name in ("summary.json", "config.toml")):
            raise UserError(f"{path} has neither summary.json nor config.toml: not a run folder")
        else:
            folders.append(path)
    if files:
        print(f"lbgm-mpi: left out {len(files)} file(s), not run folders: "
              f"{', '.join(map(str, files))}", file=sys.stderr)
    if not folders:
        raise UserError("no run folder among the arguments")
    return folders


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
            written.append(plot_sweep(folders, f"{prefix}_sweep.png"))
    except ValueError as err:  # e.g. --sweep without, or with several, FedAvg runs
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
        rows = compare_table(folders, args.target)
    except ValueError as err:  # several FedAvg runs
        raise UserError(str(err)) from None
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"run_dir": str(f), **row} for f, row in zip(folders, rows)], indent=1))
    return 0


def _report_seeds(folders: list[Path], args) -> int:
    """The table over seeds (analysis/seeds.py) of the runs in ``folders``."""
    from lbgm_mpi.analysis.report import load_run
    from lbgm_mpi.analysis.seeds import format_seed_table, parse_seeds, rows_to_json, seed_table
    if args.target is not None:
        raise UserError("--target applies to the one-seed table: leave it out with --seeds")
    try:
        rows = seed_table([load_run(f) for f in folders], parse_seeds(args.seeds))
    except ValueError as err:  # a bad --seeds, a missing seed, a label twice for one seed
        raise UserError(f"--seeds: {err}") from None
    print(format_seed_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows_to_json(rows), indent=1))
    return 0


def _report_phases(folders: list[Path], args) -> int:
    """The per-phase seconds (analysis/report.py, phase_table) of the runs in ``folders``."""
    from lbgm_mpi.analysis.report import format_phase_table, phase_table
    if args.seeds is not None or args.target is not None:
        raise UserError("--phases shows each run's seconds: leave out --seeds and --target")
    rows = phase_table(folders)
    print(format_phase_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"run_dir": str(f), **row} for f, row in zip(folders, rows)], indent=1))
    return 0
