"""Data sets as float32 tensors, built identically on every rank.

Embedded (no download): ``digits`` (scikit-learn's 8x8 scans of handwritten digits, 1797 images),
``mnist1d`` (MNIST-1D, generated offline by the mnist1d package: 4000 train / 1000 test signals of
length 40), ``synthetic`` (a seeded Gaussian mixture, for fast tests). The paper's data sets are
read from their standard files under ``data.root`` (see lbgm_mpi.data.formats).
"""

from dataclasses import dataclass

import numpy as np
import torch

from lbgm_mpi.errors import UserError

SPLIT_SEED = 20220425  # fixed: the train/test split of embedded sets never depends on run.seed


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of one data set."""

    name: str
    x_train: torch.Tensor   # float32 [N, *in_shape]
    y_train: torch.Tensor   # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float):
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _make(name, x_tr, y_tr, x_te, y_te, num_classes) -> Dataset:
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    as_y = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return Dataset(name, as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), num_classes)


def _digits(cfg) -> Dataset:
    from sklearn.datasets import load_digits
    raw = load_digits()
    x = (raw.images.astype(np.float32) / 16.0 - 0.5)[:, None, :, :]  # [N, 1, 8, 8]
    return _make("digits", *_split(x, raw.target, 0.2), 10)


def _mnist1d(cfg) -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()  # the package's defaults: 5000 signals of length 40, seed 42
    data = make_dataset(args)
    x_tr = data["x"][:, None, :]
    x_te = data["x_test"][:, None, :]
    return _make("mnist1d", x_tr, data["y"], x_te, data["y_test"], 10)


def _synthetic(cfg) -> Dataset:
    rng = np.random.default_rng([SPLIT_SEED, cfg.synthetic_features, cfg.synthetic_classes])
    centers = rng.normal(0.0, 1.0, (cfg.synthetic_classes, cfg.synthetic_features))
    y = rng.integers(0, cfg.synthetic_classes, cfg.synthetic_samples)
    x = centers[y] + rng.normal(0.0, 1.0, (cfg.synthetic_samples, cfg.synthetic_features))
    return _make("synthetic", *_split(x, y, 0.2), cfg.synthetic_classes)


def _from_files(cfg) -> Dataset:
    if cfg.name == "hdf5":
        from lbgm_mpi.data.hdf5_store import read_dataset_h5
        raw = read_dataset_h5(cfg.root)
    else:
        from lbgm_mpi.data.formats import LOADERS
        raw = LOADERS[cfg.name](cfg.root)
    scale = lambda a: a.astype(np.float32) / 255.0 - 0.5 if a.dtype == np.uint8 else a
    return _make(cfg.name, scale(raw["x_train"]), raw["y_train"], scale(raw["x_test"]),
                 raw["y_test"], int(raw["num_classes"]))


_EMBEDDED = {"digits": _digits, "mnist1d": _mnist1d, "synthetic": _synthetic}


def load_dataset(cfg) -> Dataset:
    """Build the data set named by the [data] config section."""
    builder = _EMBEDDED.get(cfg.name, _from_files)
    try:
        return builder(cfg)
    except (OSError, ValueError) as err:
        raise UserError(f"data.name = {cfg.name!r}: {err}") from err
