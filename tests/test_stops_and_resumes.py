"""No run lost or mixed up: one run per folder, every stop checkpoints, compare stops and resumes,
resume rules, a diverged model is never checkpointed. Every launch runs under a timeout."""

import os
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import (FAST, REPO, SLOW, finish, lbgm, lbgm_batch, metrics_rows, read_metrics,
                      start_session, wait_rows, without_timing)
from lbgm_mpi.checkpoint.store import list_checkpoints, read_checkpoint

RUN = ["configs/default.toml", *FAST, "--set", "algo.threshold=0.3", "--quiet"]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lbgm-mpi: error")]


def _launcher(*args: str) -> list[str]:
    return ["bash", str(REPO / "jobs/mpirun-local.sh"), *args]


def _single(*args: str) -> list[str]:
    """``lbgm-mpi ARGS`` as one process without mpirun (MPI's singleton start)."""
    return [sys.executable, "-m", "lbgm_mpi", *args]


# ---- 1. one run per folder ------------------------------------------------------------------

def test_two_runs_started_together_on_one_folder(tmp_path):
    """Only one of two runs started at the same moment gets the folder; the other says who has
    it; the folder holds one run's rounds, in order."""
    args = _single("train", *RUN, "--set", "run.rounds=30", "--out", str(tmp_path))
    procs = [start_session(args), start_session(args)]
    results = [(p, *finish(p)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err) for p, _, err in results]
    refused = next(err for p, _, err in results if p.returncode == 2)
    winner = next(p for p, _, _ in results if p.returncode == 0)
    [line] = _error_lines(refused)
    assert f"{tmp_path} is in use by another run (pid {winner.pid} on host" in line, line
    assert [r["round"] for r in read_metrics(tmp_path)] == list(range(1, 31))


@pytest.mark.mpi
def test_a_crashed_runs_lock_is_taken_over_and_a_live_one_refuses(tmp_path):
    run = start_session(_single("train", "configs/default.toml", *SLOW, "--set", "run.rounds=400",
                         "--out", str(tmp_path)))
    wait_rows(run, tmp_path, 2)
    second = lbgm(2, "train", *RUN, "--out", str(tmp_path), "--resume", "latest",
                  check=False, timeout=60)
    assert second.returncode == 2 and f"pid {run.pid}" in _error_lines(second.stderr)[0]
    os.killpg(run.pid, signal.SIGKILL)
    finish(run)
    again = lbgm(2, "train", *RUN, "--out", str(tmp_path), "--resume", "latest", timeout=120)
    assert f"taking over {tmp_path}" in again.stderr and f"pid {run.pid}" in again.stderr
    assert [r["round"] for r in read_metrics(tmp_path)] == list(range(1, 9))


# ---- 2. every stop checkpoints --------------------------------------------------------------

def _assert_stopped_with_checkpoint(proc, out, err, run_dir: Path) -> int:
    assert proc.returncode == 75, err
    assert "Traceback" not in err
    stopped = metrics_rows(run_dir)
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    assert newest.name == f"round-{stopped:06d}.h5", (newest, stopped)
    assert read_checkpoint(newest)[1]["round"] == stopped
    assert "--resume latest" in err
    return stopped


@pytest.mark.mpi
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_launcher_checkpoints_at_two_ranks(tmp_path, sig):
    """SIGTERM to the launcher's whole process group (what `timeout` sends) and SIGINT to it (a
    terminal's Ctrl-C) stop the run after the current round with a checkpoint and exit 75; the
    resumed run gives the metrics of an uninterrupted one."""
    run = tmp_path / "run"
    proc = start_session(_launcher("2", *RUN, "--set", "run.rounds=400", "--out", str(run)))
    wait_rows(proc, run, 3)
    sent = time.monotonic()
    os.killpg(proc.pid, sig)
    out, err = finish(proc)
    print(f"{sig.name}: the launcher exited {time.monotonic() - sent:.2f} s after the signal")
    stopped = _assert_stopped_with_checkpoint(proc, out, err, run)
    total = ["--set", f"run.rounds={stopped + 2}"]
    lbgm_batch(2, ["train", *RUN, *total, "--out", str(run), "--resume", "latest"],
               ["train", *RUN, *total, "--out", str(tmp_path / "whole")])
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "whole"))


def test_ctrl_c_on_a_one_rank_run_checkpoints(tmp_path):
    proc = start_session(_single("train", *RUN, "--set", "run.rounds=400", "--out", str(tmp_path)))
    wait_rows(proc, tmp_path, 3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc)
    _assert_stopped_with_checkpoint(proc, out, err, tmp_path)
    assert "Ctrl-C: stopping after this round" in err


@pytest.mark.mpi
def test_checkpoints_by_time_agree_across_ranks(tmp_path):
    """run.checkpoint_minutes: the root's clock decides, every rank joins the checkpoint; the
    run ends normally and resumes from any of them."""
    lbgm(2, "train", *RUN, "--set", "run.checkpoint_minutes=0.00001", "--set",
         "run.keep_checkpoints=100", "--out", str(tmp_path), timeout=120)
    rounds = [int(p.stem.split("-")[1]) for p in list_checkpoints(tmp_path / "checkpoints")]
    assert rounds == list(range(1, 9)), rounds  # 0.6 ms: every round takes longer


# ---- 4. compare stops and resumes -----------------------------------------------------------

@pytest.mark.mpi
def test_compare_stops_with_a_checkpoint_and_its_advice_continues_it(tmp_path):
    methods = ["--methods", "fedavg,lbgm", "--set", "run.rounds=30"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = start_session(_launcher("2", "compare", "configs/default.toml", *SLOW, *methods,
                            "--out", str(cut)))
    wait_rows(proc, cut / "lbgm", 3)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = finish(proc)
    _assert_stopped_with_checkpoint(proc, out, err, cut / "lbgm")
    advice = shlex.split(err.split("with: ", 1)[1].splitlines()[0])
    assert advice[:4] == ["bash", str(REPO / "jobs/mpirun-local.sh"), "2", "compare"]
    assert advice[-2:] == ["--resume", "latest"]
    fedavg_rows = read_metrics(cut / "fedavg")
    lbgm_batch(2, advice[3:], ["compare", "configs/default.toml", *SLOW, *methods,
                               "--out", str(whole)], timeout=360)
    assert read_metrics(cut / "fedavg") == fedavg_rows, "a finished method was run again"
    for method in ("fedavg", "lbgm"):
        assert without_timing(read_metrics(cut / method)) == \
            without_timing(read_metrics(whole / method)), method


# ---- 5. resume rules ------------------------------------------------------------------------

@pytest.mark.mpi
def test_resume_rules_fewer_rounds_and_an_older_checkpoint(tmp_path):
    keep = ["--set", "run.checkpoint_every=1", "--set", "run.keep_checkpoints=10"]
    lbgm(1, "train", *RUN, *keep, "--set", "run.rounds=4", "--out", str(tmp_path))
    fewer = lbgm(2, "train", *RUN, *keep, "--set", "run.rounds=3", "--out", str(tmp_path),
                 "--resume", "latest", check=False, timeout=60)
    [line] = _error_lines(fewer.stderr)
    assert "round 4, past run.rounds = 3" in line and "run.rounds=4" in line
    older = tmp_path / "checkpoints" / "round-000002.h5"
    redo = lbgm(2, "train", *RUN, *keep, "--set", "run.rounds=3", "--out", str(tmp_path),
                "--resume", str(older))
    assert "set aside 2 checkpoint(s) newer than round 2" in redo.stderr
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["round-000001.h5", "round-000002.h5", "round-000003.h5",
                     "round-000003.h5.superseded", "round-000004.h5.superseded"], names
    lbgm(2, "train", *RUN, *keep, "--set", "run.rounds=4", "--out", str(tmp_path),
         "--resume", "latest")
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


# ---- 6. a non-finite model is never checkpointed --------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("np_", [1, 2])
def test_a_non_finite_global_model_stops_without_a_checkpoint(tmp_path, np_):
    result = lbgm(np_, "train", "configs/default.toml", "--set", "server.lr=1e38", "--set",
                  "clients.lr=10", "--set", "run.checkpoint_every=1", "--out", str(tmp_path),
                  "--quiet", check=False, timeout=90)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert "global model became non-finite in round" in line and "not checkpointed" in line
    for path in list_checkpoints(tmp_path / "checkpoints"):
        assert np.isfinite(read_checkpoint(path)[0]["theta"]).all(), path
