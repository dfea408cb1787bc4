"""A MODEL of the cost of the trainer's two collectives, fitted on measured collective times.

The benchmark pins Open MPI's algorithms (see ``PINNED``), so each collective has a known
schedule: a number of sequential steps, and a number of bytes that the busiest rank's link carries
(``wire``). For a link of rate R bits/s, one collective is modelled as

    seconds = alpha * steps + (b0 + c / R) * wire

alpha is the per-step latency (software and links), c / R the wire's time per byte (c = 8 for a
perfect link; more for TCP/IP overhead), b0 the host's own time per byte (copies, the TCP stack).
The three are fitted per collective on measured points (several rank counts, sizes and rates):
alpha on the latency-bound ones, then b0 and c (non-negative) on the others (see ``fit``).

Schedules (P ranks):
  Allreduce, ring: 2(P-1) steps; each rank sends 2(P-1)/P of the n bytes.
  Allgatherv, sparbit: ceil(log2 P) steps; the busiest link carries the larger of all blocks
  but the smallest (a rank receives every block but its own; exact for equal blocks) and
  ceil(log2 P) x the largest block (one block needs that many hops to reach every rank; exact for
  a single block).
  Allreduce, recursive doubling (``allreduce-rd``, not pinned: what a latency-optimal algorithm
  would cost a small message, with the ring's fitted per-step and per-byte figures):
  ceil(log2 P) steps, each sending all n bytes.

Rounds (``round_comm``): FedAvg one Allreduce of d + 1 float32; a gather method (per-client LBGM,
per-client PowerSGD) the records' Allgatherv then the payloads' (each client refreshing with the
measured probability); the global scope (``kind = "global"``) the float64 record's Allreduce in
the rounds that send one, then in a dense round FedAvg's Allreduce (or PowerSGD's two), with the
measured fraction of dense rounds; Allreduce PowerSGD alone is the global kind with no record
and every round dense.
"""

import math

import numpy as np
from scipy.optimize import nnls

import timeline

# Open MPI tuned-collective pins used for every method: ring Allreduce (bandwidth-optimal),
# sparbit Allgatherv (bandwidth-optimal for equal blocks, log-depth for a single block)
PINNED = {"coll": "^han", "coll_tuned_use_dynamic_rules": "1",
          "coll_tuned_allreduce_algorithm": "4", "coll_tuned_allgatherv_algorithm": "6"}
OPS = ("allreduce", "allgatherv")
LATENCY_BYTES = 4096  # points of at most this many bytes a rank fit the latency alone
FIT_ROUNDS = 20       # alternations of the two fits (they settle in a few)


def mca_args() -> list[str]:
    """The mpirun arguments that pin ``PINNED``."""
    return [a for key, value in PINNED.items() for a in ("--mca", key, value)]


def schedule(op: str, ranks: int, blocks: list[int]) -> tuple[int, float]:
    """(steps, wire bytes of the busiest link) of one collective; for allreduce ``blocks`` is
    [n], the bytes every rank contributes, for allgatherv each rank's block."""
    if ranks == 1:
        return 0, 0.0
    if op == "allreduce":
        return 2 * (ranks - 1), 2 * (ranks - 1) / ranks * blocks[0]
    if op == "allreduce-rd":
        depth = math.ceil(math.log2(ranks))
        return depth, depth * blocks[0]
    depth = math.ceil(math.log2(ranks))
    return depth, max(sum(blocks) - min(blocks), depth * max(blocks))


def point_blocks(point: dict) -> list[int]:
    """The blocks of a micro-benchmark point (benchmarks/links/collectives.py's cases)."""
    n, ranks = point["bytes"], point["ranks"]
    return {"allreduce": [n], "allgatherv-all": [n] * ranks,
            "allgatherv-one": [n] + [0] * (ranks - 1)}[point["op"]]


def _features(op: str, ranks: int, blocks: list[int], rate_bits: float) -> np.ndarray:
    steps, wire = schedule(op, ranks, blocks)
    return np.array([steps, wire, wire / rate_bits])


def fit(points: list[dict]) -> dict:
    """Fit (alpha, b0, c) per collective on micro-benchmark points (each with op, bytes, ranks,
    seconds, rate_bits); returns {op: {"alpha", "b0", "c"}}.

    Two regimes, fitted apart so that neither drowns the other: alpha by least squares on the
    latency-bound points (at most LATENCY_BYTES a rank), less their per-byte share; b0 and c by
    non-negative least squares of the relative error on the other points, less alpha's share.
    The two steps alternate until they settle (each share is small in the other regime)."""
    params = {}
    for op in OPS:
        mine = [p for p in points if p["op"].startswith(op)]
        x = np.array([_features(op, p["ranks"], point_blocks(p), p["rate_bits"]) for p in mine])
        t = np.array([p["seconds"] for p in mine])
        small = np.array([p["bytes"] <= LATENCY_BYTES for p in mine])
        steps, per_byte = x[small, 0], np.zeros(2)
        for _ in range(FIT_ROUNDS):
            alpha = max(0.0, float(steps @ (t[small] - x[small, 1:] @ per_byte) / (steps @ steps)))
            rest = (t[~small] - alpha * x[~small, 0]) / t[~small]
            per_byte, _ = nnls(x[~small, 1:] / t[~small, None], rest)
        params[op] = {"alpha": alpha, "b0": float(per_byte[0]), "c": float(per_byte[1])}
    return params


def seconds(params: dict, op: str, ranks: int, blocks: list[int], rate_bits: float) -> float:
    """Modelled seconds of one collective (``allreduce-rd`` with the Allreduce's parameters)."""
    p = params["allreduce" if op == "allreduce-rd" else op]
    return float(_features(op, ranks, blocks, rate_bits) @ [p["alpha"], p["b0"], p["c"]])


def fit_errors(params: dict, points: list[dict]) -> list[dict]:
    """Each point with the model's seconds and its relative error."""
    out = []
    for p in points:
        op = "allreduce" if p["op"] == "allreduce" else "allgatherv"
        model = seconds(params, op, p["ranks"], point_blocks(p), p["rate_bits"])
        out.append({**p, "model_s": model, "error": model / p["seconds"] - 1.0})
    return out


def gather_round(params: dict, ranks: int, rate_bits: float, record: int, refresh: float,
                 payload: float) -> float:
    """Modelled seconds of one gather round: the records' Allgatherv, then the payloads', where
    each of ``ranks`` clients (one per rank) refreshes with probability ``refresh`` and sends
    ``payload`` bytes when it does; the expectation over the number of refreshing clients (the
    payloads' Allgatherv runs even when none refreshes)."""
    total = seconds(params, "allgatherv", ranks, [record] * ranks, rate_bits)
    for m in range(ranks + 1):
        prob = math.comb(ranks, m) * refresh ** m * (1 - refresh) ** (ranks - m)
        if prob > 1e-12:
            blocks = [payload] * m + [0] * (ranks - m)
            total += prob * seconds(params, "allgatherv", ranks, blocks, rate_bits)
    return total


# ---- rounds of the trainer, built from those collectives ----

def profile(result: dict, ranks: int) -> dict:
    """What the model needs of one measured method: its rounds to the target (None if missed),
    its exchange, and per-round means over the rounds up to the target (all rounds if missed):
    the payload statistics of a gather exchange, the seconds outside training, evaluation and
    the collectives, and of those the bank and aggregate seconds (which grow with the clients).
    For the global scope (``result["scope"] == "global"``, with ``result["record_bytes"]``, the
    float64 record of a round, 0 where none is sent), the fraction of dense rounds; both it and
    a gather method's refresh fraction also over every round ("dense_all", "refresh_all"), which
    the seconds per round use."""
    hit = result["rounds_to_target"]
    rows = result["rows"][:hit] if hit else result["rows"]
    mean = lambda f: sum(f(r) for r in rows) / len(rows)
    if result.get("scope") == "global":
        kind = "global"
    elif result["algo"] == "fedavg" and result["compressor"] == "none":
        kind = "allreduce"
    else:
        kind = "gather"
    out = {"rounds": hit, "kind": kind, "ranks": ranks,
           "other_s": mean(lambda r: r["round_s"] - r["train_s"] - r["eval_s"] - r["comm_s"]),
           "scaled_s": mean(lambda r: r["bank_s"] + r["aggregate_s"]) if kind == "gather" else 0.0}
    if kind == "allreduce":
        out["bytes"] = rows[0]["mpi_bytes"] / ranks
    elif kind == "global":
        out.update(global_stats(result["rows"], ranks, result["record_bytes"], hit,
                                result["compressor"]))
    else:
        out.update(timeline.refresh_stats(rows))
        out["refresh_all"] = timeline.refresh_stats(result["rows"])["refresh"]
    return out


def global_stats(rows: list[dict], ranks: int, record: int, hit: int | None,
                 compressor: str) -> dict:
    """A global-scope run's rounds: its record bytes, the bytes of a dense round's Allreduces
    (round 1's: no record then, the bank being empty), how many Allreduces a dense round makes
    (PowerSGD: 2), and the fraction of dense rounds (refreshes > 0) up to the target and over
    all rounds."""
    dense = lambda rs: sum(r["refreshes"] > 0 for r in rs) / len(rs)
    return {"record": record, "dense_bytes": rows[0]["mpi_bytes"] / ranks,
            "dense_calls": 2 if compressor == "powersgd" else 1,
            "dense": dense(rows[:hit] if hit else rows), "dense_all": dense(rows)}


def global_round(params: dict, ranks: int, rate_bits: float, record: float, dense: float,
                 dense_bytes: float, dense_calls: int = 1, record_op: str = "allreduce") -> float:
    """Modelled seconds of one global-scope round: the record's Allreduce (``record_op``: the
    pinned ring, or ``allreduce-rd``), then with probability ``dense`` the dense round's
    ``dense_calls`` Allreduces of ``dense_bytes`` in all."""
    rec = seconds(params, record_op, ranks, [record], rate_bits) if record else 0.0
    steps, _ = schedule("allreduce", ranks, [0])
    full = seconds(params, "allreduce", ranks, [dense_bytes], rate_bits) \
        + (dense_calls - 1) * params["allreduce"]["alpha"] * steps
    return rec + dense * full


def round_comm(params: dict, prof: dict, ranks: int, rate_bits: float, every: bool = False,
               record_op: str = "allreduce") -> float:
    """Modelled seconds in the collectives of one round of a profiled method, one client per
    rank, at ``ranks`` ranks and ``rate_bits``; ``every``: with the refresh (dense) fraction of
    every round, not only of those up to the target."""
    if prof["kind"] == "allreduce":
        return seconds(params, "allreduce", ranks, [prof["bytes"]], rate_bits)
    if prof["kind"] == "global":
        return global_round(params, ranks, rate_bits, prof["record"],
                            prof["dense_all" if every else "dense"], prof["dense_bytes"],
                            prof["dense_calls"], record_op)
    refresh = prof.get("refresh_all", prof["refresh"]) if every else prof["refresh"]
    return gather_round(params, ranks, rate_bits, prof["record"], refresh, prof["payload"])


def break_even_refresh(params: dict, prof: dict, ranks: int, rate_bits: float,
                       fedavg_bytes: float) -> float:
    """The refresh fraction at which a gather method's round costs FedAvg's Allreduce of
    ``fedavg_bytes`` (bisection; 0 if even no refresh costs more, 1 if every refresh costs
    less)."""
    target = seconds(params, "allreduce", ranks, [fedavg_bytes], rate_bits)
    cost = lambda f: gather_round(params, ranks, rate_bits, prof["record"], f, prof["payload"])
    return break_even(cost, target)


def break_even(cost, target: float) -> float:
    """The refresh fraction f in [0, 1] at which the increasing ``cost(f)`` reaches ``target``
    (bisection): 0 if even no refresh costs more, 1 if every refresh costs less."""
    if cost(0.0) >= target:
        return 0.0
    if cost(1.0) <= target:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) < target else (lo, mid)
    return (lo + hi) / 2


def local_s(prof: dict, alone: dict, ranks: int) -> float:
    """Seconds of a round outside the collectives at ``ranks`` ranks (one client per rank):
    local training and evaluation on one rank alone, the rest as measured, the bank and aggregate
    work of a gather method scaled by ranks / measured ranks."""
    return alone["train_s"] + alone["eval_s"] + prof["other_s"] \
        + prof["scaled_s"] * (ranks / prof["ranks"] - 1)


def row_comm(params: dict, row: dict, kind: str, ranks: int, rate_bits: float,
             prof: dict | None = None) -> float:
    """Modelled seconds in the collectives of one measured round (its own refreshes; the global
    kind needs its profile for the split of the round's bytes into record and dense part)."""
    if kind == "allreduce":
        return seconds(params, "allreduce", ranks, [row["mpi_bytes"] / ranks], rate_bits)
    if kind == "global":
        total = row["mpi_bytes"] / ranks
        dense = prof["dense_bytes"] if row["refreshes"] > 0 else 0.0
        record = max(0.0, total - dense)
        return global_round(params, ranks, rate_bits, record, 1.0 if dense else 0.0, dense,
                            prof["dense_calls"])
    m = timeline.moved(row)
    records = seconds(params, "allgatherv", ranks, [m["record"]] * ranks, rate_bits)
    blocks = [m["per_client"]] * m["clients"] + [0] * (ranks - m["clients"])
    return records + seconds(params, "allgatherv", ranks, blocks, rate_bits)


def time_to_target(params: dict, prof: dict, alone: dict, ranks: int,
                   rate_bits: float) -> float | None:
    """Modelled seconds to the target: the measured rounds to it, each with one client's local
    training and the evaluation as on one rank alone (``alone``, from timeline.one_rank), the
    other local work as measured (bank and aggregate scaled by ranks / measured ranks), and the
    modelled collectives. None if the method missed the target."""
    if prof["rounds"] is None:
        return None
    return prof["rounds"] * (local_s(prof, alone, ranks) + round_comm(params, prof, ranks,
                                                                      rate_bits))
