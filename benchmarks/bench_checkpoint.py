"""Checkpoint size, write and read time, and what a checkpoint costs the training loop.

    python benchmarks/bench_checkpoint.py [--out benchmarks/results/checkpoint.json]

One process (P = 1: every client's state lands in the file, as it does at any P). Each case
trains one LBGM round so the bank holds real rows, then, several times over:
  - writes a checkpoint in the foreground (the time the loop would wait without a background
    writer) and reads it back with its checksum verified;
  - writes one in the background and trains the next round meanwhile: the loop's cost is the
    foreground part (the snapshot) plus whatever the next round waited for the writer before
    it changed the bank (``checkpoint_s`` of that round's metrics row).
Medians are reported. The K x d look-back bank dominates the file; the 1 GB case is the target
case (at most 1 s of the training loop per 1 GB checkpoint).
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from lbgm_mpi.comm.mpi import Comm
from lbgm_mpi.config import load_config
from lbgm_mpi.training.loop import Trainer
from lbgm_mpi.training.snapshot import restore
from record import write_record  # noqa: E402  (benchmarks/, beside this script)

CASES = {
    "default job (mlp on digits, 4 clients)": [],
    "10M-parameter MLP on digits, 4 clients": ["model.hidden=135000", "clients.local_epochs=1"],
    "10M-parameter MLP on digits, 25 clients (1 GB)": ["model.hidden=135000",
                                                       "clients.local_epochs=1",
                                                       "clients.count=25"],
}


def foreground(trainer, folder: Path) -> tuple[float, float, int]:
    """(write seconds, read + verify seconds, file bytes) of one foreground checkpoint."""
    start = time.perf_counter()
    path = trainer.checkpoint()
    written = time.perf_counter() - start
    start = time.perf_counter()
    restore(trainer, path)
    return written, time.perf_counter() - start, path.stat().st_size


def background(trainer) -> tuple[float, float]:
    """(seconds the loop was held, seconds of the next round) around one background write,
    started with no dirty pages pending from earlier writes (as a periodic checkpoint is)."""
    os.sync()
    trainer.checkpoint(background=True)
    row = trainer.step()  # its checkpoint_s: the snapshot plus any wait for the writer
    trainer.writer.wait()
    return row["checkpoint_s"], row["round_s"] - row["checkpoint_s"]


def measure(name, overrides, repeats: int) -> dict:
    spec = load_config("configs/default.toml", ["run.rounds=1000", "run.check_every=0",
                                                *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(spec, Comm(), Path(tmp), quiet=True)
        trainer.step()
        bg = [background(trainer) for _ in range(repeats)]
        fg = [foreground(trainer, Path(tmp)) for _ in range(repeats)]
    return {"case": name, "num_params": trainer.num_params, "clients": spec.clients.count,
            "file_bytes": fg[0][2], "write_s_median": statistics.median(w for w, _, _ in fg),
            "read_verify_s_median": statistics.median(r for _, r, _ in fg),
            "background_held_s_median": statistics.median(h for h, _ in bg),
            "background_held_s_max": max(h for h, _ in bg),
            "next_round_s_median": statistics.median(t for _, t in bg), "repeats": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/checkpoint.json")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows = [measure(name, ov, args.repeats) for name, ov in CASES.items()]
    print(f"{'case':<48} {'params':>11} {'file MB':>9} {'write s':>8} {'read+verify s':>14} "
          f"{'loop held s (background)':>25} {'next round s':>13}")
    for r in rows:
        print(f"{r['case']:<48} {r['num_params']:>11,} {r['file_bytes'] / 1e6:>9.1f} "
              f"{r['write_s_median']:>8.3f} {r['read_verify_s_median']:>14.3f} "
              f"{r['background_held_s_median']:>14.3f} (max {r['background_held_s_max']:.3f})"
              f" {r['next_round_s_median']:>13.3f}")
    print(f"wrote {write_record(args.out, {'results': rows})}")


if __name__ == "__main__":
    main()
