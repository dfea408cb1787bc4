"""lbgm_mpi.ddp: LBGM as a DDP communication hook, on CPU (gloo) at 2 and 4 processes.

Each multi-process case launches tests/ddp/worker.py under mpirun in its own process group, with
a timeout that kills the group (conftest.run_mpi); the worker starts its process group with
init_process_group_from_env from mpirun's variables, at a free port."""

import json
import socket

import pytest
import torch

from conftest import REPO, run_mpi
from lbgm_mpi.ddp import (DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT, LBGMHookError, LBGMHookState,
                          _launcher_env)

WORKER = str(REPO / "tests" / "ddp" / "worker.py")
EXAMPLE = str(REPO / "examples" / "ddp_train.py")
TIMEOUT_S = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(np_: int, mode: str, out, monkeypatch, *args: str):
    """Run the worker's ``mode`` on ``np_`` ranks; return rank 0's JSON (or None)."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    run_mpi(np_, [WORKER, mode, "--out", str(out), *args], timeout=TIMEOUT_S)
    return json.loads(out.read_text()) if out.suffix == ".json" else None


def workers(np_: int, jobs: list[list[str]], monkeypatch) -> None:
    """Run several of the worker's jobs (each a MODE and its options, --out included) one after
    the other in one process group on ``np_`` ranks (worker.py many)."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    run_mpi(np_, [WORKER, "many", json.dumps(jobs)], timeout=TIMEOUT_S)


def _short_jobs(np_: int) -> dict:
    """name -> the worker's arguments (without --out) of the short jobs at ``np_`` ranks."""
    jobs = {f"equal-{t}": ["equal", "--threshold", t, "--steps", "8", "--start-iter", "2"]
            for t in ("0", "1e-12")}
    jobs["decide"] = ["decide", "--threshold", "0.7", "--steps", "16", "--start-iter", "2"]
    jobs["resize"] = ["resize", "--threshold", "0.5"]
    if np_ == 2:
        jobs["group"] = ["group", "--threshold", "0.5"]
    return jobs


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """Rank 0's JSON of every short job (equal, decide, resize, group), all of one rank count in
    one launch: {(np_, name): result}."""
    base, results = tmp_path_factory.mktemp("ddp"), {}
    with pytest.MonkeyPatch.context() as mp:
        for np_ in (2, 4):
            jobs = _short_jobs(np_)
            workers(np_, [[*args, "--out", str(base / f"{np_}-{name}.json")]
                          for name, args in jobs.items()], mp)
            for name in jobs:
                results[np_, name] = json.loads((base / f"{np_}-{name}.json").read_text())
    return results


# ---- without processes ------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, ("torchrun", 3, 8, 1)),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4",
      "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, ("mpirun", 2, 4, 0)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, ("mpich", 1, 2, 0)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1"}, ("srun", 5, 6, 1)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "RANK": "0", "WORLD_SIZE": "1"},
     ("torchrun", 0, 1, 0)),
    ({}, ("single", 0, 1, 0)),
])
def test_launcher_environment(env, expected):
    assert _launcher_env(env) == expected
    assert (DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT) == ("127.0.0.1", 29500)


@pytest.mark.parametrize("kw", [dict(threshold=-0.1), dict(threshold=1.5), dict(lookback=0),
                                dict(start_iter=0), dict(sketch=0)])
def test_bad_options(kw):
    with pytest.raises(ValueError):
        LBGMHookState(**kw)


def test_state_round_trip_before_training():
    state = LBGMHookState(threshold=0.3)
    saved = state.state_dict()
    other = LBGMHookState(threshold=0.3)
    other.load_state_dict(saved)
    assert other.state_dict() == saved
    with pytest.raises(LBGMHookError, match="version"):
        other.load_state_dict({**saved, "version": 99})


# ---- 2 and 4 processes ------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("np_", [2, 4])
@pytest.mark.parametrize("threshold", ["0", "1e-12"])
def test_threshold_zero_is_allreduce(np_, threshold, short):
    """Threshold 0 (no record), and a tiny threshold (the record is sent, every bucket still
    refreshes): the gradients equal DDP's default Allreduce at every step, across 2 buckets."""
    res = short[np_, f"equal-{threshold}"]
    assert res["launcher"] == "mpirun" and res["world_size"] == np_
    assert len(res["max_diff_per_step"]) == 8
    assert max(res["max_diff_per_step"]) <= 1e-6, res["max_diff_per_step"]
    c = res["counters"]
    assert res["buckets"] == 2 and c["scalar_buckets"] == 0
    assert c["dense_buckets"] == 2 * 6 and c["allreduce_buckets"] == 3  # iteration 0: one bucket
    assert (c["record_bytes"] > 0) == (threshold != "0")


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [2, 4])
def test_decisions_agree_and_bytes_counted(np_, short):
    """Threshold 0.7: scalar buckets happen; every rank takes the same decisions and ends with
    the same parameters; the bytes each rank counts equal those it handed to dist.all_reduce."""
    res = short[np_, "decide"]
    ranks = res["ranks"]
    assert len(ranks) == np_
    first = ranks[0]
    assert all(r["history"] == first["history"] for r in ranks)
    assert all(r["params"] == first["params"] for r in ranks)
    c = first["counters"]
    assert c["scalar_buckets"] > 0 and c["dense_buckets"] > 0
    assert c["scalar_buckets"] == sum(1 for h in first["history"] if h[2] == "scalar")
    for r in ranks:
        assert r["counters"]["bytes"] == r["handed"]
        assert r["counters"]["bytes"] == (r["counters"]["record_bytes"]
                                          + r["counters"]["dense_bytes"]
                                          + r["counters"]["allreduce_bytes"])


@pytest.mark.mpi
@pytest.mark.parametrize("np_, bucket_mb", [(2, "0.01"), (2, "25"), (4, "0.01")])
def test_resume_is_exact(np_, bucket_mb, tmp_path, monkeypatch):
    """Train 12 steps; or train 6, save (model, optimizer, hook state per rank), start a new
    process group and model, load, train 6: the same parameters bit for bit. Two buckets, and
    one (DDP's first iteration of the new model holds the whole model in one bucket, in another
    order than the rebuilt buckets: the hook maps it onto the saved ones)."""
    common = ["train", "--threshold", "0.7", "--bucket-mb", bucket_mb, "--start-iter", "2"]
    full, resumed = tmp_path / "full.pt", tmp_path / "resumed.pt"
    workers(np_, [[*common, "--steps", "12", "--out", str(full)],
                  [*common, "--steps", "6", "--save", str(tmp_path / "ckpt"),
                   "--out", str(tmp_path / "half.pt")]], monkeypatch)
    worker(np_, common[0], resumed, monkeypatch, *common[1:], "--steps", "6",
           "--load", str(tmp_path / "ckpt"))
    a, b = torch.load(full), torch.load(resumed)
    assert a["counters"]["scalar_buckets"] > 0
    assert a["counters"] == b["counters"]
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [2, 4])
def test_bucket_changing_size_is_one_clear_error(np_, short):
    res = short[np_, "resize"]
    assert res["type"] == "LBGMHookError"
    assert "DDP bucket 0 changed size: it held 4485 values" in res["error"]
    assert "holds 6303 now" in res["error"]


@pytest.mark.mpi
def test_state_of_another_world_size_or_rank_is_refused(short):
    res = short[2, "group"]
    assert "saved by a process group of 3 processes; this one has 2" in res["size_error"]
    assert "this is rank 0, the LBGM hook state was saved by rank 1" in res["rank_error"]


@pytest.mark.mpi
@pytest.mark.parametrize("hook", ["allreduce", "fp16", "powersgd", "lbgm"])
def test_example_counts_the_bytes_each_hook_hands_over(hook, tmp_path, monkeypatch):
    """examples/ddp_train.py computes the bytes of torch's hooks from the bucket sizes (and the
    LBGM hook's from its counters): --check-bytes also counts what reaches dist.all_reduce and
    fails on any difference."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    out = tmp_path / "run.json"
    res = run_mpi(2, [EXAMPLE, "--hook", hook, "--hidden", "256", "--epochs", "2",
                      "--start-iter", "3", "--threshold", "0.9", "--check-bytes",
                      "--json", str(out)], timeout=TIMEOUT_S)
    assert "bytes check:" in res.stdout
    epochs = json.loads(out.read_text())["epochs"]
    assert len(epochs) == 2 and epochs[-1]["test_acc"] > 0.8
    if hook == "lbgm":
        assert epochs[-1]["scalar_buckets"] > 0
