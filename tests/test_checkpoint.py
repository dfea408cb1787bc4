"""Checkpoints: atomic, verified, refused when unusable; resume continues bit for bit, on the same
or a different number of ranks; a stop signal on one rank checkpoints the whole job."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import FAST, REPO, lbgm, lbgm_batch, mpi_env, mpirun_cmd, read_metrics, without_timing
from lbgm_mpi.checkpoint.store import (CheckpointError, checkpoint_layout, checkpoint_path,
                                       list_checkpoints, prune_checkpoints, read_checkpoint,
                                       read_rows, write_checkpoint)

RUN = ["configs/default.toml", *FAST, "--set", "algo.threshold=0.3", "--quiet"]


# ---- the store ------------------------------------------------------------------------------

def test_round_trip_and_pruning(tmp_path):
    arrays = {"theta": np.random.default_rng(0).normal(size=3000).astype(np.float32),
              "clients/3/ef_residual": np.arange(7, dtype=np.float32)}
    for rnd in (1, 2, 3):
        write_checkpoint(checkpoint_path(tmp_path, rnd), arrays, {"round": rnd})
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-000002.h5", "round-000003.h5"]
    got, attrs = read_checkpoint(checkpoint_path(tmp_path, 3))
    assert attrs == {"round": 3}
    assert all(np.array_equal(got[k], arrays[k]) for k in arrays) and got.keys() == arrays.keys()


def test_bank_rows_are_read_in_blocks_of_columns_and_checked(tmp_path):
    rows = np.random.default_rng(1).normal(size=(37, 1000)).astype(np.float32)
    path = checkpoint_path(tmp_path, 1)
    write_checkpoint(path, {"bank/rows": rows, "theta": rows[0]}, {"round": 1})
    arrays, _ = read_checkpoint(path, skip={"bank/rows"})
    assert list(arrays) == ["theta"]
    out, blocks = np.zeros_like(rows), []

    def write(first, block):
        blocks.append(block.shape)
        out[first:first + len(block), 300:700] = block

    read_rows(path, "bank/rows", rows.shape, np.float32, (300, 700), write, step_bytes=4 * 400 * 5)
    assert blocks == [(5, 400)] * 7 + [(2, 400)]  # 5 rows of 400 columns per block
    assert np.array_equal(out[:, 300:700], rows[:, 300:700]) and not out[:, :300].any()
    with pytest.raises(CheckpointError, match=r"bank/rows is float32 \(37, 1000\), this run needs"):
        read_rows(path, "bank/rows", (38, 1000), np.float32, (0, 1000), write)
    layout, attrs = checkpoint_layout(path)
    assert layout == {"bank/rows": (np.dtype(np.float32), (37, 1000)),
                      "theta": (np.dtype(np.float32), (1000,))} and attrs == {"round": 1}


def test_integer_arrays_are_compressed_unless_named_raw(tmp_path):
    path = checkpoint_path(tmp_path, 1)
    index = np.arange(1 << 18, dtype=np.int64)  # 2 MB of partition indices
    bank = np.zeros((64, 1 << 14), dtype=np.int16)  # 2 MB of a bfloat16 bank, stored as int16
    write_checkpoint(path, {"partition/indices": index, "bank/rows": bank}, {"round": 1},
                     raw={"bank/rows"})
    with h5py.File(path, "r") as f:
        assert f["partition/indices"].compression == "gzip"
        assert f["bank/rows"].compression is None and f["bank/rows"].chunks is None
    assert np.array_equal(read_checkpoint(path)[0]["partition/indices"], index)


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    path = checkpoint_path(tmp_path, 1)
    write_checkpoint(path, {"theta": np.ones(100, dtype=np.float32)}, {"round": 1})
    with h5py.File(path, "r+") as f:
        f["theta"][5] = 2.0
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    write_checkpoint(path, {"theta": np.ones(100, dtype=np.float32)}, {"round": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(path)
    with h5py.File(path, "w") as f:  # an HDF5 file without the lbgm-mpi header
        f.attrs["format_version"] = 2
    with pytest.raises(CheckpointError, match="no lbgm-mpi header"):
        read_checkpoint(path)
    write_checkpoint(path, {"theta": np.ones(100, dtype=np.float32)}, {"round": 1})
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"format_version": 2', b'"format_version": 99', 1))
    with pytest.raises(CheckpointError, match="format version 99"):
        read_checkpoint(path)


def test_kill_9_during_a_write_leaves_the_previous_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tests/mpi/kill_during_checkpoint.py"),
                             str(tmp_path)], env=mpi_env(), timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-000001.h5"]
    assert list(tmp_path.glob(".round-000002.h5.tmp-*")), "the interrupted write left no temp file"
    arrays, attrs = read_checkpoint(list_checkpoints(tmp_path)[-1])
    assert attrs["round"] == 1 and np.array_equal(arrays["theta"], np.arange(1000))
    prune_checkpoints(tmp_path, keep=1)
    assert not list(tmp_path.glob(".round-*")), "stale temporary files are cleaned up"


# ---- resume ---------------------------------------------------------------------------------

RESUMES = [(1, 1), (2, 2), (4, 4), (2, 4), (4, 1)]
STACKED = [*RUN, "--set", "algo.compressor=powersgd", "--set", "algo.rank=2",
           "--set", "algo.error_feedback=true"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The resume matrix and the stacked run's: each run cut at round 3 on FIRST ranks, then
    resumed on SECOND ranks in another job; with the uninterrupted runs. Jobs of several
    commands (conftest.lbgm_batch), ordered so that no run is resumed in the job that cut it:
    {(first, second): folder, "whole": folder, "stacked-whole": ..., "stacked-cut": ...}."""
    base = tmp_path_factory.mktemp("resume")
    out = {pair: base / f"resumed-{pair[0]}-{pair[1]}" for pair in RESUMES}
    out.update({k: base / k for k in ("whole", "stacked-whole", "stacked-cut")})
    cut = lambda pair: ["train", *RUN, "--set", "run.rounds=3", "--out", str(out[pair])]
    resume = lambda pair: ["train", *RUN, "--out", str(out[pair]), "--resume", "latest"]
    lbgm_batch(4, cut((4, 4)), cut((4, 1)))
    lbgm_batch(1, cut((1, 1)), resume((4, 1)))
    lbgm_batch(2, ["train", *RUN, "--out", str(out["whole"])], cut((2, 2)), cut((2, 4)),
               ["train", *STACKED, "--out", str(out["stacked-whole"])],
               ["train", *STACKED, "--set", "run.rounds=3", "--out", str(out["stacked-cut"])])
    lbgm_batch(4, resume((4, 4)), resume((2, 4)),
               ["train", *STACKED, "--out", str(out["stacked-cut"]), "--resume", "latest"])
    lbgm_batch(2, resume((2, 2)))
    lbgm_batch(1, resume((1, 1)))
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("first, second", RESUMES)
def test_resume_equals_an_uninterrupted_run(resumed, first, second):
    assert without_timing(read_metrics(resumed[first, second])) == \
        without_timing(read_metrics(resumed["whole"]))


@pytest.mark.mpi
def test_incompatible_checkpoints_are_refused(tmp_path):
    lbgm(1, "train", *RUN, "--set", "run.rounds=2", "--out", str(tmp_path))
    ckpt = list_checkpoints(tmp_path / "checkpoints")[-1]
    for change, key in ((["--set", "model.name=linear"], "model.name"),
                        (["--set", "clients.count=5"], "clients.count")):
        result = lbgm(2, "train", *RUN, *change, "--out", str(tmp_path), "--resume", str(ckpt),
                      check=False, timeout=60)
        assert result.returncode != 0
        line = [x for x in result.stderr.splitlines() if x.startswith("lbgm-mpi: error")]
        assert line and str(ckpt) in line[0] and key in line[0], result.stderr
    missing = lbgm(1, "train", *RUN, "--out", str(tmp_path), "--resume",
                   str(tmp_path / "nope.h5"), check=False, timeout=60)
    assert missing.returncode != 0 and "no such checkpoint file" in missing.stderr


def _rank_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        # a rank runs "python -m lbgm_mpi ..."; the launcher's own command line differs
        if entry.name.isdigit() and cmd[1:3] == [b"-m", b"lbgm_mpi"] and marker.encode() in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.mark.mpi
def test_sigterm_to_one_rank_checkpoints_the_whole_job(tmp_path):
    """SIGTERM reaches one rank only; every rank stops after the same round, the job exits 75,
    and resuming gives the metrics of an uninterrupted run of the same length."""
    run = tmp_path / "stopped"
    args = ["-m", "lbgm_mpi", "train", *RUN, "--set", "run.rounds=400", "--out", str(run)]
    proc = subprocess.Popen(mpirun_cmd(4, args), env=mpi_env(), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 90
        metrics = run / "metrics.jsonl"
        while time.time() < deadline and (not metrics.exists()
                                          or len(metrics.read_text().splitlines()) < 3):
            time.sleep(0.2)
        ranks = _rank_pids(str(run))
        assert len(ranks) == 4, ranks
        os.kill(ranks[-1], signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, err
    stopped = len(read_metrics(run))
    assert 3 <= stopped < 400
    assert list_checkpoints(run / "checkpoints")[-1].name == f"round-{stopped:06d}.h5"
    total = ["--set", f"run.rounds={stopped + 2}"]
    lbgm_batch(2, ["train", *RUN, *total, "--out", str(run), "--resume", "latest"],
               ["train", *RUN, *total, "--out", str(tmp_path / "whole")])
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "whole"))


def test_inspect_prints_round_and_checksum(tmp_path):
    lbgm(1, "train", *RUN, "--set", "run.rounds=2", "--out", str(tmp_path))
    ckpt = list_checkpoints(tmp_path / "checkpoints")[-1]
    out = lbgm(1, "inspect", str(ckpt)).stdout
    assert "round 2 of 2" in out and "checksum OK" in out and "bank/rows" in out


@pytest.mark.mpi
def test_resume_keeps_compressor_and_error_feedback_state(resumed):
    """PowerSGD's warm-start factors and the error-feedback residuals live on the clients' host
    ranks; a resume on another rank count (cut on 2 ranks, resumed on 4: see resumed) must
    restore them exactly."""
    ckpt = resumed["stacked-cut"] / "checkpoints" / "round-000003.h5"
    arrays, _ = read_checkpoint(ckpt)
    assert any(name.endswith("ef_residual") for name in arrays), sorted(arrays)
    assert any("psgd_q" in name for name in arrays), sorted(arrays)
    assert without_timing(read_metrics(resumed["stacked-cut"])) == \
        without_timing(read_metrics(resumed["stacked-whole"]))


@pytest.mark.mpi
def test_a_refused_resume_or_a_reused_folder_changes_nothing(tmp_path):
    """Neither a resume refused for its config nor a fresh run aimed at a used folder may
    touch the earlier run's files."""
    lbgm(1, "train", *RUN, "--set", "run.rounds=3", "--out", str(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    refused = lbgm(2, "train", *RUN, "--set", "model.hidden=8", "--out", str(tmp_path),
                   "--resume", "latest", check=False, timeout=60)
    assert refused.returncode != 0 and "incompatible config" in refused.stderr
    reused = lbgm(2, "train", *RUN, "--out", str(tmp_path), check=False, timeout=60)
    assert reused.returncode != 0 and "already holds a run" in reused.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["round-000003.h5"]
