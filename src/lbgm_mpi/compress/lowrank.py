"""Low-rank compressors: truncated SVD (ATOMO-style) and PowerSGD, per matrix-shaped layer.

A tensor with two or more axes is seen as an m x n matrix (first axis by the rest) and sent as
float32 factors of rank r = min(rank, m, n); tensors with fewer axes (biases, norms) go dense.
Payload, layer after layer:
  truncated SVD: U_r (m x r), singular values (r), V_r (n x r):  4 r (m + n + 1) bytes a matrix;
  PowerSGD:      P (m x r, orthonormal columns), Q (n x r):       4 r (m + n) bytes a matrix;
  a dense layer of n values:                                      4 n bytes.
"""

import math
from abc import abstractmethod

import torch

from lbgm_mpi.compress.base import Compressor, derive_seed, layer_sizes, matrix_shape
from lbgm_mpi.models.layout import Layout


class _FactorCompressor(Compressor):
    """Sends each matrix layer as factors (``_factorize`` / ``_expand``), other layers dense."""

    def __init__(self, layout: Layout, rank: int):
        if rank < 1:
            raise ValueError(f"{self.name}: rank must be at least 1, got {rank}")
        self.rank = rank
        # per layer: (m, n, r) for a matrix sent as factors, None for a dense layer
        self.plan = tuple(self._matrix_plan(shape) for shape in layout.shapes)
        self._shapes = [self._factor_shapes(*p) if p else [(n,)]
                        for p, n in zip(self.plan, layer_sizes(layout))]
        super().__init__(layout, [(torch.float32, math.prod(s)) for ss in self._shapes for s in ss])

    def _matrix_plan(self, shape):
        mn = matrix_shape(shape)
        return None if mn is None else (*mn, min(self.rank, *mn))

    def compress(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Payload of x's factors and dense layers (x unchanged; state as the subclass says)."""
        pieces = []
        for l, (seg, plan) in enumerate(zip(self._layers(x), self.plan)):
            if plan is None:
                pieces.append(seg)
            else:
                m, n, r = plan
                pieces.extend(self._factorize(l, seg.view(m, n), r, state))
        return self._pack(pieces)

    def decompress(self, payload: torch.Tensor) -> torch.Tensor:
        """Dense vector: each matrix rebuilt from its factors, dense layers copied."""
        pieces = iter(self._unpack(payload))
        parts = []
        for shapes, plan in zip(self._shapes, self.plan):
            factors = [next(pieces).view(shape) for shape in shapes]
            parts.append(factors[0] if plan is None else self._expand(*factors).reshape(-1))
        return torch.cat(parts)

    @abstractmethod
    def _factor_shapes(self, m: int, n: int, r: int) -> list[tuple[int, ...]]:
        """Shapes of the factors sent for an m x n matrix at rank r."""

    @abstractmethod
    def _factorize(self, l, matrix, r, state) -> list[torch.Tensor]:
        """Factors of layer l's matrix, in ``_factor_shapes`` order; may update ``state``."""

    @abstractmethod
    def _expand(self, *factors) -> torch.Tensor:
        """The m x n matrix the factors stand for."""


class AtomoCompressor(_FactorCompressor):
    """Best rank-r approximation of each matrix layer (truncated SVD); state unused.

    ATOMO proper samples singular vectors to stay unbiased; this keeps the r largest, which is
    biased, so pair it with ErrorFeedback.
    """

    name = "lowrank"

    def _factor_shapes(self, m, n, r):
        return [(m, r), (r,), (n, r)]

    def _factorize(self, l, matrix, r, state):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return [u[:, :r], s[:r], vh[:r].T]

    def _expand(self, u, s, v):
        return (u * s) @ v.T


class PowerSGDCompressor(_FactorCompressor):
    """One power iteration per round for each matrix layer M, warm-started (Vogels et al. 2019).

    P = orthonormalise(M Q), Q = M^T P; the payload carries P and Q, and Q is kept in
    state["psgd_q{l}"] to start the next round. A client's first Q is drawn from a generator keyed
    by (seed, l); the trainer gives each client its own seed, derived from (run.seed, client id).
    """

    name = "powersgd"

    def __init__(self, layout: Layout, rank: int, seed: int):
        super().__init__(layout, rank)
        self.seed = seed

    def _factor_shapes(self, m, n, r):
        return [(m, r), (n, r)]

    def _factorize(self, l, matrix, r, state):
        q = self._warm_start(l, matrix, r, state)
        p = torch.linalg.qr(matrix @ q).Q
        q = matrix.T @ p
        state[f"psgd_q{l}"] = q
        return [p, q]

    def _warm_start(self, l, matrix, r, state):
        q = state.get(f"psgd_q{l}")
        if q is None:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, l))
            q = torch.randn(matrix.shape[1], r, generator=gen)
        elif q.shape != (matrix.shape[1], r):
            raise ValueError(f"{self.name}: state psgd_q{l} has shape {tuple(q.shape)}, layer {l} "
                             f"needs {(matrix.shape[1], r)}: state from another model or rank?")
        return q.to(device=matrix.device, dtype=torch.float32)

    def _expand(self, p, q):
        return p @ q.T
