"""The global scope's distributed invariants, at 1, 2 and 4 ranks (each mpirun under a timeout).

- the same decisions at every rank count, accuracy and loss within float tolerance;
- threshold 0 is FedAvg bit for bit (every metric but the timings);
- bytes reported equal bytes handed to MPI; a scalar round hands MPI only the record, a dense
  round the record and FedAvg's Allreduce; link_bytes follows the ring Allreduce's 2 (P-1)/P;
- PowerSGD's Allreduce form does not depend on the rank count, and LBGM stacked on it at
  threshold 0 is that PowerSGD;
- resume equals an uninterrupted run, at the same and at another rank count (error feedback on).
"""

import pytest

from conftest import FAST, RANKS, lbgm_batch, read_metrics, read_summary, without_timing

from lbgm_mpi.algorithm.global_lookback import sketch_widths

N_TEST = 400  # synthetic set: 2000 samples, 20% test
DECISIONS = ("round", "participants", "refreshes", "scalars", "uplink_bytes",
             "dense_uplink_bytes", "downlink_bytes")
GLOBAL = [*FAST, "--set", "run.rounds=12", "--set", "algo.threshold=0.4",
          "--set", "algo.lookback=3"]
LAYER_EF = ["--set", "algo.scope=global", "--set", "algo.granularity=layer",
            "--set", "algo.error_feedback=true", "--set", "clients.count=6",
            "--set", "clients.per_round=4"]
METHODS = "fedavg,lbgm-global,allreduce-powersgd,allreduce-powersgd+lbgm-global"
STACKED = ["--set", "algo.rank=2", "--set", "algo.scope=global", "--set",
           "algo.compressor=powersgd", "--set", "algo.error_feedback=true"]


RESUMABLE = [*GLOBAL, *LAYER_EF]
CUT = ["train", "configs/default.toml", *RESUMABLE, "--set", "run.rounds=6", "--quiet"]


def _resume(out):
    return ["train", "configs/default.toml", *RESUMABLE, "--out", str(out), "--resume", "latest",
            "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For each rank count: FedAvg and the global methods, global LBGM at threshold 0, global
    LBGM per layer with error feedback and partial participation, stacked on PowerSGD at a high
    threshold and at threshold 0. One job per rank count runs them one after the other
    (conftest.lbgm_batch); the 2-rank job also cuts the resumable run twice at round 6, and
    another job resumes each (at 4 ranks: the 4-rank job; at 2 ranks: a job of its own)."""
    out = {}
    for np_ in (2, 4, 1):
        base = tmp_path_factory.mktemp(f"np{np_}")
        jobs = [["compare", "configs/default.toml", *GLOBAL, "--set", "algo.rank=2",
                 "--methods", METHODS, "--out", str(base), "--quiet"],
                ["train", "configs/default.toml", *GLOBAL, "--set", "algo.scope=global",
                 "--set", "algo.threshold=0", "--out", str(base / "zero"), "--quiet"],
                ["train", "configs/default.toml", *GLOBAL, *LAYER_EF,
                 "--out", str(base / "layer-ef"), "--quiet"],
                # stacked on PowerSGD with error feedback the aggregate keeps much outside the
                # span of the rank-2 approximations: scalar rounds need a high threshold
                ["train", "configs/default.toml", *GLOBAL, *STACKED, "--set",
                 "algo.threshold=0.9", "--out", str(base / "stacked-high"), "--quiet"],
                ["train", "configs/default.toml", *GLOBAL, *STACKED, "--set",
                 "algo.threshold=0", "--out", str(base / "stacked-zero"), "--quiet"]]
        if np_ == 2:  # cut at 2 ranks, for a resume at 2 and one at 4
            jobs += [[*CUT, "--out", str(base / "resumed-2-2")],
                     [*CUT, "--out", str(base / "resumed-2-4")]]
        if np_ == 4:  # in another process than the cut's
            jobs.append(_resume(out[2] / "resumed-2-4"))
        lbgm_batch(np_, *jobs)
        out[np_] = base
    lbgm_batch(2, _resume(out[2] / "resumed-2-2"))
    return out


def _close(ref, got):
    for a, b in zip(ref, got, strict=True):
        assert {k: a[k] for k in DECISIONS} == {k: b[k] for k in DECISIONS}, a["round"]
        assert abs(a["test_acc"] - b["test_acc"]) * N_TEST <= 1 + 1e-9
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["lbgm-global", "allreduce-powersgd",
                                    "allreduce-powersgd+lbgm-global", "layer-ef",
                                    "stacked-high"])
@pytest.mark.parametrize("np_", [2, 4])
def test_global_scope_does_not_depend_on_rank_count(runs, method, np_):
    ref = read_metrics(runs[1] / method)
    _close(ref, read_metrics(runs[np_] / method))
    if method in ("lbgm-global", "layer-ef", "stacked-high"):
        assert any(r["scalars"] for r in ref), "the run never had a scalar segment"
        assert any(r["refreshes"] for r in ref[1:]), "the run never refreshed after round 1"


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_threshold_zero_is_fedavg_bit_for_bit(runs, np_):
    fed, zero = read_metrics(runs[np_] / "fedavg"), read_metrics(runs[np_] / "zero")
    assert [{**r, "label": None} for r in _untimed(zero)] == \
        [{**r, "label": None} for r in _untimed(fed)]
    assert read_summary(runs[np_] / "zero")["total_link_bytes"] == \
        read_summary(runs[np_] / "fedavg")["total_link_bytes"]


def _untimed(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_bytes_reported_equal_bytes_handed_to_mpi(runs, np_):
    summary = read_summary(runs[np_] / "lbgm-global")
    d = summary["num_params"]
    record = 8 * (1 + 3 + sketch_widths([d], 1024)[0])  # loss, m = 3 coefficients, sketch
    dense = 4 * (d + 1)
    kinds = set()
    for r in read_metrics(runs[np_] / "lbgm-global"):
        sent_record = r["round"] > 1  # round 1: an empty bank, nothing to decide
        per_rank = record * sent_record + dense * (r["refreshes"] > 0)
        assert r["mpi_bytes"] == np_ * per_rank, r
        assert r["downlink_bytes"] == per_rank
        # the ring Allreduce's link bytes, rounded down per collective
        assert abs(r["link_bytes"] - 2 * (np_ - 1) * per_rank / np_) <= 2
        kinds.add("scalar" if r["refreshes"] == 0 else "dense")
    assert kinds == {"scalar", "dense"}
    assert sum(summary["mpi_bytes_by_rank"]) == summary["total_mpi_bytes"]
    assert record < dense / 4, "a scalar round must stay a small fraction of a dense one"


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_stacked_at_threshold_zero_is_allreduce_powersgd(runs, np_):
    alone = _untimed(read_metrics(runs[np_] / "allreduce-powersgd"))
    assert _untimed(read_metrics(runs[np_] / "stacked-zero")) == alone
    d = read_summary(runs[np_] / "stacked-zero")["num_params"]
    assert all(r["uplink_bytes"] < 0.5 * r["dense_uplink_bytes"] for r in alone), d


@pytest.mark.mpi
@pytest.mark.parametrize("first, second", [(2, 2), (2, 4)])
def test_resume_equals_an_uninterrupted_run(runs, first, second):
    """The run cut at round 6 on ``first`` ranks (see runs) and resumed on ``second``."""
    whole = read_metrics(runs[first] / "layer-ef")
    got = read_metrics(runs[first] / f"resumed-{first}-{second}")
    assert [r["round"] for r in got] == list(range(1, 13))
    if first == second:
        assert without_timing(got) == without_timing(whole)
    else:  # the residuals' sum lands on rank 0: equal up to summation order
        _close(whole, got)
