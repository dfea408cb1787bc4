"""The accuracy-bytes frontier of LBGM, its variants, FedLUAR and PowerSGD, over seeds.

    nice -n 10 python benchmarks/bench_frontier.py [--seeds 0,1,2] [--jobs 2]
        [--runs runs/frontier] [--out benchmarks/results/frontier] [--stage all|runs|report]
        [--settings mnist1d-10,digits-10,digits-4,mnist1d-4] [--only-global] [--merge]

Four settings, each the project's default job (configs/default.toml: MLP or CNN, 2 local epochs
of minibatch SGD at lr 0.1, 50 rounds, 3-class shards) with 10 or 4 clients:
  digits:   MLP, server momentum 0.5;
  mnist1d:  the `cnn` model, server momentum 0.9.
Rounds and learning rates are those of the default job for every method; nothing is tuned per
method. Per setting and seed it runs `lbgm-mpi compare` (one process, one rank):
  - at each threshold of THRESHOLDS: lbgm, lbgm-m2, lbgm-m3, lbgm-decay, lbgm-m3-decay and
    powersgd+lbgm (PowerSGD rank 4, the config default);
  - fedavg, powersgd, and fedluar for each recycled-layer count of RECYCLE (the MLP has 2 weight
    layers, so 1 at most; the CNN 3);
  - with 10 clients, lbgm and lbgm-m3 at threshold 0.2 after 5 warm-up rounds (bytes over
    time);
  - the global scope (LBGM on the aggregate, algo.scope = "global"): lbgm-global-m1, -m3 and
    -m10 at each threshold of GLOBAL_THRESHOLDS (folders gT), with the share of rounds that sent
    no dense collective (refreshes == 0).
Finished runs are kept in --runs and skipped when the script runs again. The report stage prints
the table (mean and sample standard deviation over seeds), writes JSON and text under --out, and
draws last-5 accuracy against uplink bytes, one curve per method (benchmarks/results/frontier*).

--only-global runs just FedAvg (the reference of each seed) and the global-scope rows; --merge
makes the report keep every point of the existing OUT.json whose method it did not run again
(the FedAvg rows of the JSON stay; the rerun FedAvg is checked against them), so new rows join
the old results without rerunning them:

    python benchmarks/bench_frontier.py --only-global --merge --runs runs/frontier-global
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lbgm_mpi.analysis.report import human_bytes, load_run
from lbgm_mpi.analysis.seeds import LAST, Spread, rows_to_json, seed_table, spread
from record import write_record  # noqa: E402  (benchmarks/, beside this script)

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/default.toml"
DATASETS = {"digits": [],
            "mnist1d": ["data.name=mnist1d", "model.name=cnn", "server.momentum=0.9"]}
# thresholds and FedLUAR's recycled-layer counts per setting. On MNIST-1D plain LBGM already
# loses 32 points at 0.2 (36% saved), so 0.4 is left out; the 4-client MNIST-1D setting runs a
# shorter sweep so that the whole benchmark fits a shared 2-core machine.
THRESHOLDS = {"mnist1d-10": (0.02, 0.05, 0.1, 0.2), "digits-10": (0.02, 0.05, 0.1, 0.2, 0.4),
              "digits-4": (0.02, 0.05, 0.1, 0.2, 0.4), "mnist1d-4": (0.05, 0.2)}
THRESHOLD_METHODS = ("lbgm", "lbgm-m2", "lbgm-m3", "lbgm-decay", "lbgm-m3-decay", "powersgd+lbgm")
RECYCLE = {"mnist1d-10": (1, 2), "digits-10": (1,), "digits-4": (1,), "mnist1d-4": (1,)}
# bytes over time: the runs at SCHEDULE_T, and lbgm / lbgm-m3 there after WARMUP dense rounds
SCHEDULE_T = 0.2
WARMUP, WARMUP_METHODS, WARMUP_SETTINGS = 5, ("lbgm", "lbgm-m3"), ("mnist1d-10", "digits-10")
GLOBAL_METHODS = ("lbgm-global-m1", "lbgm-global-m3", "lbgm-global-m10")
# the global scope's thresholds: its sin^2 is the aggregate's, so the small thresholds leave it
# dense (on MNIST-1D, none of 0.02, 0.05 gave a seed more than 2 scalar rounds); on digits the
# three most informative of THRESHOLDS, to fit the shared machine
GLOBAL_THRESHOLDS = {"mnist1d-10": (0.02, 0.05, 0.1, 0.2), "digits-10": (0.1, 0.2, 0.4),
                     "digits-4": (0.1, 0.2, 0.4), "mnist1d-4": (0.05, 0.2)}
GLOBAL_WITHIN_PT = 1.0  # the global scope's target: most scalar rounds within 1 point of FedAvg
PARTS = 5  # the table of bytes over time splits each run into this many spans of rounds
WITHIN_PT = 3.0  # the frontier table: best saving within this many points of FedAvg's last-5
# method -> (colour, marker) in the figure
STYLE = {"fedavg": ("black", "*"), "lbgm": ("tab:blue", "o"), "lbgm-m2": ("tab:orange", "s"),
         "lbgm-m3": ("tab:green", "^"), "lbgm-decay": ("tab:red", "v"),
         "lbgm-m3-decay": ("tab:purple", "D"), "fedluar": ("tab:brown", "P"),
         "powersgd": ("tab:gray", "X"), "powersgd+lbgm": ("tab:olive", "h"),
         "lbgm-global-m1": ("tab:cyan", "<"), "lbgm-global-m3": ("tab:pink", ">"),
         "lbgm-global-m10": ("darkgreen", "d")}


def settings() -> dict[str, list[str]]:
    """Setting name -> config overrides, e.g. "mnist1d-10" (MNIST-1D, 10 clients), in the order
    they run: the issue's target setting first."""
    order = ("mnist1d-10", "digits-10", "digits-4", "mnist1d-4")
    return {name: [*DATASETS[name.split("-")[0]], f"clients.count={name.split('-')[1]}"]
            for name in order}


def jobs(seeds: list[int], chosen: list[str],
         only_global: bool = False) -> list[tuple[str, list[str], list[str]]]:
    """(run folder relative to --runs, methods, overrides) of every compare launch of the
    ``chosen`` settings, setting by setting, seed by seed; with ``only_global``, FedAvg and the
    global-scope rows alone."""
    out = []
    for setting, overrides in settings().items():
        if setting not in chosen:
            continue
        for seed in seeds:
            base = [*overrides, f"run.seed={seed}"]
            where = f"{setting}/seed-{seed}"
            if only_global:
                out.append((f"{where}/base", ["fedavg"], base))
            else:
                out.append((f"{where}/base", ["fedavg", "powersgd"], base))
            for t in GLOBAL_THRESHOLDS[setting]:
                out.append((f"{where}/g{t:g}", list(GLOBAL_METHODS),
                            [*base, f"algo.threshold={t}"]))
            if only_global:
                continue
            for r in RECYCLE[setting]:
                out.append((f"{where}/r{r}", ["fedluar"], [*base, f"algo.recycle_layers={r}"]))
            for t in THRESHOLDS[setting]:
                out.append((f"{where}/t{t:g}", list(THRESHOLD_METHODS),
                            [*base, f"algo.threshold={t}"]))
            if setting in WARMUP_SETTINGS:
                out.append((f"{where}/warmup", list(WARMUP_METHODS), [
                    *base, f"algo.threshold={SCHEDULE_T}", f"algo.warmup_rounds={WARMUP}"]))
    return out


def launch(runs: Path, folder: str, methods: list[str], overrides: list[str]) -> str:
    """Run one compare into runs/folder unless every method there has finished."""
    out = runs / folder
    if all((out / m / "summary.json").exists() for m in methods):
        return f"{folder}: kept"
    shutil.rmtree(out, ignore_errors=True)  # an unfinished launch starts over
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "lbgm_mpi", "compare", CONFIG, "--methods", ",".join(methods),
           "--out", str(out), "--quiet", *sets]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, timeout=3600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return f"{folder}: {time.perf_counter() - start:.0f} s"


def run_all(runs: Path, seeds: list[int], chosen: list[str], workers: int,
            only_global: bool = False) -> None:
    todo = jobs(seeds, chosen, only_global)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for i, line in enumerate(pool.map(lambda j: launch(runs, *j), todo), start=1):
            print(f"[{i}/{len(todo)} {time.perf_counter() - start:.0f} s] {line}", flush=True)


# ---- the report -------------------------------------------------------------------------------

def _param(tag: str) -> str:
    """What a launch folder varies: "t=0.05" (threshold; "g0.05": the global scope's),
    "r=1" (recycled layers) or ""."""
    return {"t": f"t={tag[1:]}", "g": f"t={tag[1:]}", "r": f"r={tag[1:]}"}.get(tag[0], "") \
        if tag != "base" else ""


def _fedavg(points: list[dict]) -> dict:
    return next(p for p in points if p["label"] == "fedavg")


def setting_points(runs: Path, setting: str, seeds: list[int]) -> list[dict]:
    """One point per (method, launch folder) of a setting: the seed table's row of the method,
    against the FedAvg run of each seed, with its parameter; only folders every seed has."""
    folders = [runs / setting / f"seed-{s}" for s in seeds]
    tags = sorted(set.intersection(*[{p.name for p in f.iterdir()} for f in folders])
                  - {"warmup"})
    fedavg = [method_run(f / "base" / "fedavg") for f in folders]
    points = []
    for tag in tags:
        group = [method_run(m) for f in folders for m in sorted((f / tag).iterdir())
                 if (m / "summary.json").exists() and m.parent.name + m.name != "basefedavg"]
        shares = {}  # global scope: % of rounds without a dense collective, per seed
        for run in group:
            if run.label in GLOBAL_METHODS:
                shares.setdefault(run.label, []).append(scalar_round_pct(run))
        points += [{**row, "param": _param(tag),
                    **({"scalar_rounds_pct": spread(shares[row["label"]])}
                       if row["label"] in shares else {})}
                   for row in seed_table(fedavg + group, seeds)
                   if tag == "base" or row["label"] != "fedavg"]
    return points


def method_run(folder: Path):
    """A run folder, labelled by its method: the folder's name, as compare names it (compare's
    own run labels name the settings instead: "lbgm(t=0.2, m=3, global)")."""
    run = load_run(folder)
    return dataclasses.replace(run, summary={**run.summary, "label": folder.name})


def scalar_round_pct(run) -> float:
    """Percent of a global-scope run's rounds that sent no dense collective (refreshes == 0:
    only the small record went over the links)."""
    return 100.0 * sum(r["refreshes"] == 0 for r in run.rounds) / len(run.rounds)


def frontier(points: list[dict]) -> list[dict]:
    """Per method: the point with the largest mean uplink saving among those whose mean last-5
    accuracy is within WITHIN_PT points of FedAvg's (None where no point is)."""
    floor = _fedavg(points)["last_acc_pct"].mean - WITHIN_PT
    out = []
    for label in [m for m in STYLE if m != "fedavg" and any(p["label"] == m for p in points)]:
        ok = [p for p in points if p["label"] == label and p["last_acc_pct"].mean >= floor]
        out.append({"label": label, "point": max(ok, key=lambda p: p["uplink_savings_pct"].mean,
                                                 default=None)})
    return out


def _pm(spread, fmt="{:.1f}") -> str:
    return f"{fmt.format(spread.mean)} ± {fmt.format(spread.std)}" if spread else "n/a"


def format_points(setting: str, points: list[dict]) -> str:
    """The table of every point of a setting, then its frontier (text)."""
    fed = _fedavg(points)
    head = (f"{'method':<14} {'param':<7} {'best acc (%)':>13} {f'last-{LAST} acc (%)':>15} "
            f"{'uplink':>9} {'saved (%)':>12} {'acc @ equal bytes':>18} {'FedAvg @ equal':>15}")
    lines = [f"== {setting}: FedAvg last-{LAST} {_pm(fed['last_acc_pct'])} %, best "
             f"{_pm(fed['best_acc_pct'])} %, uplink {human_bytes(fed['uplink_bytes'].mean)}",
             head, "-" * len(head)]
    for p in sorted(points, key=lambda p: (list(STYLE).index(p["label"]), p["param"])):
        lines.append(f"{p['label']:<14} {p['param']:<7} {_pm(p['best_acc_pct']):>13} "
                     f"{_pm(p['last_acc_pct']):>15} {human_bytes(p['uplink_bytes'].mean):>9} "
                     f"{_pm(p['uplink_savings_pct']):>12} {_pm(p['acc_at_equal_bytes_pct']):>18} "
                     f"{_pm(p['fedavg_at_equal_bytes_pct']):>15}")
    lines.append(f"-- best uplink saving within {WITHIN_PT:g} points of FedAvg's last-{LAST} "
                 "accuracy (mean over seeds):")
    for f in frontier(points):
        p = f["point"]
        lines.append(f"   {f['label']:<14} " + ("none" if p is None else
                     f"{p['param']:<7} saved {_pm(p['uplink_savings_pct'])} %, last-{LAST} "
                     f"{_pm(p['last_acc_pct'])} %"))
    return "\n".join(lines)


def global_summary(points: list[dict], reference: dict | None = None) -> dict:
    """The global scope against its target: every global point's share of rounds without a
    dense collective and its last-5 accuracy against FedAvg's (``reference``, the FedAvg runs
    of the same launch, where given; else the points' FedAvg), and the point with the largest
    share among those within GLOBAL_WITHIN_PT points of FedAvg's last-5 accuracy (None if
    none is)."""
    fed = (reference or _fedavg(points))["last_acc_pct"].mean
    mine = sorted((p for p in points if p["label"] in GLOBAL_METHODS),
                  key=lambda p: (GLOBAL_METHODS.index(p["label"]), float(p["param"][2:])))
    ok = [p for p in mine if p["last_acc_pct"].mean >= fed - GLOBAL_WITHIN_PT]
    return {"fedavg_last_acc_pct": fed, "within_pt": GLOBAL_WITHIN_PT, "points": mine,
            "best": max(ok, key=lambda p: p["scalar_rounds_pct"].mean, default=None)}


def format_global(setting: str, points: list[dict], reference: dict | None = None) -> str:
    """The global scope's rows of a setting: rounds without a dense collective and accuracy."""
    g = global_summary(points, reference)
    if not g["points"]:
        return ""
    head = (f"{'method':<16} {'param':<7} {'scalar rounds (%)':>18} {f'last-{LAST} acc (%)':>15} "
            f"{'vs FedAvg (pt)':>15} {'uplink saved (%)':>17}")
    lines = [f"== {setting}, global scope: rounds with no dense collective (refreshes == 0); "
             f"FedAvg last-{LAST} {g['fedavg_last_acc_pct']:.1f} %", head, "-" * len(head)]
    for p in g["points"]:
        lines.append(f"{p['label']:<16} {p['param']:<7} {_pm(p['scalar_rounds_pct']):>18} "
                     f"{_pm(p['last_acc_pct']):>15} "
                     f"{p['last_acc_pct'].mean - g['fedavg_last_acc_pct']:>+15.1f} "
                     f"{_pm(p['uplink_savings_pct']):>17}")
    b = g["best"]
    lines.append(f"-- most scalar rounds within {GLOBAL_WITHIN_PT:g} point of FedAvg's last-{LAST}"
                 " accuracy (mean over seeds): " + ("none" if b is None else
                 f"{b['label']} {b['param']}: {_pm(b['scalar_rounds_pct'])} % of rounds, last-"
                 f"{LAST} {_pm(b['last_acc_pct'])} %"))
    return "\n".join(lines)


def plot(all_points: dict[str, list[dict]], out_png: Path) -> Path:
    """Last-5 accuracy against uplink bytes, one panel per setting and one curve per method
    (its thresholds or recycled-layer counts), mean over seeds with standard-deviation bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    for ax, (setting, points) in zip(axes.flat, all_points.items()):
        for label, (colour, marker) in STYLE.items():
            mine = sorted((p for p in points if p["label"] == label),
                          key=lambda p: p["uplink_bytes"].mean)
            if not mine:
                continue
            ax.errorbar([p["uplink_bytes"].mean for p in mine],
                        [p["last_acc_pct"].mean for p in mine],
                        xerr=[p["uplink_bytes"].std for p in mine],
                        yerr=[p["last_acc_pct"].std for p in mine], color=colour, marker=marker,
                        markersize=11 if label == "fedavg" else 6, capsize=2, label=label)
        ax.axhline(_fedavg(points)["last_acc_pct"].mean - WITHIN_PT, color="gray", linestyle=":",
                   linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labels within a decade
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(setting)
        ax.set_xlabel("uplink bytes in all (log scale)")
        ax.set_ylabel(f"last-{LAST} test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    fig.suptitle(f"Accuracy against uplink: mean over seeds, bars one standard deviation; dotted: "
                 f"FedAvg - {WITHIN_PT:g} points")
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the legend below the panels
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=130)
    plt.close(fig)
    return out_png


def bytes_over_time(runs: Path, setting: str, seeds: list[int]) -> list[dict]:
    """Per method at threshold SCHEDULE_T (and with warm-up): the uplink of each of PARTS equal
    spans of rounds as a share of FedAvg's (dense) uplink in that span, in percent, mean and
    spread over seeds; methods with a missing run are left out."""
    rows = []
    cases = [(f"t{SCHEDULE_T:g}", m, m) for m in THRESHOLD_METHODS if m != "powersgd+lbgm"]
    cases += [("warmup", m, f"{m}, {WARMUP} warm-up rounds") for m in WARMUP_METHODS]
    cases += [(f"g{SCHEDULE_T:g}", m, m) for m in GLOBAL_METHODS]
    for tag, method, name in cases:
        folders = [runs / setting / f"seed-{s}" / tag / method for s in seeds]
        if not all((f / "summary.json").exists() for f in folders):
            continue
        shares = []
        for f in folders:
            rounds = method_run(f).rounds
            spans = [rounds[i * len(rounds) // PARTS:(i + 1) * len(rounds) // PARTS]
                     for i in range(PARTS)]
            shares.append([100.0 * sum(r["uplink_bytes"] for r in span)
                           / sum(r["dense_uplink_bytes"] for r in span) for span in spans])
        rows.append({"label": name, "shares": [spread(list(col)) for col in zip(*shares)]})
    return rows


def format_bytes_over_time(setting: str, rows: list[dict]) -> str:
    lines = [f"== {setting}: uplink per fifth of the rounds, % of FedAvg's, at threshold "
             f"{SCHEDULE_T:g}"]
    lines += [f"   {r['label']:<30} " + "  ".join(f"{_pm(x):>11}" for x in r["shares"])
              for r in rows]
    return "\n".join(lines)


def _from_json(point: dict) -> dict:
    """A point of a results JSON with its {"mean", "std", "n"} entries as Spread again."""
    return {k: Spread(**v) if isinstance(v, dict) and set(v) == {"mean", "std", "n"} else v
            for k, v in point.items()}


def merged(old: dict, all_points: dict, over_time: dict):
    """The points (and bytes-over-time rows) of the existing JSON ``old``, those of the methods
    rerun now replaced by the new ones; FedAvg's stay the JSON's. Returns (points, rows, notes,
    references): notes on any setting whose rerun FedAvg differs from the JSON's, and for those
    the rerun FedAvg point, against which the new rows are compared (their savings and
    equal-bytes figures already are)."""
    points, times, notes, refs = {}, {}, [], {}
    for setting in [s for s in settings() if s in old["settings"] or s in all_points]:
        before = [_from_json(p) for p in old["settings"].get(setting, {}).get("points", [])]
        new = all_points.get(setting, [])
        rerun = {p["label"] for p in new} - {"fedavg"}
        if before and new:
            a, b = _fedavg(before), _fedavg(new)
            for key in ("best_acc_pct", "last_acc_pct", "uplink_bytes"):
                if abs(a[key].mean - b[key].mean) > 1e-9 * max(1.0, abs(a[key].mean)):
                    notes.append(f"{setting}: FedAvg's {key} rerun {b[key].mean:.6g}, in the "
                                 f"JSON {a[key].mean:.6g} (the new rows compare with the rerun)")
                    refs[setting] = b
        points[setting] = [p for p in before if p["label"] not in rerun] \
            + [p for p in new if p["label"] != "fedavg" or not before]
        old_times = [{"label": r["label"], "shares": [Spread(**x) for x in r["shares"]]}
                     for r in old["settings"].get(setting, {}).get("uplink_share_by_fifth", [])]
        fresh = over_time.get(setting, [])
        labels = {r["label"] for r in fresh}
        times[setting] = [r for r in old_times if r["label"] not in labels] + fresh
    return points, times, notes, refs


def report(runs: Path, seeds: list[int], out: Path, merge: bool = False) -> None:
    """Print and write the tables (text, JSON) and the figure from the finished runs (with
    ``merge``, joined to the points of the existing OUT.json)."""
    all_points = {s: setting_points(runs, s, seeds) for s in settings()
                  if all((runs / s / f"seed-{x}" / "base" / "fedavg" / "summary.json").exists()
                         for x in seeds)}
    over_time = {s: bytes_over_time(runs, s, seeds) for s in all_points}
    command = " ".join(["python"] + sys.argv)
    seconds = sum(load_run(m).summary["total_time_s"] for m in runs.glob("*/seed-*/*/*")
                  if (m / "summary.json").exists())
    history, notes, refs = [], [], {}
    if merge and Path(f"{out}.json").exists():
        old = json.loads(Path(f"{out}.json").read_text())
        all_points, over_time, notes, refs = merged(old, all_points, over_time)
        history = old.get("history", [old["command"]])
        seconds += old["training_seconds"]
    text = "\n\n".join([format_points(s, p) for s, p in all_points.items()]
                       + [format_bytes_over_time(s, r) for s, r in over_time.items()]
                       + [t for t in (format_global(s, p, refs.get(s))
                                      for s, p in all_points.items()) if t]
                       + notes)
    print(text)
    record = {"command": command, "history": history + [command], "seeds": seeds,
              "thresholds": THRESHOLDS, "global_methods": list(GLOBAL_METHODS),
              "global_thresholds": GLOBAL_THRESHOLDS,
              "training_seconds": seconds, "notes": notes,
              "settings": {s: {"overrides": settings()[s], "points": rows_to_json(p),
                               "frontier": [{"label": f["label"], "point": f["point"] and
                                             rows_to_json([f["point"]])[0]}
                                            for f in frontier(p)],
                               "global": _global_json(p, refs.get(s)),
                               "uplink_share_by_fifth": [
                                   {"label": r["label"],
                                    "shares": [x.to_dict() for x in r["shares"]]}
                                   for r in over_time[s]]}
                           for s, p in all_points.items()}}
    write_record(Path(f"{out}.json"), record, text=f"{command}\n{text}")
    print(f"wrote {out}.txt, {out}.json, {plot(all_points, Path(f'{out}.png'))}")


def _global_json(points: list[dict], reference: dict | None = None) -> dict | None:
    g = global_summary(points, reference)
    if not g["points"]:
        return None
    return {"fedavg_last_acc_pct": g["fedavg_last_acc_pct"], "within_pt": g["within_pt"],
            "reference": "rerun" if reference else "points",
            "best": g["best"] and rows_to_json([g["best"]])[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2, help="compare launches at once")
    p.add_argument("--runs", default="runs/frontier", help="run folders (kept between calls)")
    p.add_argument("--out", default="benchmarks/results/frontier", help="prefix of the results")
    p.add_argument("--stage", choices=("all", "runs", "report"), default="all")
    p.add_argument("--settings", default=",".join(settings()),
                   help="which settings to run (the report shows every finished one)")
    p.add_argument("--only-global", action="store_true",
                   help="run only FedAvg and the global-scope rows (lbgm-global-m1/m3/m10)")
    p.add_argument("--merge", action="store_true",
                   help="keep the existing OUT.json's points of the methods not rerun")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs)
    if args.stage in ("all", "runs"):
        run_all(runs, seeds, args.settings.split(","), args.jobs, args.only_global)
    if args.stage in ("all", "report"):
        report(runs, seeds, Path(args.out), args.merge)


if __name__ == "__main__":
    main()
