"""The analysis commands end to end: analyze, plot, report, data convert (and training from the
converted file); bad input ends with one line naming the path or name."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import (REPO, lbgm, lbgm_batch, mpi_env, read_metrics, read_summary,
                      without_timing)
from test_data_formats import _write_mnist
from test_failures import _assert_clean_failure

from lbgm_mpi.config import Data
from lbgm_mpi.data.datasets import load_dataset
from lbgm_mpi.data.hdf5_store import read_dataset_h5

TINY = ["--set", "data.name=synthetic", "--set", "model.name=mlp", "--set", "model.hidden=8",
        "--set", "clients.lr=0.1"]
EPOCHS = 6


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze")
    result = lbgm(1, "analyze", "configs/default.toml", *TINY, "--epochs", str(EPOCHS),
                  "--out", str(out), timeout=120)
    return out, result


def test_analyze_counts_components(analysis):
    out, result = analysis
    report = json.loads((out / "subspace.json").read_text())
    sub = report["subspace"]
    assert report["epochs"] == EPOCHS and sub["epochs"] == list(range(2, EPOCHS + 1))
    for counts in [sub["model"], *sub["layers"].values()]:
        for i, n95, n99 in zip(sub["epochs"], counts["n95"], counts["n99"]):
            assert n95 <= n99 <= i <= EPOCHS
    assert sub["model"]["n95"][-1] >= 1
    assert len(report["training"]) == EPOCHS
    lookback = report["lookback"]
    assert lookback["epochs"] == sub["epochs"]
    assert all(-1.0 <= c <= 1.0 for c in lookback["cos_prev"])
    assert all(0.0 <= s <= 1.0 + 1e-9 for s in lookback["in_top_n99"])
    assert (out / "subspace.png").stat().st_size > 0 and (out / "config.toml").is_file()
    assert result.stderr.count("[analyze] epoch") == EPOCHS


@pytest.mark.mpi
def test_analyze_refuses_several_ranks(tmp_path):
    result = lbgm(2, "analyze", "configs/default.toml", *TINY, "--epochs", "2",
                  "--out", str(tmp_path / "a"), timeout=60, check=False)
    _assert_clean_failure(result, "one process")
    assert not (tmp_path / "a").exists()


@pytest.fixture
def runs(fast_compare):
    """The FAST compare's two runs at one rank (conftest.fast_compare, shared with
    test_user_paths): read here, never changed."""
    return fast_compare / "fedavg", fast_compare / "lbgm"


def test_plot_writes_pngs(runs, tmp_path):
    prefix = tmp_path / "fig"
    result = lbgm(1, "plot", *map(str, runs), "--out", str(prefix), "--sweep", timeout=60)
    for suffix in ("acc_vs_bytes", "acc_vs_round", "sweep"):
        png = tmp_path / f"fig_{suffix}.png"
        assert png.stat().st_size > 0 and str(png) in result.stdout


def test_report_prints_table_and_json(runs, tmp_path):
    table = tmp_path / "table.json"
    result = lbgm(1, "report", *map(str, runs), "--target", "50", "--json", str(table),
                  timeout=60)
    assert "fedavg" in result.stdout and "lbgm" in result.stdout
    assert "50.00%" in result.stdout  # --target 50 reads as percent
    rows = json.loads(table.read_text())
    assert [r["label"] for r in rows] == ["fedavg", "lbgm(t=0.2)"]  # RunSpec.label(), as train
    assert rows[1]["uplink_bytes"] == read_summary(runs[1])["total_uplink_bytes"]


def test_missing_run_folder_is_one_line(runs, tmp_path):
    missing = tmp_path / "no-such-run"
    result = lbgm(1, "report", str(runs[0]), str(missing), timeout=60, check=False)
    _assert_clean_failure(result, str(missing))


def test_convert_mnist_then_train_from_hdf5(tmp_path):
    want = _write_mnist(tmp_path, np.random.default_rng(0), compress=True)
    h5 = tmp_path / "mnist.h5"
    lbgm(1, "data", "convert", "mnist", "--root", str(tmp_path), "--out", str(h5), timeout=60)
    got = read_dataset_h5(h5)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(got[key], want[key])
    run = tmp_path / "run"
    lbgm(1, "train", "configs/default.toml", "--set", "data.name=hdf5", "--set",
         f"data.root={h5}", "--set", "model.name=fcn", "--set", "run.rounds=2",
         "--out", str(run), "--quiet", timeout=60)
    assert read_summary(run)["rounds"] == 2


def test_unknown_data_set_is_one_line(tmp_path):
    result = lbgm(1, "data", "convert", "imagenet", "--root", str(tmp_path),
                  "--out", str(tmp_path / "x.h5"), timeout=60, check=False)
    _assert_clean_failure(result, "'imagenet'")


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_embedded_sets_round_trip_exactly(tmp_path, name):
    """Converted embedded sets train from HDF5 on exactly the values of the embedded copy."""
    h5 = tmp_path / f"{name}.h5"
    lbgm(1, "data", "convert", name, "--out", str(h5), timeout=120)
    direct = load_dataset(Data(name=name))
    from_file = load_dataset(Data(name="hdf5", root=str(h5)))
    assert torch.equal(direct.x_train, from_file.x_train)
    assert torch.equal(direct.y_test, from_file.y_test)


@pytest.mark.mpi
def test_training_from_hdf5_reads_per_rank_and_matches_the_embedded_set(tmp_path):
    """At 2 ranks each rank reads only its clients' rows from the file; the run is the same as
    on the embedded copy."""
    h5 = tmp_path / "digits.h5"
    lbgm(1, "data", "convert", "digits", "--out", str(h5), timeout=120)
    common = ["configs/default.toml", "--set", "run.rounds=4", "--quiet"]
    lbgm_batch(2, ["train", *common, "--out", str(tmp_path / "embedded")],
               ["train", *common, "--set", "data.name=hdf5", "--set", f"data.root={h5}",
                "--out", str(tmp_path / "file")])
    assert without_timing(read_metrics(tmp_path / "file")) == \
        without_timing(read_metrics(tmp_path / "embedded"))


# ---- runs you can look at: DIR/*, unfinished runs, a closed pipe --------------------------------

def test_report_and_plot_take_a_folder_glob_with_pngs(runs, tmp_path):
    """`lbgm-mpi report DIR/*` as the README writes it, once compare has put its PNGs there."""
    entries = sorted(str(p) for p in runs[0].parent.iterdir() if not p.name.startswith("."))
    assert any(e.endswith(".png") for e in entries), entries  # what a shell's DIR/* lists
    report = lbgm(1, "report", *entries, timeout=60)
    assert "fedavg" in report.stdout and "lbgm" in report.stdout
    assert "left out 2 file(s)" in report.stderr
    lbgm(1, "plot", *entries, "--out", str(tmp_path / "fig"), timeout=60)
    assert (tmp_path / "fig_acc_vs_round.png").stat().st_size > 0


def test_report_and_plot_show_a_run_that_has_not_finished(runs, tmp_path):
    """A running or stopped run has no summary.json yet, and may be writing its last line."""
    cut = tmp_path / "lbgm"
    shutil.copytree(runs[1], cut)
    (cut / "summary.json").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    result = lbgm(1, "report", str(runs[0]), str(cut), timeout=60)
    assert "lbgm(t=0.2) (round 5 of 8)" in result.stdout and "not finished" in result.stdout
    lbgm(1, "plot", str(runs[0]), str(cut), "--out", str(tmp_path / "fig"), timeout=60)
    assert (tmp_path / "fig_acc_vs_bytes.png").stat().st_size > 0


@pytest.mark.parametrize("command", ["report", "inspect"])
def test_a_closed_pipe_ends_report_and_inspect_quietly(runs, command):
    """`lbgm-mpi report ... | head`: the reader is gone before the first line is written."""
    args = [*map(str, runs)] if command == "report" else [str(runs[1])]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "lbgm_mpi", command, *args], cwd=REPO,
                              env=mpi_env(), stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", done.stderr
