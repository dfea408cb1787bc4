"""The comm module moves payloads of any size: the step plan (pure), every collective at a tiny
message limit on 1, 2 and 4 ranks, and one real collective past 2^31 bytes on 2 ranks."""

import random

import pytest

from conftest import REPO, run_mpi
from lbgm_mpi.comm.chunking import ALIGN, gather_steps, water_fill


@pytest.mark.parametrize("seed", range(20))
def test_steps_cover_every_byte_once_and_stay_under_the_limit(seed):
    rng = random.Random(seed)
    size = rng.choice([1, 2, 3, 4, 7])
    counts = [rng.choice([0, rng.randrange(1, 5000), rng.randrange(0, 100)]) for _ in range(size)]
    limit = rng.randrange(ALIGN * size, 3000)
    steps = gather_steps(counts, limit)
    for step in steps:
        assert sum(hi - lo for lo, hi in step) <= limit
        assert all(lo % ALIGN == 0 for lo, hi in step if hi > lo)
    for r, count in enumerate(counts):
        ranges = [step[r] for step in steps if step[r][1] > step[r][0]]
        assert [lo for lo, _ in ranges] == [0, *(hi for _, hi in ranges[:-1])][:len(ranges)]
        assert sum(hi - lo for lo, hi in ranges) == count
    lower = -(-sum(counts) // limit)
    assert len(steps) <= lower + size, "water filling should need few steps beyond the minimum"


def test_water_fill_gives_small_payloads_whole_and_splits_the_rest():
    assert water_fill([10, 10_000, 0, 20_000], 4096) == [10, 1984, 0, 2048]


def test_a_limit_past_what_mpi_counts_or_too_small_for_the_ranks_is_refused():
    with pytest.raises(ValueError, match="2\\^31"):
        gather_steps([1], 2**31)
    with pytest.raises(ValueError, match="ranks"):
        gather_steps([1] * 8, 100)


LIMITS = (256, 1 << 20)


@pytest.fixture(scope="module")
def steps():
    """comm_steps.py at every limit, one launch per rank count: {(np_, limit): the "ok" lines}."""
    out = {}
    for np_ in (1, 2, 4):
        result = run_mpi(np_, [str(REPO / "tests/mpi/comm_steps.py"), *map(str, LIMITS)],
                         timeout=120)
        for limit in LIMITS:
            out[np_, limit] = [line for line in result.stdout.splitlines()
                               if line.startswith("ok") and line.split()[2] == str(limit)]
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [1, 2, 4])
@pytest.mark.parametrize("limit", LIMITS)
def test_every_collective_at_a_tiny_limit(steps, np_, limit):
    lines = steps[np_, limit]
    assert len(lines) == np_
    if limit == 256 and np_ > 1:
        assert int(lines[0].split()[1]) >= 4, "a tiny limit must take several steps"


@pytest.mark.mpi
@pytest.mark.bigmem
def test_a_real_gather_past_two_to_the_31_bytes():
    result = run_mpi(2, [str(REPO / "tests/mpi/comm_past_2gib.py")], timeout=600)
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("ok")]
    assert len(lines) == 2 and all(int(n) == 2**31 + 2**20 + 4096 for _, n, _ in lines)
    assert all(int(steps) >= 2 for _, _, steps in lines)
