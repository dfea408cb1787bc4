"""Time to accuracy over real bandwidth-limited links: one MPI rank per network-namespace host.

    python benchmarks/bench_links.py [--rate 100mbit] [--ranks 4] [--config configs/links-10m.toml]
        [--methods fedavg,lbgm-model,lbgm-layer,ef-powersgd,ef-powersgd+lbgm] [--set k=v ...]
        [--out benchmarks/results/links-100mbit]

Needs root (it creates network namespaces). In order, it:
  1. creates the hosts, every link shaped by `tc tbf` (benchmarks/links/netns.py);
  2. times Allreduce and Allgatherv on the links at several rank counts and rates
     (benchmarks/links/collectives.py), for the round-cost model;
  3. trains each method with `lbgm-mpi compare --methods M`, one rank per host, over TCP;
  4. times local training of one client on one rank alone (a short run outside the hosts);
  5. prints the measured table, the fitted round-cost MODEL with its error and its predictions,
     and writes OUT.json, OUT.txt and OUT.png; then removes every host, link and qdisc.
Open MPI's collective algorithms are pinned for every method (benchmarks/links/costmodel.py).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "links"))
sys.path.insert(0, str(REPO / "src"))

import costmodel  # noqa: E402
import netns  # noqa: E402
import timeline  # noqa: E402
from lbgm_mpi.analysis.report import (  # noqa: E402
    TARGET_FRACTION, fedavg_reference, human_bytes, load_run)

METHODS = "fedavg,lbgm-model,lbgm-layer,ef-powersgd,ef-powersgd+lbgm"
MODEL_RANKS = (16, 64, 256)
MODEL_RATES = ("100mbit", "1gbit", "10gbit")
BANDWIDTH_BOUND_S = 0.05  # collective timings at least this long are reported by relative error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="100mbit", help="link rate, as tc writes it (10mbit, 1gbit)")
    p.add_argument("--ranks", type=int, default=4, help="MPI ranks, one per host")
    p.add_argument("--config", default="configs/links-10m.toml")
    p.add_argument("--methods", default=METHODS, help="comma-separated `compare` methods")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override for every method (repeatable)")
    p.add_argument("--micro-ranks", default="2,4,8",
                   help="rank counts of the collective timings the model is fitted on")
    p.add_argument("--micro-rates", default="100mbit,1gbit",
                   help="link rates of those timings (the run's rate is added)")
    p.add_argument("--micro-reps", type=int, default=3)
    p.add_argument("--ref-rounds", type=int, default=5,
                   help="rounds of the one-rank run that times local training alone")
    p.add_argument("--out", default=None, help="prefix of OUT.json/.txt/.png "
                   "(default benchmarks/results/links-RATE)")
    p.add_argument("--runs", default=None, help="keep the run folders here (default: removed)")
    p.add_argument("--prefix", default="lkb", help="name prefix of namespaces and links")
    p.add_argument("--subnet", default="10.77.0", help="the hosts' /24, inside the namespaces")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per MPI launch")
    args = p.parse_args(argv)
    args.out = args.out or f"benchmarks/results/links-{args.rate}"
    return args


def child_env() -> dict:
    """The environment of every launch: this checkout's package first on the path."""
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return netns.mpi_env({"PYTHONPATH": path})


def launch(cmd: list[str], log: Path, timeout: float) -> float:
    """Run ``cmd`` (output to ``log``); return its wall seconds; raise with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
                              timeout=timeout)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"exit {done.returncode}: {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - start


def micro_sizes(rate_bits: float) -> list[int]:
    """Message sizes for one rate: latency-bound ones, and large ones taking ~0.3 s a hop."""
    large = int(min(4e7, max(4e5, 4e6 * rate_bits / 1e8)))
    return [64, 4000, large // 10, large]


def measure_collectives(hosts, args, work: Path) -> list[dict]:
    """Collective timings at every --micro-ranks and --micro-rates (the links end at --rate)."""
    rates = list(dict.fromkeys(args.micro_rates.split(",") + [args.rate]))
    points = []
    for rate in rates:
        hosts.shape(rate)
        for ranks in [int(r) for r in args.micro_ranks.split(",")]:
            out = work / f"micro-{rate}-{ranks}.json"
            argv = [sys.executable, str(REPO / "benchmarks/links/collectives.py"), "--out",
                    str(out), "--reps", str(args.micro_reps),
                    "--sizes", ",".join(map(str, micro_sizes(hosts.rate_bits)))]
            seconds = launch(hosts.mpirun(ranks, argv, work / "hostfile", costmodel.mca_args()),
                             work / f"micro-{rate}-{ranks}.log", args.timeout)
            print(f"  collectives at {rate}, {ranks} ranks: {seconds:.0f} s", file=sys.stderr)
            points += [dict(p, rate=rate, rate_bits=hosts.rate_bits)
                       for p in json.loads(out.read_text())]
    hosts.shape(args.rate)
    return points


def _compare(args, method: str, out: Path) -> list[str]:
    """The command line of `lbgm-mpi compare` for one method, with every --set."""
    sets = [a for o in args.overrides for a in ("--set", o)]
    return [sys.executable, "-m", "lbgm_mpi", "compare", args.config, "--methods", method,
            "--out", str(out), "--quiet", *sets]


def train(hosts, args, method: str, runs: Path) -> dict:
    """Train ``method`` on --ranks hosts; return its run folder and the launch's wall seconds."""
    argv = _compare(args, method, runs / method)
    seconds = launch(hosts.mpirun(args.ranks, argv, runs / "hostfile", costmodel.mca_args()),
                     runs / f"{method}.log", args.timeout)
    print(f"  {method}: {seconds:.0f} s", file=sys.stderr)
    return {"folder": runs / method / method, "job_s": seconds}


def time_one_rank(args, runs: Path) -> dict:
    """Seconds of local training of one client, and of the test evaluation, on one rank with no
    other rank sharing the cores (timeline.one_rank of a --ref-rounds one-rank FedAvg run of the
    same config)."""
    argv = _compare(args, "fedavg", runs / "one-rank") + ["--set", f"run.rounds={args.ref_rounds}"]
    launch(argv, runs / "one-rank.log", args.timeout)
    return timeline.one_rank(load_run(runs / "one-rank" / "fedavg").rounds)


def method_result(run, job_s: float, alone: dict, ranks: int, target: float | None) -> dict:
    """The measured row of one method, plus its per-round curves (for the plot and the model)."""
    rows, s = run.rounds, run.summary
    wall, seen = timeline.elapsed(rows), timeline.visible(rows, alone, ranks)
    rounds_hit, wall_hit = timeline.to_target(rows, wall, target)
    _, seen_hit = timeline.to_target(rows, seen, target)
    total = lambda key: sum(r[key] for r in rows)
    return {
        "method": run.label, "algo": s["algo"], "compressor": s["compressor"],
        "num_params": s["num_params"], "rounds": len(rows), "rounds_to_target": rounds_hit,
        "s_to_target": wall_hit, "visible_s_to_target": seen_hit, "total_s": wall[-1],
        "visible_total_s": seen[-1], "job_s": job_s, "comm_s": total("comm_s"),
        "train_s": total("train_s"), "mpi_bytes": s["total_mpi_bytes"],
        "best_acc": s["best_acc"], "final_acc": s["final_acc"],
        "curve": [{"round": r["round"], "s": w, "visible_s": v, "acc": r["test_acc"]}
                  for r, w, v in zip(rows, wall, seen)],
        "rows": rows,
    }


def measured(folders: dict, alone: dict, ranks: int) -> tuple[list[dict], float | None]:
    """Rows for every method, and the target accuracy (TARGET_FRACTION x FedAvg's best)."""
    runs = {m: load_run(f["folder"]) for m, f in folders.items()}
    ref = fedavg_reference(list(runs.values()))
    target = TARGET_FRACTION * ref.summary["best_acc"] if ref else None
    return [method_result(runs[m], folders[m]["job_s"], alone, ranks, target)
            for m in folders], target


def fit_model(points: list[dict], results: list[dict], ranks: int, rate_bits: float,
              alone: dict) -> dict:
    """The round-cost MODEL: fitted parameters, its error on the points it was fitted on, its
    error on the measured runs' collective seconds, and predicted seconds to the target."""
    params = costmodel.fit(points)
    check, predictions = [], []
    for res in results:
        prof = costmodel.profile(res, ranks)
        model_s = sum(costmodel.row_comm(params, r, prof["kind"], ranks, rate_bits)
                      for r in res["rows"])
        check.append({"method": res["method"], "comm_s": res["comm_s"], "model_s": model_s,
                      "error": model_s / res["comm_s"] - 1.0})
        for p in MODEL_RANKS:
            predictions.append({"method": res["method"], "ranks": p, **{
                rate: costmodel.time_to_target(params, prof, alone, p, netns.rate_bits(rate))
                for rate in MODEL_RATES}, "profile": prof})
    return {"params": params, "points": costmodel.fit_errors(params, points),
            "runs": check, "predictions": predictions}


# ---- tables ----

def table(header: list[str], rows: list[list[str]]) -> str:
    """An aligned text table; the first column left-aligned, the others right-aligned."""
    cells = [header] + rows
    widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
    lines = ["  ".join(t.ljust(w) if c == 0 else t.rjust(w) for c, (t, w) in
                       enumerate(zip(r, widths))).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def _s(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _ratio(x, ref) -> str:
    return "n/a" if x is None or ref is None else f"{ref / x:.2f}x"


def measured_table(results: list[dict]) -> str:
    """Measured figures; "x faster" compares seconds to target with FedAvg's."""
    fed = next((r for r in results if r["method"] == "fedavg"), {})
    header = ["method", "rounds", "to target", "s to target", "x faster", "visible s to target",
              "x faster", "total s", "comm s", "train s", "MPI", "best acc", "final acc"]
    rows = [[r["method"], str(r["rounds"]), str(r["rounds_to_target"] or "n/a"),
             _s(r["s_to_target"]), _ratio(r["s_to_target"], fed.get("s_to_target")),
             _s(r["visible_s_to_target"]),
             _ratio(r["visible_s_to_target"], fed.get("visible_s_to_target")),
             _s(r["total_s"]), _s(r["comm_s"]), _s(r["train_s"]), human_bytes(r["mpi_bytes"]),
             f"{100 * r['best_acc']:.2f}%", f"{100 * r['final_acc']:.2f}%"] for r in results]
    return table(header, rows)


def fit_table(model: dict) -> str:
    """The fitted parameters, then every point with the model's error."""
    par = [[op, f"{1e6 * p['alpha']:.1f}", f"{1e9 * p['b0']:.3f}",
            f"{8 / p['c']:.2f}" if p["c"] else "inf"] for op, p in model["params"].items()]
    head = table(["collective", "alpha (us/step)", "b0 (ns/B)", "wire efficiency (8/c)"], par)
    pts = [[p["op"], p["rate"], str(p["ranks"]), str(p["bytes"]), f"{p['seconds']:.4f}",
            f"{p['model_s']:.4f}", f"{100 * p['error']:+.1f}%"] for p in model["points"]]
    return "\n\n".join([head, table(["case", "rate", "ranks", "bytes", "measured s", "model s",
                                     "error"], pts), fit_summary(model["points"])])


def fit_summary(points: list[dict]) -> str:
    """The fit's error: relative on bandwidth-bound points (measured >= BANDWIDTH_BOUND_S),
    absolute on the others (milliseconds, where scheduling noise is of the same order)."""
    big = sorted(abs(p["error"]) for p in points if p["seconds"] >= BANDWIDTH_BOUND_S)
    small = sorted(abs(p["model_s"] - p["seconds"]) for p in points
                   if p["seconds"] < BANDWIDTH_BOUND_S)
    median = lambda xs: xs[len(xs) // 2]
    lines = []
    if big:
        lines.append(f"fit error on the {len(big)} points of >= {BANDWIDTH_BOUND_S} s: median "
                     f"{100 * median(big):.1f}%, max {100 * big[-1]:.1f}%")
    if small:
        lines.append(f"fit error on the {len(small)} shorter points: median "
                     f"{1e3 * median(small):.1f} ms, max {1e3 * small[-1]:.1f} ms")
    return "\n".join(lines)


def model_tables(model: dict, ranks: int) -> str:
    """The model against the measured runs, then its predictions."""
    check = table(["method", "measured comm s", "model comm s", "error"],
                  [[c["method"], _s(c["comm_s"]), _s(c["model_s"]), f"{100 * c['error']:+.0f}%"]
                   for c in model["runs"]])
    pred = table(["method", "ranks", *[f"{r} (s)" for r in MODEL_RATES]],
                 [[p["method"], str(p["ranks"]), *[_s(p[r]) for r in MODEL_RATES]]
                  for p in model["predictions"]])
    return "\n\n".join([f"MODEL vs measured seconds in collectives ({ranks} ranks, each run's "
                        "own refreshes):", check,
                        f"MODEL: predicted seconds to target (one client per rank, rounds to "
                        f"target as measured at {ranks} ranks):", pred])


def plot(results: list[dict], target: float | None, args, path: Path) -> None:
    """Accuracy against measured wall-clock seconds and against communication-visible seconds,
    one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    panels = (("s", "measured wall-clock seconds (ranks share 2 cores)"),
              ("visible_s", "communication-visible seconds (training, evaluation: one rank "
               "alone)"))
    for ax, (key, label) in zip(axes, panels):
        for i, res in enumerate(results):
            pts = [(c[key], 100 * c["acc"]) for c in res["curve"] if c["acc"] is not None]
            ax.plot(*zip(*pts), label=res["method"], color=f"C{i}", marker="osD^vP*"[i % 7],
                    markersize=4, markevery=max(1, len(pts) // 15))
        if target is not None:
            ax.axhline(100 * target, color="gray", linestyle="--", linewidth=1,
                       label=f"target {100 * target:.1f}%")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(loc="lower right")
    fig.suptitle(f"Test accuracy against wall-clock time: {args.ranks} ranks, one per host, "
                 f"links shaped to {args.rate}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_text(args, results, target, alone, model) -> str:
    """Everything the benchmark prints, in order."""
    target_text = f"{100 * target:.2f}%" if target is not None else "none (no FedAvg run)"
    return "\n\n".join([
        f"command: python {' '.join(sys.argv)}",
        f"{args.ranks} ranks, one per namespace host; every link {args.rate} each way (tc tbf, "
        f"no added delay); Open MPI pins: {' '.join(costmodel.mca_args())}\n"
        f"target accuracy {target_text} = {TARGET_FRACTION} x FedAvg's best; on one rank "
        f"alone, local training of one client takes {alone['train_s']:.3f} s a round and the "
        f"test evaluation {alone['eval_s']:.3f} s",
        "MEASURED (seconds are the root rank's, summed over rounds; start-up and the final "
        "checkpoint excluded):\n"
        "  s to target / total s: wall-clock, ranks sharing the machine's 2 cores\n"
        "  visible s to target: the same with each round's local training and evaluation "
        "replaced by the one-rank figures above (what the links cost, with compute as on a "
        "dedicated core)\n"
        "  comm s: inside the data collectives; train s: local training; x faster: FedAvg's "
        "seconds to target / the method's",
        measured_table(results),
        "MODEL of the round cost, fitted on the collective timings below:",
        fit_table(model),
        model_tables(model, args.ranks),
    ])


def main() -> None:
    args = parse_args()
    micro_ranks = [int(r) for r in args.micro_ranks.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-links-") as tmp:
        runs = Path(args.runs or tmp)
        runs.mkdir(parents=True, exist_ok=True)
        with netns.Hosts(max(args.ranks, *micro_ranks), args.rate, args.prefix,
                         args.subnet) as hosts:
            points = measure_collectives(hosts, args, Path(tmp))
            folders = {m: train(hosts, args, m, runs) for m in args.methods.split(",")}
        alone = time_one_rank(args, runs)
        results, target = measured(folders, alone, args.ranks)
    model = fit_model(points, results, args.ranks, netns.rate_bits(args.rate), alone)
    text = report_text(args, results, target, alone, model)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text + "\n")
    plot(results, target, args, out.with_suffix(".png"))
    record = {"command": f"python {' '.join(sys.argv)}", "config": args.config,
              "overrides": args.overrides, "rate": args.rate, "ranks": args.ranks,
              "pinned_mca": costmodel.PINNED, "target_acc": target, "one_rank_s": alone,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "results": [{k: v for k, v in r.items() if k != "rows"} for r in results],
              "model": model}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out.with_suffix('.txt')}, .json, .png")


if __name__ == "__main__":
    main()
