"""LBGM on the aggregate (``algo.scope = "global"``): the math, with no MPI.

Every rank keeps the same look-back bank: for each segment s of the model vector (the whole model,
or one tensor at layer granularity), an orthonormal basis Q_s (at most m rows) of the span of the
last m refreshed aggregates. A round's aggregate is a = sum_p a_p, the sum over ranks of their
partial aggregates. What a rank reports about a_p is linear in a_p, so one Allreduce of it gives
the same numbers for a:

    c_p = Q_s a_p                     m look-back coefficients per segment
    z_p = S_s (a_p - Q_s^T c_p)       a count sketch of the part of a_p the bank misses

Summed over ranks: c = Q_s a and z = S_s r, where r = a - Q_s^T c is the aggregate's residual.
For a count sketch of w buckets, E |z|^2 = |r|^2 and Var |z|^2 <= 2 |r|^4 / w (``sketch_bound``),
so every rank estimates the same

    sin^2 = |z|^2 / (|z|^2 + |c|^2)    (|c|^2 = ||projection of a||^2 exactly)

and a segment is a scalar segment iff the bank has a direction for it, the threshold is positive
and the estimate is at or below the threshold: its aggregate is then Q_s^T c. Otherwise the
segment refreshes: its exact aggregate (from a dense Allreduce) joins the bank, the oldest of the
m kept aggregates leaves, and the basis is rotated so that it spans the kept ones again.
A segment no wider than its sketch is "sketched" by the identity: its residual is sent exactly.
"""

import itertools

import numpy as np
import torch

from lbgm_mpi.algorithm.lbgm import RCOND

BLOCK = 1 << 20       # columns handled at a time: bounds the scratch memory
CACHE_VALUES = 1 << 24  # a sketch keeps its buckets and signs (5 bytes a value) up to this many
SKETCH_SHARE = 16     # all segments' sketches together hold at most d / SKETCH_SHARE values
MIN_WIDTH = 16        # ... but a segment keeps at least this many buckets (or all its values)
_MASK64 = (1 << 64) - 1


def sketch_widths(sizes: list[int], width: int) -> list[int]:
    """Buckets of each segment's count sketch for ``algo.sketch = width``.

    A segment gets min(width, its size) buckets; where that totals more than d / SKETCH_SHARE
    (small models), every segment shrinks in proportion, to no fewer than MIN_WIDTH buckets (or
    its size). A segment with as many buckets as values is sent exactly (identity sketch)."""
    wanted = [min(width, n) for n in sizes]
    cap = max(1, sum(sizes) // SKETCH_SHARE)
    if sum(wanted) <= cap:
        return wanted
    scale = cap / sum(wanted)
    return [min(n, max(MIN_WIDTH, int(w * scale))) for w, n in zip(wanted, sizes)]


def sketch_bound(width: int) -> float:
    """Relative standard deviation bound of a count sketch's squared-norm estimate (w buckets):
    sqrt(Var |Sr|^2) / |r|^2 <= sqrt(2 / w)."""
    return (2.0 / width) ** 0.5


def _mix(keys: tuple[int, ...]) -> int:
    """A 64-bit constant that depends on every key (splitmix64 chained)."""
    h = 0x9E3779B97F4A7C15
    for key in keys:
        h = (h ^ (key & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h


def _hash(key: int, lo: int, hi: int) -> np.ndarray:
    """splitmix64 of the positions lo..hi-1 under ``key`` (uint64; arithmetic wraps mod 2^64)."""
    z = np.arange(lo, hi, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


class CountSketch:
    """A count sketch per segment: value i of segment s goes, with a random sign, to one of w_s
    buckets; bucket and sign come from (seed, segment, i) alone, so every rank has the same
    sketch and sketching is linear: S(x + y) = S(x) + S(y)."""

    def __init__(self, sizes: list[int], widths: list[int], seed: int):
        self.sizes, self.widths = list(sizes), list(widths)
        self.offsets = [0, *itertools.accumulate(widths)]
        self.keys = [_mix((seed, 0x5C37C4, s)) for s in range(len(sizes))]
        # (segment, lo, length, device) -> (int32 buckets, int8 signs): hashing every position
        # afresh was most of a round's own work on a CPU (1.3 s for 10M values)
        self._cache, self._cached = {}, 0

    @property
    def size(self) -> int:
        """Values in the sketch of a whole vector (all segments)."""
        return self.offsets[-1]

    def exact(self, s: int) -> bool:
        """Whether segment s is sent exactly (the identity sketch)."""
        return self.widths[s] == self.sizes[s]

    def add(self, out: torch.Tensor, s: int, lo: int, x: torch.Tensor) -> None:
        """Add the sketch of ``x``, values lo .. lo + len(x) of segment s, to ``out`` (the float64
        sketch of all segments, on x's device), in place."""
        base, w = self.offsets[s], self.widths[s]
        x = x.to(torch.float64)
        if self.exact(s):
            out[base + lo:base + lo + len(x)] += x
            return
        bucket, sign = self._buckets(s, lo, len(x), x.device)
        out[base:base + w].index_add_(0, bucket, x * sign)

    def _buckets(self, s: int, lo: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets (int32) and signs (int8, +-1) of positions lo .. lo + n of segment s; kept
        for the next round while the sketch holds at most CACHE_VALUES of them."""
        key = (s, lo, n, str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        z = _hash(self.keys[s], lo, lo + n)
        bucket = torch.from_numpy(((z >> np.uint64(1)) % np.uint64(self.widths[s]))
                                  .astype(np.int32)).to(device)
        sign = torch.from_numpy((1 - 2 * (z & np.uint64(1)).astype(np.int8))).to(device)
        if self._cached + n <= CACHE_VALUES:
            self._cache[key], self._cached = (bucket, sign), self._cached + n
        return bucket, sign

    def norms2(self, sketch: torch.Tensor) -> torch.Tensor:
        """Per segment |z_s|^2 of a float64 sketch (float64, on the host)."""
        sq = sketch.to("cpu", torch.float64) ** 2
        return torch.stack([sq[a:b].sum() for a, b in zip(self.offsets, self.offsets[1:])])


def decide_global(coefs: torch.Tensor, sketch_norm2: torch.Tensor, usable: torch.Tensor,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(refresh flags, estimated sin^2) per segment of the aggregate.

    ``coefs`` (L x m, float64) are the aggregate's exact coefficients on the orthonormal bank,
    ``sketch_norm2`` (L) the squared norms of its residual's sketch, ``usable`` (L, bool) where a
    segment may go as a scalar (the bank has a direction for it). A zero aggregate lies in any
    span (sin^2 = 0). Threshold 0 refreshes every segment: exactly FedAvg."""
    projected = (coefs * coefs).sum(dim=1)
    total = projected + sketch_norm2
    sin2 = torch.where(total > 0, sketch_norm2 / torch.where(total > 0, total, 1.0), 0.0)
    scalar = usable & (sin2 <= threshold) if threshold > 0 else torch.zeros_like(usable)
    return ~scalar, sin2


class GlobalBank:
    """The orthonormal look-back bank of the global scope: ``rows`` (m x d, float32, on one
    device), per segment ``count[s]`` basis rows in use (rows 0 .. count[s]-1 of the segment's
    columns are orthonormal) and ``coords[s]`` (k x m float64, oldest first) the coordinates in
    that basis of the k <= m kept refreshed aggregates. Identical on every rank."""

    def __init__(self, bounds: list[int], lookback: int, device="cpu"):
        self.bounds, self.m = list(bounds), lookback
        self.rows = torch.zeros(lookback, self.bounds[-1], dtype=torch.float32, device=device)
        self.count = [0] * (len(bounds) - 1)
        self.coords = [np.zeros((0, lookback)) for _ in self.count]

    def _blocks(self, s: int, width: int = BLOCK):
        """Column ranges [lo, hi) of segment s, at most ``width`` wide."""
        start, end = self.bounds[s], self.bounds[s + 1]
        return [(lo, min(lo + width, end)) for lo in range(start, end, width)]

    def _span(self, c: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """sum_j c_j rows[j, lo:hi] (c: the first len(c) rows' coefficients), float32."""
        return c.to(self.rows.device, torch.float32) @ self.rows[:len(c), lo:hi]

    def _dots(self, s: int, x: torch.Tensor) -> torch.Tensor:
        """<x, q_j> for segment s's rows in use (x: d values, or just the segment's): float32
        products of blocks, summed in float64 (one pass over x and the rows)."""
        shift = self.bounds[s] if len(x) != self.bounds[-1] else 0
        out = torch.zeros(self.count[s], dtype=torch.float64)
        for lo, hi in self._blocks(s):
            out += (self.rows[:self.count[s], lo:hi] @ x[lo - shift:hi - shift]).double().cpu()
        return out

    def usable(self) -> torch.Tensor:
        """Per segment: whether the bank has a direction for it."""
        return torch.tensor([n > 0 for n in self.count], dtype=torch.bool)

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """L x m float64 coefficients <x_s, q_j> (0 for unused rows). ``x`` is not changed."""
        out = torch.zeros(len(self.count), self.m, dtype=torch.float64)
        for s, n in enumerate(self.count):
            out[s, :n] = self._dots(s, x)
        return out

    def residual(self, x: torch.Tensor, coefs: torch.Tensor, sketch: CountSketch,
                 out: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Add the sketch of x - Q^T coefs (per segment) to ``out``, block by block; with ``keep``
        (float32, d), also write that residual into it. ``x`` is not changed."""
        for s in range(len(self.count)):
            c = coefs[s, :self.count[s]]
            for lo, hi in self._blocks(s):
                r = x[lo:hi] - self._span(c, lo, hi)
                sketch.add(out, s, lo - self.bounds[s], r)
                if keep is not None:
                    keep[lo:hi].copy_(r)

    def combine(self, coefs: torch.Tensor, out: torch.Tensor, segments) -> None:
        """Write Q_s^T coefs_s into ``out`` (float32, d) for each segment in ``segments``."""
        for s in segments:
            c = coefs[s, :self.count[s]]
            for lo, hi in self._blocks(s):
                out[lo:hi].copy_(self._span(c, lo, hi))

    def add(self, s: int, a: torch.Tensor) -> None:
        """Let segment s's exact aggregate ``a`` (the segment's values) join the bank: the oldest
        of m kept aggregates leaves (the basis is rotated onto the span of the others), then the
        part of ``a`` the basis misses becomes a new unit row. ``a`` is not changed. Works a block
        of columns at a time: the new row is built in place, with no d-sized scratch."""
        coords = self.coords[s]
        if len(coords) == self.m:
            coords = self._drop_oldest(s, coords[1:])
        n, start = self.count[s], self.bounds[s]
        row = self.rows[n]
        c = self._dots(s, a)
        for lo, hi in self._blocks(s):
            row[lo:hi].copy_(a[lo - start:hi - start] - self._span(c, lo, hi))
        extra = self._dots(s, row)  # orthogonalise twice: float32 rounding lets some through
        for lo, hi in self._blocks(s):
            row[lo:hi].sub_(self._span(extra, lo, hi))
        c += extra
        norm = float(torch.linalg.vector_norm(row[start:self.bounds[s + 1]], dtype=torch.float64))
        scale = float(torch.linalg.vector_norm(a, dtype=torch.float64))
        new = np.zeros(self.m)
        new[:n] = c.numpy()
        if norm > 0 and norm > RCOND ** 0.5 * scale:
            row[start:self.bounds[s + 1]].div_(norm)
            new[n] = norm
            self.count[s] = n + 1
        else:  # the aggregate lies in the span: no new direction
            row[start:self.bounds[s + 1]].zero_()
        self.coords[s] = np.vstack([coords, new[None]])

    def _drop_oldest(self, s: int, kept: np.ndarray) -> np.ndarray:
        """Rotate segment s's basis onto the span of the ``kept`` aggregates (their coordinates,
        k x m); return their coordinates in the new basis. Directions whose singular value is
        below RCOND x the largest are dropped."""
        n = self.count[s]
        _, sv, vt = np.linalg.svd(kept[:, :n], full_matrices=False)
        rank = int((sv > RCOND * sv.max()).sum()) if sv.size and sv.max() > 0 else 0
        vt32 = torch.from_numpy(np.ascontiguousarray(vt[:rank])).to(self.rows.device,
                                                                     torch.float32)
        for lo, hi in self._blocks(s, max(4096, BLOCK // self.m)):
            self.rows[:rank, lo:hi] = vt32 @ self.rows[:n, lo:hi]  # a new block, then copied
            self.rows[rank:n, lo:hi].zero_()
        self.count[s] = rank
        out = np.zeros((len(kept), self.m))
        out[:, :rank] = kept[:, :n] @ vt[:rank].T
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """The bank as tensors (rows is the live tensor; the rest are copies)."""
        k = [len(c) for c in self.coords]
        coords = np.zeros((len(self.count), self.m, self.m))
        for s, c in enumerate(self.coords):
            coords[s, :len(c)] = c
        return {"rows": self.rows, "count": torch.tensor(self.count, dtype=torch.int64),
                "kept": torch.tensor(k, dtype=torch.int64), "coords": torch.from_numpy(coords)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the bank with a copy of what ``state`` returned."""
        if tuple(state["rows"].shape) != tuple(self.rows.shape):
            raise ValueError(f"global bank of shape {tuple(state['rows'].shape)}, this run needs "
                             f"{tuple(self.rows.shape)}: another model or algo.lookback?")
        self.rows.copy_(state["rows"].to(self.rows.device))
        self.count = [int(n) for n in state["count"]]
        coords = state["coords"].numpy()
        self.coords = [coords[s, :int(k)].copy() for s, k in enumerate(state["kept"])]
