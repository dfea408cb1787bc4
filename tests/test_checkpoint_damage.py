"""Checkpoints that cannot be trusted are refused in one line, whatever was damaged; resume takes
the newest good one; a full disk stops the run naming the file and leaves the checkpoints intact."""

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import FAST, REPO, lbgm, mpi_env, read_metrics, tmpfs, without_timing
from lbgm_mpi.checkpoint.store import (CheckpointError, list_checkpoints, read_checkpoint,
                                       write_checkpoint)

RUN = ["configs/default.toml", *FAST, "--set", "algo.threshold=0.3", "--quiet"]
KEEP = ["--set", "run.checkpoint_every=1", "--set", "run.keep_checkpoints=10"]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lbgm-mpi: error")]


def test_every_attribute_is_covered_by_the_checksum(tmp_path):
    """The issue's reproduction: 'round' changed from 8 to 9 must not pass."""
    path = tmp_path / "round-000008.h5"
    write_checkpoint(path, {"theta": np.ones(10, np.float32)}, {"round": 8, "ranks": 2})
    with h5py.File(path, "r+") as f:
        f.attrs["round"] = json.dumps(9)
    refused = "checksum mismatch|changed after it was written"
    with pytest.raises(CheckpointError, match=refused):
        read_checkpoint(path)
    result = lbgm(1, "inspect", str(path), check=False, timeout=60)
    assert result.returncode != 0 and "checksum OK" not in result.stdout
    [line] = _error_lines(result.stderr)
    assert re.search(refused, line) and "Traceback" not in result.stderr


def test_four_hundred_single_bit_flips_are_all_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tests/mpi/flip_bits.py"), str(tmp_path),
                             "400", "2022"], env=mpi_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {"refused": 400, "identical": 0, "other": 0, "examples": []}, outcome


@pytest.mark.mpi
def test_resume_latest_passes_over_a_damaged_newest_checkpoint(tmp_path):
    lbgm(1, "train", *RUN, *KEEP, "--set", "run.rounds=3", "--out", str(tmp_path / "cut"))
    newest = list_checkpoints(tmp_path / "cut" / "checkpoints")[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10
    newest.write_bytes(bytes(data))
    result = lbgm(2, "train", *RUN, *KEEP, "--out", str(tmp_path / "cut"), "--resume", "latest")
    assert f"refused checkpoint {newest} is corrupt" in result.stderr
    assert "resuming from the newest good checkpoint instead" in result.stderr
    assert "round-000002.h5" in result.stderr
    assert (newest.parent / (newest.name + ".superseded")).exists()
    lbgm(2, "train", *RUN, "--out", str(tmp_path / "whole"))
    assert without_timing(read_metrics(tmp_path / "cut")) == \
        without_timing(read_metrics(tmp_path / "whole"))


def test_inspect_a_run_folder_shows_its_newest_checkpoint(tmp_path):
    lbgm(1, "train", *RUN, *KEEP, "--set", "run.rounds=2", "--out", str(tmp_path))
    for folder in (tmp_path, tmp_path / "checkpoints"):
        out = lbgm(1, "inspect", str(folder), timeout=60).stdout
        assert "round-000002.h5" in out and "round 2 of 2" in out and "newest of 2" in out
    (tmp_path / "empty").mkdir()
    empty = lbgm(1, "inspect", str(tmp_path / "empty"), check=False, timeout=60)
    [line] = _error_lines(empty.stderr)
    assert empty.returncode != 0 and "no checkpoints" in line


# ---- a full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs mounted for the test (root only; skipped where mounting is refused)."""
    with tmpfs(tmp_path / "disk", "size=4m") as mount:
        yield mount


def _fill(disk, leave: int) -> None:
    """Take all but ``leave`` bytes of the free space of ``disk``."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))


@pytest.mark.mpi
def test_a_full_disk_during_a_checkpoint_names_it_and_keeps_the_previous(small_disk):
    run = small_disk / "run"
    lbgm(2, "train", *RUN, *KEEP, "--set", "run.rounds=2", "--out", str(run))
    size = (run / "checkpoints" / "round-000002.h5").stat().st_size
    _fill(small_disk, leave=max(size // 2, 8192))  # room for metrics, not for a checkpoint
    result = lbgm(2, "train", *RUN, *KEEP, "--set", "run.rounds=4", "--out", str(run),
                  "--resume", "latest", check=False, timeout=90)
    # exit 2: every rank stopped together (the root told them), not an abort of the job, whose
    # last lines of output mpirun may lose
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = _error_lines(result.stderr)
    assert f"cannot write checkpoint {run}/checkpoints/round-000003.h5: the disk is full" in line
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == \
        ["round-000001.h5", "round-000002.h5"]
    assert read_checkpoint(run / "checkpoints" / "round-000002.h5")[1]["round"] == 2
    assert not list((run / "checkpoints").glob(".*tmp*")), "the failed write left a file"


def test_a_full_disk_during_a_metrics_write_names_the_file(small_disk):
    run = small_disk / "run"
    _fill(small_disk, leave=4 * 4096)  # the lock, config.toml, partition.json, 1 page of rows
    result = lbgm(1, "train", "configs/default.toml", "--set", "run.rounds=60", "--out",
                  str(run), "--quiet", check=False, timeout=90)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert f"cannot write {run}/metrics.jsonl: the disk is full" in line
