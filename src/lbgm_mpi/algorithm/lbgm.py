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
