"""CMake registers the test matrix for `ctest` (configuring builds nothing)."""

import shutil
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_ctest_lists_the_matrix(tmp_path):
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path),
                    f"-DPython3_EXECUTABLE={sys.executable}"], check=True, capture_output=True,
                   timeout=120)
    listed = subprocess.run(["ctest", "-N", "--test-dir", str(tmp_path)], check=True,
                            capture_output=True, text=True, timeout=60).stdout
    for name in ("pytest_unit", "pytest_mpi", "train_np1", "train_np2", "train_np4"):
        assert name in listed
    smoke = subprocess.run(["ctest", "--test-dir", str(tmp_path), "-R", "train_np2",
                            "--output-on-failure"], capture_output=True, text=True, timeout=240)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
