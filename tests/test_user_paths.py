"""What a new user hit (issue 19): report and plot stopping at a shell glob's first non-run folder,
a FedAvg baseline of another setting compared without a word, failed starts leaving an empty
locked folder, the local launcher's second Ctrl-C, mpirun's banner after a clean stop or a
one-line error, its resume hint, non-MPI commands starting MPI, unreadable byte axes, hidden MPI
lines, labels that hide a run's settings, and help that disagreed with the code. Every launch runs
under a timeout, on the synthetic set, for a few rounds."""

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from conftest import FAST, REPO, lbgm, mpi_env, read_metrics
from test_analysis import _write_run
from test_hardening_errors import _nan_rows, _store

from lbgm_mpi.analysis import plots
from lbgm_mpi.cli.train import _compare_plan
from lbgm_mpi.config import ConfigError, load_config, to_toml
from lbgm_mpi.training import runlock
from lbgm_mpi.training.methods import METHODS, method_overrides
from lbgm_mpi.training.runlock import RunLock

LAUNCHER = REPO / "jobs" / "mpirun-local.sh"
SLOW = [*FAST, "--set", "data.synthetic_samples=8000", "--quiet"]  # about 0.15 s a round
WAIT_S = 120


def _env() -> dict:
    """mpi_env() with this Python's folder first on the PATH, as an activated venv has it."""
    env = mpi_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``lbgm-mpi ARGS`` as one process, no launcher."""
    return subprocess.run([sys.executable, "-m", "lbgm_mpi", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lbgm-mpi: error")]


def _one_error(result, *needles) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    [line] = _errors(result.stderr)
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished compare (fedavg, lbgm) at one rank: its folder, with the PNGs it wrote."""
    out = tmp_path_factory.mktemp("compare")
    lbgm(1, "compare", "configs/default.toml", *FAST, "--out", str(out), "--quiet", timeout=120)
    return out


def _copy_runs(runs: Path, to: Path) -> Path:
    shutil.copytree(runs, to)
    return to


def _edit_config(folder: Path, **sections) -> None:
    """Rewrite a run folder's config.toml with some sections' keys changed."""
    spec = load_config(folder / "config.toml")
    (folder / "config.toml").write_text(to_toml(spec.replace(**sections)))


# ---- 3. a start that fails its checks leaves no folder --------------------------------------

def _failing_starts(tmp_path: Path) -> dict:
    """name -> (extra train arguments, what the one error line names)."""
    (tmp_path / "no-mnist").mkdir()
    nan_store = _store(tmp_path / "nan.h5", x_train=_nan_rows())
    hdf5 = ["--set", "data.name=hdf5", "--set", "model.name=mlp", "--set", "clients.count=2",
            "--set", "data.partition=iid"]
    cases = {
        "missing data files": (["--set", "data.name=mnist", "--set",
                                f"data.root={tmp_path / 'no-mnist'}", "--set", "model.name=fcn"],
                               "missing file"),
        "fewer clients than ranks": (["--set", "clients.count=1"], "cannot occupy 2 MPI ranks"),
        "a bad HDF5 root": ([*hdf5, "--set", f"data.root={tmp_path / 'none.h5'}"], "none.h5"),
        # passes the checks (its layout is sound) and fails as the Trainer reads the rows
        "NaN in an HDF5 store": ([*hdf5, "--set", f"data.root={nan_store}"], "holds NaN"),
        "--resume of a missing path": (["--resume", str(tmp_path / "nope.h5")], "nope.h5"),
    }
    if not torch.cuda.is_available():
        cases["cuda without a GPU"] = (["--set", "system.device=cuda"], "no CUDA device")
    return cases


@pytest.mark.mpi
def test_failed_starts_leave_no_folder_and_no_lock(tmp_path):
    for name, (args, needle) in _failing_starts(tmp_path).items():
        out = tmp_path / name.replace(" ", "-") / "new" / "run"
        result = lbgm(2, "train", "configs/default.toml", *FAST, *args, "--out", str(out),
                      timeout=90, check=False)
        _one_error(result, needle)
        assert not out.parent.parent.exists(), f"{name}: {list(out.parent.parent.rglob('*'))}"


@pytest.mark.mpi
def test_a_failed_start_in_a_folder_of_yours_leaves_it_as_it_was(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    _one_error(lbgm(2, "compare", "configs/default.toml", *FAST, "--set", "clients.count=1",
                    "--out", str(mine), timeout=90, check=False), "clients.count")
    assert mine.is_dir() and not any(mine.iterdir())


def test_a_lock_released_with_nothing_written_takes_its_folders_away(tmp_path):
    RunLock(tmp_path / "a" / "b").acquire().release()
    assert not (tmp_path / "a").exists()
    with RunLock(tmp_path / "c") as lock:
        lock.acquire()
        (tmp_path / "c" / "metrics.jsonl").write_text("")
    assert (tmp_path / "c" / ".lock").read_text() == ""  # a run's folder keeps its lock file


def test_a_lock_on_a_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """Another start removed its lock file between this one's open and flock: this one must not
    hold a lock on a file without a name (a third run could lock the new file too)."""
    calls, flock = [], fcntl.flock

    def flock_after_removal(fd, op):
        if not calls:
            os.unlink(tmp_path / "run" / ".lock")
        calls.append(op)
        return flock(fd, op)

    monkeypatch.setattr(runlock.fcntl, "flock", flock_after_removal)
    lock = RunLock(tmp_path / "run").acquire()
    assert len(calls) == 2
    assert os.fstat(lock.fd).st_ino == os.stat(tmp_path / "run" / ".lock").st_ino
    lock.release()


# ---- 5. report, inspect and plot start no MPI -----------------------------------------------

@pytest.mark.parametrize("command", ["report", "plot", "inspect"])
def test_non_mpi_commands_neither_start_mpi_nor_name_a_rank(command, tmp_path):
    code = ("import sys; from lbgm_mpi.cli import main; status = main(sys.argv[1:]); "
            "print('mpi4py' in sys.modules, status)")
    done = subprocess.run([sys.executable, "-c", code, command, str(tmp_path / "missing")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "2"], (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith("lbgm-mpi: error: ") and "rank" not in line, line


@pytest.mark.mpi
def test_report_under_mpirun_prints_once_and_names_no_rank(runs, tmp_path):
    table = lbgm(2, "report", str(runs / "fedavg"), str(runs / "lbgm"), timeout=60)
    assert table.stdout.count("best acc (%)") == 1, table.stdout
    failed = lbgm(2, "report", str(tmp_path / "missing"), timeout=60, check=False)
    assert _one_error(failed, str(tmp_path / "missing")) == \
        f"lbgm-mpi: error: run folder {tmp_path / 'missing'} does not exist"
