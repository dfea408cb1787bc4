"""Time the trainer's collectives over whatever links the ranks run on; the root writes JSON.

    mpirun ... python benchmarks/links/collectives.py --sizes 4096,4000000 --reps 3 --out FILE
    python benchmarks/links/netns.py --hosts 4 --rate 100mbit [--mca KEY VALUE ...] -- \
        python benchmarks/links/collectives.py --out FILE          (as root: on shaped links)

Cases, each at every size n (bytes):
  allreduce       every rank sums n bytes of float32 (FedAvg's exchange);
  allgatherv-all  every rank contributes n bytes (every client refreshes);
  allgatherv-one  one rank contributes n bytes, the others none (a single LBGM refresh; the
                  sending rank rotates from one repetition to the next).
One timing is the longest time any rank spent inside the call, started after a barrier; the file
keeps every repetition and their median, which the root also prints.
"""

import argparse
import json
import statistics
import time

import numpy as np
from mpi4py import MPI


def _timed(comm, call) -> float:
    """Seconds the slowest rank spent in ``call``, the same on every rank."""
    comm.Barrier()
    start = time.perf_counter()
    call()
    return comm.allreduce(time.perf_counter() - start, op=MPI.MAX)


def _allreduce(comm, n: int, rep: int):
    send = np.ones(max(1, n // 4), dtype=np.float32)
    recv = np.empty_like(send)
    return lambda: comm.Allreduce(send, recv, op=MPI.SUM)


def _allgatherv(counts: list[int], comm):
    send = np.ones(counts[comm.rank], dtype=np.uint8)
    recv = np.empty(sum(counts), dtype=np.uint8)
    displs = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(int).tolist()
    return lambda: comm.Allgatherv([send, MPI.BYTE], [recv, (counts, displs), MPI.BYTE])


def _allgatherv_all(comm, n: int, rep: int):
    return _allgatherv([n] * comm.size, comm)


def _allgatherv_one(comm, n: int, rep: int):
    return _allgatherv([n if r == rep % comm.size else 0 for r in range(comm.size)], comm)


SMALL, SMALL_REPS = 65536, 21
CASES = {"allreduce": _allreduce, "allgatherv-all": _allgatherv_all,
         "allgatherv-one": _allgatherv_one}


def measure(comm, cases: list[str], sizes: list[int], reps: int) -> list[dict]:
    """One point per (case, size): every repetition's seconds and their median. Messages under
    SMALL bytes are repeated SMALL_REPS times at least: they take milliseconds, and on a shared
    machine scheduling noise of the same order."""
    points = []
    for case in cases:
        for n in sizes:
            _timed(comm, CASES[case](comm, n, 0))  # warm-up: connections, buffers
            count = reps if n >= SMALL else max(reps, SMALL_REPS)
            seconds = [_timed(comm, CASES[case](comm, n, rep)) for rep in range(count)]
            points.append({"op": case, "bytes": n, "ranks": comm.size,
                           "seconds": statistics.median(seconds), "reps": seconds})
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--sizes", default="64,4000,400000,4000000")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    points = measure(comm, args.cases.split(","), [int(s) for s in args.sizes.split(",")],
                     args.reps)
    if comm.rank == 0:
        with open(args.out, "w") as f:
            json.dump(points, f, indent=1)
        for pt in points:
            print(f"{pt['op']:>15} {pt['bytes']:>10} B  {comm.size} ranks  "
                  f"{pt['seconds']:.4f} s")


if __name__ == "__main__":
    main()
