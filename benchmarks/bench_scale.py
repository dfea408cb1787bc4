"""Scale: rounds per second, seconds per phase, MPI bytes and peak memory of FedAvg and LBGM
against the number of clients K and the model size d.

    python benchmarks/bench_scale.py                       # CPU sweep: MLPs on synthetic data
    python benchmarks/bench_scale.py --preset twin         # the paper's ResNet-18 job, CPU-sized
    python benchmarks/bench_scale.py --preset paper        # the paper's scale, on a GPU node
    python benchmarks/bench_scale.py --preset memory       # bank memory per node: P, storage, dtype
Options: --ranks P1,P2, --clients K1,K2, --hidden H1,H2 (MLP widths, which set d), --banks
replicated,shared, --dtypes float32,bfloat16, --rounds R, --methods fedavg,lbgm, --set
section.key=value (repeatable), --data-root DIR, --out FILE.json. FedAvg has no bank: it runs
once per (P, K, d).

Every case is one `lbgm-mpi train` run under mpirun; the table reads its metrics.jsonl and
summary.json. `lbgm own s` is what LBGM adds to a round and FedAvg does not have: the decision,
the bank writes and the part of the aggregation beyond FedAvg's local sum, on the root rank;
`own/train` divides it by the same run's local-training seconds. Rounds per second use the median
round. The `twin` and `paper` presets run configs/paper/cifar10-resnet18-noniid.toml (100 clients,
FedSGD, one scalar per tensor, threshold 0.1) on CIFAR-10-format files of random images written
on the fly when no --data-root is given: their accuracy means nothing, only time, bytes and memory.
"""

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from record import write_record  # noqa: E402  (benchmarks/, beside this script)

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = "configs/paper/cifar10-resnet18-noniid.toml"
PHASES = ("train_s", "decide_s", "comm_s", "bank_s", "aggregate_s", "eval_s", "checkpoint_s")
PRESETS = {
    # K and d on the CPU: an MLP on the synthetic set, every client refreshing in round 1
    "cpu": {"config": "configs/default.toml", "ranks": [2], "clients": [8, 32, 100],
            "hidden": [4000, 40000], "rounds": 4, "fake_cifar": None,
            "sets": ["data.name=synthetic", "data.partition=iid", "model.name=mlp",
                     "clients.update=fedsgd", "clients.lr=0.05", "algo.threshold=0.1",
                     "algo.granularity=layer", "run.check_every=0"]},
    # the paper's job at full model size on 4 CPU ranks: tiny shards, a node-shared bank
    "twin": {"config": PAPER_CONFIG, "ranks": [4], "clients": [100], "hidden": [None],
             "rounds": 2, "fake_cifar": (1000, 100), "banks": ["shared"],
             "sets": ["system.device=cpu", "run.check_every=0"]},
    # what the bank costs a node: ranks per node x storage x dtype, 2M parameters, K = 32; and
    # the star, where only the server holds every client's rows
    "memory": {"config": "configs/default.toml", "ranks": [1, 2, 4], "clients": [32],
               "hidden": [2535], "rounds": 2, "fake_cifar": None, "methods": "lbgm",
               "banks": ["replicated", "shared", "star"], "dtypes": ["float32", "bfloat16"],
               "sets": ["data.name=synthetic", "data.synthetic_samples=320", "model.name=mlp",
                        "data.synthetic_features=784",
                        "data.partition=iid", "algo.threshold=0", "clients.lr=0.01",
                        "run.check_every=0"]},
    # the paper's job at the paper's scale on one GPU node (4 ranks sharing one GPU)
    "paper": {"config": PAPER_CONFIG, "ranks": [4], "clients": [100], "hidden": [None],
              "rounds": 5, "fake_cifar": (50000, 10000),
              "methods": "fedavg,lbgm,lbgm-global",
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
    """The launch prefix for ``ranks`` ranks (mpirun from this Python's venv, else the PATH)."""
    found = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep
                         + os.environ.get("PATH", ""))
    if found is None:
        sys.exit("bench_scale: no mpirun on the PATH (source jobs/setup-env.sh)")
    return [found, "-n", str(ranks), "--oversubscribe"]


@dataclass(frozen=True)
class Case:
    """One run of the sweep."""

    method: str
    ranks: int
    clients: int
    hidden: int | None
    bank: str
    dtype: str

    @property
    def name(self) -> str:
        return "-".join(str(v) for v in dataclasses.astuple(self))


# methods with no per-client bank, and their config: FedAvg, LBGM on the aggregate
BANKLESS = {"fedavg": ["algo.name=fedavg"],
            "lbgm-global": ["algo.name=lbgm", "algo.scope=global", "algo.lookback=3"]}


def cases(args, preset) -> list[Case]:
    """Every combination the options ask for; a bankless method once per (P, K, d)."""
    out = []
    for method, ranks, hidden, clients, bank, dtype in itertools.product(
            args.methods, args.ranks, args.hidden, args.clients, args.banks, args.dtypes):
        case = Case(method, ranks, clients, hidden, bank, dtype)
        if method in BANKLESS:
            case = dataclasses.replace(case, bank="-", dtype="-")
        if case not in out:
            out.append(case)
    return out


def run_case(preset: dict, args, case: Case, out: Path) -> dict:
    """Train one case; return its row of the table."""
    sets = [*preset["sets"], *args.sets, f"clients.count={case.clients}",
            f"run.rounds={args.rounds}", f"run.eval_every={args.rounds}"]
    if case.method in BANKLESS:
        sets += BANKLESS[case.method]
    else:
        # "star": a bank per rank in the star topology (the server's holds every client)
        sets += [f"algo.name={case.method}", f"system.bank_dtype={case.dtype}",
                 *(["system.bank=replicated", "system.topology=star"] if case.bank == "star"
                   else [f"system.bank={case.bank}"])]
    if case.hidden is not None:
        sets.append(f"model.hidden={case.hidden}")
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    cmd = [*mpirun(case.ranks), sys.executable, "-m", "lbgm_mpi", "train", preset["config"],
           "--out", str(out), "--quiet", *(a for s in sets for a in ("--set", s))]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=args.timeout,
                   stdout=subprocess.DEVNULL)
    return {**dataclasses.asdict(case), **summarize(out)}


def summarize(folder: Path) -> dict:
    """The measured part of the table's row for one run folder."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((folder / "summary.json").read_text())
    mean = lambda key: statistics.fmean(r[key] for r in rows)
    return {"num_params": summary["num_params"], "rounds": len(rows),
            "rounds_per_s": 1.0 / statistics.median(r["round_s"] for r in rows),
            "phases_s": {key: mean(key) for key in PHASES}, "round_s": mean("round_s"),
            "mpi_bytes": summary["total_mpi_bytes"],
            "max_round_mpi_bytes": max(r["mpi_bytes"] for r in rows),
            "refreshes": summary["total_refreshes"], "scalars": summary["total_scalars"],
            "peak_host_bytes": max(summary["peak_host_bytes_by_rank"]),
            "peak_host_bytes_by_rank": summary["peak_host_bytes_by_rank"],
            # the busiest rank but the root (the star's server), or the root on one rank
            "peak_client_rank_bytes": max(summary["peak_host_bytes_by_rank"][1:]
                                          or summary["peak_host_bytes_by_rank"]),
            "bank_bytes_by_rank": summary.get("bank_bytes_by_rank"),
            "shared_touched_bytes": max(summary["shared_host_bytes_by_rank"]),
            "peak_device_bytes": max(summary["peak_device_bytes_by_rank"]),
            "bank_bytes_per_node": summary["bank_bytes_per_node"]}


def add_overheads(rows: list[dict]) -> None:
    """LBGM's own seconds per round (beyond FedAvg's local sum) and their share of training."""
    fedavg = {(r["ranks"], r["clients"], r["num_params"]): r for r in rows
              if r["method"] == "fedavg"}
    for row in rows:
        phases = row["phases_s"]
        base = fedavg.get((row["ranks"], row["clients"], row["num_params"]))
        extra = phases["aggregate_s"] - (base["phases_s"]["aggregate_s"] if base else 0.0)
        own = phases["decide_s"] + phases["bank_s"] + max(0.0, extra)
        row["lbgm_own_s"] = own if row["method"] != "fedavg" else None
        row["own_over_train"] = own / phases["train_s"] if row["method"] != "fedavg" else None


def print_table(rows: list[dict]) -> None:
    head = (f"{'method':<7} {'P':>2} {'K':>4} {'d':>10} {'bank':>10} {'dtype':>8} {'rounds/s':>9} "
            f"{'train s':>8} {'decide s':>9} {'comm s':>8} {'bank s':>8} {'aggr s':>8} "
            f"{'lbgm own s':>10} {'own/train':>9} {'MPI MB':>9} {'max round MB':>12} "
            f"{'peak host MB':>12} {'rank>0 peak MB':>14} {'shm touched MB':>14} "
            f"{'peak dev MB':>11} "
            f"{'bank MB/node':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        p = r["phases_s"]
        own = "-" if r["lbgm_own_s"] is None else f"{r['lbgm_own_s']:.4f}"
        share = "-" if r["own_over_train"] is None else f"{100 * r['own_over_train']:.1f}%"
        print(f"{r['method']:<7} {r['ranks']:>2} {r['clients']:>4} {r['num_params']:>10,} "
              f"{r['bank']:>10} {r['dtype']:>8} {r['rounds_per_s']:>9.3f} {p['train_s']:>8.3f} "
              f"{p['decide_s']:>9.4f} {p['comm_s']:>8.3f} {p['bank_s']:>8.4f} "
              f"{p['aggregate_s']:>8.4f} {own:>10} {share:>9} {r['mpi_bytes'] / 1e6:>9.1f} "
              f"{r['max_round_mpi_bytes'] / 1e6:>12.1f} {r['peak_host_bytes'] / 2**20:>12.0f} "
              f"{r['peak_client_rank_bytes'] / 2**20:>14.0f} "
              f"{r['shared_touched_bytes'] / 2**20:>14.0f} "
              f"{r['peak_device_bytes'] / 2**20:>11.0f} "
              f"{r['bank_bytes_per_node'] / 2**20:>12.0f}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--ranks", help="comma-separated rank counts")
    p.add_argument("--clients", help="comma-separated K values")
    p.add_argument("--hidden", help="comma-separated MLP widths (cpu and memory presets)")
    p.add_argument("--banks", help="comma-separated: replicated, shared, star (a bank per rank "
                   "in the star topology)")
    p.add_argument("--dtypes", help="comma-separated: float32, bfloat16")
    p.add_argument("--rounds", type=int)
    p.add_argument("--methods", help="comma-separated: fedavg, lbgm, lbgm-global (m = 3) "
                   "(default fedavg,lbgm; the paper preset adds lbgm-global)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--data-root", help="CIFAR-10 binary files (twin, paper); default: random ones")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--out", help="JSON file (default benchmarks/results/scale-<preset>.json)")
    args = p.parse_args()
    preset = PRESETS[args.preset]
    ints = lambda text: [int(v) for v in text.split(",")]
    args.ranks = ints(args.ranks) if args.ranks else preset["ranks"]
    args.clients = ints(args.clients) if args.clients else preset["clients"]
    args.hidden = ints(args.hidden) if args.hidden else preset["hidden"]
    args.banks = args.banks.split(",") if args.banks else preset.get("banks", ["replicated"])
    args.dtypes = args.dtypes.split(",") if args.dtypes else preset.get("dtypes", ["float32"])
    args.methods = (args.methods or preset.get("methods", "fedavg,lbgm")).split(",")
    args.rounds = args.rounds or preset["rounds"]
    return args, preset


def main() -> None:
    args, preset = parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if preset["fake_cifar"] and not args.data_root:
            args.data_root = str(write_fake_cifar10(Path(tmp) / "cifar10", *preset["fake_cifar"]))
        for case in cases(args, preset):
            print(f"bench_scale: {case} ...", flush=True)
            rows.append(run_case(preset, args, case, Path(tmp) / case.name))
    add_overheads(rows)
    print_table(rows)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"scale-{args.preset}.json")
    print(f"wrote {write_record(out, {'preset': args.preset, 'rows': rows})}")


if __name__ == "__main__":
    main()
