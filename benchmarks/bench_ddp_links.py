"""Time to accuracy of DDP communication hooks over real bandwidth-limited links.

    python benchmarks/bench_ddp_links.py [--rate 100mbit] [--ranks 4]
        [--hooks allreduce,fp16,powersgd,lbgm] [--out benchmarks/results/ddp-links-100mbit]
        [-- EXAMPLE ARGS ...]

Needs root (it creates network namespaces, benchmarks/links/netns.py). One host per rank, every
link shaped to --rate each way (tc tbf); each hook trains examples/ddp_train.py with the same
arguments (default: an MLP of 2.46M parameters on digits, see EXAMPLE) as --ranks processes under
mpirun, DDP over gloo (TCP) on the shaped links. Rank 0's per-epoch records give:

  s to target   training seconds (evaluation excluded) until the test accuracy first reaches
                0.95 and 0.99 x the allreduce hook's best; "x" = allreduce's seconds / the hook's
  bytes         bytes one rank handed to the gradient collectives, in all and up to the target

It prints the table and writes OUT.json and OUT.txt; the hosts, links and qdiscs are removed at
the end, on failure and on interruption. Namespaces and links are named --prefix (default "ddp")
on --subnet (default 10.78.0), apart from bench_links.py's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "links"))

import netns  # noqa: E402
from record import write_record  # noqa: E402  (benchmarks/, beside this script)

HOOKS = "allreduce,fp16,powersgd,lbgm"
FRACTIONS = (0.95, 0.99)
# Full batch (each rank's whole shard, 359 samples, every step): LBGM needs gradients that stay
# in a low-dimensional span from step to step; see docs/ddp.md for what minibatches of 32 do.
EXAMPLE = ["--model", "mlp", "--hidden", "32768", "--data", "digits", "--batch-size", "359",
           "--epochs", "60", "--lr", "0.2", "--momentum", "0.9", "--start-iter", "5",
           "--threshold", "0.8", "--lookback", "3", "--powersgd-rank", "1", "--threads", "1"]
# glibc hands every freed block over 32 MB back to the kernel and page-faults it in afresh at the
# next step; on this VM that system time made a 359-sample step of the MLP 5x slower (1.37 s ->
# 0.24 s on one core). Kept for every hook alike, as a long-running trainer's heap would be.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "2000000000", "MALLOC_TRIM_THRESHOLD_": "2000000000",
          "MALLOC_TOP_PAD_": "268435456"}
PORT = 29517


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="100mbit", help="link rate, as tc writes it")
    p.add_argument("--ranks", type=int, default=4, help="processes, one per host")
    p.add_argument("--hooks", default=HOOKS, help="comma-separated --hook values of the example")
    p.add_argument("--out", default=None,
                   help="prefix of OUT.json / OUT.txt (default benchmarks/results/ddp-links-RATE)")
    p.add_argument("--prefix", default="ddp", help="name prefix of namespaces and links")
    p.add_argument("--subnet", default="10.78.0", help="the hosts' /24")
    p.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    p.add_argument("example", nargs=argparse.REMAINDER,
                   help="-- arguments for examples/ddp_train.py, after the defaults (EXAMPLE)")
    args = p.parse_args(argv)
    extra = args.example[1:] if args.example[:1] == ["--"] else args.example
    args.example_args = merge(EXAMPLE, extra)
    args.out = args.out or f"benchmarks/results/ddp-links-{args.rate}"
    return args


def merge(defaults: list[str], extra: list[str]) -> list[str]:
    """The example's arguments: ``defaults`` with every option that ``extra`` gives again
    replaced in place (options here take one value; a bare flag stands alone)."""
    def pairs(argv):
        out, i = [], 0
        while i < len(argv):
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            out.append((argv[i], argv[i + 1] if has_value else None))
            i += 2 if has_value else 1
        return out
    merged = dict(pairs(defaults))
    merged.update(pairs(extra))
    return [a for key, value in merged.items() for a in ([key] if value is None
                                                          else [key, value])]


def launch(hosts, args, hook: str, work: Path) -> dict:
    """Train with ``hook`` on the hosts; return rank 0's records and the launch's seconds."""
    out = work / f"{hook}.json"
    # gloo picks its interface by name, and every host's is PREFIX-pK for rank K (one rank a
    # host, in hostfile order)
    script = (f'export GLOO_SOCKET_IFNAME={args.prefix}-p$OMPI_COMM_WORLD_RANK; exec "$@"')
    argv = ["sh", "-c", script, "sh", sys.executable, str(REPO / "examples" / "ddp_train.py"),
            "--hook", hook, "--json", str(out), *args.example_args]
    forward = [a for var in ("MASTER_ADDR", "MASTER_PORT", "PYTHONPATH", "OMP_NUM_THREADS",
                             *MALLOC) for a in ("-x", var)]
    cmd = hosts.mpirun(args.ranks, argv, work / "hostfile", forward)
    env = netns.mpi_env({
        **MALLOC, "MASTER_ADDR": f"{args.subnet}.1", "MASTER_PORT": str(PORT),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                    os.environ.get("PYTHONPATH")]))})
    log = work / f"{hook}.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              timeout=args.timeout, start_new_session=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{hook}: exit {done.returncode}\n{tail}")
    print(f"  {hook}: {seconds:.0f} s", file=sys.stderr, flush=True)
    return {**json.loads(out.read_text()), "launch_s": seconds}


def to_target(epochs: list[dict], target: float):
    """(epoch, training seconds, bytes) when the accuracy first reaches ``target``."""
    for e in epochs:
        if e["test_acc"] >= target:
            return e["epoch"], e["total_s"], e["total_bytes"]
    return None, None, None


def summarise(runs: dict[str, dict]) -> tuple[list[dict], dict]:
    """One row per hook, and the targets (fractions of the allreduce hook's best accuracy)."""
    ref = runs.get("allreduce")
    best_ref = max(e["test_acc"] for e in ref["epochs"]) if ref else None
    targets = {f: f * best_ref for f in FRACTIONS} if ref else {}
    rows = []
    for hook, run in runs.items():
        ep = run["epochs"]
        row = {"hook": hook, "epochs": len(ep), "params": run["params"],
               "best_acc": max(e["test_acc"] for e in ep), "final_acc": ep[-1]["test_acc"],
               "total_s": ep[-1]["total_s"], "total_bytes": ep[-1]["total_bytes"],
               "s_per_epoch": ep[-1]["total_s"] / len(ep), "launch_s": run["launch_s"],
               "dense_buckets": ep[-1].get("dense_buckets"),
               "scalar_buckets": ep[-1].get("scalar_buckets"), "curve": ep}
        for f, t in targets.items():
            row[f"epoch_{f}"], row[f"s_{f}"], row[f"bytes_{f}"] = to_target(ep, t)
        rows.append(row)
    for row in rows:
        for f in targets:
            ref_s = next(r for r in rows if r["hook"] == "allreduce")[f"s_{f}"]
            row[f"x_{f}"] = ref_s / row[f"s_{f}"] if row[f"s_{f}"] and ref_s else None
    return rows, targets


def _mb(n) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f}"


def _s(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def table(rows: list[dict], targets: dict) -> str:
    header = ["hook", "epochs", "MB/rank"]
    for f in targets:
        header += [f"s to {f}", "x", f"MB to {f}"]
    header += ["s/epoch", "best acc", "final acc", "scalar/dense"]
    lines = []
    for r in rows:
        cells = [r["hook"], str(r["epochs"]), _mb(r["total_bytes"])]
        for f in targets:
            x = r.get(f"x_{f}")
            cells += [_s(r[f"s_{f}"]) + (f" (ep {r[f'epoch_{f}']})" if r[f"epoch_{f}"] else ""),
                      "n/a" if x is None else f"{x:.2f}x", _mb(r[f"bytes_{f}"])]
        sd = "" if r["scalar_buckets"] is None else f"{r['scalar_buckets']}/{r['dense_buckets']}"
        cells += [f"{r['s_per_epoch']:.2f}", f"{100 * r['best_acc']:.2f}%",
                  f"{100 * r['final_acc']:.2f}%", sd]
        lines.append(cells)
    widths = [max(len(c[i]) for c in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines])


def main(argv=None) -> int:
    args = parse_args(argv)
    hooks = args.hooks.split(",")
    command = "python " + " ".join(sys.argv if argv is None else [__file__, *argv])
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp, \
            netns.Hosts(args.ranks, args.rate, args.prefix, args.subnet) as hosts:
        for hook in hooks:
            runs[hook] = launch(hosts, args, hook, Path(tmp))
    rows, targets = summarise(runs)
    first = next(iter(runs.values()))
    text = "\n\n".join([
        f"command: {command}",
        f"{args.ranks} processes, one per network-namespace host, every link {args.rate} each "
        f"way (tc tbf); DDP over gloo (TCP); {first['params']:,} parameters; "
        f"example arguments: {' '.join(args.example_args)}; environment: "
        + " ".join(f"{k}={v}" for k, v in MALLOC.items()),
        "targets: " + ", ".join(f"{f} x allreduce's best = {100 * t:.2f}%"
                                for f, t in targets.items()),
        "s to F: training seconds (evaluation excluded) until the test accuracy first reaches "
        "the target F (ep: the epoch); x: allreduce's seconds / the hook's; MB: megabytes one "
        "rank handed to the gradient collectives; scalar/dense: the LBGM hook's buckets",
        table(rows, targets)])
    print(text)
    record = {"command": command, "rate": args.rate, "ranks": args.ranks,
              "example_args": args.example_args, "environment": MALLOC, "targets": targets,
              "results": rows}
    out = write_record(Path(args.out).with_suffix(".json"), record, text=text)
    print(f"wrote {out.with_suffix('.txt')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
