"""The wire record of the gathering exchanges and where gathered payload bytes go."""

import bisect
import itertools

import numpy as np
import torch


def record_dtype(num_segments: int, lookback: int = 1) -> np.dtype:
    """The packed wire record of one participant (m = ``lookback`` coefficients per segment)."""
    rho = (num_segments,) if lookback == 1 else (num_segments, lookback)
    return np.dtype([("client", "<i4"), ("loss", "<f4"), ("payload", "<i8"),
                     ("refresh", "u1", (num_segments,)), ("rho", "<f4", rho)])


class PayloadMap:
    """Where the bytes of each rank's gathered payload go: rank r's payload is the concatenation
    of its parts ``parts[r] = [(target, nbytes), ...]``."""

    def __init__(self, parts: list[list[tuple[object, int]]]):
        self.targets = [[t for t, _ in ps] for ps in parts]
        self.starts = [[0, *itertools.accumulate(n for _, n in ps)] for ps in parts]

    def split(self, rank: int, offset: int, data: torch.Tensor):
        """Yield (target, position in the target, bytes) for the bytes ``data`` at ``offset`` of
        rank ``rank``'s payload."""
        starts, done = self.starts[rank], 0
        part = bisect.bisect_right(starts, offset) - 1
        while done < len(data):
            take = min(len(data) - done, starts[part + 1] - (offset + done))
            if take > 0:
                yield (self.targets[rank][part], offset + done - starts[part],
                       data[done:done + take])
            done += take
            part += 1

