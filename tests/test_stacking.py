"""LBGM stacked on the compressors, and the compressors alone as FedAvg baselines.

- stacking at threshold 0 is the compressor alone (one process, every round, to float rounding);
- error feedback: the residual is e minus what the server applied (rho * b after a scalar), and a
  client's state survives a client_state / load_client_state round trip;
- every compare method gives the same metrics at 1, 2 and 4 ranks (one compare launch per rank
  count, each under a timeout), and its bytes follow the compressor's payload formula exactly.
"""

import math

import pytest
import torch
from conftest import FAST, RANKS, REPO, lbgm, read_metrics, read_summary

from lbgm_mpi.comm.mpi import Comm
from lbgm_mpi.config import load_config
from lbgm_mpi.errors import ConfigError
from lbgm_mpi.exchange import make_exchange
from lbgm_mpi.models.layout import Layout
from lbgm_mpi.runs.methods import METHODS as ALL_METHODS
from lbgm_mpi.topology import make_topology
from lbgm_mpi.training.loop import Trainer

# the per-client methods (the global scope's have their own invariants: test_global_invariants)
METHODS = [m for m, o in ALL_METHODS.items() if o["algo"].get("scope", "client") == "client"]

DETERMINISTIC = ("round", "test_acc", "test_loss", "train_loss", "participants", "refreshes",
                 "scalars", "uplink_bytes", "dense_uplink_bytes", "downlink_bytes", "mpi_bytes")
RECORD_BYTES = 4 + 4 + 8 + 1 + 4  # client id, loss, payload size, 1 refresh flag, 1 rho
RANK = 2                          # algo.rank of the launches; algo.ratio is 1/10
SETTINGS = ["--set", "algo.ratio=0.1", "--set", f"algo.rank={RANK}",
            "--set", "algo.threshold=0.3", "--set", "run.rounds=6"]
FAST_SHAPES = [(16, 20), (16,), (4, 16), (4,)]  # FAST's MLP: 20 features, 16 hidden, 4 classes
N_TEST = 400                                    # FAST's synthetic set: 2000 samples, 20% test


def payload_bytes(compressor: str) -> int:
    """A FAST client's payload, from each compressor's documented formula."""
    sizes = [math.prod(s) for s in FAST_SHAPES]
    if compressor in ("topk", "randomk"):  # 8 bytes per kept entry, ceil(n / 10) of n kept
        return 8 * sum(max(1, -(-n // 10)) for n in sizes)
    if compressor == "sign":               # a float32 scale and ceil(n / 8) bytes per layer
        return sum(4 + -(-n // 8) for n in sizes)
    extra = {"lowrank": 1, "powersgd": 0}[compressor]  # lowrank also sends r singular values
    return sum(4 * min(RANK, *s) * (s[0] + s[1] + extra) if len(s) == 2 else 4 * s[0]
               for s in FAST_SHAPES)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For each rank count: one compare launch of every method on the FAST job."""
    out = {}
    for np_ in RANKS:
        base = tmp_path_factory.mktemp(f"stack{np_}")
        lbgm(np_, "compare", "configs/default.toml", *FAST, *SETTINGS,
             "--methods", ",".join(METHODS), "--out", str(base), "--quiet")
        out[np_] = base
    return out


def _columns(rows):
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [2, 4])
def test_every_method_does_not_depend_on_rank_count(runs, np_):
    for method in METHODS:
        ref, got = read_metrics(runs[1] / method), read_metrics(runs[np_] / method)
        if method not in ("fedavg", "fedluar"):  # both sum by Allreduce
            assert _columns(got) == _columns(ref), method
            continue
        for a, b in zip(ref, got):  # the dense Allreduce sums in rank order
            assert abs(a["test_acc"] - b["test_acc"]) * N_TEST <= 1 + 1e-9
            assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
    for method in ("topk+lbgm", "sign+lbgm"):
        assert sum(r["scalars"] for r in read_metrics(runs[1] / method)) > 0, method


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_bytes_follow_the_payload_formula(runs, np_):
    d = sum(math.prod(s) for s in FAST_SHAPES)
    for method in METHODS:
        summary = read_summary(runs[np_] / method)
        assert summary["num_params"] == d
        assert sum(summary["mpi_bytes_by_rank"]) == summary["total_mpi_bytes"]
        if summary["compressor"] == "none":
            continue
        payload = payload_bytes(summary["compressor"])
        for row in read_metrics(runs[np_] / method):
            assert row["uplink_bytes"] == payload * row["refreshes"] + 4 * row["scalars"], method
            assert row["mpi_bytes"] == RECORD_BYTES * row["participants"] + \
                payload * row["refreshes"], method
            assert row["downlink_bytes"] == row["mpi_bytes"]
            assert row["dense_uplink_bytes"] == 4 * d * row["participants"]
            if summary["algo"] == "fedavg":
                assert row["scalars"] == 0 and row["refreshes"] == row["participants"]


def _trainer(tmp_path, name, compressor, error_feedback):
    overrides = [*FAST[1::2], "run.rounds=5", "algo.ratio=0.1", f"algo.rank={RANK}",
                 f"algo.name={name}", "algo.threshold=0", f"algo.compressor={compressor}",
                 f"algo.error_feedback={str(error_feedback).lower()}"]
    spec = load_config(REPO / "configs/default.toml", overrides)
    return Trainer(spec, Comm(), tmp_path / name, quiet=True)


@pytest.mark.parametrize("compressor,error_feedback",
                         [("topk", False), ("topk", True), ("randomk", False), ("sign", False),
                          ("sign", True), ("lowrank", False), ("powersgd", False)])
def test_stacking_at_threshold_zero_is_the_compressor_alone(tmp_path, monkeypatch, compressor,
                                                            error_feedback):
    monkeypatch.chdir(REPO)
    alone = _trainer(tmp_path, "fedavg", compressor, error_feedback)
    stacked = _trainer(tmp_path, "lbgm", compressor, error_feedback)
    for _ in range(5):
        a, b = alone.step(), stacked.step()
        assert b["scalars"] == 0
        for key in ("refreshes", "uplink_bytes", "mpi_bytes", "downlink_bytes"):
            assert a[key] == b[key], key
        assert abs(a["test_acc"] - b["test_acc"]) * N_TEST <= 1 + 1e-9
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
        assert torch.allclose(stacked.theta, alone.theta, rtol=1e-5, atol=1e-6)


# a small layout: two matrices and their biases
SHAPES = [(6, 10), (6,), (3, 6), (3,)]
LAYOUT = Layout(tuple(f"t{i}" for i in range(4)), tuple(SHAPES), (0, 60, 66, 84, 87))


def _ef_exchange(clients: int = 3, size: int = 1):
    spec = load_config(None, [f"clients.count={clients}", "algo.name=lbgm",
                              "algo.compressor=topk", "algo.ratio=0.5", "algo.error_feedback=true",
                              "algo.threshold=0.7"])
    return make_exchange(spec, Comm(), make_topology(0, size, clients, "cyclic"), LAYOUT)


def _updates(rounds: int, clients: int):
    """Updates that drift slowly, so that LBGM sends both scalars and refreshes."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(clients, LAYOUT.size, generator=gen)
    return [base + 0.15 * torch.randn(clients, LAYOUT.size, generator=gen) for _ in range(rounds)]


def test_ef_residual_is_e_minus_what_the_server_applied():
    ex = _ef_exchange()
    kinds = set()
    for rnd, g in enumerate(_updates(12, 1), start=1):
        residual = ex.client_state(0).get("ef_residual", torch.zeros(LAYOUT.size))
        delta, traffic = ex([0], {0: torch.tensor(1.0, dtype=torch.float64)}, {0: (g[0], 0.0)},
                            rnd)
        kinds.add("scalar" if traffic.scalars else "refresh")
        # one participant of weight 1: delta is exactly what the server applied for it
        assert torch.allclose(ex.client_state(0)["ef_residual"], g[0] + residual - delta,
                              atol=1e-6)
    assert kinds == {"scalar", "refresh"}


def test_client_state_round_trip():
    clients, updates = 3, _updates(10, 3)
    weights = {k: torch.tensor(1.0 / clients, dtype=torch.float64) for k in range(clients)}

    def step(ex, rnd):
        return ex(list(range(clients)), weights,
                  {k: (updates[rnd - 1][k], 0.0) for k in range(clients)}, rnd)

    first = _ef_exchange(clients)
    for rnd in range(1, 6):
        step(first, rnd)
    second = _ef_exchange(clients)
    for k in range(clients):
        second.load_client_state(k, first.client_state(k))
    second.bank.rows.copy_(first.bank.rows)
    second.bank.cursor.copy_(first.bank.cursor)
    second.bank.rebuild_gram()
    scalars = 0
    for rnd in range(6, 11):
        (d1, t1), (d2, t2) = step(first, rnd), step(second, rnd)
        assert torch.equal(d1, d2) and t1 == t2
        scalars += t1.scalars
    assert scalars > 0
    for k in range(clients):
        s1, s2 = first.client_state(k), second.client_state(k)
        assert s1.keys() == s2.keys() == {"ef_residual"}
        assert all(torch.equal(s1[key], s2[key]) for key in s1)


def test_client_state_only_for_hosted_clients_and_empty_without_compressor():
    with pytest.raises(ValueError, match="client 1 is not hosted"):
        _ef_exchange(clients=4, size=2).client_state(1)
    dense = make_exchange(load_config(None, ["algo.name=fedavg"]), Comm(),
                          make_topology(0, 1, 4, "cyclic"), LAYOUT)
    assert dense.bank is None and dense.client_state(2) == {}
    with pytest.raises(ValueError, match="no compressor"):
        dense.load_client_state(2, {"ef_residual": torch.zeros(LAYOUT.size)})


def test_layer_granularity_cannot_stack_on_a_compressor():
    with pytest.raises(ConfigError, match="algo.granularity"):
        load_config(None, ["algo.name=lbgm", "algo.compressor=sign", "algo.granularity=layer"])
