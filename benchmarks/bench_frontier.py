"""The accuracy-bytes frontier of LBGM, its variants, FedLUAR and PowerSGD, over seeds.

    nice -n 10 python benchmarks/bench_frontier.py [--seeds 0,1,2] [--jobs 2]
        [--runs runs/frontier] [--out benchmarks/results/frontier] [--stage all|runs|report]

Four settings, each the project's default job (configs/default.toml: MLP or CNN, 2 local epochs
of minibatch SGD at lr 0.1, 50 rounds, 3-class shards) with 10 or 4 clients:
  digits:   MLP, server momentum 0.5;
  mnist1d:  the `cnn` model, server momentum 0.9.
Rounds and learning rates are those of the default job for every method; nothing is tuned per
method. Per setting and seed it runs `lbgm-mpi compare` (one process, one rank):
  - at each threshold of THRESHOLDS: lbgm, lbgm-m2, lbgm-m3, lbgm-decay, lbgm-m3-decay and
    powersgd+lbgm (PowerSGD rank 4, the config default);
  - fedavg, powersgd, and fedluar for each recycled-layer count of RECYCLE (the MLP has 2 weight
    layers, so 1 at most; the CNN 3).
Finished runs are kept in --runs and skipped when the script runs again. The report stage prints
the table (mean and sample standard deviation over seeds), writes JSON and text under --out, and
draws last-5 accuracy against uplink bytes, one curve per method (benchmarks/results/frontier*).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/default.toml"
DATASETS = {"digits": [],
            "mnist1d": ["data.name=mnist1d", "model.name=cnn", "server.momentum=0.9"]}
CLIENTS = (10, 4)
THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.4)
THRESHOLD_METHODS = ("lbgm", "lbgm-m2", "lbgm-m3", "lbgm-decay", "lbgm-m3-decay", "powersgd+lbgm")
RECYCLE = {"digits": (1,), "mnist1d": (1, 2)}


def settings() -> dict[str, list[str]]:
    """Setting name -> config overrides, e.g. "mnist1d-10" (MNIST-1D, 10 clients)."""
    return {f"{name}-{k}": [*overrides, f"clients.count={k}"]
            for name, overrides in DATASETS.items() for k in CLIENTS}


def jobs(seeds: list[int]) -> list[tuple[str, list[str], list[str]]]:
    """(run folder relative to --runs, methods, overrides) of every compare launch, seed-major
    (a partial run has every setting for the first seeds)."""
    out = []
    for seed in seeds:
        for setting, overrides in settings().items():
            base = [*overrides, f"run.seed={seed}"]
            where = f"{setting}/seed-{seed}"
            out.append((f"{where}/base", ["fedavg", "powersgd"], base))
            for r in RECYCLE[setting.split("-")[0]]:
                out.append((f"{where}/r{r}", ["fedluar"], [*base, f"algo.recycle_layers={r}"]))
            for t in THRESHOLDS:
                out.append((f"{where}/t{t:g}", list(THRESHOLD_METHODS),
                            [*base, f"algo.threshold={t}"]))
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


def run_all(runs: Path, seeds: list[int], workers: int) -> None:
    todo = jobs(seeds)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for i, line in enumerate(pool.map(lambda j: launch(runs, *j), todo), start=1):
            print(f"[{i}/{len(todo)} {time.perf_counter() - start:.0f} s] {line}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2, help="compare launches at once")
    p.add_argument("--runs", default="runs/frontier", help="run folders (kept between calls)")
    p.add_argument("--out", default="benchmarks/results/frontier", help="prefix of the results")
    p.add_argument("--stage", choices=("all", "runs", "report"), default="all")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs)
    if args.stage in ("all", "runs"):
        run_all(runs, seeds, args.jobs)


if __name__ == "__main__":
    main()
