"""The distributed invariants, at 1, 2 and 4 ranks (each mpirun under a timeout).

- LBGM's metrics do not depend on the number of ranks (bit for bit);
- FedAvg's do not either, up to float32 summation order (one test example, 1e-4 in loss);
- threshold 0 reproduces FedAvg;
- bytes reported equal bytes handed to MPI, and follow the protocol's formula;
- a high threshold hands >= 90% fewer bytes to MPI than FedAvg;
- one bank per node (system.bank = "shared") and payloads moved in many small MPI messages give
  the same metrics, bit for bit, as a bank per rank and one message per collective.
"""

import pytest

from conftest import FAST, PLOTS, RANKS, lbgm_batch, read_metrics, read_summary, without_timing

DETERMINISTIC = ("round", "test_acc", "test_loss", "train_loss", "participants", "refreshes",
                 "scalars", "uplink_bytes", "dense_uplink_bytes")
RECORD_BYTES_MODEL = 4 + 4 + 8 + 1 + 4   # client id, loss, payload size, 1 flag, 1 rho
PARTIAL = ["--set", "clients.count=6", "--set", "clients.per_round=4",
           "--set", "algo.granularity=layer", "--set", "algo.threshold=0.5"]
SHARED_SMALL = ["--set", "system.bank=shared", "--set", "system.max_message_bytes=4096"]


HIGH = ["configs/default.toml", "--set", "run.rounds=20", "--set", "algo.threshold=0.9",
        "--methods", "fedavg,lbgm", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For each rank count: FedAvg, LBGM (threshold 0.3) and LBGM at threshold 0, the partial
    layer run with a bank per rank and with a shared bank in small messages; at 4 ranks also the
    default job's compare at threshold 0.9 ("high"). One job per rank count runs them one after
    the other (conftest.lbgm_batch)."""
    out = {}
    for np_ in RANKS:
        base = tmp_path_factory.mktemp(f"np{np_}")
        jobs = [["compare", "configs/default.toml", *FAST, "--set", "algo.threshold=0.3",
                 "--methods", "fedavg,lbgm", "--out", str(base), "--quiet"],
                ["train", "configs/default.toml", *FAST, "--set", "algo.threshold=0",
                 *(PLOTS if np_ == 1 else []), "--out", str(base / "lbgm0"), "--quiet"],
                ["train", "configs/default.toml", *FAST, *PARTIAL,
                 "--out", str(base / "layer"), "--quiet"],
                ["train", "configs/default.toml", *FAST, *PARTIAL, *SHARED_SMALL,
                 "--out", str(base / "layer-shared"), "--quiet"]]
        if np_ == 4:
            jobs.append(["compare", *HIGH, "--out", str(base / "high")])
        lbgm_batch(np_, *jobs)
        out[np_] = base
    return out


def test_train_and_compare_draw_their_plots_unless_told_not_to(runs):
    pngs = lambda folder: sorted(p.name for p in folder.glob("*.png"))
    assert pngs(runs[1] / "lbgm0") == ["plot_acc_vs_bytes.png", "plot_acc_vs_round.png"]
    assert pngs(runs[4] / "high") == ["compare_acc_vs_bytes.png", "compare_acc_vs_round.png"]
    assert pngs(runs[1] / "layer") == pngs(runs[1]) == [], "run.plots = false drew plots"


def _columns(rows, keys=DETERMINISTIC):
    return [{k: r[k] for k in keys} for r in rows]


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["lbgm", "layer"])
@pytest.mark.parametrize("np_", [2, 4])
def test_lbgm_does_not_depend_on_rank_count(runs, method, np_):
    reference = _columns(read_metrics(runs[1] / method))
    assert _columns(read_metrics(runs[np_] / method)) == reference
    assert sum(r["scalars"] for r in reference) > 0, "the run never sent a scalar"


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_shared_bank_and_small_messages_change_nothing(runs, np_):
    """Bit for bit: the bank's rows and the aggregate's columns are split among the node's
    ranks, and the refreshes reach them in 4 KiB steps."""
    got = read_metrics(runs[np_] / "layer-shared")
    assert without_timing(got) == without_timing(read_metrics(runs[1] / "layer"))
    summary = read_summary(runs[np_] / "layer-shared")
    assert summary["bank"] == "shared"
    assert summary["bank_bytes_per_node"] == 6 * 4 * summary["num_params"]
    assert max(r["mpi_bytes"] for r in got) > 4096, "the job never needed a second step"


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [2, 4])
def test_fedavg_does_not_depend_on_rank_count_beyond_rounding(runs, np_):
    ref, got = read_metrics(runs[1] / "fedavg"), read_metrics(runs[np_] / "fedavg")
    n_test = 400  # synthetic set: 2000 samples, 20% test
    for a, b in zip(ref, got):
        assert abs(a["test_acc"] - b["test_acc"]) * n_test <= 1 + 1e-9
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_threshold_zero_reproduces_fedavg(runs, np_):
    fed, zero = read_metrics(runs[np_] / "fedavg"), read_metrics(runs[np_] / "lbgm0")
    n_test = 400
    for a, b in zip(fed, zero):
        assert abs(a["test_acc"] - b["test_acc"]) * n_test <= 1 + 1e-9
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        assert b["scalars"] == 0 and b["uplink_bytes"] == a["uplink_bytes"]


@pytest.mark.mpi
@pytest.mark.parametrize("np_", RANKS)
def test_bytes_reported_equal_bytes_handed_to_mpi(runs, np_):
    for method in ("fedavg", "lbgm", "lbgm0", "layer"):
        summary = read_summary(runs[np_] / method)
        assert len(summary["mpi_bytes_by_rank"]) == np_
        assert sum(summary["mpi_bytes_by_rank"]) == summary["total_mpi_bytes"]
    d = read_summary(runs[np_] / "lbgm")["num_params"]
    for row in read_metrics(runs[np_] / "lbgm"):
        payload = 4 * d * row["refreshes"]
        assert row["uplink_bytes"] == 4 * row["scalars"] + payload
        assert row["mpi_bytes"] == RECORD_BYTES_MODEL * row["participants"] + payload
        assert row["downlink_bytes"] == row["mpi_bytes"]
    for row in read_metrics(runs[np_] / "fedavg"):
        assert row["mpi_bytes"] == np_ * 4 * (d + 1)
        assert row["uplink_bytes"] == row["dense_uplink_bytes"] == 4 * d * row["participants"]


@pytest.mark.mpi
def test_high_threshold_hands_far_fewer_bytes_to_mpi(runs):
    high = runs[4] / "high"
    fed, lb = read_summary(high / "fedavg"), read_summary(high / "lbgm")
    assert lb["total_mpi_bytes"] <= 0.1 * fed["total_mpi_bytes"]
    assert lb["total_uplink_bytes"] <= 0.1 * fed["total_uplink_bytes"]
