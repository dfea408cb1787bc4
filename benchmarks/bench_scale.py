"""Scale: rounds per second, seconds per phase, MPI bytes and peak memory of FedAvg and LBGM
against the number of clients K and the model size d.

    python benchmarks/bench_scale.py                       # CPU sweep: MLPs on synthetic data
    python benchmarks/bench_scale.py --preset twin         # the paper's ResNet-18 job, CPU-sized
    python benchmarks/bench_scale.py --preset paper        # the paper's scale, on a GPU node
Options: --ranks P, --clients K1,K2, --hidden H1,H2 (MLP widths, which set d), --rounds R,
--methods fedavg,lbgm, --set section.key=value (repeatable), --data-root DIR, --out FILE.json.

Every case is one `lbgm-mpi train` run under mpirun; the table reads its metrics.jsonl and
summary.json. `lbgm own s` is what LBGM adds to a round and FedAvg does not have: the decision,
the bank writes and the part of the aggregation beyond FedAvg's local sum, on the root rank;
`own/train` divides it by the same run's local-training seconds. Rounds per second use the median
round. The `twin` and `paper` presets run configs/paper/cifar10-resnet18-noniid.toml (100 clients,
FedSGD, one scalar per tensor, threshold 0.1) on CIFAR-10-format files of random images written
on the fly when no --data-root is given: their accuracy means nothing, only time, bytes and memory.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = "configs/paper/cifar10-resnet18-noniid.toml"
PHASES = ("train_s", "decide_s", "comm_s", "bank_s", "aggregate_s", "eval_s", "checkpoint_s")
PRESETS = {
    # K and d on the CPU: an MLP on the synthetic set, every client refreshing in round 1
    "cpu": {"config": "configs/default.toml", "ranks": 2, "clients": [8, 32, 100],
            "hidden": [4000, 40000], "rounds": 4, "fake_cifar": None,
            "sets": ["data.name=synthetic", "data.partition=iid", "model.name=mlp",
                     "clients.update=fedsgd", "clients.lr=0.05", "algo.threshold=0.1",
                     "algo.granularity=layer", "run.check_every=0"]},
    # the paper's job at full model size on 4 CPU ranks: tiny shards, a node-shared bank
    "twin": {"config": PAPER_CONFIG, "ranks": 4, "clients": [100], "hidden": [None],
             "rounds": 2, "fake_cifar": (1000, 100),
             "sets": ["system.device=cpu", "system.bank=shared", "run.check_every=0"]},
    # the paper's job at the paper's scale on one GPU node (4 ranks sharing one GPU)
    "paper": {"config": PAPER_CONFIG, "ranks": 4, "clients": [100], "hidden": [None],
              "rounds": 5, "fake_cifar": (50000, 10000),
              "sets": ["system.device=cuda", "system.allow_gpu_sharing=true",
                       "system.kernels=auto", "run.check_every=0"]},
}


def write_fake_cifar10(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10 binary files (5 training batches and a test batch) of random images and
    labels in ``folder/cifar-10-batches-bin``; returns ``folder``."""
    root = folder / "cifar-10-batches-bin"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(path: Path, n: int) -> None:
        records = rng.integers(0, 256, (n, 1 + 3 * 32 * 32), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, n)
        path.write_bytes(records.tobytes())

    for i in range(1, 6):
        batch(root / f"data_batch_{i}.bin", n_train // 5 + (i <= n_train % 5))
    batch(root / "test_batch.bin", n_test)
    return folder


def mpirun(ranks: int) -> list[str]:
    found = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep
                         + os.environ.get("PATH", ""))
    if found is None:
        sys.exit("bench_scale: no mpirun on the PATH (source jobs/setup-env.sh)")
    return [found, "-n", str(ranks), "--oversubscribe"]


def run_case(preset: dict, args, method: str, clients: int, hidden, out: Path) -> dict:
    """Train one case; return its row of the table."""
    sets = [*preset["sets"], *args.sets, f"algo.name={method}", f"clients.count={clients}",
            f"run.rounds={args.rounds}", f"run.eval_every={args.rounds}"]
    if hidden is not None:
        sets.append(f"model.hidden={hidden}")
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    cmd = [*mpirun(args.ranks), sys.executable, "-m", "lbgm_mpi", "train", preset["config"],
           "--out", str(out), "--quiet", *(a for s in sets for a in ("--set", s))]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=args.timeout,
                   stdout=subprocess.DEVNULL)
    return summarize(out, method, clients)


def summarize(folder: Path, method: str, clients: int) -> dict:
    """The table's row for one run folder."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((folder / "summary.json").read_text())
    mean = lambda key: statistics.fmean(r[key] for r in rows)
    return {"method": method, "clients": clients, "num_params": summary["num_params"],
            "rounds": len(rows), "rounds_per_s": 1.0 / statistics.median(r["round_s"]
                                                                     for r in rows),
            "phases_s": {key: mean(key) for key in PHASES}, "round_s": mean("round_s"),
            "mpi_bytes": summary["total_mpi_bytes"],
            "max_round_mpi_bytes": max(r["mpi_bytes"] for r in rows),
            "refreshes": summary["total_refreshes"], "scalars": summary["total_scalars"],
            "peak_host_bytes": max(summary["peak_host_bytes_by_rank"]),
            "peak_device_bytes": max(summary["peak_device_bytes_by_rank"]),
            "bank": summary["bank"], "bank_bytes_per_node": summary["bank_bytes_per_node"]}


def add_overheads(rows: list[dict]) -> None:
    """LBGM's own seconds per round (beyond FedAvg's local sum) and their share of training."""
    fedavg = {(r["clients"], r["num_params"]): r for r in rows if r["method"] == "fedavg"}
    for row in rows:
        phases = row["phases_s"]
        base = fedavg.get((row["clients"], row["num_params"]))
        extra = phases["aggregate_s"] - (base["phases_s"]["aggregate_s"] if base else 0.0)
        own = phases["decide_s"] + phases["bank_s"] + max(0.0, extra)
        row["lbgm_own_s"] = own if row["method"] != "fedavg" else None
        row["own_over_train"] = own / phases["train_s"] if row["method"] != "fedavg" else None


def print_table(rows: list[dict]) -> None:
    head = (f"{'method':<7} {'K':>4} {'d':>10} {'rounds/s':>9} {'train s':>8} {'decide s':>9} "
            f"{'comm s':>8} {'bank s':>8} {'aggr s':>8} {'lbgm own s':>10} {'own/train':>9} "
            f"{'MPI MB':>9} {'max round MB':>12} {'peak host MB':>12} {'peak dev MB':>11} "
            f"{'bank MB/node':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        p = r["phases_s"]
        own = "-" if r["lbgm_own_s"] is None else f"{r['lbgm_own_s']:.4f}"
        share = "-" if r["own_over_train"] is None else f"{100 * r['own_over_train']:.1f}%"
        print(f"{r['method']:<7} {r['clients']:>4} {r['num_params']:>10,} "
              f"{r['rounds_per_s']:>9.3f} {p['train_s']:>8.3f} {p['decide_s']:>9.4f} "
              f"{p['comm_s']:>8.3f} {p['bank_s']:>8.4f} {p['aggregate_s']:>8.4f} {own:>10} "
              f"{share:>9} {r['mpi_bytes'] / 1e6:>9.1f} {r['max_round_mpi_bytes'] / 1e6:>12.1f} "
              f"{r['peak_host_bytes'] / 2**20:>12.0f} {r['peak_device_bytes'] / 2**20:>11.0f} "
              f"{r['bank_bytes_per_node'] / 2**20:>12.0f}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--ranks", type=int)
    p.add_argument("--clients", help="comma-separated K values")
    p.add_argument("--hidden", help="comma-separated MLP widths (cpu preset)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--methods", default="fedavg,lbgm")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--data-root", help="CIFAR-10 binary files (twin, paper); default: random ones")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--out", help="JSON file (default benchmarks/results/scale-<preset>.json)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    preset = PRESETS[args.preset]
    args.ranks = args.ranks or preset["ranks"]
    args.rounds = args.rounds or preset["rounds"]
    clients = [int(k) for k in args.clients.split(",")] if args.clients else preset["clients"]
    hidden = [int(h) for h in args.hidden.split(",")] if args.hidden else preset["hidden"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if preset["fake_cifar"] and not args.data_root:
            args.data_root = str(write_fake_cifar10(Path(tmp) / "cifar10", *preset["fake_cifar"]))
        for h in hidden:
            for k in clients:
                for method in args.methods.split(","):
                    print(f"bench_scale: {method} K={k} hidden={h} ...", flush=True)
                    rows.append(run_case(preset, args, method, k, h,
                                         Path(tmp) / f"{method}-{k}-{h}"))
    add_overheads(rows)
    print_table(rows)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"scale-{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "preset": args.preset,
                               "ranks": args.ranks, "rows": rows,
                               "machine": {"cpus": os.cpu_count(),
                                           "platform": platform.platform()}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
