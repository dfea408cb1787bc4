"""Small models for the embedded data sets: linear, MLP, and a small CNN (1-D or 2-D inputs)."""

import math

from torch import nn


def linear(in_shape, num_classes, hidden):
    """One linear layer on the flattened input (the paper's "FCN")."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))


def mlp(in_shape, num_classes, hidden):
    """One hidden ReLU layer of width ``hidden``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def cnn(in_shape, num_classes, hidden):
    """Two 3-wide convolutions (16 and ``hidden`` channels), pooling, a linear head.

    Inputs of shape (C, L) use 1-D convolutions, (C, H, W) 2-D ones."""
    if len(in_shape) not in (2, 3):
        raise ValueError(f"model.name = 'cnn' needs (C, L) or (C, H, W) inputs, got {in_shape}")
    conv, pool = (nn.Conv1d, nn.AdaptiveAvgPool1d) if len(in_shape) == 2 else \
        (nn.Conv2d, nn.AdaptiveAvgPool2d)
    return nn.Sequential(
        conv(in_shape[0], 16, 3, padding=1), nn.ReLU(),
        conv(16, hidden, 3, padding=1, stride=2), nn.ReLU(),
        pool(2), nn.Flatten(),
        nn.Linear(hidden * 2 ** (len(in_shape) - 1), num_classes))


SMALL_MODELS = {"linear": linear, "mlp": mlp, "cnn": cnn}
