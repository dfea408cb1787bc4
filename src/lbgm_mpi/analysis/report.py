"""Reading run folders, and the table that compares runs against their FedAvg baseline.

A run folder holds metrics.jsonl (one JSON object per round, per-round counts, never cumulative)
and summary.json (totals and the run's label, algorithm and threshold); both are written by the
trainer. Accuracies are fractions in the files; the table shows percent and percentage points.
Byte counts use decimal units (1 KB = 1000 bytes), as network rates do.
"""

import json
from dataclasses import dataclass
from pathlib import Path

TARGET_FRACTION = 0.95  # default target accuracy: this fraction of FedAvg's best accuracy
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


@dataclass(frozen=True)
class Run:
    """One run folder, as read from disk."""

    path: Path
    rounds: list[dict]  # metrics.jsonl, in round order
    summary: dict  # summary.json

    @property
    def label(self) -> str:
        return self.summary["label"]

    def cumulative(self, key: str) -> list[float]:
        """Running total of a per-round count (e.g. "uplink_bytes"), one value per round."""
        total, out = 0, []
        for row in self.rounds:
            total += row[key]
            out.append(total)
        return out

    def evaluated(self, key: str) -> tuple[list[float], list[float]]:
        """(cumulative ``key``, test accuracy) at the rounds that were evaluated."""
        pairs = [(x, row["test_acc"]) for x, row in zip(self.cumulative(key), self.rounds)
                 if row["test_acc"] is not None]
        return [x for x, _ in pairs], [a for _, a in pairs]


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder's metrics.jsonl and summary.json."""
    path = Path(run_dir)
    with open(path / "summary.json") as f:
        summary = json.load(f)
    with open(path / "metrics.jsonl") as f:
        rounds = [json.loads(line) for line in f if line.strip()]
    return Run(path, sorted(rounds, key=lambda r: r["round"]), summary)


def fedavg_reference(runs: list[Run]) -> Run | None:
    """The uncompressed FedAvg run; None if there is none, an error if there are several.

    FedAvg with a compressor (top-k, sign, ...) is a method to compare, not the reference."""
    found = [r for r in runs if r.summary["algo"] == "fedavg"
             and r.summary.get("compressor", "none") == "none"]
    if len(found) > 1:
        names = ", ".join(str(r.path) for r in found)
        raise ValueError(f"several FedAvg runs ({names}): pass only the one to compare against")
    return found[0] if found else None


def human_bytes(n: float) -> str:
    """Byte count with three significant digits and a decimal unit, e.g. "1.23 MB"."""
    value, unit = float(n), 0
    while abs(float(f"{value:.3g}")) >= 1000 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{value:.3g} {_UNITS[unit]}"


def _savings(value: float, reference: float) -> float | None:
    return 100.0 * (1.0 - value / reference) if reference > 0 else None


def bytes_to_target(run: Run, target_acc: float) -> int | None:
    """Cumulative uplink bytes at the first evaluated round reaching ``target_acc``, else None."""
    for nbytes, acc in zip(*run.evaluated("uplink_bytes")):
        if acc >= target_acc:
            return nbytes
    return None


def _row(run: Run, ref: Run | None, target: float | None, target_source: str) -> dict:
    s = run.summary
    times = [r["round_s"] for r in run.rounds]
    return {
        "label": run.label,
        "algo": s["algo"],
        "threshold": s["threshold"],
        "best_acc_pct": 100.0 * s["best_acc"],
        "final_acc_pct": 100.0 * s["final_acc"],
        "drop_pt": 100.0 * (ref.summary["best_acc"] - s["best_acc"]) if ref else None,
        "uplink_bytes": s["total_uplink_bytes"],
        "mpi_bytes": s["total_mpi_bytes"],
        "uplink_savings_pct":
            _savings(s["total_uplink_bytes"], ref.summary["total_uplink_bytes"]) if ref else None,
        "mpi_savings_pct":
            _savings(s["total_mpi_bytes"], ref.summary["total_mpi_bytes"]) if ref else None,
        "target_acc": target,
        "target_source": target_source,
        "bytes_to_target": bytes_to_target(run, target) if target is not None else None,
        "mean_round_s": sum(times) / len(times) if times else None,
    }


def compare_table(run_dirs: list[str | Path], target_acc: float | None = None) -> list[dict]:
    """One row of raw numbers per run folder, compared with the FedAvg run among them.

    The accuracy drop is FedAvg's best accuracy minus the run's, in percentage points; savings are
    1 - bytes / FedAvg's bytes, in percent. ``target_acc`` is a fraction; by default it is
    0.95 x FedAvg's best accuracy. Columns that need FedAvg are None when there is no FedAvg run.
    """
    if target_acc is not None and not 0.0 < target_acc <= 1.0:
        raise ValueError(f"target_acc is a fraction in (0, 1], got {target_acc}")
    runs = [load_run(d) for d in run_dirs]
    ref = fedavg_reference(runs)
    source = "given"
    if target_acc is None and ref is not None:
        target_acc = TARGET_FRACTION * ref.summary["best_acc"]
        source = f"{TARGET_FRACTION} x best accuracy of FedAvg run '{ref.label}'"
    return [_row(run, ref, target_acc, source) for run in runs]


# (header, row key, formatter); a None value prints blank, a missed target prints "n/a"
_COLUMNS = (
    ("label", "label", str),
    ("best acc (%)", "best_acc_pct", "{:.2f}".format),
    ("final acc (%)", "final_acc_pct", "{:.2f}".format),
    ("drop vs FedAvg (pt)", "drop_pt", "{:+.2f}".format),
    ("uplink", "uplink_bytes", human_bytes),
    ("MPI", "mpi_bytes", human_bytes),
    ("uplink savings (%)", "uplink_savings_pct", "{:.1f}".format),
    ("MPI savings (%)", "mpi_savings_pct", "{:.1f}".format),
    ("uplink to target", "bytes_to_target", human_bytes),
    ("mean round (s)", "mean_round_s", "{:.3f}".format),
)


def _cell(row: dict, key: str, fmt) -> str:
    if row[key] is not None:
        return fmt(row[key])
    return "n/a" if key == "bytes_to_target" and row["target_acc"] is not None else ""


def format_table(rows: list[dict]) -> str:
    """The rows of ``compare_table`` as an aligned text table, with the target accuracy above it."""
    cells = [[h for h, _, _ in _COLUMNS]]
    cells += [[_cell(row, key, fmt) for _, key, fmt in _COLUMNS] for row in rows]
    widths = [max(len(line[c]) for line in cells) for c in range(len(_COLUMNS))]
    lines = ["  ".join(text.ljust(w) if c == 0 else text.rjust(w)
                       for c, (text, w) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    target = rows[0]["target_acc"] if rows else None
    title = (f"uplink to target: cumulative uplink bytes until test accuracy first reaches "
             f"{100.0 * target:.2f}% ({rows[0]['target_source']})" if target is not None
             else "uplink to target: no target accuracy (no FedAvg run and none given)")
    return "\n".join([title] + lines)
