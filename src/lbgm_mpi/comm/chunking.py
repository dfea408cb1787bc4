"""How a collective larger than one MPI message is cut into steps (pure functions, no MPI).

MPI-3 counts and displacements are C ints, and Open MPI 5 has no MPI-4 large-count routines:
mpi4py raises MPI_ERR_ARG for any count or displacement past 2^31 - 1. The comm module therefore
never hands MPI more than ``limit`` bytes in one call. For a gather where rank r contributes
``counts[r]`` bytes, every step gives each rank a share of a budget of ``limit`` bytes (water
filling: ranks with little left take all of it, the rest split what remains), so every step's
counts and displacements stay below the limit, the number of steps stays close to
ceil(sum(counts) / limit), and a step's receive buffer is bounded by ``limit`` bytes.
"""

ALIGN = 64  # step boundaries inside a rank's payload fall on multiples of this many bytes
INT_MAX = 2**31 - 1


def check_limit(limit: int, size: int) -> None:
    """Refuse a message limit that MPI cannot take or that leaves a rank no aligned share."""
    if not ALIGN * size <= limit <= INT_MAX:
        raise ValueError(f"the message limit {limit} must lie in [{ALIGN} x {size} ranks, "
                         f"2^31 - 1]")


def water_fill(remaining: list[int], budget: int) -> list[int]:
    """Bytes each rank sends in one step: at most ``budget`` in all, a rank that has little left
    sends all of it, the others an equal share rounded down to ALIGN (never more than they have)."""
    give = [0] * len(remaining)
    active = sorted((n, r) for r, n in enumerate(remaining) if n > 0)
    for i, (left, r) in enumerate(active):
        share = budget // (len(active) - i)
        give[r] = left if left <= share else share - share % ALIGN
        budget -= give[r]
    return give


def gather_steps(counts: list[int], limit: int) -> list[list[tuple[int, int]]]:
    """Steps of a gather of ``counts[r]`` bytes from each rank r: for each step, each rank's
    byte range [lo, hi) of its own payload. Every step moves at most ``limit`` bytes in all, and
    every byte of every payload is moved once, in order."""
    check_limit(limit, len(counts))
    done = [0] * len(counts)
    steps = []
    while any(d < c for d, c in zip(done, counts)):
        give = water_fill([c - d for d, c in zip(done, counts)], limit)
        steps.append([(d, d + g) for d, g in zip(done, give)])
        done = [d + g for d, g in zip(done, give)]
    return steps


def element_chunks(numel: int, itemsize: int, limit: int) -> list[tuple[int, int]]:
    """[lo, hi) element ranges of at most ``limit`` bytes each that cover ``numel`` elements."""
    step = max(1, limit // itemsize)
    return [(lo, min(lo + step, numel)) for lo in range(0, numel, step)] or [(0, 0)]


def displacements(counts: list[int]) -> list[int]:
    """Offsets of consecutive blocks of ``counts`` bytes."""
    out, total = [], 0
    for c in counts:
        out.append(total)
        total += c
    return out
