"""The look-back gradient multiplier: the per-client decision, in float64.

For an update g and its look-back gradient b (per segment):
    rho = <g, b> / ||b||^2              the look-back coefficient (what is sent)
    err = 1 - <g, b>^2 / (||g||^2 ||b||^2) = sin^2(angle(g, b))   the look-back phase error
A segment is sent as the scalar rho iff it has a usable look-back gradient (valid, non-zero norm),
the threshold is positive and err <= threshold; otherwise g is sent in full (a refresh).
Threshold 0 therefore always refreshes: LBGM at threshold 0 is FedAvg.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Decision:
    """Per-segment outcome for one client (all tensors of length L, on the CPU)."""

    refresh: torch.Tensor  # bool: send the segment in full
    rho: torch.Tensor      # float64: look-back coefficient (meaningful where not refresh)
    error: torch.Tensor    # float64: sin^2 of the angle (1 where there is no look-back gradient)


def phase_error(dot: torch.Tensor, gnorm2: torch.Tensor, bnorm2: torch.Tensor):
    """Return (rho, sin^2) from <g,b>, ||g||^2 and ||b||^2 (float64 tensors; not modified).

    A zero update is parallel to anything (rho = 0, error 0); a zero look-back gradient has no
    direction (rho = 0, error 1)."""
    usable_b = bnorm2 > 0
    safe_b = torch.where(usable_b, bnorm2, torch.ones_like(bnorm2))
    rho = torch.where(usable_b, dot / safe_b, torch.zeros_like(dot))
    denom = gnorm2 * safe_b
    cos2 = torch.where(denom > 0, dot * dot / torch.where(denom > 0, denom, 1.0), 1.0)
    error = (1.0 - cos2).clamp(0.0, 1.0)
    return rho, torch.where(usable_b, error, torch.ones_like(error))


def decide(dot: torch.Tensor, gnorm2: torch.Tensor, bnorm2: torch.Tensor, valid: torch.Tensor,
           threshold: float) -> Decision:
    """Choose scalar or refresh for each segment of one client's update."""
    if not (torch.isfinite(dot).all() and torch.isfinite(gnorm2).all()):
        raise FloatingPointError("the update is not finite")
    rho, error = phase_error(dot, gnorm2, bnorm2)
    usable = valid & (bnorm2 > 0)
    scalar = usable & (error <= threshold) if threshold > 0 else torch.zeros_like(usable)
    return Decision(refresh=~scalar, rho=rho, error=error)


RCOND = 1e-8  # Gram eigenvalues below RCOND x the largest are directions the slots do not span


def span_coefficients(dots: torch.Tensor, gram: torch.Tensor, valid: torch.Tensor):
    """Least-squares coefficients of g on the span of each segment's valid slots, in float64.

    ``dots`` is L x m (<g, b_j> per segment), ``gram`` L x m x m (<b_i, b_j>), ``valid`` L x m.
    Returns (coefs L x m, projected L): the minimum-norm solution of gram @ a = dots over the valid
    slots, through the Gram matrix's eigendecomposition with directions of relative eigenvalue
    below RCOND dropped, so nearly parallel slots give bounded coefficients instead of a blow-up;
    ``projected`` = <a, dots> = ||projection of g||^2."""
    mask = valid.to(torch.float64)
    g = gram * mask[:, :, None] * mask[:, None, :]
    c = dots * mask
    lam, vec = torch.linalg.eigh(g)
    keep = lam > RCOND * lam.amax(dim=1, keepdim=True).clamp(min=0)
    inv = torch.where(keep & (lam > 0), 1.0 / torch.where(keep, lam, 1.0), 0.0)
    coefs = torch.einsum("lij,lj,lkj,lk->li", vec, inv, vec, c) * mask
    return coefs, (coefs * c).sum(dim=1)


def decide_span(dots: torch.Tensor, gnorm2: torch.Tensor, gram: torch.Tensor,
                valid: torch.Tensor, threshold: float) -> Decision:
    """Scalar (m coefficients) or refresh for each segment of one client's update, projecting it
    on the span of its m look-back gradients. The error is the residual's share of ||g||^2,
    1 - ||projection||^2 / ||g||^2 (sin^2 of the angle to the span; for m = 1 see ``decide``).
    ``rho`` of the result is L x m."""
    if not (torch.isfinite(dots).all() and torch.isfinite(gnorm2).all()):
        raise FloatingPointError("the update is not finite")
    coefs, projected = span_coefficients(dots, gram, valid)
    share = torch.where(gnorm2 > 0, projected / torch.where(gnorm2 > 0, gnorm2, 1.0), 1.0)
    usable = valid.any(dim=1)
    error = torch.where(usable, (1.0 - share).clamp(0.0, 1.0), torch.ones_like(share))
    scalar = usable & (error <= threshold) if threshold > 0 else torch.zeros_like(usable)
    return Decision(refresh=~scalar, rho=coefs, error=error)


def scheduled_threshold(threshold: float, decay: float, warmup: int, rnd: int) -> float:
    """The threshold of round ``rnd`` (1-based): 0 (every client refreshes, as FedAvg) for the
    first ``warmup`` rounds, then ``threshold`` multiplied by ``decay`` once per round after the
    first scheduled one. A decaying threshold sends more refreshes as training settles."""
    if rnd <= warmup:
        return 0.0
    return threshold * decay ** (rnd - warmup - 1)
