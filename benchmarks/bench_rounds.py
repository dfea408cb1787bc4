"""LBGM vs FedAvg on the default job at 1, 2 and 4 ranks: accuracy, bytes, round time.

    python benchmarks/bench_rounds.py [--ranks 1,2,4] [--config configs/default.toml]
                                      [--out benchmarks/results/rounds.json] [--set k=v ...]

Each rank count runs `lbgm-mpi compare --methods fedavg,lbgm` under mpirun; the table compares
ratios measured within one run (LBGM / FedAvg), which is what survives a noisy machine.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from record import write_record  # noqa: E402  (benchmarks/, beside this script)

REPO = Path(__file__).resolve().parents[1]


def run_compare(np_: int, config: str, overrides: list[str], out: Path) -> None:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep
                          + env.get("PATH", ""))
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [mpirun, "-n", str(np_), "--oversubscribe", sys.executable, "-m", "lbgm_mpi",
           "compare", config, "--methods", "fedavg,lbgm", "--out", str(out), "--quiet", *sets]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, timeout=1800, stdout=subprocess.DEVNULL)


def summarize(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    times = sorted(r["round_s"] for r in rows)
    return {"best_acc": summary["best_acc"], "final_acc": summary["final_acc"],
            "uplink_bytes": summary["total_uplink_bytes"], "mpi_bytes": summary["total_mpi_bytes"],
            "median_round_s": times[len(times) // 2],
            "median_comm_s": sorted(r["comm_s"] for r in rows)[len(rows) // 2]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2,4")
    p.add_argument("--config", default="configs/default.toml")
    p.add_argument("--out", default="benchmarks/results/rounds.json")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for np_ in [int(x) for x in args.ranks.split(",")]:
            start = time.perf_counter()
            run_compare(np_, args.config, args.overrides, Path(tmp) / f"np{np_}")
            for method in ("fedavg", "lbgm"):
                row = {"ranks": np_, "method": method,
                       **summarize(Path(tmp) / f"np{np_}" / method)}
                results.append(row)
            print(f"  {np_} ranks done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    header = (f"{'ranks':>5} {'method':>7} {'best acc':>9} {'uplink MB':>10} {'MPI MB':>9} "
              f"{'MPI vs FedAvg':>14} {'round ms':>9} {'round vs FedAvg':>16}")
    print(header)
    print("-" * len(header))
    for row in results:
        fed = next(r for r in results if r["ranks"] == row["ranks"] and r["method"] == "fedavg")
        print(f"{row['ranks']:>5} {row['method']:>7} {100 * row['best_acc']:>8.2f}% "
              f"{row['uplink_bytes'] / 1e6:>10.3f} {row['mpi_bytes'] / 1e6:>9.3f} "
              f"{row['mpi_bytes'] / fed['mpi_bytes']:>14.3f} {1e3 * row['median_round_s']:>9.1f} "
              f"{row['median_round_s'] / fed['median_round_s']:>16.2f}")
    record = {"config": args.config, "overrides": args.overrides, "results": results}
    print(f"wrote {write_record(args.out, record)}")


if __name__ == "__main__":
    main()
