"""FedLUAR (algo.name = "fedluar"): the layer draw, the exchange, and its invariants.

- the draw: weight tensors only, probability proportional to ||x|| / ||Delta||, keyed by
  (seed, round) and nothing else;
- the exchange: recycled tensors get the last applied update, the others the weighted mean, and
  the bytes are 4 x the values sent;
- at 1, 2 and 4 ranks: the same metrics (the Allreduce sums agree to float rounding, as FedAvg's),
  recycle_layers = 0 is FedAvg exactly, the bytes follow the formula, and a resumed run equals an
  uninterrupted one.
"""

import math

import numpy as np
import pytest
import torch

from conftest import FAST, RANKS, lbgm_batch, read_metrics, read_summary, without_timing
from lbgm_mpi.algorithm.fedluar import candidate_layers, draw_recycled, recycle_weights
from lbgm_mpi.comm.mpi import Comm
from lbgm_mpi.config import load_config
from lbgm_mpi.errors import ConfigError
from lbgm_mpi.models.layout import Layout
from lbgm_mpi.topology import make_topology
from lbgm_mpi.exchange import make_exchange

# a small layout: two matrices, their biases, and a buffer
SHAPES = [(6, 10), (6,), (3, 6), (3,), (3,)]
LAYOUT = Layout(tuple(f"t{i}" for i in range(5)), tuple(SHAPES), (0, 60, 66, 84, 87, 90), 4)
FAST_SHAPES = [(16, 20), (16,), (4, 16), (4,)]  # FAST's MLP
N_TEST = 400                                    # FAST's synthetic test set


def test_only_weight_tensors_are_candidates():
    assert candidate_layers(LAYOUT.shapes, LAYOUT.is_buffer()) == [0, 2]
    assert candidate_layers([(4, 4), (4,), (2, 2)], [False, False, True]) == [0]


def test_weights_are_weight_norm_over_update_norm():
    theta = torch.zeros(LAYOUT.size)
    theta[0:60] = 2.0
    theta[66:84] = -1.0
    previous = torch.zeros(LAYOUT.size)
    previous[0:60] = 0.5
    previous[66:84] = 0.25
    w = recycle_weights(previous, theta, LAYOUT.bounds, [0, 2])
    assert w.dtype == torch.float64
    assert w.tolist() == pytest.approx([2.0 / 0.5, 1.0 / 0.25])
    previous[66:84] = 0.0  # no update yet: cannot be recycled
    assert recycle_weights(previous, theta, LAYOUT.bounds, [0, 2]).tolist() == [4.0, 0.0]
    theta[0:60] = 0.0      # no scale: cannot be recycled either
    assert recycle_weights(previous, theta, LAYOUT.bounds, [0, 2]).tolist() == [0.0, 0.0]


def test_draw_is_keyed_by_seed_and_round_and_follows_the_weights():
    w = torch.tensor([1.0, 3.0, 0.0, 6.0], dtype=torch.float64)
    assert draw_recycled(w, 2, seed=5, rnd=9) == draw_recycled(w.clone(), 2, seed=5, rnd=9)
    draws = [draw_recycled(w, 1, seed=5, rnd=r) for r in range(1, 4001)]
    counts = np.bincount([d[0] for d in draws], minlength=4)
    assert counts[2] == 0, "a layer of weight 0 is never recycled"
    assert counts / counts.sum() == pytest.approx([0.1, 0.3, 0.0, 0.6], abs=0.03)
    assert len({tuple(draw_recycled(w, 1, seed=s, rnd=1)) for s in range(40)}) > 1
    assert draw_recycled(w, 5, seed=0, rnd=1) == [0, 1, 3], "at most the layers of weight > 0"
    assert draw_recycled(torch.zeros(3, dtype=torch.float64), 1, seed=0, rnd=1) == []


def _exchange(recycle=1, clients=3):
    spec = load_config(None, [f"clients.count={clients}", "algo.name=fedluar",
                              f"algo.recycle_layers={recycle}"])
    theta = torch.linspace(-1.0, 1.0, LAYOUT.size)
    return make_exchange(spec, Comm(), make_topology(0, 1, clients, "cyclic"), LAYOUT,
                         theta=theta), theta


def test_recycled_tensors_reuse_the_last_update_and_are_not_sent():
    ex, theta = _exchange()
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.tensor(w, dtype=torch.float64) for k, w in enumerate((0.5, 0.3, 0.2))}
    recycled_rounds = 0
    for rnd in range(1, 9):
        updates = {k: (torch.randn(LAYOUT.size, generator=gen), float(k)) for k in range(3)}
        mean = sum(float(weights[k]) * g for k, (g, _) in updates.items())
        before = ex.previous.clone()
        recycled = ex.recycled(rnd)
        delta, traffic = ex(list(range(3)), weights, updates, rnd)
        theta.sub_(delta)  # the server steps the model the exchange reads
        assert len(recycled) == (0 if rnd == 1 else 1) and set(recycled) <= {0, 2}
        sent = LAYOUT.size
        for l in range(5):
            lo, hi = LAYOUT.bounds[l], LAYOUT.bounds[l + 1]
            expected = before[lo:hi] if l in recycled else mean[lo:hi]
            assert torch.allclose(delta[lo:hi], expected, atol=1e-6), (rnd, l)
            sent -= (hi - lo) if l in recycled else 0
        recycled_rounds += bool(recycled)
        assert traffic.uplink_bytes == 3 * 4 * sent
        assert traffic.dense_uplink_bytes == 3 * 4 * LAYOUT.size
        assert traffic.downlink_bytes == 4 * (sent + 1)
        assert traffic.refreshes == 3 * (5 - len(recycled)) and traffic.scalars == 0
        assert traffic.train_loss == pytest.approx(0.3 + 2 * 0.2)
        assert torch.equal(ex.previous, delta)
    assert recycled_rounds == 7


def test_server_state_round_trip_and_refusal():
    ex, _ = _exchange()
    ex.previous.copy_(torch.arange(LAYOUT.size, dtype=torch.float32))
    other, _ = _exchange()
    other.load_server_state(ex.server_state())
    assert torch.equal(other.previous, ex.previous)
    with pytest.raises(ValueError, match="previous_delta"):
        other.load_server_state({"bank": torch.zeros(3)})


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="algo.recycle_layers"):
        load_config(None, ["algo.recycle_layers=-1"])
    with pytest.raises(ConfigError, match="algo.compressor"):
        load_config(None, ["algo.name=fedluar", "algo.compressor=topk"])
    with pytest.raises(ConfigError, match="algo.recycle_layers: 2 recycled of this model's 2"):
        _exchange(recycle=2)


# ---- at 1, 2 and 4 ranks -------------------------------------------------------------------

RECYCLE = ["--set", "algo.recycle_layers=1"]


LUAR = ["configs/default.toml", *FAST, "--set", "algo.name=fedluar", *RECYCLE, "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For each rank count: FedAvg and FedLUAR (one layer recycled), and FedLUAR recycling
    nothing. One job per rank count runs them one after the other (conftest.lbgm_batch); the 4-
    and 2-rank jobs also cut FedLUAR at round 3 ("resumed-4-1", "resumed-2-2"), resumed by
    another job on 1 and on 2 ranks, and the jobs on those ranks run it whole ("whole")."""
    out = {}
    for np_ in (4, 2, 1):
        base = tmp_path_factory.mktemp(f"luar{np_}")
        jobs = [["compare", "configs/default.toml", *FAST, *RECYCLE, "--methods",
                 "fedavg,fedluar", "--out", str(base), "--quiet"],
                ["train", "configs/default.toml", *FAST, "--set", "algo.name=fedluar",
                 "--set", "algo.recycle_layers=0", "--out", str(base / "none"), "--quiet"]]
        if np_ in (4, 2):
            jobs.append(["train", *LUAR, "--set", "run.rounds=3",
                         "--out", str(base / f"resumed-{np_}-{1 if np_ == 4 else 2}")])
        if np_ in (2, 1):
            jobs.append(["train", *LUAR, "--out", str(base / "whole")])
        if np_ == 1:
            jobs.append(["train", *LUAR, "--out", str(out[4] / "resumed-4-1"),
                         "--resume", "latest"])
        lbgm_batch(np_, *jobs)
        out[np_] = base
    lbgm_batch(2, ["train", *LUAR, "--out", str(out[2] / "resumed-2-2"), "--resume", "latest"])
    return out


EXACT = ("round", "participants", "refreshes", "scalars", "uplink_bytes", "dense_uplink_bytes",
         "downlink_bytes")


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [2, 4])
def test_fedluar_does_not_depend_on_rank_count_beyond_rounding(runs, np_):
    ref, got = read_metrics(runs[1] / "fedluar"), read_metrics(runs[np_] / "fedluar")
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        assert abs(a["test_acc"] - b["test_acc"]) * N_TEST <= 1 + 1e-9
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_recycling_nothing_is_fedavg(runs, np_):
    fed, none = read_metrics(runs[np_] / "fedavg"), read_metrics(runs[np_] / "none")
    keys = [k for k in fed[0] if not k.endswith("_s") and k != "refreshes"]
    assert [{k: r[k] for k in keys} for r in none] == [{k: r[k] for k in keys} for r in fed]
    assert all(r["refreshes"] == 4 * r["participants"] for r in none)  # 4 tensors, all sent


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_fedluar_bytes_follow_the_formula(runs, np_):
    d = sum(math.prod(s) for s in FAST_SHAPES)
    weight_sizes = {math.prod(s) for s in FAST_SHAPES if len(s) > 1}
    summary = read_summary(runs[np_] / "fedluar")
    assert summary["num_params"] == d and summary["label"] == "fedluar(r=1)"
    assert sum(summary["mpi_bytes_by_rank"]) == summary["total_mpi_bytes"]
    recycled_rounds = 0
    for row in read_metrics(runs[np_] / "fedluar"):
        sent = row["uplink_bytes"] // (4 * row["participants"])
        assert row["uplink_bytes"] == 4 * sent * row["participants"]
        recycled = 4 - row["refreshes"] // row["participants"]
        assert recycled in (0, 1) and (d - sent in weight_sizes if recycled else sent == d)
        assert row["mpi_bytes"] == np_ * 4 * (sent + 1)
        assert row["downlink_bytes"] == 4 * (sent + 1)
        assert row["dense_uplink_bytes"] == 4 * d * row["participants"]
        recycled_rounds += recycled
    assert recycled_rounds == len(read_metrics(runs[np_] / "fedluar")) - 1  # all but round 1


@pytest.mark.mpi
@pytest.mark.parametrize("first, second", [(2, 2), (4, 1)])
def test_fedluar_resume_equals_an_uninterrupted_run(runs, first, second):
    """Cut at round 3 on ``first`` ranks, resumed on ``second``, against the whole run on
    ``second`` ranks (see runs)."""
    resumed = read_metrics(runs[first] / f"resumed-{first}-{second}")
    whole = read_metrics(runs[second] / "whole")
    if first == second:
        assert without_timing(resumed) == without_timing(whole)
        return
    # on another rank count the first rounds' Allreduce sums differ by float rounding
    for a, b in zip(resumed, whole):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        assert abs(a["test_acc"] - b["test_acc"]) * N_TEST <= 1 + 1e-9
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
