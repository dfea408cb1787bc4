"""Errors a new user meets are one line naming the cause, printed once, before any training
(no traceback, no metrics written), at 2 ranks under a timeout."""

import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import FAST, REPO, lbgm, mpi_env, tmpfs

from lbgm_mpi.config import load_config
from lbgm_mpi.errors import UserError
from lbgm_mpi.runs.preflight import check_run


def _one_line(result, *needles):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("lbgm-mpi: error")]
    assert len(errors) == 1, result.stderr
    assert "lbgm-mpi: error: lbgm-mpi" not in errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


CONFIG_CASES = {
    "model does not fit the data": (["--set", "model.name=lenet"],
                                    ["model.name = 'lenet' does not fit", "1x8x8"]),
    "seed past 2^63": (["--set", "run.seed=9223372036854775808"], ["run.seed"]),
    "alpha = inf": (["--set", "data.partition=dirichlet", "--set", "data.alpha=inf"],
                    ["data.alpha", "finite"]),
    "label with a newline": (["--set", 'run.label="two\\nlines"'], ["run.label", "newline"]),
    "a billion clients": (["--set", "clients.count=1000000000"],
                          ["needs at least", "clients.count"]),
}


@pytest.mark.mpi
@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_runs_are_one_line_before_training(case, tmp_path):
    args, needles = CONFIG_CASES[case]
    started = time.monotonic()
    result = lbgm(2, "train", "configs/default.toml", *args, "--out", str(tmp_path / "run"),
                  timeout=90, check=False)
    _one_line(result, *needles)
    assert not (tmp_path / "run" / "metrics.jsonl").exists(), "training started"
    print(f"{case}: refused after {time.monotonic() - started:.1f} s")


def test_a_billion_clients_are_refused_in_well_under_a_second():
    spec = load_config("configs/default.toml", ["clients.count=1000000000"])
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"needs at least .* of memory on this node"):
        check_run(spec, ranks=2, ranks_on_node=2)
    assert time.perf_counter() - started < 0.5


@pytest.mark.mpi
def test_cupy_kernels_without_a_gpu(tmp_path):
    from lbgm_mpi.kernels.cupy_ops import cupy_available
    if cupy_available():
        pytest.skip("CuPy and a GPU are here: the cupy back end is usable")
    result = lbgm(2, "train", "configs/default.toml", "--set", "system.kernels=cupy",
                  "--out", str(tmp_path), timeout=90, check=False)
    _one_line(result, "system.kernels = 'cupy' needs CuPy and a CUDA GPU")


@pytest.mark.mpi
def test_a_config_path_that_is_a_folder(tmp_path):
    _one_line(lbgm(2, "train", "configs", "--out", str(tmp_path), timeout=60, check=False),
              "config file configs is a folder")


@pytest.mark.mpi
def test_an_out_that_is_a_file(tmp_path):
    taken = tmp_path / "file"
    taken.write_text("not a folder")
    _one_line(lbgm(2, "train", "configs/default.toml", "--out", str(taken), timeout=60,
                   check=False), f"--out {taken} is a file")
    _one_line(lbgm(2, "train", "configs/default.toml", "--out", str(taken / "run"), timeout=60,
                   check=False), "cannot create the folder")


@pytest.mark.mpi
def test_an_out_that_cannot_be_written(tmp_path):
    """Root writes anywhere on a writable file system, so the test mounts a read-only one."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        _one_line(lbgm(2, "train", "configs/default.toml", "--out", str(mount / "run"),
                       timeout=60, check=False), f"--out {mount / 'run'}", "Read-only")


# ---- HDF5 data stores -----------------------------------------------------------------------

def _store(path, **change):
    """A small, valid data store (2 classes), with the arrays in ``change`` replaced."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(40, 5)).astype(np.float32),
              "y_train": np.arange(40, dtype=np.int64) % 2,
              "x_test": rng.normal(size=(10, 5)).astype(np.float32),
              "y_test": np.arange(10, dtype=np.int64) % 2, **change}
    with h5py.File(path, "w") as f:  # written directly: write_dataset_h5 refuses some of these
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.attrs.update(num_classes=2, name="bad", format_version=1)
    return path


def _nan_rows():
    x = np.ones((40, 5), np.float32)
    x[17, 3] = np.nan
    return x


STORE_CASES = {
    "label out of range": ({"y_train": np.arange(40, dtype=np.int64) % 3}, "y_train[2] = 2"),
    "negative label": ({"y_test": -(np.arange(10, dtype=np.int64) % 2)}, "y_test[1] = -1"),
    "y shorter than x": ({"y_train": np.arange(30, dtype=np.int64) % 2},
                         "x_train has 40 rows but y_train has 30"),
    "NaN inputs": ({"x_train": _nan_rows()}, "x_train row 17 holds NaN"),
    "empty test split": ({"x_test": np.zeros((0, 5), np.float32),
                          "y_test": np.zeros(0, np.int64)}, "the test split is empty"),
}


@pytest.mark.mpi
@pytest.mark.parametrize("case", sorted(STORE_CASES))
def test_bad_hdf5_stores_are_one_line_naming_the_file(case, tmp_path):
    change, needle = STORE_CASES[case]
    path = _store(tmp_path / "bad.h5", **change)
    result = lbgm(2, "train", "configs/default.toml", "--set", "data.name=hdf5", "--set",
                  f"data.root={path}", "--set", "model.name=mlp", "--set", "clients.count=2",
                  "--set", "data.partition=iid", "--out", str(tmp_path / "run"), timeout=90,
                  check=False)
    _one_line(result, str(path), needle)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- the command line itself ----------------------------------------------------------------

def test_version_and_argument_errors():
    version = lbgm(1, "--version", timeout=60)
    assert version.stdout.strip().startswith("lbgm-mpi 0.")
    missing = lbgm(1, "train", timeout=60, check=False)
    assert _one_line(missing, "train: the following arguments are required: config") \
        .startswith("lbgm-mpi: error: train:")


def test_analyze_refuses_an_out_that_holds_files(tmp_path):
    (tmp_path / "subspace.json").write_text("{}")
    result = lbgm(1, "analyze", "configs/default.toml", *FAST, "--epochs", "2",
                  "--out", str(tmp_path), timeout=60, check=False)
    _one_line(result, "already holds files")
    assert (tmp_path / "subspace.json").read_text() == "{}"


def test_a_config_path_that_is_a_folder_in_one_process(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lbgm_mpi", "analyze", str(REPO / "configs")],
                          env=mpi_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    _one_line(done, "is a folder")
