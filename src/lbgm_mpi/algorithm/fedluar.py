"""FedLUAR's choice of layers to recycle (Kim, Kang and Lee, NeurIPS 2025), in float64.

The priority of layer l in round t is
    s_l = ||Delta_l|| / ||x_l||
with Delta_l the last aggregated update the server applied to the layer and x_l the layer's
parameters in the model the round starts from. A layer of low priority changes little relative to
its size, so reusing its last update instead of a fresh one costs little: the server draws
``count`` layers without replacement, each with probability proportional to 1 / s_l, and recycles
them (their last update is applied again; the clients do not send them).

The candidates are the weight tensors (more than one dimension), as in the authors' code: biases
and BatchNorm tensors are small and always travel. A layer that has no update yet (Delta_l = 0, as
in the first round) or no scale (x_l = 0, so s_l is infinite) is never drawn.

The draw is keyed by (seed, RECYCLE_STREAM, round), never by rank: every server replica draws the
same layers from the same model and update.
"""

import numpy as np
import torch

RECYCLE_STREAM = 0x1A4_C7C1  # tag of FedLUAR's draw in the seed sequence


def candidate_layers(shapes, is_buffer) -> list[int]:
    """Indices of the tensors FedLUAR may recycle: parameters with more than one dimension."""
    return [l for l, (shape, buffer) in enumerate(zip(shapes, is_buffer))
            if len(shape) > 1 and not buffer]


def _norms(flat: torch.Tensor, bounds, layers: list[int]) -> torch.Tensor:
    """float64 norm of each listed tensor of the flat vector ``flat`` (not modified)."""
    return torch.stack([torch.linalg.vector_norm(flat[bounds[l]:bounds[l + 1]].double()).cpu()
                        for l in layers])


def recycle_weights(previous: torch.Tensor, theta: torch.Tensor, bounds,
                    layers: list[int]) -> torch.Tensor:
    """1 / s_l = ||x_l|| / ||Delta_l|| for each of ``layers`` (float64, on the CPU), 0 for a
    layer that cannot be recycled (no update yet, or all-zero parameters). ``previous`` is the
    last applied update and ``theta`` the model, both flat; neither is modified."""
    update, weight = _norms(previous, bounds, layers), _norms(theta, bounds, layers)
    usable = (update > 0) & (weight > 0)
    return torch.where(usable, weight / torch.where(usable, update, 1.0), 0.0)


def draw_recycled(weights: torch.Tensor, count: int, seed: int, rnd: int) -> list[int]:
    """Positions (ascending) of ``count`` layers drawn without replacement with probability
    proportional to ``weights`` (fewer when fewer have a positive weight), from the generator of
    (seed, RECYCLE_STREAM, rnd)."""
    w = weights.numpy()
    take = min(count, int((w > 0).sum()))
    if take == 0:
        return []
    rng = np.random.default_rng([seed, RECYCLE_STREAM, rnd])
    return sorted(rng.choice(len(w), size=take, replace=False, p=w / w.sum()).tolist())
