"""The job scripts in jobs/: the SLURM templates on a real single-node cluster (.ci/slurm-up.sh
starts one; the tests skip, saying why, where there is none) and the local mpirun launcher.

What a job did is read from what the run wrote, never from the exit status alone: a launcher that
fails to wire up MPI (srun --mpi=pmi2 with Open MPI 5) starts every process as rank 0 of 1 and
still exits 0, so the rank count comes from summary.json's mpi_bytes_by_rank."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, REPO, lbgm, mpi_env, read_metrics, read_summary, without_timing

# The longest wait for one event of a job. SLURM holds a requeued job back for the credential
# lifetime, AuthInfo=cred_expire: .ci/slurm-up.sh sets 5 s (the least Slurm takes), the default is 120 s.
JOB_TIMEOUT_S = 240
POLL_S = 0.3
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
# Long enough (~0.15 s a round on one core) to be interrupted twice after 5 rounds each (a stop
# comes within a round of the signal), short enough for CI.
LONG_ROUNDS = 40
LONG = [*FAST, "--set", f"run.rounds={LONG_ROUNDS}", "--set", "data.synthetic_samples=8000",
        "--set", "run.checkpoint_every=10"]


def _rows(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


# ---- the cluster ----------------------------------------------------------------------------

def _why_no_cluster() -> str | None:
    """None if a SLURM cluster with an idle node of 2+ CPUs answers; otherwise why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo, sbatch) on the PATH; bash .ci/slurm-up.sh starts a cluster"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%T %c"], capture_output=True, text=True,
                              timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s (is slurmctld running? bash .ci/slurm-up.sh)"
    if info.returncode != 0:
        return f"sinfo failed: {info.stderr.strip()} (bash .ci/slurm-up.sh starts a cluster)"
    nodes = [line.split() for line in info.stdout.splitlines() if line.strip()]
    if not any(state.rstrip("*~#$@%!^-") == "idle" and int(cpus.rstrip("+")) >= 2
               for state, cpus in nodes):
        return f"no idle SLURM node with 2+ CPUs (sinfo: {info.stdout.strip() or 'no nodes'})"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _why_no_cluster()
    deadline = time.time() + 120  # a job left by an earlier run may still be finishing
    while reason and reason.startswith("no idle") and time.time() < deadline:
        time.sleep(2)
        reason = _why_no_cluster()
    if reason:
        pytest.skip(reason)


class Job:
    """A submitted batch job; every wait has a timeout and cancels the job when it runs out."""

    def __init__(self, job_id: str, output: Path):
        self.id = job_id
        self.output = output  # the batch shell's stdout and stderr

    def fields(self) -> dict[str, str]:
        """scontrol's view: {"JobState": "RUNNING", "Restarts": "0", ...} ({} once forgotten)."""
        out = subprocess.run(["scontrol", "-o", "show", "job", self.id], capture_output=True,
                             text=True, timeout=15).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def log(self) -> str:
        return self.output.read_text() if self.output.exists() else "(no output file)"

    def fail(self, why: str):
        cancel(self.id)
        pytest.fail(f"job {self.id}: {why}\n{self.fields()}\n--- output ---\n{self.log()}")

    def wait_for(self, what: str, ready, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
        """Poll until ready(fields) holds; return the fields. Starts a requeued job at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.fields()
            if ready(fields):
                return fields
            if fields.get("JobState") in FINISHED:
                self.fail(f"ended ({fields['JobState']}) while waiting for {what}")
            time.sleep(POLL_S)
        self.fail(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_end(self) -> dict[str, str]:
        return self.wait_for("its end", lambda f: f.get("JobState") in FINISHED)


def cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, timeout=15)


@pytest.fixture
def sbatch(cluster, tmp_path):
    """sbatch(script, name, ntasks, array=None, **env) -> [Job, one per array task]; the job
    reads its settings from ``env``. Whatever is still queued at the end is cancelled."""
    submitted = []

    def submit(script: str, name: str, ntasks: int, array: int | None = None,
               **env: str) -> list[Job]:
        pattern = "%A_%a" if array else "%j"
        venv = sys.prefix if sys.prefix != sys.base_prefix else ""
        job_env = {**mpi_env(), "VENV": venv, "CONFIG": "configs/default.toml", **env}
        result = subprocess.run(
            ["sbatch", "--parsable", f"--ntasks={ntasks}", "--time=10",
             f"--output={tmp_path}/{name}-{pattern}.out",
             *([f"--array=0-{array - 1}"] if array else []), str(REPO / "jobs/slurm" / script)],
            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"sbatch failed: {result.stderr}"
        job_id = result.stdout.strip().split(";")[0]
        submitted.append(job_id)
        ids = [f"{job_id}_{task}" for task in range(array)] if array else [job_id]
        return [Job(i, tmp_path / f"{name}-{i}.out") for i in ids]

    yield submit
    for job_id in submitted:
        cancel(job_id)


def _assert_completed(job: Job, fields: dict[str, str]) -> None:
    if fields.get("JobState") != "COMPLETED" or fields.get("ExitCode") != "0:0":
        job.fail("did not complete with exit code 0")


# ---- jobs/slurm/train.sbatch ----------------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_train_job_runs_two_ranks(sbatch, tmp_path, launcher):
    run_dir = tmp_path / "run"
    [job] = sbatch("train.sbatch", "train", 2, RUN_DIR=str(run_dir), LAUNCHER=launcher,
                   EXTRA_ARGS=" ".join(FAST))
    _assert_completed(job, job.wait_end())
    summary = read_summary(run_dir)
    assert len(summary["mpi_bytes_by_rank"]) == 2, f"not 2 ranks:\n{job.log()}"
    assert summary["rounds"] == 8 and len(read_metrics(run_dir)) == 8
    assert list((run_dir / "checkpoints").glob("round-000008.h5")), "no final checkpoint"
    assert f"{launcher} " in job.log() and "run folder:" in job.log()


def _preempt(job: Job, run_dir: Path, times: int) -> None:
    """Let the job train a few rounds, then SIGUSR1 its batch shell (what --signal=B:USR1@T does
    before the time limit) and wait for the requeue; ``times`` times over."""
    for restart in range(times):
        start = _rows(run_dir)
        job.wait_for(f"5 more rounds after start {restart + 1}",
                     lambda f: f.get("JobState") == "RUNNING" and f.get("Restarts") == str(restart)
                     and _rows(run_dir) >= start + 5)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job.id], check=True, timeout=15)
        job.wait_for(f"requeue {restart + 1} (if it ended, LONG may be too short)",
                     lambda f: int(f.get("Restarts", 0)) > restart)


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    """metrics.jsonl of LONG run straight through on 2 ranks with mpirun, outside SLURM."""
    out = tmp_path_factory.mktemp("uninterrupted")
    lbgm(2, "train", "configs/default.toml", *LONG, "--quiet", "--out", str(out))
    return without_timing(read_metrics(out))


@pytest.mark.slurm
@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_preempted_job_requeues_and_matches_an_uninterrupted_run(sbatch, tmp_path, launcher,
                                                                 uninterrupted):
    run_dir = tmp_path / "run"
    [job] = sbatch("train.sbatch", "preempted", 2, RUN_DIR=str(run_dir), LAUNCHER=launcher,
                   EXTRA_ARGS=" ".join(LONG))
    _preempt(job, run_dir, times=2)
    fields = job.wait_end()
    _assert_completed(job, fields)
    assert fields["Restarts"] == "2"
    log = job.log()
    assert log.count("checkpoint written; requeueing") == 2, log
    assert log.count(", start ") == 3, log  # --open-mode=append kept all three starts
    assert len(read_summary(run_dir)["mpi_bytes_by_rank"]) == 2
    assert without_timing(read_metrics(run_dir)) == uninterrupted


@pytest.mark.slurm
def test_cancelled_job_checkpoints_stays_cancelled_and_a_resubmission_continues(
        sbatch, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    env = dict(RUN_DIR=str(run_dir), EXTRA_ARGS=" ".join(LONG))
    [job] = sbatch("train.sbatch", "cancelled", 2, **env)
    job.wait_for("5 rounds", lambda f: f.get("JobState") == "RUNNING" and _rows(run_dir) >= 5)
    cancel(job.id)
    fields = job.wait_end()
    assert fields["JobState"] == "CANCELLED" and fields["Restarts"] == "0", fields
    assert "job not requeued" in job.log() and _rows(run_dir) < LONG_ROUNDS, job.log()
    [again] = sbatch("train.sbatch", "resubmitted", 2, **env)
    _assert_completed(again, again.wait_end())
    assert without_timing(read_metrics(run_dir)) == uninterrupted


# ---- jobs/slurm/sweep.sbatch ----------------------------------------------------------------

@pytest.mark.slurm
def test_sweep_array_job_gives_one_run_folder_per_threshold(sbatch, tmp_path):
    sweep = tmp_path / "sweep"
    jobs = sbatch("sweep.sbatch", "sweep", 1, array=2, THRESHOLDS="fedavg 0.3",
                  SWEEP_DIR=str(sweep), EXTRA_ARGS=" ".join(FAST))
    for job in jobs:
        _assert_completed(job, job.wait_end())
    summaries = {p.parent.name: read_summary(p.parent) for p in sweep.glob("*/summary.json")}
    assert sorted(summaries) == ["fedavg", "threshold-0.3"], [job.log() for job in jobs]
    assert summaries["fedavg"]["algo"] == "fedavg"
    assert summaries["threshold-0.3"]["threshold"] == 0.3


# ---- jobs/mpirun-local.sh -------------------------------------------------------------------

@pytest.mark.mpi
def test_mpirun_local_oversubscribes_stops_on_usr1_and_resumes(tmp_path):
    """More ranks than cores (up to 4); SIGUSR1 to the launcher stops the run with exit 75 after a
    checkpoint, and the same command with --resume latest finishes it."""
    np_ = min(len(os.sched_getaffinity(0)) + 1, 4)  # the script compares with nproc
    cmd = ["bash", str(REPO / "jobs/mpirun-local.sh"), str(np_), "configs/default.toml",
           "--out", str(tmp_path), "--resume", "latest", "--quiet", *LONG, "--set", "run.rounds=30"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=mpi_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _rows(tmp_path) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, out
    assert 3 <= _rows(tmp_path) < 30
    again = subprocess.run(cmd, cwd=REPO, env=mpi_env(), text=True, capture_output=True,
                           timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(read_summary(tmp_path)["mpi_bytes_by_rank"]) == np_
    assert [r["round"] for r in read_metrics(tmp_path)] == list(range(1, 31))
