"""Throughput of the fused GPU kernels, against the device's copy bandwidth and unfused PyTorch.

Run on a machine with a CUDA GPU and CuPy:
    PYTHONPATH=src python benchmarks/bench_kernels.py [--out FILE] [--repeats 20]

Prints a table and writes JSON (default benchmarks/results/kernels-<gpu-name>.json). Every
configuration is checked against a float64 reference before it is timed, and a mismatch aborts.
Times are medians over repeats of CUDA-event intervals, after warm-up; inputs rotate over
enough copies that they do not stay in L2. Targets: the fused projection reads at >= 80% of
copy bandwidth for d >= 1e7 and runs >= 1.5x faster than torch.dot + torch.linalg.vector_norm;
the bank aggregation reads its selected rows at >= 70% of copy bandwidth.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lbgm_mpi.kernels.cupy_ops import CupyKernels, _torch_stream, cupy_available  # noqa: E402
from record import write_record  # noqa: E402  (benchmarks/, beside this script)

PROJECT_SIZES = [10**5, 10**6, 10**7, 10**8, 10**9]
AGGREGATE_ROWS = [8, 32, 128]
AGGREGATE_SIZES = [10**6, 10**7, 10**8]
BANK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COPY_BYTES = 4 * 2**30
MEMORY_SHARE = 0.8      # of the free device memory that one configuration may take
L2_MULTIPLE = 3         # inputs rotate over at least this many L2 sizes of data
SLEEP_CYCLES = 50_000_000  # ~25 ms of GPU clock: queued before the timed calls, see time_calls
REF_COLUMNS = 1 << 22   # columns per step of the float64 references

PROJECT_BW_TARGET, PROJECT_SPEEDUP_TARGET, PROJECT_TARGET_FROM = 0.80, 1.5, 10**7
AGGREGATE_BW_TARGET = 0.70


def fail(message: str) -> None:
    print(f"bench_kernels: {message}", file=sys.stderr)
    sys.exit(2)


def require_gpu() -> None:
    if torch.cuda.is_available() and cupy_available():
        return
    try:
        import cupy  # noqa: F401
        has_cupy = "installed"
    except ImportError:
        has_cupy = "not installed"
    fail("needs a CUDA GPU visible to PyTorch and CuPy; found torch.cuda.is_available()="
         f"{torch.cuda.is_available()}, CuPy {has_cupy}. Nothing was measured.")


def environment() -> dict:
    import cupy

    props = torch.cuda.get_device_properties(0)
    driver = "unknown"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True)
        driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 else driver
    return {
        "gpu": props.name, "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "l2_bytes": getattr(props, "L2_cache_size", 50 * 2**20),
        "driver": driver, "cuda_driver_api": cupy.cuda.runtime.driverGetVersion(),
        "cuda_torch": torch.version.cuda,
        "cuda_cupy_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "torch": torch.__version__, "cupy": cupy.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ------------------------------------------------------------------------------------ timing

def time_calls(fn, repeats: int, warmup: int) -> float:
    """Median milliseconds of fn(i), each call between two CUDA events, after ``warmup`` calls.

    A sleep kernel queued first keeps the GPU busy while the host queues every timed call, so
    the intervals hold device time only, not the Python launch overhead between calls.
    """
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    torch.cuda._sleep(SLEEP_CYCLES)
    for i, (start, end) in enumerate(events):
        start.record()
        fn(warmup + i)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def copies_needed(bytes_per_copy: int, l2_bytes: int, calls: int) -> int:
    return max(1, min(calls, math.ceil(L2_MULTIPLE * l2_bytes / bytes_per_copy)))


def fits(nbytes: int) -> bool:
    return nbytes <= MEMORY_SHARE * torch.cuda.mem_get_info()[0]


def release() -> None:
    import cupy

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    cupy.get_default_memory_pool().free_all_blocks()


def copy_bandwidth(args) -> dict:
    """Device-to-device copy through CuPy: bytes read + bytes written over the median time."""
    nbytes = min(COPY_BYTES, int(MEMORY_SHARE * torch.cuda.mem_get_info()[0] / 2))
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    with _torch_stream(src.device) as cupy:
        src_cp, dst_cp = cupy.from_dlpack(src), cupy.from_dlpack(dst)
        ms = time_calls(lambda i: dst_cp.data.copy_from_device_async(src_cp.data, nbytes),
                        args.repeats, args.warmup)
    assert torch.equal(src[-4096:], dst[-4096:]), "the timed copy did not copy"
    del src, dst
    release()
    return {"bytes": nbytes, "median_ms": ms, "gb_per_s": 2 * nbytes / ms / 1e6}


# ------------------------------------------------------------------------- float64 references

def make_bounds(d: int, n_segments: int, seed: int) -> torch.Tensor:
    """One segment, or n_segments with a length-1 segment first and random cuts after it."""
    if n_segments == 1:
        return torch.tensor([0, d])
    cuts = np.random.default_rng(seed).choice(d - 3, size=n_segments - 2, replace=False) + 2
    return torch.tensor([0, 1, *np.sort(cuts).tolist(), d])


def _steps(bounds: torch.Tensor):
    edges = bounds.tolist()
    for seg, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        for start in range(lo, hi, REF_COLUMNS):
            yield seg, start, min(start + REF_COLUMNS, hi)


def project_error(dots, gnorms, g, b, bounds) -> float:
    """Largest error of the fused sums, relative to sum |g b| and ||g||^2, against float64."""
    n = len(bounds) - 1
    ref = torch.zeros(3, n, dtype=torch.float64, device=g.device)
    for seg, lo, hi in _steps(bounds):
        g64, b64 = g[lo:hi].double(), b[lo:hi].double()
        ref[:, seg] += torch.stack([g64 @ b64, g64 @ g64, (g64 * b64).abs().sum()])
    ref = ref.cpu()
    return max(float(((dots - ref[0]).abs() / ref[2]).max()),
               float(((gnorms - ref[1]).abs() / ref[1]).max()))


def aggregate_error(out, bank, rows, coefs, bounds) -> float:
    """max_j |out_j - delta_j| / sum_i |coef_i bank_ij| against a float64 computation."""
    picked, weights = rows.to(bank.device), coefs.to(bank.device, torch.float64)
    worst = 0.0
    for seg, lo, hi in _steps(bounds):
        block = bank[:, lo:hi].index_select(0, picked).double()
        w = weights[:, seg]
        delta, scale = w @ block, w.abs() @ block.abs()
        worst = max(worst, float(((out[lo:hi].double() - delta).abs() / scale).max()))
    return worst


# ---------------------------------------------------------------------------- the benchmarks

def bench_projection(kernels, args, env, copy_gbs) -> list[dict]:
    rows = []
    for d in PROJECT_SIZES:
        for n_segments in (1, 62):
            copies = copies_needed(8 * d, env["l2_bytes"], args.warmup + args.repeats)
            if not fits(8 * d * copies + 8 * d):
                print(f"  skip projection d={d:.0e}: {8 * d * copies / 2**30:.1f} GiB does not fit")
                continue
            rows.append(project_config(kernels, args, d, n_segments, copies, copy_gbs))
            release()
    return rows


def project_config(kernels, args, d, n_segments, copies, copy_gbs) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(d + n_segments)
    bs = [torch.randn(d, device="cuda", generator=gen) for _ in range(copies)]
    gs = [torch.randn(d, device="cuda", generator=gen).add_(b, alpha=0.6) for b in bs]
    bounds = make_bounds(d, n_segments, seed=d)
    error = project_error(*kernels.project(gs[0], bs[0], bounds), gs[0], bs[0], bounds)
    if not error < 1e-6:
        fail(f"projection d={d} L={n_segments}: relative error {error:.2e} >= 1e-6; not timed")
    out = torch.empty(2, n_segments, dtype=torch.float64, device="cuda")
    fused_ms = time_calls(lambda i: kernels.project_into(gs[i % copies], bs[i % copies],
                                                         bounds, out), args.repeats, args.warmup)
    torch_ms = None
    if n_segments == 1:
        torch_ms = time_calls(lambda i: (torch.dot(gs[i % copies], bs[i % copies]),
                                         torch.linalg.vector_norm(gs[i % copies])),
                              args.repeats, args.warmup)
    gbs = 8 * d / fused_ms / 1e6
    row = {"d": d, "segments": n_segments, "copies": copies, "max_rel_error": error,
           "fused_ms": fused_ms, "fused_gb_per_s": gbs, "fraction_of_copy": gbs / copy_gbs,
           "torch_unfused_ms": torch_ms,
           "speedup_vs_torch": None if torch_ms is None else torch_ms / fused_ms}
    row["bw_target"] = verdict(d >= PROJECT_TARGET_FROM,
                               row["fraction_of_copy"] >= PROJECT_BW_TARGET)
    row["speedup_target"] = verdict(d >= PROJECT_TARGET_FROM and torch_ms is not None,
                                    (row["speedup_vs_torch"] or 0) >= PROJECT_SPEEDUP_TARGET)
    return row


def bench_aggregation(kernels, args, env, copy_gbs) -> list[dict]:
    rows = []
    for n_rows in AGGREGATE_ROWS:
        for d in AGGREGATE_SIZES:
            for dtype_name, dtype in BANK_DTYPES.items():
                nbytes = n_rows * d * dtype.itemsize
                copies = copies_needed(nbytes, env["l2_bytes"], args.warmup + args.repeats)
                if not fits(nbytes * copies + 8 * d):
                    print(f"  skip aggregation K={n_rows} d={d:.0e} {dtype_name}: does not fit")
                    continue
                rows += aggregate_configs(kernels, args, n_rows, d, dtype_name, copies, copy_gbs)
                release()
    return rows


def aggregate_configs(kernels, args, n_rows, d, dtype_name, copies, copy_gbs) -> list[dict]:
    """One bank, read through consecutive rows and shuffled rows by the aggregation kernel, and
    consecutive float32 rows by cuBLAS sgemv too: the faster path should be the default."""
    dtype = BANK_DTYPES[dtype_name]
    gen = torch.Generator(device="cuda").manual_seed(n_rows * d)
    banks = [torch.empty(n_rows, d, dtype=dtype, device="cuda") for _ in range(copies)]
    for bank in banks:
        for row in bank:  # row by row: no float32 copy of a whole bfloat16 bank
            row.copy_(torch.randn(d, device="cuda", generator=gen))
    bounds = torch.tensor([0, d])
    coefs = torch.randn(n_rows, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    out = torch.empty(d, device="cuda")
    results = []
    paths = [("kernel", kernels, "consecutive", torch.arange(n_rows)),
             ("kernel", kernels, "shuffled", torch.randperm(n_rows, generator=torch.Generator()))]
    if dtype == torch.float32:
        paths.append(("cublas", CupyKernels(prefer_cublas=True), "consecutive",
                      torch.arange(n_rows)))
    for path, kernels, selection, picked in paths:
        kernels.aggregate_into(banks[0], picked, coefs, bounds, out)
        error = aggregate_error(out, banks[0], picked, coefs, bounds)
        if not error < 1e-5:
            fail(f"aggregation K={n_rows} d={d} {dtype_name} {selection}: error {error:.2e} "
                 ">= 1e-5; not timed")
        ms = time_calls(lambda i, picked=picked: kernels.aggregate_into(
            banks[i % copies], picked, coefs, bounds, out), args.repeats, args.warmup)
        gbs = n_rows * d * dtype.itemsize / ms / 1e6
        results.append({"rows": n_rows, "d": d, "bank_dtype": dtype_name, "selection": selection,
                        "path": path, "copies": copies, "max_rel_error": error, "median_ms": ms,
                        "gb_per_s": gbs, "fraction_of_copy": gbs / copy_gbs,
                        "bw_target": verdict(True, gbs / copy_gbs >= AGGREGATE_BW_TARGET)})
    return results


def verdict(applies: bool, passed: bool) -> str:
    return "PASS" if applies and passed else "FAIL" if applies else "n/a"


# ---------------------------------------------------------------------------------- reporting

def print_tables(report: dict) -> None:
    env, copy = report["environment"], report["copy"]
    print(f"\n{env['gpu']}  driver {env['driver']}  CUDA (torch) {env['cuda_torch']}  "
          f"torch {env['torch']}  cupy {env['cupy']}")
    print(f"copy bandwidth (read + write): {copy['gb_per_s']:.0f} GB/s over "
          f"{copy['bytes'] / 2**30:.1f} GiB")
    print("\nfused projection (8 d bytes read)      target: >= 80% copy BW and >= 1.5x torch "
          "for d >= 1e7")
    print(f"{'d':>7} {'L':>3} {'ms':>9} {'GB/s':>7} {'%copy':>6} {'torch ms':>9} {'speedup':>7}"
          f" {'BW':>5} {'1.5x':>5}")
    for r in report["projection"]:
        torch_ms = f"{r['torch_unfused_ms']:9.4f}" if r["torch_unfused_ms"] else f"{'-':>9}"
        speedup = f"{r['speedup_vs_torch']:7.2f}" if r["speedup_vs_torch"] else f"{'-':>7}"
        print(f"{r['d']:7.0e} {r['segments']:3d} {r['fused_ms']:9.4f} {r['fused_gb_per_s']:7.0f} "
              f"{100 * r['fraction_of_copy']:5.0f}% {torch_ms} {speedup} {r['bw_target']:>5} "
              f"{r['speedup_target']:>5}")
    print("\nbank aggregation (selected rows read)  target: >= 70% copy BW")
    print(f"{'K':>4} {'d':>7} {'bank':>8} {'rows':>11} {'path':>6} {'ms':>9} {'GB/s':>7} "
          f"{'%copy':>6} {'BW':>5}")
    for r in report["aggregation"]:
        print(f"{r['rows']:4d} {r['d']:7.0e} {r['bank_dtype']:>8} {r['selection']:>11} "
              f"{r['path']:>6} {r['median_ms']:9.4f} {r['gb_per_s']:7.0f} "
              f"{100 * r['fraction_of_copy']:5.0f}% {r['bw_target']:>5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON file (default benchmarks/results/kernels-<gpu>.json)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    args = parser.parse_args()
    if args.repeats < 20:
        parser.error("--repeats must be at least 20")
    require_gpu()
    env = environment()
    kernels = CupyKernels()
    print(f"bench_kernels on {env['gpu']}: copy bandwidth ...", flush=True)
    copy = copy_bandwidth(args)
    print("projection ...", flush=True)
    projection = bench_projection(kernels, args, env, copy["gb_per_s"])
    print("aggregation ...", flush=True)
    aggregation = bench_aggregation(kernels, args, env, copy["gb_per_s"])
    report = {"environment": env, "repeats": args.repeats, "warmup": args.warmup, "copy": copy,
              "projection": projection, "aggregation": aggregation}
    out = Path(args.out or Path(__file__).parent / "results" /
               f"kernels-{re.sub(r'[^A-Za-z0-9._-]+', '-', env['gpu'])}.json")
    write_record(out, report)
    print_tables(report)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
