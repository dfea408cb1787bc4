"""Reading run folders, and the table that compares runs against their FedAvg baseline.

A run folder holds metrics.jsonl (one JSON object per round, per-round counts, never cumulative),
config.toml and, once the run has finished, summary.json (totals and the run's label, algorithm and
threshold); all are written by the trainer. A run that is still running, or was stopped, has no
summary.json (or an older one, from before it was resumed): its summary is then computed from its
rounds so far, the same way the trainer computes it, and the run is marked unfinished. Accuracies
are fractions in the files; the table shows percent and percentage points. Byte counts use decimal
units (1 KB = 1000 bytes), as network rates do.

A run is compared with a FedAvg baseline only where the comparison means something: both ran the
same task (every data.* and model.* key), the same federation (clients.count, clients.per_round,
clients.update, clients.local_epochs) for the same number of rounds (run.rounds). A baseline that
differs in any of those is refused (check_baseline raises ValueError naming the keys). The seed
may differ, and so may algo.* (what is compared) and system.* (where it ran). Step sizes
(clients.lr, clients.batch_size, server.lr, server.momentum) and data.root (the same files may lie
elsewhere) may differ with a warning.
"""

import json
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

TARGET_FRACTION = 0.95  # default target accuracy: this fraction of FedAvg's best accuracy
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


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


def display_labels(runs: list[Run]) -> list[str]:
    """How tables and plots name each run: its label, followed by its folder where several runs
    share the label (as few trailing path parts as tell them apart), and by how far it got if
    it has not finished."""
    repeated = Counter(r.label for r in runs)
    names = []
    for run in runs:
        name = run.label
        if repeated[run.label] > 1:
            twins = [r.path for r in runs if r.label == run.label]
            name += f" [{_distinct_tail(run.path, twins)}]"
        names.append(f"{name} ({run.status})" if run.status else name)
    return names


def _distinct_tail(path: Path, paths: list[Path]) -> str:
    """The fewest trailing parts of ``path`` that no other of ``paths`` ends with."""
    parts = path.resolve().parts
    for n in range(1, len(parts) + 1):
        tail = parts[-n:]
        if sum(p.resolve().parts[-n:] == tail for p in paths) == 1:
            return "/".join(tail)
    return str(path)


def fedavg_reference(runs: list[Run]) -> Run | None:
    """The uncompressed FedAvg run; None if there is none, an error if there are several.

    FedAvg with a compressor (top-k, sign, ...) is a method to compare, not the reference."""
    found = [r for r in runs if r.summary["algo"] == "fedavg"
             and r.summary.get("compressor", "none") == "none"]
    if len(found) > 1:
        names = ", ".join(str(r.path) for r in found)
        raise ValueError(f"several FedAvg runs ({names}): pass only the one to compare against "
                         "(runs of several seeds: report --seeds S,S,... compares each seed's)")
    return found[0] if found else None


# config keys a run must share with its FedAvg baseline (a key ending in "." names a section), and
# those whose difference is worth a warning; see the module docstring
BASELINE_MUST_MATCH = ("data.", "model.", "clients.count", "clients.per_round", "clients.update",
                       "clients.local_epochs", "run.rounds")
BASELINE_SHOULD_MATCH = ("data.root", "clients.lr", "clients.batch_size", "server.lr",
                         "server.momentum")


def _differences(ref: Run, run: Run, keys: tuple[str, ...]) -> list[str]:
    """The keys among ``keys`` (or under a section prefix) in which the two runs' configs differ,
    as "key (ref value vs run value)"; keys one of them lacks are not compared."""
    if ref.config is None or run.config is None:
        return []
    out = []
    for key in sorted(ref.config.keys() & run.config.keys()):
        chosen = key in keys or any(k.endswith(".") and key.startswith(k) for k in keys)
        if chosen and ref.config[key] != run.config[key]:
            out.append(f"{key} ({_shown(ref.config[key])} vs {_shown(run.config[key])})")
    return out


def _shown(value) -> str:
    return '""' if value == "" else str(value)


def check_baseline(ref: Run, runs: list[Run], warn=None) -> None:
    """Refuse (ValueError, one line) a FedAvg baseline ``ref`` whose config differs from a run's
    in a key the comparison needs (BASELINE_MUST_MATCH); call ``warn(text)`` for each run that
    differs from it in a step size (BASELINE_SHOULD_MATCH)."""
    for run in runs:
        if run is ref:
            continue
        hard = [d for d in _differences(ref, run, BASELINE_MUST_MATCH)
                if not d.startswith(BASELINE_SHOULD_MATCH)]
        if hard:
            raise ValueError(f"fedavg baseline {ref.path} differs from {run.path} in "
                             f"{', '.join(hard)}: it cannot be compared (the drop and savings "
                             "need the same data, model, clients and rounds; run.seed may "
                             "differ): pass a FedAvg run of the same setting, or leave it out")
        soft = _differences(ref, run, BASELINE_SHOULD_MATCH)
        if soft and warn is not None:
            warn(f"fedavg baseline {ref.path} differs from {run.path} in {', '.join(soft)}: the "
                 "drop and savings compare runs trained with different settings")


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


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def _row(run: Run, name: str, ref: Run | None, target: float | None, target_source: str) -> dict:
    s = run.summary
    times = [r["round_s"] for r in run.rounds]
    both = ref is not None and s["best_acc"] is not None and ref.summary["best_acc"] is not None
    return {
        "label": run.label,
        "name": name,
        "status": run.status,
        "algo": s["algo"],
        "threshold": s["threshold"],
        "best_acc_pct": _percent(s["best_acc"]),
        "final_acc_pct": _percent(s["final_acc"]),
        "drop_pt": 100.0 * (ref.summary["best_acc"] - s["best_acc"]) if both else None,
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


def compare_table(run_dirs: list[str | Path], target_acc: float | None = None,
                  warn=None) -> list[dict]:
    """One row of raw numbers per run folder, compared with the FedAvg run among them.

    The accuracy drop is FedAvg's best accuracy minus the run's, in percentage points; savings are
    1 - bytes / FedAvg's bytes, in percent. ``target_acc`` is a fraction; by default it is
    0.95 x FedAvg's best accuracy. Columns that need FedAvg are None when there is no FedAvg run.
    A FedAvg run that cannot be compared with the others raises ValueError (check_baseline, which
    calls ``warn`` about lesser differences).
    """
    if target_acc is not None and not 0.0 < target_acc <= 1.0:
        raise ValueError(f"target_acc is a fraction in (0, 1], got {target_acc}")
    runs = [load_run(d) for d in run_dirs]
    ref = fedavg_reference(runs)
    if ref is not None:
        check_baseline(ref, runs, warn)
    source = "given"
    if target_acc is None and ref is not None and ref.summary["best_acc"] is not None:
        target_acc = TARGET_FRACTION * ref.summary["best_acc"]
        source = f"{TARGET_FRACTION} x best accuracy of FedAvg run '{ref.label}'"
    return [_row(run, name, ref, target_acc, source)
            for run, name in zip(runs, display_labels(runs))]


# (header, row key, formatter); a None value prints blank, a missed target prints "n/a"
_COLUMNS = (
    ("label", "name", str),
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


def _aligned(cells: list[list[str]]) -> list[str]:
    """Rows of text cells (the first row the header) as aligned lines: the first column left,
    the others right, a rule under the header."""
    widths = [max(len(line[c]) for line in cells) for c in range(len(cells[0]))]
    lines = ["  ".join(text.ljust(w) if c == 0 else text.rjust(w)
                       for c, (text, w) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(rows: list[dict]) -> str:
    """The rows of ``compare_table`` as an aligned text table, with the target accuracy above it."""
    lines = _aligned([[h for h, _, _ in _COLUMNS]]
                     + [[_cell(row, key, fmt) for _, key, fmt in _COLUMNS] for row in rows])
    target = rows[0]["target_acc"] if rows else None
    title = (f"uplink to target: cumulative uplink bytes until test accuracy first reaches "
             f"{100.0 * target:.2f}% ({rows[0]['target_source']})" if target is not None
             else "uplink to target: no target accuracy (no FedAvg run and none given)")
    unfinished = [row["name"] for row in rows if row["status"]]
    if unfinished:
        lines.append(f"not finished (running, or stopped: figures as of their last round): "
                     f"{', '.join(unfinished)}")
    return "\n".join([title] + lines)


# per-round phase seconds in metrics.jsonl (training/phases.py); decide and bank are LBGM's own
PHASE_KEYS = ("train_s", "decide_s", "comm_s", "bank_s", "aggregate_s", "eval_s",
              "checkpoint_s", "round_s")
OWN_PHASES = ("decide_s", "bank_s")


def phase_table(run_dirs: list[str | Path]) -> list[dict]:
    """One row per run folder: the mean seconds per round of each phase on the root (None for
    a phase its metrics do not hold), the seconds no phase accounts for, and ``own_pct``, the
    phases FedAvg does not have (projection and decision, bank writes) in percent of local
    training. Timing of the first round (warm-up: allocations, first kernels) is left out when
    there are more rounds."""
    runs = [load_run(d) for d in run_dirs]
    table = []
    for run, name in zip(runs, display_labels(runs)):
        rows = run.rounds[1:] if len(run.rounds) > 1 else run.rounds
        mean = {key: (sum(r[key] for r in rows) / len(rows)
                      if rows and all(key in r for r in rows) else None) for key in PHASE_KEYS}
        known = [mean[k] for k in PHASE_KEYS[:-1] if mean[k] is not None]
        other = mean["round_s"] - sum(known) if mean["round_s"] is not None else None
        own = [mean[k] for k in OWN_PHASES if mean[k] is not None]
        own_pct = (100.0 * sum(own) / mean["train_s"]
                   if own and mean["train_s"] else None)
        table.append({"name": name, "rounds": len(rows), **mean, "other_s": other,
                      "own_pct": own_pct})
    return table


_PHASE_COLUMNS = (("label", "name", str), ("rounds", "rounds", str),
                  *((key[:-2], key, "{:.3f}".format) for key in PHASE_KEYS),
                  ("other", "other_s", "{:.3f}".format), ("own/train (%)", "own_pct",
                                                          "{:.1f}".format))


def format_phase_table(rows: list[dict]) -> str:
    """The rows of ``phase_table`` as an aligned text table with its legend."""
    lines = _aligned([[h for h, _, _ in _PHASE_COLUMNS]]
                     + [[fmt(row[key]) if row[key] is not None else ""
                         for _, key, fmt in _PHASE_COLUMNS] for row in rows])
    title = ("mean seconds per round on the root rank (the first round left out): local\n"
             "training, LBGM's projection and decision, data collectives, bank writes,\n"
             "aggregation and server step, evaluation, checkpoint hold, the whole round, and what\n"
             "no phase accounts for; own/train = (decide + bank) / train")
    return "\n".join([title] + lines)
