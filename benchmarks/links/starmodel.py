"""A MODEL of a round on split links (a server host at S both ways, client hosts at U up / D
down; benchmarks/links/shaping.py): the star topology (``system.topology = "star"``, rank 0 the
server) beside the replicated one (benchmarks/links/costmodel.py), from the same fitted
parameters.

The star moves data point to point, so each phase is modelled like one collective,

    seconds = alpha * steps + b0 * host_bytes + c * max over links (bytes on it / its rate)

with alpha, b0 and c the Allgatherv's fitted values (TCP streams between pairs of ranks, no
arithmetic in MPI), one step per phase. Phases (n = P - 1 client ranks send over a link; with
``system.server = "shared"`` the root's own clients never leave it):

  gather to the root: client rank i sends b_i; its uplink carries b_i, the server's downlink the
    sum: wire = max(max_i b_i / U, sum_i b_i / S);
  send to all: the root sends a bytes to each client rank at once (non-blocking sends): wire =
    max(a / D, n a / S).

Rounds: FedAvg in the star (kind "star-allreduce"): every client rank sends its clients' summed
update (4 (d + 1) bytes), the root sends the total back. Per-client LBGM or a compressed FedAvg
in the star ("star-gather"): the records' gather, the payloads' gather (a client rank sends the
payloads of its refreshing clients: per-client, not summed), the dense aggregate (4 d bytes) and
the round's 48-byte traffic figures sent to every client rank. The replicated kinds (ring
Allreduce, Allgatherv, global scope) run at the slowest direction of any link, which paces every
step of a ring.

Predictions take one client per rank, the refresh fraction and payload as measured, each client
refreshing independently; the measured rounds' check draws which clients refreshed (seeded) for
the measured placement of several clients per rank.
"""

import math
import random
from dataclasses import dataclass

import costmodel
import timeline
from lbgm_mpi.exchange.records import record_dtype

P2P = "allgatherv"    # whose fitted alpha, b0, c the star's point-to-point phases take
HEADER_BYTES = 48     # the round's traffic figures a star's root sends with the aggregate
DRAWS = 400           # seeded draws of which clients refreshed, per measured round
STAR_KINDS = ("star-allreduce", "star-gather")


@dataclass(frozen=True)
class Links:
    """Link rates in bits/s: the server host's (both ways), a client host's up and down."""

    server: float
    up: float
    down: float

    @property
    def slowest(self) -> float:
        return min(self.server, self.up, self.down)

    def label(self) -> str:
        fmt = lambda b: f"{b / 1e9:g}G" if b >= 1e9 else f"{b / 1e6:g}M"
        if self.server == self.up == self.down:
            return f"all {fmt(self.server)}"
        return f"S {fmt(self.server)}, U {fmt(self.up)} / D {fmt(self.down)}"


def phase(params: dict, host_bytes: float, wire_s: float, steps: int = 1) -> float:
    """Seconds of one point-to-point phase; ``wire_s``: the busiest link's bytes / its rate."""
    p = params[P2P]
    return p["alpha"] * steps + p["b0"] * host_bytes + p["c"] * wire_s


def gather(params: dict, sent: list[float], links: Links) -> float:
    """Every client rank's ``sent[i]`` bytes to the root."""
    total = sum(sent)
    if not total:
        return phase(params, 0.0, 0.0)
    return phase(params, total, max(max(sent) / links.up, total / links.server))


def send_all(params: dict, clients: int, nbytes: float, links: Links) -> float:
    """``nbytes`` from the root to each of ``clients`` client ranks, all at once."""
    return phase(params, clients * nbytes,
                 max(nbytes / links.down, clients * nbytes / links.server))


def expected_gather(params: dict, clients: int, refresh: float, payload: float,
                    links: Links) -> float:
    """A payload gather where each of ``clients`` client ranks (one client each) sends
    ``payload`` bytes with probability ``refresh``: the expectation over how many do."""
    total = 0.0
    for m in range(clients + 1):
        prob = math.comb(clients, m) * refresh ** m * (1 - refresh) ** (clients - m)
        if prob > 1e-12:
            total += prob * gather(params, [payload] * m, links)
    return total


def star_round(params: dict, prof: dict, ranks: int, links: Links, every: bool = False) -> float:
    """Modelled seconds in the exchange of one star round at ``ranks`` ranks, one client per
    rank (``ranks - 1`` client ranks send over a link)."""
    n = ranks - 1
    if prof["kind"] == "star-allreduce":
        return gather(params, [prof["bytes"]] * n, links) + send_all(params, n, prof["bytes"],
                                                                       links)
    refresh = prof["refresh_all" if every else "refresh"]
    return (gather(params, [prof["record"]] * n, links)
            + expected_gather(params, n, refresh, prof["payload"], links)
            + send_all(params, n, prof["down"], links) + send_all(params, n, HEADER_BYTES, links))


def round_comm(params: dict, prof: dict, ranks: int, links: Links, every: bool = False) -> float:
    """Modelled seconds in the exchange of one round of any profiled method on ``links``."""
    if prof["kind"] in STAR_KINDS:
        return star_round(params, prof, ranks, links, every)
    return costmodel.round_comm(params, prof, ranks, links.slowest, every)


def local_s(prof: dict, alone: dict, ranks: int) -> float:
    """Seconds of a round outside the exchange at ``ranks`` ranks, one client each: as
    costmodel.local_s, but the bank and aggregate work scaled by the clients, ``ranks`` against
    the measured run's ``prof["clients"]`` (several clients a rank measured: not its ranks)."""
    clients = prof.get("clients") or prof["ranks"]
    return alone["train_s"] + alone["eval_s"] + prof["other_s"] \
        + prof["scaled_s"] * (ranks / clients - 1)


def time_to_target(params: dict, prof: dict, alone: dict, ranks: int,
                   links: Links) -> float | None:
    """Rounds to the target as measured, each with the local work at ``ranks`` ranks
    (``local_s``) and the modelled exchange; None if the method missed the target."""
    if prof["rounds"] is None:
        return None
    return prof["rounds"] * (local_s(prof, alone, ranks) + round_comm(params, prof, ranks, links))


# ---- profiles of measured star runs ----

def profile(result: dict, ranks: int) -> dict:
    """costmodel.profile for a replicated run; for a star run (``result["topology"]``), what
    the star model needs: the dense bytes of FedAvg's sum, or a gather method's record bytes per
    participant, refresh fraction (per client, up to the target and over every round) and mean
    payload of a refresh, the aggregate's bytes, and the local seconds as costmodel.profile
    takes them; for either, the clients of a round ("clients", which scale the bank and
    aggregate work in ``local_s``)."""
    clients = result["rows"][0]["participants"]
    if result.get("topology", "replicated") != "star":
        return {**costmodel.profile(result, ranks), "clients": clients}
    hit, d = result["rounds_to_target"], result["num_params"]
    rows = result["rows"][:hit] if hit else result["rows"]
    mean = lambda f: sum(f(r) for r in rows) / len(rows)
    star_fedavg = result["algo"] == "fedavg" and result["compressor"] == "none"
    out = {"rounds": hit, "kind": "star-allreduce" if star_fedavg else "star-gather",
           "ranks": ranks, "clients": clients, "server": result.get("server", "shared"),
           "other_s": mean(lambda r: r["round_s"] - r["train_s"] - r["eval_s"] - r["comm_s"]),
           "scaled_s": 0.0 if star_fedavg else mean(lambda r: r["bank_s"] + r["aggregate_s"])}
    if star_fedavg:
        out["bytes"] = timeline.FLOAT_BYTES * (d + 1)
        return out
    lookback = result.get("lookback", 1)
    out.update(refreshes(rows, lookback), down=timeline.FLOAT_BYTES * d, lookback=lookback)
    out["refresh_all"] = refreshes(result["rows"], lookback)["refresh"]
    return out


def segments(row: dict) -> int:
    """Decisions per client in a round (1 at model granularity, one per tensor at layer)."""
    return (row["refreshes"] + row["scalars"]) // row["participants"]


def refreshes(rows: list[dict], lookback: int = 1) -> dict:
    """Over gather rounds ``rows``: the fraction of clients that refreshed (at layer
    granularity: the fewest that can hold the refreshed segments), the mean payload of a
    refreshing client (bytes) and the record bytes of a participant."""
    clients = payload = 0
    for r in rows:
        clients += math.ceil(r["refreshes"] / segments(r))
        payload += r["uplink_bytes"] - timeline.FLOAT_BYTES * lookback * r["scalars"]
    return {"refresh": clients / sum(r["participants"] for r in rows),
            "payload": payload / clients if clients else 0.0,
            "record": record_dtype(segments(rows[0]), lookback).itemsize}


# ---- the measured rounds, for the model's check ----

def hosts(count: int, ranks: int, placement: str, server: str) -> list[int]:
    """The rank of each client (lbgm_mpi.topology's placement; a dedicated server hosts none)."""
    first = 1 if server == "dedicated" else 0
    n = ranks - first
    if placement == "cyclic":
        return [first + k % n for k in range(count)]
    base, extra = divmod(count, n)
    return [first + r for r in range(n) for _ in range(base + (r < extra))]


def busiest_draws(host: list[int], participants: int, refreshing: int, rng) -> list[list[int]]:
    """For ``DRAWS`` seeded draws of which participants refreshed: the refreshing clients of
    every client rank but the root (whose clients never cross a link)."""
    out = []
    ranks = max(host) + 1
    for _ in range(DRAWS):
        chosen = rng.sample(rng.sample(range(len(host)), participants), refreshing)
        count = [0] * ranks
        for k in chosen:
            count[host[k]] += 1
        out.append(count[1:])
    return out


def row_comm(params: dict, row: dict, prof: dict, ranks: int, links: Links, host: list[int],
             seed: int = 0) -> float:
    """Modelled seconds in the exchange of one measured round on ``links``, its own refreshes
    (which clients: seeded draws); star kinds only (the others: costmodel.row_comm at the
    slowest rate)."""
    clients = sorted(set(host))
    remote = [r for r in clients if r != 0]
    if prof["kind"] == "star-allreduce":
        return (gather(params, [prof["bytes"]] * len(remote), links)
                + send_all(params, ranks - 1, prof["bytes"], links))
    per_rank = [host.count(r) for r in remote]
    refreshing = math.ceil(row["refreshes"] / segments(row))
    payload = (row["uplink_bytes"] - timeline.FLOAT_BYTES * prof.get("lookback", 1)
               * row["scalars"]) / refreshing if refreshing else 0.0
    draws = busiest_draws(host, row["participants"], refreshing, random.Random(seed))
    payload_s = sum(gather(params, [payload * c for c in count], links)
                    for count in draws) / len(draws)
    return (gather(params, [prof["record"] * n for n in per_rank], links) + payload_s
            + send_all(params, ranks - 1, prof["down"], links)
            + send_all(params, ranks - 1, HEADER_BYTES, links))
