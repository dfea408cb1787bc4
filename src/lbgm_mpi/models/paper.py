"""The models of the LBGM paper: FCN, LeNet-style CNN, CIFAR ResNet-18 and CIFAR VGG-19.

Each builder takes ``(in_shape, num_classes)`` with ``in_shape = (C, H, W)`` and returns a fresh
``torch.nn.Module`` mapping ``[B, C, H, W]`` to logits ``[B, num_classes]``. BatchNorm layers keep
their running statistics; the trainer carries them in the flat model vector (see layout.py).
"""

import math

import torch
from torch import nn

VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _check_shape(in_shape, num_classes: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W) with positive sizes, got {in_shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return shape


def _flat_size(features: nn.Module, in_shape) -> int:
    """Number of values ``features`` outputs for one input of ``in_shape`` (a dry run)."""
    with torch.no_grad():
        return features(torch.zeros(1, *in_shape)).numel()


def fcn(in_shape, num_classes: int) -> nn.Module:
    """A single linear layer on the flattened input."""
    shape = _check_shape(in_shape, num_classes)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), num_classes))


def lenet(in_shape, num_classes: int) -> nn.Module:
    """Two 5x5 conv + max-pool stages (20, 50 channels), then fc 500 and the classifier."""
    shape = _check_shape(in_shape, num_classes)
    if min(shape[1:]) < 16:
        raise ValueError(f"lenet needs inputs at least 16x16, got {shape[1]}x{shape[2]}")
    features = nn.Sequential(
        nn.Conv2d(shape[0], 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_flat_size(features, shape), 500), nn.ReLU(),
                         nn.Linear(500, num_classes))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(in_shape, num_classes: int) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem, no max-pool, BasicBlocks [2,2,2,2], global average pool."""
    shape = _check_shape(in_shape, num_classes)
    layers = [nn.Conv2d(shape[0], 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    in_ch = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(in_ch, width, stride), BasicBlock(width, width, 1)]
        in_ch = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def vgg19(in_shape, num_classes: int) -> nn.Module:
    """CIFAR VGG-19 with BatchNorm and a single Linear(512, num_classes) classifier.

    Inputs larger than 32x32 are averaged over the remaining spatial cells before the classifier.
    """
    shape = _check_shape(in_shape, num_classes)
    if min(shape[1:]) < 32:
        raise ValueError(f"vgg19 needs inputs at least 32x32, got {shape[1]}x{shape[2]}")
    layers, in_ch = [], shape[0]
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            in_ch = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


PAPER_MODELS = {"fcn": fcn, "lenet": lenet, "resnet18": resnet18, "vgg19": vgg19}
