"""The slow-link benchmark (benchmarks/bench_links.py) and its pieces.

- pure pieces, anywhere: tc rates, the collectives' schedules, the fit recovering known
  parameters, the time-to-target clocks;
- as root, where network namespaces can be created (else skipped, saying why): the short form
  of the benchmark on 2 hosts joined by a 20 Mbit/s link, which must show LBGM spending less time
  in the collectives than FedAvg, and leave no namespace or link behind; and an interrupted
  benchmark, which must remove every namespace, link and process it created.
Every launch runs in its own process group under a timeout; on expiry the group gets SIGTERM
(so the benchmark removes its hosts), then SIGKILL, and leftovers are removed by name.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, mpi_env

sys.path.insert(0, str(REPO / "benchmarks" / "links"))
import costmodel  # noqa: E402
import netns  # noqa: E402
import timeline  # noqa: E402

PREFIX = "lkt"        # namespaces and links of these tests: lkt-*
SUBNET = "10.78.0"
TIMEOUT_S = 150       # the short benchmark takes 45-80 s on 2 shared cores
SHORT = ["--rate", "20mbit", "--ranks", "2", "--config", "configs/links-ci.toml",
         "--methods", "fedavg,lbgm-model", "--micro-ranks", "2", "--micro-rates", "20mbit",
         "--micro-reps", "1", "--ref-rounds", "2", "--prefix", PREFIX, "--subnet", SUBNET]


def test_rates_read_as_tc_writes_them():
    assert netns.rate_bits("100mbit") == 1e8
    assert netns.rate_bits("1gbit") == 1e9
    assert netns.rate_bits("10Mbit") == 1e7
    with pytest.raises(ValueError, match="10mbit"):
        netns.rate_bits("100 Mb/s")


def test_schedules_of_the_pinned_algorithms():
    n = 1000
    assert costmodel.schedule("allreduce", 4, [n]) == (6, 1500.0)       # ring: 2(P-1)/P n
    assert costmodel.schedule("allgatherv", 8, [n] * 8) == (3, 7000.0)  # every block but own
    assert costmodel.schedule("allgatherv", 8, [n] + [0] * 7) == (3, 3000.0)  # log2 P hops
    assert costmodel.schedule("allreduce", 1, [n]) == (0, 0.0)


def test_fit_recovers_known_parameters():
    truth = {op: {"alpha": 2e-4, "b0": 1e-9, "c": 9.5} for op in costmodel.OPS}
    points = [{"op": op, "bytes": n, "ranks": p, "rate": "r", "rate_bits": rate}
              for op in ("allreduce", "allgatherv-all", "allgatherv-one")
              for n in (64, 4000, 400_000, 4_000_000) for p in (2, 4, 8) for rate in (1e8, 1e9)]
    for pt in points:
        op = "allreduce" if pt["op"] == "allreduce" else "allgatherv"
        pt["seconds"] = costmodel.seconds(truth, op, pt["ranks"], costmodel.point_blocks(pt),
                                          pt["rate_bits"])
    fitted = costmodel.fit(points)
    for op in costmodel.OPS:
        for key, value in truth[op].items():
            assert fitted[op][key] == pytest.approx(value, rel=1e-6), (op, key)


def test_clocks_and_time_to_target():
    rows = [{"round": r, "round_s": 3.0, "train_s": 1.5, "eval_s": 0.5, "participants": 4,
             "test_acc": acc} for r, acc in ((1, 0.5), (2, None), (3, 0.9))]
    assert timeline.elapsed(rows) == [3.0, 6.0, 9.0]
    seen = timeline.visible(rows, {"train_s": 0.25, "eval_s": 0.25}, ranks=4)  # 1 + .25 + .25
    assert seen == [1.5, 3.0, 4.5]
    assert timeline.to_target(rows, seen, 0.85) == (3, 4.5)
    assert timeline.to_target(rows, seen, 0.95) == (None, None)


def _namespaces_or_skip() -> None:
    reason = netns.probe(PREFIX)
    if reason:
        pytest.skip(f"network namespaces cannot be created here: {reason}")


def _launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "benchmarks/bench_links.py", *args], cwd=REPO,
                            env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for the benchmark; on timeout stop its process group (SIGTERM first, so that it
    removes its hosts), remove leftovers by name, and fail."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out = proc.communicate()[0]
        netns.remove(PREFIX)
        pytest.fail(f"bench_links.py {' '.join(proc.args[2:])} ran over {timeout} s\n{out}")


@pytest.mark.mpi
def test_lbgm_spends_less_time_in_collectives_on_a_shaped_link(tmp_path):
    _namespaces_or_skip()
    before = netns.leftovers(PREFIX)
    proc = _launch([*SHORT, "--out", str(tmp_path / "ci")])
    out = _finish(proc, TIMEOUT_S)
    assert proc.returncode == 0, out
    assert netns.leftovers(PREFIX) == before == []
    record = json.loads((tmp_path / "ci.json").read_text())
    comm = {r["method"]: r["comm_s"] for r in record["results"]}
    moved = {r["method"]: r["mpi_bytes"] for r in record["results"]}
    assert moved["lbgm-model"] < moved["fedavg"] / 3, moved
    assert comm["lbgm-model"] < comm["fedavg"], (comm, out)
    assert (tmp_path / "ci.png").stat().st_size > 0


@pytest.mark.mpi
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_benchmark_removes_what_it_created(tmp_path, sig):
    _namespaces_or_skip()
    proc = _launch([*SHORT, "--out", str(tmp_path / "ci")])
    deadline = time.monotonic() + 60
    while len(netns.leftovers(PREFIX)) < 3 and time.monotonic() < deadline:  # hosts, bridge
        time.sleep(0.2)
    created = netns.leftovers(PREFIX)
    started, ranks = set(), set()  # wait for ranks in the namespaces (after the links are shaped)
    while not ranks and proc.poll() is None and time.monotonic() < deadline + 60:
        time.sleep(0.2)
        started = netns.namespace_pids(netns.namespaces(PREFIX))
        ranks = {pid for pid in started if _is_python(pid)}
    proc.send_signal(sig)
    out = _finish(proc, 30)
    assert proc.returncode != 0, out
    assert len(created) >= 3 and ranks, out
    assert netns.leftovers(PREFIX) == [], out
    assert not [pid for pid in started if _alive(pid)], out


def _is_python(pid: int) -> bool:
    """Whether ``pid`` runs Python (a rank, rather than tc or PRRTE's daemon)."""
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
