"""Runs you can watch: a start-up line on the root, progress lines with an estimate of the time
left, and in a log (not a terminal) a line at least every minute."""

import io

import pytest
from conftest import lbgm

from lbgm_mpi.runs.log import Progress, duration


def _row(rnd: int) -> dict:
    return {"round": rnd, "uplink_bytes": 10, "dense_uplink_bytes": 40}


class _Clock:
    """A clock that advances ``step`` seconds each time it is read after the first."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


def test_a_log_gets_a_line_at_least_every_minute_with_an_eta():
    """1000 rounds of 25 s: rounds/10 = 100 rounds would be 41 minutes of silence."""
    log = io.StringIO()
    progress = Progress("lbgm", 1000, active=True, stream=log, clock=_Clock(25.0))
    for rnd in range(1, 10):
        progress.update(_row(rnd), 0.5)
    lines = log.getvalue().splitlines()
    assert [line.split("round ")[1].split("/")[0] for line in lines] == ["3", "6", "9"]
    # after round 3: 75 s for 3 rounds, 997 to go
    assert lines[0].endswith("1m15s, ETA 6h55m"), lines[0]


def test_a_resumed_run_estimates_from_its_own_rounds():
    log = io.StringIO()
    progress = Progress("lbgm", 20, active=True, stream=log, clock=_Clock(10.0))
    progress.resume([_row(r) for r in range(1, 11)])
    progress.update(_row(11), None)  # not due: 11 is no multiple of 2, 10 s < 60 s
    progress.update(_row(12), None)
    assert log.getvalue().splitlines()[-1].endswith("20s, ETA 1m20s")  # 10 s a round, 8 left


def test_durations():
    assert [duration(s) for s in (0, 42, 185, 7440)] == ["0s", "42s", "3m05s", "2h04m"]


@pytest.mark.mpi
def test_the_start_up_line_says_what_runs_where(tmp_path):
    result = lbgm(2, "train", "configs/default.toml", "--set", "run.rounds=2",
                  "--out", str(tmp_path), timeout=120)
    [line] = [x for x in result.stderr.splitlines() if "rank(s)," in x]
    for part in ("2 rank(s), 2 client(s) per rank of 4", "4,810 parameters",
                 "look-back bank 77 KB per rank", "device cpu", "Open MPI v", "CUDA-aware"):
        assert part in line, line
