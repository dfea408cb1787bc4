"""The run folder: what the trainer writes and the analysis reads.

A run folder holds config.toml (the resolved config), metrics.jsonl (one JSON object per round,
per-round counts, never cumulative: ``METRIC_KEYS``, plus per-phase seconds ending in ``_s``) and,
once the run has finished, summary.json (``summarize``'s totals and the run's label, algorithm
and threshold, plus per-rank figures). A run that is still running, or was stopped, has no
summary.json (or an older one, from before it was resumed): ``load_run`` then computes its summary
from its rounds so far, the same way the trainer does, and marks the run unfinished. Accuracies
are fractions.
"""

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

# every metrics row's keys besides the phase timings (*_s)
METRIC_KEYS = ("round", "test_acc", "test_loss", "train_loss", "participants", "refreshes",
               "scalars", "uplink_bytes", "dense_uplink_bytes", "downlink_bytes", "mpi_bytes",
               "link_bytes")


@dataclass(frozen=True)
class Run:
    """One run folder, as read from disk."""

    path: Path
    rounds: list[dict]  # metrics.jsonl, in round order
    summary: dict  # summary.json, or the same computed from the rounds of an unfinished run
    planned_rounds: int | None = None  # run.rounds of an unfinished run; None once finished
    config: dict | None = None  # config.toml as flat "section.key" -> value; None without one

    @property
    def label(self) -> str:
        return self.summary["label"]

    @property
    def status(self) -> str:
        """"" for a finished run, else how far it got: "round 12 of 50"."""
        if self.planned_rounds is None:
            return ""
        return f"round {len(self.rounds)} of {self.planned_rounds}"

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


def summarize(rows: list[dict], spec, num_params: int | None) -> dict:
    """What summary.json holds (but the per-rank figures) for the rounds ``rows`` of a run
    configured by ``spec`` (a RunSpec)."""
    accs = [r["test_acc"] for r in rows if r["test_acc"] is not None]
    total = lambda key: int(sum(r[key] for r in rows))
    return {
        "label": spec.label(), "algo": spec.algo.name,
        "threshold": spec.algo.threshold if spec.algo.name == "lbgm" else None,
        "compressor": spec.algo.compressor, "num_params": num_params, "rounds": len(rows),
        "final_acc": accs[-1] if accs else None, "best_acc": max(accs) if accs else None,
        "total_uplink_bytes": total("uplink_bytes"),
        "total_dense_uplink_bytes": total("dense_uplink_bytes"),
        "total_downlink_bytes": total("downlink_bytes"), "total_mpi_bytes": total("mpi_bytes"),
        "total_link_bytes": int(sum(r.get("link_bytes", 0) for r in rows)),
        "total_refreshes": total("refreshes"), "total_scalars": total("scalars"),
        "total_time_s": float(sum(r["round_s"] for r in rows)),
    }


def _read_rows(path: Path) -> list[dict]:
    """metrics.jsonl's rows; a last line cut short (a run writing it now, or stopped while it
    wrote) is left out."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return sorted(rows, key=lambda r: r["round"])


def _flat_config(path: Path) -> dict | None:
    """config.toml at ``path`` as {"section.key": value}, read as it is (keys of another version
    of lbgm-mpi included); None if there is no such file."""
    try:
        with open(path, "rb") as f:
            tree = tomllib.load(f)
    except FileNotFoundError:
        return None
    return {f"{section}.{key}": value for section, values in tree.items()
            if isinstance(values, dict) for key, value in values.items()}


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder: metrics.jsonl, and summary.json if the run finished (else config.toml,
    to summarize the rounds so far)."""
    from lbgm_mpi.config import load_config
    path = Path(run_dir)
    rows = _read_rows(path / "metrics.jsonl")
    config = _flat_config(path / "config.toml")
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
        if summary["rounds"] == len(rows):
            return Run(path, rows, summary, config=config)
    spec = load_config(path / "config.toml")
    return Run(path, rows, summarize(rows, spec, None), spec.run.rounds, config)
