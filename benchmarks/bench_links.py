"""Time to accuracy over real bandwidth-limited links: one MPI rank per network-namespace host.

    python benchmarks/bench_links.py [--rate 100mbit] [--ranks 4] [--config configs/links-10m.toml]
        [--methods fedavg,lbgm-model,lbgm-layer,ef-powersgd,ef-powersgd+lbgm] [--set k=v ...]
        [--reuse-fit benchmarks/results/links-100mbit.json] [--out benchmarks/results/links-100mbit]
    python benchmarks/bench_links.py --topology star [--rate 1gbit] [--uplink 20mbit]
        [--downlink 100mbit] [--server shared|dedicated]
        [--methods fedavg@star,fedavg,lbgm-model@star,lbgm-m3@star,topk+lbgm@star,
                   lbgm-global-m10] [--config benchmarks/links/star.toml] ...
        [--out benchmarks/results/links-star]
    python benchmarks/bench_links.py --model-only benchmarks/results/links-100mbit.json[,MORE.json]
        [--profile-runs DIR] [--out PREFIX]   (the MODEL's predictions from results; runs nothing)
    python benchmarks/bench_links.py --rebuild benchmarks/results/links-star.json --runs DIR
        (a run's report, JSON and plot again from the run folders it kept; runs nothing)

Needs root (it creates network namespaces). In order, it:
  1. creates the hosts, every link shaped by `tc tbf` (benchmarks/links/netns.py);
  2. times Allreduce and Allgatherv on the links at several rank counts and rates
     (benchmarks/links/collectives.py), for the round-cost model; with --reuse-fit, takes those
     timings from an earlier results JSON instead (same machine and links);
  3. trains each method with `lbgm-mpi compare --methods M`, one rank per host, over TCP;
  4. times local training of one client on one rank alone (a short run outside the hosts);
  5. prints the measured table (seconds to two targets, TARGET_FRACTION and SECOND_TARGET x
     FedAvg's best accuracy; bytes handed to MPI and bytes on the busiest link), the targets of
     the global scope checked, the fitted round-cost MODEL with its error and its predictions,
     and writes OUT.json, OUT.txt and OUT.png; then removes every host, link and qdisc.
Open MPI's collective algorithms are pinned for every method (benchmarks/links/costmodel.py).

The MODEL's predictions, at MODEL_RANKS ranks and MODEL_RATES: seconds to each target, seconds
per round (local work + collectives) of every method, per-client LBGM's break-even refresh rate
(its Allgathervs cost FedAvg's Allreduce) and the global scope against FedAvg round by round.
--model-only prints them from a results JSON's fit and profiles without running anything;
--profile-runs adds the profiles of the methods in a `compare` output folder (any rank count:
only their refresh / dense-round fractions and bytes are used for the seconds per round).

Split links (--uplink / --downlink, and --topology star): the server host h0 (rank 0) at --rate
both ways, every other host at --uplink up and --downlink down (benchmarks/links/shaping.py).
A method spec NAME@star runs `compare --methods NAME --set system.topology=star` (and
system.server=SERVER with --server); a plain NAME runs the replicated topology on the same links.
The targets are then fractions of FedAvg-in-the-star's best accuracy (the method fedavg@star),
the report adds every rank's link bytes up and down and the star's target check (STAR_SPEEDUP),
and the MODEL predicts each method at MODEL_RANKS on the link shapes of STAR_SHAPES
(benchmarks/links/starmodel.py): which topology and method reaches each target first.
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
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "src"))

import costmodel  # noqa: E402
from record import write_record  # noqa: E402
import netns  # noqa: E402
import shaping  # noqa: E402
import starmodel  # noqa: E402
import timeline  # noqa: E402
from lbgm_mpi.algorithm.global_lookback import sketch_widths  # noqa: E402
from lbgm_mpi.analysis.report import (  # noqa: E402
    TARGET_FRACTION, fedavg_reference, human_bytes, load_run)

METHODS = "fedavg,lbgm-model,lbgm-layer,ef-powersgd,ef-powersgd+lbgm"
SECOND_TARGET = 0.99  # a second, closer target: this fraction of FedAvg's best accuracy
TARGETS = (TARGET_FRACTION, SECOND_TARGET)
MODEL_RANKS = (16, 64, 256)
MODEL_RATES = ("10mbit", "100mbit", "1gbit", "10gbit")
NOT_SLOWER = 1.05  # the global scope's time to a target: at most this x FedAvg's
BANDWIDTH_BOUND_S = 0.05  # collective timings at least this long are reported by relative error
# --topology star: its defaults, and the target (per-client LBGM in the star at least
# STAR_SPEEDUP x sooner than FedAvg in the same star to the first target, best accuracy within
# STAR_GAP_PT points of FedAvg's)
STAR_METHODS = "fedavg@star,fedavg,lbgm-model@star,lbgm-m3@star,topk+lbgm@star,lbgm-global-m10"
STAR_RATES = {"rate": "1gbit", "uplink": "20mbit", "downlink": "100mbit"}
STAR_CONFIG = "benchmarks/links/star.toml"
STAR_SPEEDUP, STAR_GAP_PT = 1.8, 1.0
TOPOLOGIES = ("replicated", "star")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default=None, help="link rate, as tc writes it (10mbit, 1gbit; "
                   "default 100mbit); with split links, the server host's (default 1gbit)")
    p.add_argument("--topology", choices=["star"], default=None,
                   help="star: split links (server --rate, clients --uplink / --downlink) and "
                        f"the star's methods (default {STAR_METHODS})")
    p.add_argument("--uplink", default=None, help="every client host's uplink (h1...; default "
                   "with --topology star: 20mbit); splits the links")
    p.add_argument("--downlink", default=None, help="every client host's downlink (default "
                   "with --topology star: 100mbit); splits the links")
    p.add_argument("--server", choices=["shared", "dedicated"], default=None,
                   help="system.server of the NAME@star methods (default: the config's)")
    p.add_argument("--ranks", type=int, default=4, help="MPI ranks, one per host")
    p.add_argument("--config", default=None, help="default configs/links-10m.toml; with "
                   f"--topology star, {STAR_CONFIG}")
    p.add_argument("--methods", default=None, help="comma-separated `compare` methods, each "
                   "NAME or NAME@star (default " + METHODS + ")")
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
    p.add_argument("--reuse-fit", default=None, metavar="JSON",
                   help="take the collective timings from this results JSON (its model.points) "
                        "instead of measuring them")
    p.add_argument("--model-only", default=None, metavar="JSON[,JSON...]",
                   help="print the MODEL's predictions from this results JSON (fit, local "
                        "seconds, profiles; later files add methods); run nothing")
    p.add_argument("--rebuild", default=None, metavar="JSON",
                   help="write this results JSON's report, JSON and plot again from the run "
                        "folders its run kept (--runs DIR), with this code's tables and MODEL; "
                        "runs nothing (OUT defaults to the JSON's prefix)")
    p.add_argument("--profile-runs", default=None, metavar="DIR",
                   help="with --model-only: also model the methods of this compare folder")
    args = p.parse_args(argv)
    star = args.topology == "star"
    if star:
        for key, value in STAR_RATES.items():
            setattr(args, key, getattr(args, key) or value)
    args.rate = args.rate or "100mbit"
    args.config = args.config or (STAR_CONFIG if star else "configs/links-10m.toml")
    args.split = None
    if args.uplink or args.downlink:
        args.split = shaping.Split(args.rate, args.uplink or args.rate,
                                   args.downlink or args.rate)
    args.methods = args.methods or (STAR_METHODS if star else METHODS)
    for spec in args.methods.split(","):
        method_spec(spec)  # an unknown topology fails before any host is built
    args.out_given = args.out is not None
    args.out = args.out or ("benchmarks/results/links-star" if star
                            else f"benchmarks/results/links-{args.rate}")
    return args


def method_spec(spec: str) -> tuple[str, str]:
    """(method, topology) of a --methods entry: NAME (replicated) or NAME@TOPOLOGY."""
    name, _, topology = spec.partition("@")
    topology = topology or "replicated"
    if topology not in TOPOLOGIES:
        raise SystemExit(f"--methods: {spec!r}: the topology after @ is one of "
                         f"{', '.join(TOPOLOGIES)}")
    return name, topology


def topology_sets(args, spec: str) -> list[str]:
    """The --set overrides a method spec adds: system.topology (and system.server) for @star."""
    _, topology = method_spec(spec)
    if topology == "replicated":
        return []
    sets = [f"system.topology={topology}"]
    if args.server:
        sets.append(f"system.server={args.server}")
    return sets


def make_hosts(args, count: int):
    """The namespace hosts: every link at --rate both ways, or split (shaping.SplitHosts)."""
    if args.split:
        return shaping.SplitHosts(count, args.split, args.prefix, args.subnet)
    return netns.Hosts(count, args.rate, args.prefix, args.subnet)


def links_text(args) -> str:
    if args.split:
        return args.split.describe()
    return f"every link {args.rate} each way"


def model_links(args) -> starmodel.Links:
    """The run's links in bits/s, for the models."""
    if args.split:
        return starmodel.Links(*(netns.rate_bits(r) for r in (args.split.server, args.split.up,
                                                                args.split.down)))
    bits = netns.rate_bits(args.rate)
    return starmodel.Links(bits, bits, bits)


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
    if args.split:
        hosts.restore()
    else:
        hosts.shape(args.rate)
    return points


def _compare(args, spec: str, out: Path) -> list[str]:
    """The command line of `lbgm-mpi compare` for one method spec (NAME or NAME@TOPOLOGY), with
    every --set, then the topology's."""
    sets = [a for o in args.overrides + topology_sets(args, spec) for a in ("--set", o)]
    return [sys.executable, "-m", "lbgm_mpi", "compare", args.config, "--methods",
            method_spec(spec)[0], "--out", str(out), "--quiet", *sets]


def train(hosts, args, spec: str, runs: Path) -> dict:
    """Train the method ``spec`` on --ranks hosts; return its run folder and the launch's wall
    seconds."""
    argv = _compare(args, spec, runs / spec)
    seconds = launch(hosts.mpirun(args.ranks, argv, runs / "hostfile", costmodel.mca_args()),
                     runs / f"{spec}.log", args.timeout)
    print(f"  {spec}: {seconds:.0f} s", file=sys.stderr)
    return {"folder": runs / spec / method_spec(spec)[0], "job_s": seconds}


def time_one_rank(args, runs: Path) -> dict:
    """Seconds of local training of one client, and of the test evaluation, on one rank with no
    other rank sharing the cores (timeline.one_rank of a --ref-rounds one-rank FedAvg run of the
    same config)."""
    argv = _compare(args, "fedavg", runs / "one-rank") + ["--set", f"run.rounds={args.ref_rounds}"]
    launch(argv, runs / "one-rank.log", args.timeout)
    return timeline.one_rank(load_run(runs / "one-rank" / "fedavg").rounds)


def record_bytes(run, ranks: int) -> int:
    """Bytes of the float64 record a global-scope run Allreduces in a round (0 for Allreduce
    PowerSGD alone, which sends none): 1 + m + the sketch's buckets at model granularity; at
    layer granularity, as its scalar rounds sent it."""
    cfg = run.config or {}
    if cfg.get("algo.name") != "lbgm":
        return 0
    if cfg.get("algo.granularity", "model") == "model":
        d = run.summary["num_params"]
        return 8 * (1 + cfg["algo.lookback"] + sum(sketch_widths([d], cfg["algo.sketch"])))
    scalar = [r["mpi_bytes"] // ranks for r in run.rounds if r["refreshes"] == 0]
    if not scalar:
        raise ValueError(f"{run.path}: no scalar round tells the record's size")
    return min(scalar)


def method_result(method: str, run, job_s: float, alone: dict, ranks: int,
                  targets: list[float | None]) -> dict:
    """The measured row of one method, plus its per-round curves (for the plot and the model).
    ``targets``: the accuracies of TARGETS (None without a FedAvg run)."""
    rows, s = run.rounds, run.summary
    wall, seen = timeline.elapsed(rows), timeline.visible(rows, alone, ranks)
    hits = []
    for target in targets:
        rounds_hit, wall_hit = timeline.to_target(rows, wall, target)
        _, seen_hit = timeline.to_target(rows, seen, target)
        hits.append({"target_acc": target, "rounds": rounds_hit, "s": wall_hit,
                     "visible_s": seen_hit})
    total = lambda key: sum(r[key] for r in rows)
    cfg = run.config or {}
    scope = cfg.get("algo.scope", "client")
    out = {
        "method": method, "label": run.label, "algo": s["algo"], "compressor": s["compressor"],
        "scope": scope, "topology": cfg.get("system.topology", "replicated"),
        "server": cfg.get("system.server", "shared"), "lookback": cfg.get("algo.lookback", 1),
        "clients": cfg.get("clients.count"), "placement": cfg.get("clients.placement", "cyclic"),
        "num_params": s["num_params"], "rounds": len(rows),
        "rounds_to_target": hits[0]["rounds"], "s_to_target": hits[0]["s"],
        "visible_s_to_target": hits[0]["visible_s"], "targets": hits,
        "total_s": wall[-1], "visible_total_s": seen[-1], "job_s": job_s,
        "comm_s": total("comm_s"), "train_s": total("train_s"), "decide_s": total("decide_s"),
        "mpi_bytes": s["total_mpi_bytes"], "link_bytes": total("link_bytes"),
        "dense_rounds": sum(r["refreshes"] > 0 for r in rows),
        # bytes each rank's link carried out and in (the trainer's ledger; None before it had one)
        "link_up_by_rank": s.get("link_up_bytes_by_rank"),
        "link_down_by_rank": s.get("link_down_bytes_by_rank"),
        "best_acc": s["best_acc"], "final_acc": s["final_acc"],
        "curve": [{"round": r["round"], "s": w, "visible_s": v, "acc": r["test_acc"]}
                  for r, w, v in zip(rows, wall, seen)],
        "rows": rows,
    }
    if scope == "global":
        out["record_bytes"] = record_bytes(run, ranks)
    return out


def reference_method(specs) -> str | None:
    """The method spec whose best accuracy sets the targets: FedAvg in the star where one ran
    (fedavg@star), else None (``fedavg_reference`` finds the replicated FedAvg run)."""
    return next((m for m in specs if method_spec(m) == ("fedavg", "star")), None)


def measured(folders: dict, alone: dict, ranks: int) -> tuple[list[dict], list[float | None]]:
    """Rows for every method, and the target accuracies (TARGETS x the reference's best: FedAvg
    in the star where it ran, else the FedAvg run)."""
    runs = {m: load_run(f["folder"]) for m, f in folders.items()}
    star = reference_method(runs)
    ref = runs[star] if star else fedavg_reference(list(runs.values()))
    targets = [f * ref.summary["best_acc"] if ref else None for f in TARGETS]
    return [method_result(m, runs[m], folders[m]["job_s"], alone, ranks, targets)
            for m in folders], targets


def fit_model(points: list[dict], results: list[dict], ranks: int, links: starmodel.Links,
              alone: dict, split: bool = False) -> dict:
    """The round-cost MODEL: fitted parameters, its error on the points it was fitted on, its
    error on the measured runs' collective seconds, and its predictions (``predict``; on split
    links ``predict_split``, which also keeps every method's profile)."""
    params = costmodel.fit(points)
    check, profiles = [], {}
    for res in results:
        prof = profiles[res["method"]] = starmodel.profile(res, ranks)
        prof["by_target"] = [starmodel.profile({**res, "rounds_to_target": t["rounds"]}, ranks)
                             if t["rounds"] else None for t in res["targets"]]
        model_s = sum(measured_row_comm(params, r, prof, res, ranks, links) for r in res["rows"])
        check.append({"method": res["method"], "comm_s": res["comm_s"], "model_s": model_s,
                      "error": model_s / res["comm_s"] - 1.0})
    predictions = predict_split(params, profiles, alone, links) if split \
        else predict(params, profiles, alone)
    return {"params": params, "points": costmodel.fit_errors(params, points), "runs": check,
            **predictions}


def measured_row_comm(params: dict, row: dict, prof: dict, res: dict, ranks: int,
                      links: starmodel.Links) -> float:
    """Modelled seconds in the exchange of one measured round (a ring paced by the slowest
    direction of any link; the star by starmodel)."""
    if prof["kind"] in starmodel.STAR_KINDS:
        host = starmodel.hosts(res["clients"], ranks, res["placement"], res["server"])
        return starmodel.row_comm(params, row, prof, ranks, links, host)
    return costmodel.row_comm(params, row, prof["kind"], ranks, links.slowest, prof)


# the link shapes of the split MODEL (bits/s: server, client up, client down): the measured
# one is added first; symmetric cluster links, then slow client uplinks into a fast server
STAR_SHAPES = tuple(starmodel.Links(*x) for x in (
    (1e8, 1e8, 1e8), (1e9, 1e9, 1e9), (1e10, 1e10, 1e10),
    (1e9, 2e7, 1e8), (1e10, 2e7, 1e8), (1e10, 1e8, 1e9)))


def predict_split(params: dict, profiles: dict, alone: dict,
                  measured_links: starmodel.Links | None = None) -> dict:
    """The MODEL of every profiled method, star and replicated, at MODEL_RANKS on each link
    shape of STAR_SHAPES (the measured one first), one client per rank:
      topology_table: seconds to each of TARGETS per method, and the first to each (winner);
      star_per_round: seconds per round in the exchange (refresh fraction of every round);
      star_break_even: the refresh fraction per client at which a star gather method's round
        costs FedAvg-in-the-star's, and its round against FedAvg-in-the-star's at each of
        STAR_FRACTIONS and at the measured fraction (none without a FedAvg-in-the-star
        profile)."""
    shapes = list(dict.fromkeys(([measured_links] if measured_links else []) + list(STAR_SHAPES)))
    fed = next((p for p in profiles.values() if p["kind"] == "star-allreduce"), None)
    table, per_round, even = [], [], []
    for links in shapes:
        for ranks in MODEL_RANKS:
            row = {"links": links.label(), "bits": [links.server, links.up, links.down],
                   "ranks": ranks, "seconds": {}, "winner": []}
            for method, prof in profiles.items():
                row["seconds"][method] = [
                    None if t is None else starmodel.time_to_target(params, t, alone, ranks, links)
                    for t in prof.get("by_target", [prof])]
                per_round.append({"links": links.label(), "ranks": ranks, "method": method,
                                  "comm_s": starmodel.round_comm(params, prof, ranks, links,
                                                                 every=True),
                                  "local_s": starmodel.local_s(prof, alone, ranks)})
                if fed is not None and prof["kind"] == "star-gather":
                    fed_s = starmodel.star_round(params, fed, ranks, links)
                    ratio = lambda f: starmodel.star_round(  # noqa: B023 (used at once)
                        params, {**prof, "refresh": f}, ranks, links) / fed_s
                    even.append({"links": links.label(), "ranks": ranks, "method": method,
                                 "measured": prof["refresh_all"],
                                 "break_even": star_break_even(params, prof, fed, ranks, links),
                                 "ratio": [ratio(f) for f in STAR_FRACTIONS],
                                 "ratio_measured": ratio(prof["refresh_all"])})
            for k in range(len(TARGETS)):
                done = {m: s[k] for m, s in row["seconds"].items()
                        if k < len(s) and s[k] is not None}
                row["winner"].append(min(done, key=done.get) if done else None)
            table.append(row)
    return {"topology_table": table, "star_per_round": per_round, "star_break_even": even,
            "profiles": profiles}


STAR_FRACTIONS = (0.01, 0.03, 0.1, 0.3, 1.0)  # refresh fractions of the star's round ratios


def star_break_even(params: dict, prof: dict, fed: dict, ranks: int,
                    links: starmodel.Links) -> float:
    """The refresh fraction per client at which ``prof``'s star round costs ``fed``'s (FedAvg
    in the star); 0 if even no refresh costs more, 1 if every refresh costs less (bisection)."""
    target = starmodel.star_round(params, fed, ranks, links)
    cost = lambda f: starmodel.star_round(params, {**prof, "refresh": f}, ranks, links)
    return costmodel.break_even(cost, target)


def baseline(profiles: dict, prof: dict) -> str | None:
    """The method whose every round is a global-scope method's dense round: FedAvg, or
    Allreduce PowerSGD alone under PowerSGD (None for a method that sends no record)."""
    if prof["kind"] != "global" or not prof["record"]:
        return None
    for method, other in profiles.items():
        if prof["dense_calls"] == 1 and other["kind"] == "allreduce":
            return method
        if prof["dense_calls"] == 2 and other["kind"] == "global" and not other["record"] \
                and other["dense_calls"] == 2:
            return method
    return None


def predict(params: dict, profiles: dict, alone: dict) -> dict:
    """The MODEL's predictions at MODEL_RANKS x MODEL_RATES from fitted ``params`` and each
    method's profile (costmodel.profile; "by_target": its profile up to each of TARGETS):
      predictions: seconds to the first target (one key per rate, as before) and to each target;
      per_round: seconds per round, local work and collectives (dense / refresh fraction over
        every measured round);
      break_even: per-client LBGM's refresh fraction at which its round's collectives cost
        FedAvg's Allreduce (for each gather method whose payload is the whole model);
      global_check: the global scope's collectives per round against those of the method its
        dense rounds run (``baseline``), the record Allreduced by the pinned ring and by
        recursive doubling."""
    fed = next((p for m, p in profiles.items() if p["kind"] == "allreduce"), None)
    preds, per_round, even, check = [], [], [], []
    for method, prof in profiles.items():
        for ranks in MODEL_RANKS:
            row = {"method": method, "ranks": ranks, "profile": prof}
            for rate in MODEL_RATES:
                bits = netns.rate_bits(rate)
                row[rate] = costmodel.time_to_target(params, prof, alone, ranks, bits)
                row[f"{rate}_targets"] = [
                    None if t is None else costmodel.time_to_target(params, t, alone, ranks, bits)
                    for t in prof.get("by_target", [prof])]
                comm = costmodel.round_comm(params, prof, ranks, bits, every=True)
                per_round.append({"method": method, "ranks": ranks, "rate": rate,
                                  "comm_s": comm,
                                  "local_s": costmodel.local_s(prof, alone, ranks)})
                if fed is not None and prof["kind"] == "gather" and method.startswith("lbgm"):
                    even.append({"method": method, "ranks": ranks, "rate": rate,
                                 "measured": prof.get("refresh_all", prof["refresh"]),
                                 "break_even": costmodel.break_even_refresh(
                                     params, prof, ranks, bits, fed["bytes"])})
                base = baseline(profiles, prof)
                if base is not None:
                    base_s = costmodel.round_comm(params, profiles[base], ranks, bits)
                    rd = costmodel.round_comm(params, prof, ranks, bits, every=True,
                                              record_op="allreduce-rd")
                    check.append({"method": method, "baseline": base, "ranks": ranks,
                                  "rate": rate, "baseline_s": base_s, "ring_s": comm,
                                  "rd_s": rd, "dense": prof["dense_all"],
                                  "baseline_local_s": costmodel.local_s(profiles[base], alone,
                                                                        ranks),
                                  "local_s": costmodel.local_s(prof, alone, ranks)})
            preds.append(row)
    return {"predictions": preds, "per_round": per_round, "break_even": even,
            "global_check": check}


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


def measured_table(results: list[dict], reference: str = "fedavg") -> str:
    """Measured figures; "x" compares seconds to a target with the ``reference`` method's
    (FedAvg's; visible seconds)."""
    fed = next((r for r in results if r["method"] == reference), None)
    header = ["method", "rounds"]
    for f in TARGETS:
        header += [f"to {f:g}: rounds", "s", "visible s", "x faster"]
    header += ["total s", "comm s", "dense rounds", "MPI", "link", "best acc", "final acc"]
    rows = []
    for r in results:
        row = [r["method"], str(r["rounds"])]
        for k, t in enumerate(r["targets"]):
            ref = fed["targets"][k]["visible_s"] if fed else None
            row += [str(t["rounds"] or "n/a"), _s(t["s"]), _s(t["visible_s"]),
                    _ratio(t["visible_s"], ref)]
        row += [_s(r["total_s"]), _s(r["comm_s"]), str(r["dense_rounds"]),
                human_bytes(r["mpi_bytes"]), human_bytes(r["link_bytes"]),
                f"{100 * r['best_acc']:.2f}%", f"{100 * r['final_acc']:.2f}%"]
        rows.append(row)
    return table(header, rows)


def target_checks(results: list[dict], rate: str) -> list[dict]:
    """The global scope's targets (issue 16), each with what was measured: never slower than
    FedAvg to either target (at most NOT_SLOWER x its visible seconds); at 100 Mbit/s at least
    1.5x sooner to the second target, best accuracy within 0.5 points of FedAvg's; at 10 Mbit/s
    at least 2.5x sooner; Allreduce PowerSGD under global LBGM at least 1.3x sooner than alone."""
    by = {r["method"]: r for r in results}
    fed, checks = by.get("fedavg"), []
    if fed is None:
        return checks
    seen = lambda r, k: r["targets"][k]["visible_s"]
    ratio = lambda a, b: None if a is None or b is None else a / b
    for r in results:
        if r["scope"] != "global" or r["algo"] != "lbgm":
            continue
        for k, f in enumerate(TARGETS):
            x = ratio(seen(r, k), seen(fed, k))
            checks.append({"method": r["method"], "check": f"time to {f:g} x FedAvg's <= "
                           f"{NOT_SLOWER:g}", "value": x, "ok": x is not None and x <= NOT_SLOWER})
        need = {"100mbit": 1.5, "10mbit": 2.5}.get(rate)
        if need:
            x = ratio(seen(fed, 1), seen(r, 1))
            checks.append({"method": r["method"], "check": f"{need:g}x sooner than FedAvg to "
                           f"{SECOND_TARGET:g}", "value": x, "ok": x is not None and x >= need})
        if rate == "100mbit":
            gap = 100 * (fed["best_acc"] - r["best_acc"])
            checks.append({"method": r["method"], "check": "best acc within 0.5 pt of "
                           "FedAvg's (gap, pt)", "value": gap, "ok": gap <= 0.5})
    alone, stacked = by.get("allreduce-powersgd"), by.get("allreduce-powersgd+lbgm-global")
    if alone and stacked:
        for k, f in enumerate(TARGETS):
            x = ratio(seen(alone, k), seen(stacked, k))
            checks.append({"method": stacked["method"], "check": "1.3x sooner than "
                           f"allreduce-powersgd to {f:g}", "value": x,
                           "ok": x is not None and x >= 1.3})
    return checks


def star_checks(results: list[dict], reference: str) -> list[dict]:
    """The star's target: every per-client LBGM method in the star (no compressor) reaches the
    first target at least STAR_SPEEDUP x sooner than FedAvg in the same star (visible seconds;
    the wall-clock ratio beside it), its best accuracy within STAR_GAP_PT points of FedAvg's."""
    by = {r["method"]: r for r in results}
    fed, checks = by.get(reference), []
    if fed is None:
        return checks
    for r in results:
        if r["topology"] != "star" or r["algo"] != "lbgm" or r["compressor"] != "none":
            continue
        t, f = r["targets"][0], fed["targets"][0]
        x = None if t["visible_s"] is None else f["visible_s"] / t["visible_s"]
        wall = None if t["s"] is None else f["s"] / t["s"]
        checks.append({"method": r["method"], "check": f"{STAR_SPEEDUP:g}x sooner than "
                       f"{reference} to {TARGET_FRACTION:g} (visible s; wall-clock in brackets)",
                       "value": x, "wall": wall, "ok": x is not None and x >= STAR_SPEEDUP})
        gap = 100 * (fed["best_acc"] - r["best_acc"])
        checks.append({"method": r["method"], "check": f"best acc within {STAR_GAP_PT:g} pt of "
                       f"{reference}'s (gap, pt)", "value": gap, "ok": gap <= STAR_GAP_PT})
    return checks


def bytes_by_rank_table(results: list[dict]) -> str:
    """Every rank's link bytes out / in (the trainer's per-rank ledger), per method."""
    ranks = max((len(r["link_up_by_rank"] or []) for r in results), default=0)
    if not ranks:
        return ("n/a: these runs' summary.json has no per-rank link ledger "
                "(link_up_bytes_by_rank, link_down_bytes_by_rank)")
    rows = []
    for r in results:
        up, down = r["link_up_by_rank"], r["link_down_by_rank"]
        rows.append([r["method"]] + [
            "n/a" if up is None or down is None
            else f"{human_bytes(up[k])} / {human_bytes(down[k])}" for k in range(ranks)])
    return table(["method"] + [f"rank {k}: up / down" for k in range(ranks)], rows)


def checks_table(checks: list[dict]) -> str:
    value = lambda c: ("n/a" if c["value"] is None else f"{c['value']:.2f}") + (
        "" if "wall" not in c else f" ({_s2(c['wall'])})")
    return table(["method", "target", "measured", "met"],
                 [[c["method"], c["check"], value(c), "yes" if c["ok"] else "NO"]
                  for c in checks])


def _s2(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


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


def _model_vs_measured(runs: list[dict]) -> str:
    """The model's seconds in the exchange against each measured run's."""
    return table(["method", "measured comm s", "model comm s", "error"],
                 [[c["method"], _s(c["comm_s"]), _s(c["model_s"]), f"{100 * c['error']:+.0f}%"]
                  for c in runs])


def model_tables(model: dict, ranks: int | None) -> str:
    """The model against the measured runs (if any), then its predictions."""
    parts = []
    if model.get("runs"):
        parts += [f"MODEL vs measured seconds in collectives ({ranks} ranks, each run's own "
                  "refreshes):", _model_vs_measured(model["runs"])]
    heads = [f"{r}: " + " / ".join(f"{f:g}" for f in TARGETS) for r in MODEL_RATES]
    parts += ["MODEL: predicted seconds to the targets (" + ", ".join(f"{f:g}" for f in TARGETS)
              + " x FedAvg's best; one client per rank, rounds to each target as measured):",
              table(["method", "ranks", *heads],
                    [[p["method"], str(p["ranks"]),
                      *[" / ".join(_s(x) for x in p.get(f"{r}_targets", [p.get(r)]))
                        for r in MODEL_RATES]] for p in model["predictions"]])]
    if model.get("per_round"):
        per = model["per_round"]
        methods = list(dict.fromkeys(p["method"] for p in per))
        cell = {(p["method"], p["ranks"], p["rate"]): p for p in per}
        parts.append("MODEL: seconds per round, collectives (local work + collectives), one "
                     "client per rank; refresh and dense-round fractions over every measured "
                     "round:")
        for rate in MODEL_RATES:
            rows = [[m] + [f"{cell[m, n, rate]['comm_s']:.3f} "
                           f"({cell[m, n, rate]['comm_s'] + cell[m, n, rate]['local_s']:.2f})"
                           for n in MODEL_RANKS] for m in methods]
            parts.append(table([rate] + [f"{n} ranks" for n in MODEL_RANKS], rows))
    if model.get("break_even"):
        rows = [[b["method"], b["rate"], str(b["ranks"]), f"{b['break_even']:.3f}",
                 f"{b['measured']:.3f}"] for b in model["break_even"]]
        parts += ["MODEL: per-client LBGM's break-even refresh fraction (its Allgathervs cost "
                  "FedAvg's Allreduce) and the measured one:",
                  table(["method", "rate", "ranks", "break-even", "measured"], rows)]
    if model.get("global_check"):
        checks = model["global_check"]
        total = lambda c: (c["local_s"] + c["ring_s"]) / (c["baseline_local_s"]
                                                          + c["baseline_s"])
        rows = [[c["method"], c["baseline"], c["rate"], str(c["ranks"]), f"{c['dense']:.2f}",
                 f"{c['baseline_s']:.3f}", f"{c['ring_s']:.3f}",
                 f"{c['ring_s'] / c['baseline_s']:.2f}", f"{c['rd_s']:.3f}",
                 f"{c['rd_s'] / c['baseline_s']:.2f}",
                 f"{c['local_s'] - c['baseline_local_s']:+.2f}", f"{total(c):.2f}"]
                for c in checks]
        slower = [c for c in checks if c["ring_s"] > c["baseline_s"]]
        still = [c for c in checks if c["rd_s"] > c["baseline_s"]]
        note = (f"slower than its dense-only baseline under the pinned ring in {len(slower)} of "
                f"{len(checks)} cases (at most {max(c['ring_s'] / c['baseline_s'] for c in slower):.2f}x): "
                "a ring Allreduce of the record takes as many latency steps, 2 (P - 1), as the "
                "baseline's whole model; with the record by recursive doubling (ceil(log2 P) "
                f"steps) in {len(still)}") if slower else \
            "never slower than its dense-only baseline, the record by the pinned ring"
        local = [c for c in checks if total(c) > 1]
        note += (f"\nwith local work (local s: the global scope's measured decide and bank "
                 f"seconds a round beyond the baseline's) slower in {len(local)} of {len(checks)} "
                 "cases" + (f" (at most {max(total(c) for c in local):.2f}x)" if local else ""))
        parts += ["MODEL: the global scope's collectives per round (s) against those of the "
                  "method its dense rounds run, its record Allreduced by the pinned ring and by "
                  "recursive doubling; then its extra local seconds a round and the whole round "
                  "(ring record) against the baseline's:",
                  table(["method", "baseline", "rate", "ranks", "dense", "baseline s", "ring s",
                         "x", "rec.dbl s", "x", "local s", "x round"], rows), note]
    return "\n\n".join(parts)


def split_model_tables(model: dict, ranks: int | None, reference: str | None) -> str:
    """The model against the measured runs (if any), then its predictions on every link shape
    (``predict_split``): seconds to the targets with the winner, the winners alone, seconds
    per round, and the star's break-even refresh fraction."""
    parts = []
    if model.get("runs"):
        parts += [f"MODEL vs measured seconds in the exchange ({ranks} ranks, each run's own "
                  "refreshes; the star's: which clients refreshed drawn at random):",
                  _model_vs_measured(model["runs"])]
    rows = model["topology_table"]
    methods = list(dict.fromkeys(m for r in rows for m in r["seconds"]))
    goals = " / ".join(f"{f:g}" for f in TARGETS)
    parts += [f"MODEL: predicted seconds to {goals} x {reference or 'FedAvg'}'s best, and the "
              "first to each (one client per rank, the rounds to each target as measured; "
              "S: the server host's link both ways, U / D: every client host's up / down; "
              "rings paced by the slowest direction):",
              table(["links", "ranks", *methods, *[f"first to {f:g}" for f in TARGETS]],
                    [[r["links"], str(r["ranks"]),
                      *[" / ".join(_s(x) for x in r["seconds"][m]) for m in methods],
                      *[w or "none" for w in r["winner"]]] for r in rows])]
    shapes = list(dict.fromkeys(r["links"] for r in rows))
    cell = {(r["links"], r["ranks"]): r for r in rows}
    parts += ["MODEL: which topology and method reaches the targets first (" + goals + "):",
              table(["links"] + [f"{n} ranks" for n in MODEL_RANKS],
                    [[shape] + [" / ".join(w or "none" for w in cell[shape, n]["winner"])
                                for n in MODEL_RANKS] for shape in shapes])]
    per = {(p["links"], p["ranks"], p["method"]): p for p in model["star_per_round"]}
    parts.append("MODEL: seconds per round in the exchange (local work + exchange), refresh "
                 "fractions of every measured round:")
    for shape in shapes:
        parts.append(table([shape] + [f"{n} ranks" for n in MODEL_RANKS],
                           [[m] + [f"{per[shape, n, m]['comm_s']:.3f} "
                                   f"({per[shape, n, m]['comm_s'] + per[shape, n, m]['local_s']:.2f})"
                                   for n in MODEL_RANKS] for m in methods]))
    even = model.get("star_break_even") or []
    for method in list(dict.fromkeys(b["method"] for b in even))[:1]:
        mine = [b for b in even if b["method"] == method]
        parts += [f"MODEL: {method}'s exchange per round / FedAvg-in-the-star's, one client "
                  "per rank refreshing with probability f (the slowest client uplink paces the "
                  "gather, so one refresh anywhere costs a whole upload), at the measured f, "
                  "and the f at which they cost the same (break-even):",
                  table(["links", "ranks", *[f"f={f:g}" for f in STAR_FRACTIONS],
                         "measured f", "x at it", "break-even"],
                        [[b["links"], str(b["ranks"]), *[f"{x:.2f}" for x in b["ratio"]],
                          f"{b['measured']:.3f}", f"{b['ratio_measured']:.2f}",
                          f"{b['break_even']:.3f}"] for b in mine])]
    return "\n\n".join(parts)


def plot(results: list[dict], targets: list[float | None], args, path: Path) -> None:
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
        for target, style in zip(targets, ("--", ":")):
            if target is not None:
                ax.axhline(100 * target, color="gray", linestyle=style, linewidth=1,
                           label=f"target {100 * target:.1f}%")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(loc="lower right")
    fig.suptitle(f"Test accuracy against wall-clock time: {args.ranks} ranks, one per host, "
                 + (args.split.describe() if args.split else f"links shaped to {args.rate}"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_text(args, results, targets, alone, model) -> str:
    """Everything the benchmark prints, in order."""
    reference = reference_method(r["method"] for r in results)
    target_text = ", ".join(f"{100 * t:.2f}% = {f:g}" for t, f in zip(targets, TARGETS)
                            if t is not None) or "none (no FedAvg run)"
    fit_from = f" (collective timings of {args.reuse_fit})" if args.reuse_fit else ""
    server = f"; the star's server: {args.server}" if args.server else ""
    measured_by = getattr(args, "measured_by", None)
    head = [
        f"command: python {' '.join(sys.argv)}"
        + (f"\nrebuilt from the run folders of: {measured_by}" if measured_by else ""),
        f"{args.ranks} ranks, one per namespace host; {links_text(args)} (tc tbf, "
        f"no added delay){server}; Open MPI pins: {' '.join(costmodel.mca_args())}\n"
        f"target accuracies {target_text} x {reference or 'FedAvg'}'s best; on one rank "
        f"alone, local training of one client takes {alone['train_s']:.3f} s a round and the "
        f"test evaluation {alone['eval_s']:.3f} s",
        "MEASURED (seconds are the root rank's, summed over rounds; start-up and the final "
        "checkpoint excluded):\n"
        "  s: wall-clock, ranks sharing the machine's cores\n"
        "  visible s: the same with each round's local training and evaluation "
        "replaced by the one-rank figures above (what the links cost, with compute as on a "
        f"dedicated core); x faster: {reference or 'FedAvg'}'s visible seconds to the target / "
        "the method's\n"
        "  comm s: inside the data collectives (the star's sends and receives); dense rounds: "
        "rounds with a refresh; MPI: bytes handed to MPI by all ranks; link: bytes the busiest "
        "rank's link carried (its busier direction, summed over rounds)",
        measured_table(results, reference or "fedavg")]
    if args.split:
        return "\n\n".join(head + [
            "LINK BYTES of every rank (what its link carried out / in, all rounds; rank 0 runs "
            "on the server host h0):",
            bytes_by_rank_table(results),
            "TARGET of the star:",
            checks_table(star_checks(results, reference or "fedavg")),
            f"MODEL of the round cost, fitted on the collective timings below{fit_from}:",
            fit_table(model),
            split_model_tables(model, args.ranks, reference)])
    return "\n\n".join(head + [
        "TARGETS of the global scope:",
        checks_table(target_checks(results, args.rate)),
        f"MODEL of the round cost, fitted on the collective timings below{fit_from}:",
        fit_table(model),
        model_tables(model, args.ranks),
    ])


def reused_points(path: str) -> list[dict]:
    """The collective timings kept in a results JSON (without the model's figures)."""
    points = json.loads(Path(path).read_text())["model"]["points"]
    return [{k: v for k, v in p.items() if k not in ("model_s", "error")} for p in points]


def run_profiles(folder: Path, alone: dict) -> dict:
    """Profiles of the methods of a compare output folder (each OUT/METHOD), at the rank count
    they ran at, with rounds to TARGETS x that folder's FedAvg best (if it has one)."""
    folders = {m.name: {"folder": m, "job_s": 0.0} for m in sorted(folder.iterdir())
               if (m / "summary.json").exists()}
    ranks = {m: len(load_run(f["folder"]).summary["mpi_bytes_by_rank"])
             for m, f in folders.items()}
    out = {}
    for m, f in folders.items():
        results, _ = measured({m: f, **({"fedavg": folders["fedavg"]}
                                        if "fedavg" in folders else {})}, alone, ranks[m])
        res = results[0]
        prof = starmodel.profile(res, ranks[m])
        prof["by_target"] = [starmodel.profile({**res, "rounds_to_target": t["rounds"]},
                                               ranks[m]) if t["rounds"] else None
                             for t in res["targets"]]
        prof["source"] = str(f["folder"])
        out[m] = prof
    return out


def saved_profiles(data: dict) -> dict:
    """Every method's profile in a results JSON (split links keep them in model["profiles"]),
    each with its clients a round (from the results where the profile lacks them)."""
    model = data["model"]
    if "profiles" in model:
        profiles = dict(model["profiles"])
    else:
        profiles = {p["method"]: p["profile"] for p in model["predictions"]}
    clients = {r["method"]: r.get("clients") for r in data.get("results", [])}
    with_clients = lambda p, m: p if p is None or p.get("clients") else {**p,
                                                                         "clients": clients.get(m)}
    return {m: {**with_clients(p, m),
                **({"by_target": [with_clients(t, m) for t in p["by_target"]]}
                   if "by_target" in p else {})} for m, p in profiles.items()}


def model_only(args) -> None:
    """Print (and write OUT.txt/.json when --out is given) the MODEL's predictions from a
    results JSON's fitted parameters, local seconds and profiles; further JSONs (comma-separated)
    and --profile-runs add the profiles of methods the first does not have."""
    sources = [json.loads(Path(f).read_text()) for f in args.model_only.split(",")]
    params, alone = sources[0]["model"]["params"], sources[0]["one_rank_s"]
    profiles = {}
    for data in sources:  # the first file's fit; every file's methods, the first's kept
        for method, prof in saved_profiles(data).items():
            profiles.setdefault(method, prof)
    if args.profile_runs:
        for method, prof in run_profiles(Path(args.profile_runs), alone).items():
            profiles.setdefault(method, prof)
    # split links: the measured shape of the first JSON that has one, or --uplink / --downlink
    split = next((d for d in sources if d.get("links")), None)
    star = any(p["kind"] in starmodel.STAR_KINDS for p in profiles.values())
    if split or star or args.split:
        links = model_links(args) if args.split else None
        if links is None and split:
            links = starmodel.Links(*(netns.rate_bits(split["links"][k])
                                      for k in ("server", "up", "down")))
        model = predict_split(params, profiles, alone, links)
        tables = split_model_tables(model, None, split.get("reference") if split else None)
    else:
        model = predict(params, profiles, alone)
        tables = model_tables(model, None)
    text = "\n\n".join([f"command: python {' '.join(sys.argv)}",
                         f"fitted parameters of {args.model_only.split(',')[0]}, profiles of "
                         f"{args.model_only}"
                         + (f", profiles of {args.profile_runs}" if args.profile_runs else "")
                         + f"; local work as on one rank alone: training {alone['train_s']:.3f} s, "
                         f"evaluation {alone['eval_s']:.3f} s a round",
                         tables])
    print(text)
    if args.out_given:
        out = write_record(Path(args.out).with_suffix(".json"),
                           {"source": args.model_only, "profile_runs": args.profile_runs,
                            "params": params, "one_rank_s": alone, "ranks": list(MODEL_RANKS),
                            "rates": list(MODEL_RATES), **model}, text=text)
        print(f"wrote {out.with_suffix('.txt')}, .json")


def main() -> None:
    args = parse_args()
    if args.model_only:
        model_only(args)
        return
    if args.rebuild:
        rebuild(args)
        return
    micro_ranks = [] if args.reuse_fit else [int(r) for r in args.micro_ranks.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-links-") as tmp:
        runs = Path(args.runs or tmp)
        runs.mkdir(parents=True, exist_ok=True)
        with make_hosts(args, max([args.ranks, *micro_ranks])) as hosts:
            points = reused_points(args.reuse_fit) if args.reuse_fit \
                else measure_collectives(hosts, args, Path(tmp))
            qdiscs = hosts.qdiscs() if args.split else None
            folders = {m: train(hosts, args, m, runs) for m in args.methods.split(",")}
        alone = time_one_rank(args, runs)
        finish(args, points, folders, alone, qdiscs)


def rebuild(args) -> None:
    """The report, JSON and plot of an earlier run again, from its results JSON (its settings,
    collective timings, one-rank seconds and launch seconds) and the run folders it kept in
    --runs: the same measurements, the tables and the MODEL computed by this code."""
    old = json.loads(Path(args.rebuild).read_text())
    if not args.runs:
        raise SystemExit("--rebuild needs --runs DIR, the run folders of the run that wrote "
                         f"{args.rebuild}")
    args.methods = ",".join(r["method"] for r in old["results"])
    args.ranks, args.config, args.overrides = old["ranks"], old["config"], old["overrides"]
    args.rate, args.reuse_fit = old["rate"], old["fit_from"]
    if old.get("links"):
        args.split = shaping.Split(old["links"]["server"], old["links"]["up"],
                                   old["links"]["down"])
        args.topology, args.server = old.get("topology"), old.get("server")
    if not args.out_given:
        args.out = str(Path(args.rebuild).with_suffix(""))
    args.measured_by = old.get("measured_by") or old["command"]
    runs = Path(args.runs)
    folders = {r["method"]: {"folder": runs / r["method"] / method_spec(r["method"])[0],
                             "job_s": r["job_s"]} for r in old["results"]}
    finish(args, reused_points(args.rebuild), folders, old["one_rank_s"],
           (old.get("links") or {}).get("qdiscs"))


def finish(args, points: list[dict], folders: dict, alone: dict, qdiscs: dict | None) -> None:
    """Measure the trained runs, fit and apply the MODEL, print the report and write OUT.txt,
    OUT.json and OUT.png."""
    results, targets = measured(folders, alone, args.ranks)
    model = fit_model(points, results, args.ranks, model_links(args), alone, bool(args.split))
    text = report_text(args, results, targets, alone, model)
    print(text)
    out = Path(args.out).with_suffix(".json")
    record = {"config": args.config,
              "overrides": args.overrides, "rate": args.rate, "ranks": args.ranks,
              "pinned_mca": costmodel.PINNED, "target_acc": targets[0],
              "targets": [{"fraction": f, "acc": t} for f, t in zip(TARGETS, targets)],
              "fit_from": args.reuse_fit, "one_rank_s": alone,
              "results": [{k: v for k, v in r.items() if k != "rows"} for r in results],
              "checks": target_checks(results, args.rate), "model": model}
    if getattr(args, "measured_by", None):
        record["measured_by"] = args.measured_by
    if args.split:
        reference = reference_method(args.methods.split(","))
        record.update(
            topology=args.topology, server=args.server, reference=reference,
            links={"server": args.split.server, "up": args.split.up, "down": args.split.down,
                   "qdiscs": qdiscs},
            checks=star_checks(results, reference or "fedavg"))
    write_record(out, record, text=text)
    plot(results, targets, args, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.txt')}, .json, .png")


if __name__ == "__main__":
    main()
