"""The job scripts and the repository keep their promises: the quickstart writes a new folder and
deletes none, the local and SLURM sweeps agree, SLURM logs are ignored, and the repository is
self-contained (no file cites a document it does not hold)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, mpi_env, read_summary


@pytest.mark.mpi
def test_quickstart_writes_a_new_folder_and_leaves_runs_default_alone(tmp_path):
    """configs/default.toml tells users to write runs/default; the quickstart used to delete it."""
    for part in ("jobs", "configs"):
        shutil.copytree(REPO / part, tmp_path / part)
    mine = tmp_path / "runs" / "default" / "metrics.jsonl"
    mine.parent.mkdir(parents=True)
    mine.write_text("a user's run\n")
    env = {**mpi_env(), "LBGM_MPI_RANKS": "2",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    done = subprocess.run(["bash", str(tmp_path / "jobs/quickstart.sh"), "--set", "run.rounds=2",
                           "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert mine.read_text() == "a user's run\n"
    [made] = (tmp_path / "runs").glob("quickstart-*")
    assert read_summary(made / "lbgm")["rounds"] == 2 and (made / "fedavg").is_dir()


def _default(script: str, pattern: str) -> list[str]:
    """The words of the default that ``pattern`` (one group) finds in jobs/``script``."""
    return re.search(pattern, (REPO / "jobs" / script).read_text()).group(1).split()


def test_the_local_and_the_slurm_sweep_agree():
    local = _default("sweep.sh", r'thresholds="\$\{THRESHOLDS:-([^}"]*)\}"')
    slurm = _default("slurm/sweep.sbatch", r'THRESHOLDS:-([^}"]*)\}"')
    assert slurm == ["fedavg", *local], (local, slurm)
    array = re.search(r"#SBATCH --array=0-(\d+)", (REPO / "jobs/slurm/sweep.sbatch").read_text())
    assert int(array.group(1)) == len(slurm) - 1
    for script in ("sweep.sh", "slurm/sweep.sbatch"):
        text = (REPO / "jobs" / script).read_text()
        assert "/fedavg" in text and "/threshold-$" in text, script


def test_slurm_logs_are_ignored():
    for log in ("slurm-1234.out", "slurm-77_3.out"):  # a job, an array task
        done = subprocess.run(["git", "check-ignore", "-q", log], cwd=REPO, capture_output=True)
        assert done.returncode == 0, f"{log} is not ignored: {done.stderr}"


def test_no_file_cites_a_document_the_repository_does_not_hold():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    citing = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in (".png", ".h5"):
            continue
        text = path.read_text(errors="replace")
        citing += [f"{name}: {doc}.md" for doc in ("DESIGN", "STYLE")  # not cited here either
                   if f"{doc}.md" in text and not (REPO / f"{doc}.md").exists()]
    assert not citing, citing
