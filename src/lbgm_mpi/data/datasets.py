"""Data sets as float32 tensors, built identically on every rank.

Embedded (no download): ``digits`` (scikit-learn's 8x8 scans of handwritten digits, 1797 images),
``mnist1d`` (MNIST-1D, generated offline by the mnist1d package: 4000 train / 1000 test signals of
length 40), ``synthetic`` (a seeded Gaussian mixture, for fast tests). The paper's data sets are
read from their standard files under ``data.root`` (see lbgm_mpi.data.formats).
"""

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

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


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``load_digits`` gives them: images float64 [1797, 8, 8] with values
    0..16, and their labels. Read straight from the CSV file the package ships, which is what
    ``load_digits`` reads, so that a rank does not spend a second importing scikit-learn (and
    SciPy) to get them; through ``load_digits`` where that file is not where it used to be."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        table = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if table.is_file():
            data = np.loadtxt(table, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits
    raw = load_digits()
    return raw.images, raw.target


def _digits(cfg) -> Dataset:
    images, labels = digits_arrays()
    x = (images.astype(np.float32) / 16.0 - 0.5)[:, None, :, :]  # [N, 1, 8, 8]
    return _make("digits", *_split(x, labels, 0.2), 10)


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
    return _from_raw(cfg.name, raw)


def _from_raw(name: str, raw: dict) -> Dataset:
    """A Dataset from a loader's dict; uint8 images are scaled to [-0.5, 0.5]."""
    scale = lambda a: a.astype(np.float32) / 255.0 - 0.5 if a.dtype == np.uint8 else a
    return _make(name, scale(raw["x_train"]), raw["y_train"], scale(raw["x_test"]),
                 raw["y_test"], int(raw["num_classes"]))


_EMBEDDED = {"digits": _digits, "mnist1d": _mnist1d, "synthetic": _synthetic}


@functools.lru_cache(maxsize=2)
def _build(cfg) -> Dataset:
    builder = _EMBEDDED.get(cfg.name, _from_files)
    try:
        return builder(cfg)
    except (OSError, ValueError) as err:
        raise UserError(f"data.name = {cfg.name!r}: {err}") from err


def describe(cfg) -> tuple[tuple[int, ...], int, int]:
    """(input shape, number of classes, training samples) of the [data] section's data set; an
    HDF5 file's arrays are not read for it."""
    if cfg.name == "hdf5":
        from lbgm_mpi.data.hdf5_store import dataset_h5_info
        try:
            info = dataset_h5_info(cfg.root)
        except (OSError, ValueError) as err:
            raise UserError(f"data.name = 'hdf5': {err}") from err
        shape = info["shapes"]["x_train"]
        return tuple(shape[1:]), info["num_classes"], shape[0]
    data = _build(cfg)
    return data.in_shape, data.num_classes, len(data.y_train)


def load_train_labels(cfg) -> np.ndarray:
    """The training labels of the [data] section's data set (all of them; int64)."""
    if cfg.name == "hdf5":
        from lbgm_mpi.data.hdf5_store import read_train_labels_h5
        try:
            return read_train_labels_h5(cfg.root)
        except (OSError, ValueError) as err:
            raise UserError(f"data.name = 'hdf5': {err}") from err
    return _build(cfg).y_train.numpy()


def load_dataset(cfg, train_rows: np.ndarray | None = None) -> Dataset:
    """Build the data set named by the [data] config section.

    With ``train_rows`` (increasing indices), x_train / y_train hold only those rows, in that
    order; an HDF5 file is then read for those rows alone, so a rank loads just its clients'
    data."""
    if cfg.name == "hdf5" and train_rows is not None:
        from lbgm_mpi.data.hdf5_store import read_dataset_h5
        try:
            raw = read_dataset_h5(cfg.root, train_rows=train_rows)
        except (OSError, ValueError) as err:
            raise UserError(f"data.name = 'hdf5': {err}") from err
        return _from_raw("hdf5", raw)
    data = _build(cfg)
    if train_rows is None:
        return data
    rows = torch.from_numpy(np.asarray(train_rows, dtype=np.int64))
    return Dataset(data.name, data.x_train[rows], data.y_train[rows], data.x_test, data.y_test,
                   data.num_classes)
