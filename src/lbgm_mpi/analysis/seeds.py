"""Tables over seeds: each method's mean and spread of what one run's table shows.

A run's method is its label; its seed is ``run.seed`` in the run folder's config.toml. For each
method, over its seeds: the best test accuracy, the mean of its last LAST evaluated accuracies
(less noisy than the final one on oscillating non-IID runs), its uplink bytes, the uplink it saved
against the FedAvg run of the same seed, and accuracy at equal bytes: the test accuracy the method
and FedAvg had when each had sent as many uplink bytes as the cheaper of the two sent in all (the
last evaluated round within that budget). The spread is the sample standard deviation over the
seeds (0 for a single seed).
"""

import math
import tomllib
from dataclasses import dataclass

from lbgm_mpi.analysis.report import Run, check_baseline, fedavg_reference, human_bytes

LAST = 5  # evaluated rounds averaged into "last-5 accuracy"


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one quantity over seeds."""

    mean: float
    std: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def spread(values: list[float | None]) -> Spread | None:
    """Mean and sample standard deviation of ``values``; None if any value is missing."""
    if not values or any(v is None for v in values):
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return Spread(mean, math.sqrt(var), len(values))


def parse_seeds(text: str) -> list[int]:
    """Seeds from "0,1,2": distinct integers >= 0, in the order given (ValueError otherwise)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of integers") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r}: give distinct seeds >= 0, such as 0,1,2")
    return seeds


def seed_of(run: Run) -> int:
    """The run's ``run.seed``, from the config.toml the trainer wrote into its folder."""
    with open(run.path / "config.toml", "rb") as f:
        return int(tomllib.load(f)["run"]["seed"])


def last_mean(run: Run, count: int = LAST) -> float | None:
    """Mean test accuracy of the run's last ``count`` evaluated rounds (fewer if it has fewer)."""
    _, acc = run.evaluated("uplink_bytes")
    return sum(acc[-count:]) / len(acc[-count:]) if acc else None


def accuracy_at(run: Run, budget: float) -> float | None:
    """Test accuracy at the last evaluated round by which the run had sent at most ``budget``
    uplink bytes; None if its first evaluated round already sent more."""
    within = [a for sent, a in zip(*run.evaluated("uplink_bytes")) if sent <= budget]
    return within[-1] if within else None


def equal_bytes(run: Run, ref: Run) -> tuple[float | None, float | None]:
    """(accuracy of ``run``, accuracy of ``ref``) once each has sent as many uplink bytes as the
    cheaper of the two sent in all."""
    budget = min(run.summary["total_uplink_bytes"], ref.summary["total_uplink_bytes"])
    return accuracy_at(run, budget), accuracy_at(ref, budget)


def group_by_method(runs: list[Run], seeds: list[int] | None = None) -> dict[str, dict[int, Run]]:
    """label -> {seed: run}, labels in first-seen order. With ``seeds``, runs of other seeds are
    left out and every label must have a run of each; a label twice for one seed is an error."""
    groups: dict[str, dict[int, Run]] = {}
    for run in runs:
        seed = seed_of(run)
        if seeds is not None and seed not in seeds:
            continue
        by_seed = groups.setdefault(run.label, {})
        if seed in by_seed:
            raise ValueError(f"two runs of '{run.label}' with seed {seed}: {by_seed[seed].path} "
                             f"and {run.path}")
        by_seed[seed] = run
    for label, by_seed in groups.items():
        missing = sorted(set(seeds or ()) - set(by_seed))
        if missing:
            raise ValueError(f"'{label}' has no run with seed {', '.join(map(str, missing))}")
    return groups


def _percent(values: list[float | None]) -> list[float | None]:
    return [None if v is None else 100.0 * v for v in values]


def _method_row(label: str, by_seed: dict[int, Run], refs: dict[int, Run]) -> dict:
    seeds = sorted(by_seed)
    runs = [by_seed[s] for s in seeds]
    row = {"label": label, "seeds": seeds,
           "best_acc_pct": spread(_percent([r.summary["best_acc"] for r in runs])),
           "last_acc_pct": spread(_percent([last_mean(r) for r in runs])),
           "uplink_bytes": spread([r.summary["total_uplink_bytes"] for r in runs]),
           "uplink_savings_pct": None, "acc_at_equal_bytes_pct": None,
           "fedavg_at_equal_bytes_pct": None}
    if all(s in refs for s in seeds):
        pairs = [equal_bytes(by_seed[s], refs[s]) for s in seeds]
        row["uplink_savings_pct"] = spread([
            100.0 * (1.0 - by_seed[s].summary["total_uplink_bytes"]
                     / refs[s].summary["total_uplink_bytes"]) for s in seeds])
        row["acc_at_equal_bytes_pct"] = spread(_percent([a for a, _ in pairs]))
        row["fedavg_at_equal_bytes_pct"] = spread(_percent([b for _, b in pairs]))
    return row


def seed_table(runs: list[Run], seeds: list[int] | None = None, warn=None) -> list[dict]:
    """One row per method (label) with the mean and spread over its seeds (see the module);
    the FedAvg reference of each seed is that seed's uncompressed FedAvg run, if any, and must be
    comparable with the seed's other runs (report.check_baseline: ValueError if not; ``warn``
    hears of lesser differences)."""
    groups = group_by_method(runs, seeds)
    all_seeds = sorted({s for by_seed in groups.values() for s in by_seed})
    refs = {}
    for s in all_seeds:
        of_seed = [by_seed[s] for by_seed in groups.values() if s in by_seed]
        ref = fedavg_reference(of_seed)
        if ref is not None:
            check_baseline(ref, of_seed, warn)
            refs[s] = ref
    return [_method_row(label, by_seed, refs) for label, by_seed in groups.items()]


def _pm(value: Spread | None, fmt) -> str:
    return "" if value is None else f"{fmt(value.mean)} ± {fmt(value.std)}"


# (header, row key, formatter of one number)
_COLUMNS = (
    ("best acc (%)", "best_acc_pct", "{:.2f}".format),
    (f"last-{LAST} acc (%)", "last_acc_pct", "{:.2f}".format),
    ("uplink", "uplink_bytes", human_bytes),
    ("uplink saved (%)", "uplink_savings_pct", "{:.1f}".format),
    ("acc at equal bytes (%)", "acc_at_equal_bytes_pct", "{:.2f}".format),
    ("FedAvg at equal bytes (%)", "fedavg_at_equal_bytes_pct", "{:.2f}".format),
)


def format_seed_table(rows: list[dict]) -> str:
    """The rows of ``seed_table`` as an aligned text table of "mean ± spread" cells."""
    cells = [["label", "seeds"] + [h for h, _, _ in _COLUMNS]]
    cells += [[row["label"], ",".join(map(str, row["seeds"]))]
              + [_pm(row[key], fmt) for _, key, fmt in _COLUMNS] for row in rows]
    widths = [max(len(line[c]) for line in cells) for c in range(len(cells[0]))]
    lines = ["  ".join(text.ljust(w) if c < 2 else text.rjust(w)
                       for c, (text, w) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (f"mean ± sample standard deviation over seeds; last-{LAST}: mean of the last {LAST} "
             "evaluated accuracies; at equal bytes: accuracy of the method and of FedAvg (same "
             "seed) once each had sent the uplink bytes the cheaper of the two sent in all")
    return "\n".join([title] + lines)


def rows_to_json(rows: list[dict]) -> list[dict]:
    """The rows with each Spread as {"mean", "std", "n"} (for JSON files)."""
    return [{k: v.to_dict() if isinstance(v, Spread) else v for k, v in row.items()}
            for row in rows]
