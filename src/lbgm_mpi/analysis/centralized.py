"""Centralised training that records the gradient subspace (Azam et al., section 2).

One process trains the configured model on the whole training set with plain minibatch SGD, one
epoch at a time, through the clients' own ``local_update`` (one "client" holding all the data).
Plain SGD moves the parameters by lr x each minibatch gradient, so an epoch's update divided by
lr x (number of minibatches) is exactly the mean of the epoch's minibatch gradients: the one
gradient per epoch that the analysis stacks. Only the model's parameters enter the analysis;
BatchNorm running statistics ride in the flat vector but are not gradients.

After each epoch i >= 2 it also measures how the look-back gradient (epoch i-1's gradient) sits
against the leading principal components of the gradients of epochs 1..i, and how close it is to
epoch i's gradient (the cosine whose square LBGM's phase error 1 - cos^2 compares with delta).

Nothing here talks to MPI; everything runs on the device of the tensors it is given.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from lbgm_mpi.analysis.subspace import SubspaceTracker, overlap, principal_directions
from lbgm_mpi.data.datasets import Dataset
from lbgm_mpi.errors import UserError
from lbgm_mpi.models import build_model
from lbgm_mpi.models.layout import Layout, flatten, layout_of
from lbgm_mpi.training.client import evaluate, local_update, stream_seed

CENTRAL_STREAM = 0xC3A7  # client id of the one central "client" in the (seed, client, epoch) stream
TOP_COSINES = 3  # |cosine| of the look-back gradient with this many leading components


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch of centralised training measured."""

    epoch: int
    train_loss: float   # mean minibatch loss during the epoch
    test_acc: float     # after the epoch
    test_loss: float
    grad_norm: float    # norm of the epoch's mean gradient (parameters only)
    n95: int | None     # whole model, gradients of epochs 1..epoch (None before epoch 2)
    n99: int | None
    lookback: dict | None  # look-back gradient vs the leading components (None at epoch 1)
    seconds: float      # training + analysis time of the epoch


def parameter_layout(model: torch.nn.Module) -> Layout:
    """The part of ``layout_of(model)`` that holds parameters (they come first in the vector)."""
    full = layout_of(model)
    n = len(list(model.named_parameters()))
    return Layout(full.names[:n], full.shapes[:n], full.bounds[:n + 1])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(torch.float64), b.to(torch.float64)
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0


def lookback_overlap(stack: torch.Tensor, n95: int, n99: int) -> dict:
    """How the look-back gradient ``stack[-2]`` relates to ``stack[-1]`` and to the leading
    principal components of all rows of ``stack`` (i x p, i >= 2; not changed).

    Returns plain floats: ``cos_prev`` (cosine of the newest gradient with the look-back one),
    ``phase_error`` (1 - cos_prev^2, LBGM's criterion), ``pc_cos`` (|cosine| with the first
    components) and ``in_top_n95`` / ``in_top_n99``: the share of the look-back gradient's squared
    norm inside the span of the mean gradient and the first N95 / N99 components, i.e. what a PCA
    model with that many components can represent (PCA centres the rows, so the mean gradient is
    not itself a component).
    """
    lbg, cur = stack[-2], stack[-1]
    cos = _cosine(cur, lbg)
    out = {"cos_prev": cos, "phase_error": 1.0 - cos * cos, "pc_cos": []}
    directions = principal_directions(stack, max(n99, TOP_COSINES))
    if directions.shape[0]:
        out["pc_cos"] = overlap(lbg, directions[:TOP_COSINES])[0][0].tolist()
    mean = stack.mean(0, keepdim=True)
    for key, n in (("in_top_n95", n95), ("in_top_n99", n99)):
        out[key] = float(overlap(lbg, torch.cat([mean, directions[:n]]))[1][0])
    return out


class CentralizedRun:
    """Centralised SGD over a whole data set, feeding a SubspaceTracker one gradient per epoch.

    ``spec`` supplies the model, seed, learning rate (clients.lr) and batch size
    (clients.batch_size); ``data`` is moved to ``device``, where the model, the gradient stack
    and all the analysis live.
    """

    def __init__(self, spec, data: Dataset, device: torch.device):
        self.clients = replace(spec.clients, update="local", local_epochs=1)
        self.seed = spec.run.seed
        self.model = build_model(spec.model, data.in_shape, data.num_classes, spec.run.seed)
        self.model.to(device)
        self.theta = flatten(self.model)
        self.layout = parameter_layout(self.model)
        self.tracker = SubspaceTracker(self.layout)
        self.train = (data.x_train.to(device), data.y_train.to(device))
        self.test = (data.x_test.to(device), data.y_test.to(device))
        self.batches = math.ceil(len(data.y_train) / self.clients.batch_size)
        self.epoch = 0

    def step(self) -> EpochRecord:
        """Train one epoch (theta is replaced), add its gradient to the tracker, measure it all."""
        start = time.perf_counter()
        self.epoch += 1
        update, loss = local_update(self.model, self.theta, *self.train, self.clients,
                                    stream_seed(self.seed, CENTRAL_STREAM, self.epoch))
        if not torch.isfinite(update).all():
            raise UserError(f"epoch {self.epoch}: the gradient is not finite; lower clients.lr "
                            f"(now {self.clients.lr:g})")
        self.theta = self.theta - update
        grad = update[:self.layout.size] / (self.clients.lr * self.batches)
        self.tracker.add(grad)
        acc, test_loss = evaluate(self.model, self.theta, *self.test)
        n95 = n99 = lookback = None
        if self.epoch >= 2:
            model_levels = self.tracker.report()["model"]
            n95, n99 = model_levels["n95"][-1], model_levels["n99"][-1]
            lookback = lookback_overlap(self.tracker.stack, n95, n99)
        return EpochRecord(self.epoch, loss, acc, test_loss, float(grad.norm()), n95, n99,
                           lookback, time.perf_counter() - start)

    def run(self, epochs: int, on_epoch: Callable[[EpochRecord], None] = lambda r: None) -> dict:
        """Train ``epochs`` more epochs, calling ``on_epoch`` after each; return the result dict
        (plain Python values, ready for json.dump)."""
        records = []
        for _ in range(epochs):
            records.append(self.step())
            on_epoch(records[-1])
        return self.result(records)

    def result(self, records: list[EpochRecord]) -> dict:
        """The training curve, the tracker's report and the look-back overlaps, as one dict."""
        later = [r for r in records if r.lookback is not None]
        return {
            "epochs": self.epoch,
            "num_params": self.layout.size,
            "batches_per_epoch": self.batches,
            "training": [{k: v for k, v in vars(r).items() if k != "lookback"} for r in records],
            "subspace": self.tracker.report(),
            "lookback": {"epochs": [r.epoch for r in later],
                         **{key: [r.lookback[key] for r in later] for key in
                            ("cos_prev", "phase_error", "pc_cos", "in_top_n95", "in_top_n99")}},
        }
