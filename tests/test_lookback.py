"""LBGM with m look-back gradients per client, a decaying threshold and warm-up rounds, at 1, 2
and 4 ranks (each mpirun under a timeout):

- the metrics are bit for bit the same at every rank count, at model and at layer granularity;
- the bytes follow the ledger: uplink = refreshed payload + 4 m x scalars; MPI = one record of
  (16 + L + 4 L m) bytes per participant + the refreshed payload, 4 bytes a refreshed value;
- warm-up rounds refresh every segment, and a decaying threshold sends fewer scalars as rounds
  pass while a constant one does not;
- a run resumed from a checkpoint equals an uninterrupted run (m = 3), also on another number of
  ranks.
"""

import math

import pytest

from conftest import FAST, RANKS, lbgm_batch, read_metrics, read_summary, without_timing

M = 3
WARMUP = 2
VARIANT = ["configs/default.toml", *FAST, "--set", f"algo.lookback={M}",
           "--set", "algo.threshold=0.6", "--set", "algo.threshold_decay=0.5",
           "--set", f"algo.warmup_rounds={WARMUP}", "--set", "run.rounds=10", "--quiet"]
LAYER = ["--set", "algo.granularity=layer"]
FAST_SIZES = [math.prod(s) for s in [(16, 20), (16,), (4, 16), (4,)]]  # FAST's MLP tensors
DETERMINISTIC = ("round", "test_acc", "test_loss", "train_loss", "participants", "refreshes",
                 "scalars", "uplink_bytes", "dense_uplink_bytes", "downlink_bytes", "mpi_bytes")


def _cut(out):
    return ["train", *VARIANT, *LAYER, "--set", "run.rounds=4", "--out", str(out)]


def _resume(out):
    return ["train", *VARIANT, *LAYER, "--out", str(out), "--resume", "latest"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For each rank count: the variant at model and at layer granularity; at 1 rank also the
    layer run with a constant threshold. One job per rank count runs them one after the other
    (conftest.lbgm_batch); the 4- and 2-rank jobs also cut the layer run at round 4
    ("resumed-4-1", "resumed-2-2"), resumed by another job on 1 and on 2 ranks."""
    out = {}
    for np_ in (4, 2, 1):
        base = tmp_path_factory.mktemp(f"m{M}np{np_}")
        jobs = [["train", *VARIANT, "--out", str(base / "model")],
                ["train", *VARIANT, *LAYER, "--out", str(base / "layer")]]
        if np_ == 4:
            jobs.append(_cut(base / "resumed-4-1"))
        if np_ == 2:
            jobs.append(_cut(base / "resumed-2-2"))
        if np_ == 1:
            jobs += [["train", *VARIANT, *LAYER, "--set", "algo.threshold_decay=1",
                      "--out", str(base / "constant")],
                     _resume(out[4] / "resumed-4-1")]
        lbgm_batch(np_, *jobs)
        out[np_] = base
    lbgm_batch(2, _resume(out[2] / "resumed-2-2"))
    return out


def _columns(rows):
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


@pytest.mark.mpi
@pytest.mark.parametrize("granularity", ["model", "layer"])
@pytest.mark.parametrize("np_", [2, 4])
def test_variant_does_not_depend_on_rank_count(runs, granularity, np_):
    reference = _columns(read_metrics(runs[1] / granularity))
    assert _columns(read_metrics(runs[np_] / granularity)) == reference
    assert sum(r["scalars"] for r in reference) > 0, "the run never sent coefficients"


def _payload_sums(participants: int, refreshes: int) -> set[int]:
    """Every number of values ``participants`` clients can send in ``refreshes`` refreshed
    tensors of FAST's MLP (each client refreshes any subset of its 4 tensors)."""
    one = {(0, 0)}
    for size in FAST_SIZES:
        one |= {(n + 1, v + size) for n, v in one}
    reach = {(0, 0)}
    for _ in range(participants):
        reach = {(n + a, v + b) for n, v in reach for a, b in one}
    return {v for n, v in reach if n == refreshes}


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_bytes_follow_the_ledger(runs, np_):
    d = sum(FAST_SIZES)
    for granularity, segments in (("model", 1), ("layer", len(FAST_SIZES))):
        summary = read_summary(runs[np_] / granularity)
        assert sum(summary["mpi_bytes_by_rank"]) == summary["total_mpi_bytes"]
        record = 16 + segments + 4 * segments * M
        for row in read_metrics(runs[np_] / granularity):
            payload = row["uplink_bytes"] - 4 * M * row["scalars"]
            assert row["mpi_bytes"] == record * row["participants"] + payload
            assert row["downlink_bytes"] == row["mpi_bytes"]
            assert row["refreshes"] + row["scalars"] == segments * row["participants"]
            if granularity == "model":
                assert payload == 4 * d * row["refreshes"]
            else:
                assert payload % 4 == 0
                assert payload // 4 in _payload_sums(row["participants"], row["refreshes"])


@pytest.mark.mpi
def test_warmup_refreshes_everything_and_decay_sends_fewer_scalars_over_time(runs):
    rows, constant = read_metrics(runs[1] / "layer"), read_metrics(runs[1] / "constant")
    for row in rows[:WARMUP]:
        assert row["scalars"] == 0 and row["refreshes"] == len(FAST_SIZES) * row["participants"]
    assert rows[WARMUP]["scalars"] > 0, "the first scheduled round should send coefficients"
    third = (len(rows) - WARMUP) // 3
    early = sum(r["scalars"] for r in rows[WARMUP:WARMUP + third])
    late = sum(r["scalars"] for r in rows[-third:])
    assert late < early
    assert sum(r["scalars"] for r in constant[-third:]) > late, \
        "a constant threshold keeps sending coefficients where the decayed one refreshes"


@pytest.mark.mpi
@pytest.mark.parametrize("first, second", [(2, 2), (4, 1)])
def test_resume_with_three_lookbacks_equals_an_uninterrupted_run(runs, first, second):
    """The layer run cut at round 4 on ``first`` ranks and resumed on ``second`` (see runs)."""
    resumed = runs[first] / f"resumed-{first}-{second}"
    assert without_timing(read_metrics(resumed)) == without_timing(
        read_metrics(runs[1] / "layer"))
