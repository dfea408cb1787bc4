"""Checkpoint size and write/read time for the default job and for a ~10M-parameter model.

    python benchmarks/bench_checkpoint.py [--out benchmarks/results/checkpoint.json]

One process (P = 1, every client's state lands in the file, as it does at any P). Each case
trains one LBGM round so the bank holds real rows, then writes the checkpoint several times and
reads it back; medians are reported. The file includes the K x d look-back bank, which dominates.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lbgm_mpi.checkpoint.state import restore, save
from lbgm_mpi.comm.mpi import Comm
from lbgm_mpi.config import load_config
from lbgm_mpi.training.loop import Trainer

CASES = {
    "default job (mlp on digits, 4 clients)": [],
    "10M-parameter MLP on digits, 4 clients": ["model.hidden=135000", "clients.local_epochs=1"],
}


def measure(name, overrides, repeats: int) -> dict:
    spec = load_config("configs/default.toml", ["run.rounds=1", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(spec, Comm(), Path(tmp), quiet=True)
        trainer.step()
        writes, reads = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            path, size, _ = save(trainer, Path(tmp) / "ck")
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            restore(trainer, path)
            reads.append(time.perf_counter() - start)
    return {"case": name, "num_params": trainer.num_params, "clients": spec.clients.count,
            "file_bytes": size, "write_s_median": statistics.median(writes),
            "read_verify_s_median": statistics.median(reads), "repeats": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/checkpoint.json")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows = [measure(name, ov, args.repeats) for name, ov in CASES.items()]
    print(f"{'case':<42} {'params':>11} {'file MB':>9} {'write s':>8} {'read+verify s':>14}")
    for r in rows:
        print(f"{r['case']:<42} {r['num_params']:>11,} {r['file_bytes'] / 1e6:>9.2f} "
              f"{r['write_s_median']:>8.3f} {r['read_verify_s_median']:>14.3f}")
    record = {"command": " ".join(["python"] + sys.argv), "results": rows,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
