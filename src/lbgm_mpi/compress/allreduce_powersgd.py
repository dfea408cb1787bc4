"""PowerSGD in its Allreduce form (Vogels et al. 2019; the form of torch's DDP PowerSGD hook).

Linear across workers: every rank sees each matrix-shaped tensor of its partial aggregate as an
m x n matrix M_p and multiplies it by the same warm-started Q (n x r):

    P = sum_p M_p Q                  (Allreduce 1, with the tensors sent dense and the loss)
    P <- orthonormalise(P)           (the same on every rank)
    Q = sum_p M_p^T P                (Allreduce 2)
    aggregate ~ P Q^T = P P^T (sum_p M_p)

Q stays for the next round's warm start (replicated state). Rank p's share of the approximation is
P P^T M_p, so its error-feedback residual M_p - P (M_p^T P)^T sums over ranks to the aggregate's.
A tensor is compressed only where that moves fewer values, r (m + n) < m n (as torch's hook
decides); the others, and tensors of fewer than two axes, travel dense in Allreduce 1.

The per-client ``powersgd`` compressor (lbgm_mpi.compress.lowrank) instead compresses each client
on its own and gathers every client's P and Q: that is the federated form.

Pure math: the caller hands in ``allreduce`` (sum a float32 tensor over ranks into a new one).
"""

from collections.abc import Callable

import torch

from lbgm_mpi.compress.base import derive_seed, matrix_shape
from lbgm_mpi.models.layout import Layout

Allreduce = Callable[[torch.Tensor], torch.Tensor]


class AllreducePowerSGD:
    """The Allreduce PowerSGD exchange of a model's flat vectors at rank ``rank``; the warm-start
    Q's are drawn from ``seed`` (identical on every rank) and kept in ``q``."""

    def __init__(self, layout: Layout, rank: int, seed: int, device="cpu"):
        self.bounds = layout.bounds
        self.plan = {}  # tensor index -> (m, n, r) for the compressed tensors
        for l, shape in enumerate(layout.shapes):
            mn = matrix_shape(shape)
            if mn is not None and min(rank, *mn) * sum(mn) < mn[0] * mn[1]:
                self.plan[l] = (*mn, min(rank, *mn))
        self.dense = [l for l in range(len(layout.shapes)) if l not in self.plan]
        self.q = {}
        for l, (m, n, r) in self.plan.items():
            gen = torch.Generator().manual_seed(derive_seed(seed, l))
            self.q[l] = torch.randn(n, r, generator=gen).to(device)

    def values_sent(self) -> tuple[int, int]:
        """Float32 values each rank hands to the two Allreduces (the first without the loss)."""
        first = sum(m * r for m, _, r in self.plan.values()) + \
            sum(self.bounds[l + 1] - self.bounds[l] for l in self.dense)
        return first, sum(n * r for _, n, r in self.plan.values())

    def _matrix(self, x: torch.Tensor, l: int) -> torch.Tensor:
        m, n, _ = self.plan[l]
        return x[self.bounds[l]:self.bounds[l + 1]].view(m, n)

    def exchange(self, x: torch.Tensor, loss: float, allreduce: Allreduce):
        """Run the exchange on this rank's partial aggregate ``x`` (d float32, not changed) and its
        weighted loss. Returns (approximate aggregate, this rank's residual x - its share, summed
        loss), the first two new float32 vectors of d values; updates ``q``."""
        first = [self._matrix(x, l) @ self.q[l] for l in self.plan]
        first += [x[self.bounds[l]:self.bounds[l + 1]] for l in self.dense]
        summed = allreduce(torch.cat([t.reshape(-1) for t in first]
                                     + [x.new_tensor([loss])]))
        out, residual = torch.empty_like(x), torch.zeros_like(x)
        at, ps = 0, {}
        for l, (m, _, r) in self.plan.items():
            ps[l] = torch.linalg.qr(summed[at:at + m * r].view(m, r)).Q
            at += m * r
        for l in self.dense:
            lo, hi = self.bounds[l], self.bounds[l + 1]
            out[lo:hi].copy_(summed[at:at + hi - lo])
            at += hi - lo
        mine = {l: self._matrix(x, l).T @ ps[l] for l in self.plan}
        qs = allreduce(torch.cat([mine[l].reshape(-1) for l in self.plan])) if self.plan else None
        at = 0
        for l, (m, n, r) in self.plan.items():
            self.q[l] = qs[at:at + n * r].view(n, r).clone()
            at += n * r
            lo, hi = self.bounds[l], self.bounds[l + 1]
            out[lo:hi].copy_((ps[l] @ self.q[l].T).reshape(-1))
            residual[lo:hi].copy_((self._matrix(x, l) - ps[l] @ mine[l].T).reshape(-1))
        return out, residual, float(summed[-1])

    def state(self) -> dict[str, torch.Tensor]:
        """The warm-start Q's (live tensors)."""
        return {f"psgd_q{l}": q for l, q in self.q.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the warm-start Q's with copies of ``state``'s."""
        for l, q in self.q.items():
            saved = state.get(f"psgd_q{l}")
            if saved is None or saved.shape != q.shape:
                raise ValueError(f"PowerSGD state psgd_q{l} is missing or of another shape: "
                                 "a checkpoint of another model or algo.rank?")
            q.copy_(saved.to(q.device))
