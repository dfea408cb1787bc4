"""Wall-clock views of a run folder: time to a target accuracy, measured and with local training
replaced by a single-rank figure, and what a round moved (for the round-cost model).

Seconds are the root rank's: ``round_s`` is a whole round, ``train_s`` its local training,
``comm_s`` the time inside the data collectives (waiting for slower ranks included). Elapsed time
is the running sum of ``round_s``: start-up (imports, data, model) and the final checkpoint are
not in it.
"""

import math
import statistics

FLOAT_BYTES = 4


def elapsed(rows: list[dict]) -> list[float]:
    """Measured seconds since the first round started, at the end of each round."""
    total, out = 0.0, []
    for row in rows:
        total += row["round_s"]
        out.append(total)
    return out


def visible(rows: list[dict], alone: dict, ranks: int) -> list[float]:
    """Communication-visible seconds at the end of each round: the root's local training and
    test evaluation replaced by their one-rank figures ``alone`` (``one_rank``: one client
    trained, the test set evaluated, on one rank with no other rank sharing the cores), training
    counted once per client the root hosts; the rest of the round as measured."""
    total, out = 0.0, []
    for row in rows:
        local = alone["train_s"] * row["participants"] / ranks + alone["eval_s"]
        total += row["round_s"] - row["train_s"] - row["eval_s"] + local
        out.append(total)
    return out


def to_target(rows: list[dict], clock: list[float], target: float | None):
    """(round, seconds on ``clock``) at the first evaluated round reaching ``target``; (None,
    None) if none does (or there is no target)."""
    for row, t in zip(rows, clock):
        if target is not None and row["test_acc"] is not None and row["test_acc"] >= target:
            return row["round"], t
    return None, None


def one_rank(rows: list[dict]) -> dict:
    """Medians over the rounds of a one-rank run: local training per client ("train_s") and
    evaluation ("eval_s"), in seconds."""
    return {"train_s": statistics.median(r["train_s"] / r["participants"] for r in rows),
            "eval_s": statistics.median(r["eval_s"] for r in rows)}


def moved(row: dict) -> dict:
    """What one gather round moved: the payload bytes, the clients that refreshed (at layer
    granularity: the fewest that can hold the refreshed segments), the mean payload of one, and
    the record bytes per participant."""
    payload = row["uplink_bytes"] - FLOAT_BYTES * row["scalars"]
    segments = (row["refreshes"] + row["scalars"]) // row["participants"]  # per client
    clients = math.ceil(row["refreshes"] / segments)
    return {"payload": payload, "clients": clients,
            "per_client": payload / clients if clients else 0.0,
            "record": (row["mpi_bytes"] - payload) / row["participants"]}


def refresh_stats(rows: list[dict]) -> dict:
    """Over gather rounds ``rows``: the fraction of client-rounds that refreshed, the mean
    payload of a refresh (bytes) and the record bytes per participant."""
    per_round = [moved(r) for r in rows]
    clients = sum(m["clients"] for m in per_round)
    return {"refresh": clients / sum(r["participants"] for r in rows),
            "payload": sum(m["payload"] for m in per_round) / clients if clients else 0.0,
            "record": statistics.mean(m["record"] for m in per_round)}
