"""Model builders; every model is trained through its flat vector (see layout.py)."""

import torch

from lbgm_mpi.models.small import SMALL_MODELS


def build_model(cfg, in_shape, num_classes, seed: int) -> torch.nn.Module:
    """Build the model named by the [model] section, initialised from ``seed`` alone."""
    torch.manual_seed(seed)
    if cfg.name in SMALL_MODELS:
        return SMALL_MODELS[cfg.name](tuple(in_shape), num_classes, cfg.hidden)
    from lbgm_mpi.models.paper import PAPER_MODELS
    return PAPER_MODELS[cfg.name](tuple(in_shape), num_classes)
