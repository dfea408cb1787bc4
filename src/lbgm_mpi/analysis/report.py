"""The table that compares runs (read by lbgm_mpi.runs.folder) against their FedAvg baseline.

Accuracies are fractions in the files; the table shows percent and percentage points. Byte counts use decimal
units (1 KB = 1000 bytes), as network rates do.

A run is compared with a FedAvg baseline only where the comparison means something: both ran the
same task (every data.* and model.* key), the same federation (clients.count, clients.per_round,
clients.update, clients.local_epochs) for the same number of rounds (run.rounds). A baseline that
differs in any of those is refused (check_baseline raises ValueError naming the keys). The seed
may differ, and so may algo.* (what is compared) and system.* (where it ran). Step sizes
(clients.lr, clients.batch_size, server.lr, server.momentum) and data.root (the same files may lie
elsewhere) may differ with a warning.
"""

from collections import Counter
from pathlib import Path

from lbgm_mpi.runs.folder import Run, load_run
from lbgm_mpi.units import human_bytes

TARGET_FRACTION = 0.95  # default target accuracy: this fraction of FedAvg's best accuracy


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

    FedAvg with a compressor (top-k, sign, ...) is a method to compare, not the reference. Where
    FedAvg ran in both topologies (compare's "fedavg" and "fedavg@star"), the reference is the
    replicated one (FedAvg by Allreduce), and the star's is a method like the others."""
    found = [r for r in runs if r.summary["algo"] == "fedavg"
             and r.summary.get("compressor", "none") == "none"]
    replicated = [r for r in found if _topology(r) == "replicated"]
    if len(found) > 1 and len(replicated) == 1:
        return replicated[0]
    if len(found) > 1:
        names = ", ".join(str(r.path) for r in found)
        raise ValueError(f"several FedAvg runs ({names}): pass only the one to compare against "
                         "(runs of several seeds: report --seeds S,S,... compares each seed's)")
    return found[0] if found else None


def _topology(run: Run) -> str:
    """The run's system.topology (runs from before the star ran replicated)."""
    return (run.config or {}).get("system.topology", "replicated")


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
        "link_bytes": s.get("total_link_bytes"),  # runs from before the link ledger lack it
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
    ("link", "link_bytes", human_bytes),
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
    title += ("\nlink: bytes the busiest rank's network link carried (a ring Allreduce of n bytes: "
              "2 (P-1)/P n; an Allgatherv: all but its own; a star: the server's, every upload in "
              "and the aggregate out to each rank)")
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
