"""One HDF5 file per data set, so every rank reads only the training rows its clients own.

Layout: datasets ``x_train`` / ``x_test`` ([N, ...], chunked by rows, gzip): uint8 images as the
standard files hold them (scaled to [-0.5, 0.5] when read for training), or float32 inputs stored
exactly (the embedded sets); ``y_train`` / ``y_test`` (int64 [N]); attributes ``num_classes``,
``name``, ``format_version``.

Reading checks what training relies on, so that a bad file is refused before any round with one
line naming the file and the fault: as many labels as inputs, a non-empty test split, labels in
0 .. num_classes - 1, and finite float inputs (in the rows read: a rank reads only its clients').
"""

import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from lbgm_mpi.data.formats import DataFormatError

FORMAT_VERSION = 1
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
CHUNK_ROWS = 256  # rows per chunk: small enough that a partial read skips most of the file


def _check_arrays(data: dict, source) -> None:
    """Raise DataFormatError unless ``data`` holds uint8 or float32 [N, ...] inputs with int64
    labels."""
    missing = [k for k in (*ARRAY_KEYS, "num_classes", "name") if k not in data]
    if missing:
        raise DataFormatError(f"{source}: missing {', '.join(missing)}")
    for split in ("train", "test"):
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        if x.dtype not in (np.uint8, np.float32) or x.ndim < 2:
            raise DataFormatError(f"{source}: x_{split} must be uint8 or float32 [N, ...], "
                                  f"got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.shape != x.shape[:1]:
            raise DataFormatError(f"{source}: y_{split} must be int64 [{len(x)}], "
                                  f"got {y.dtype} {y.shape}")


def _write_arrays(f: h5py.File, data: dict) -> None:
    for key in ARRAY_KEYS:
        arr = data[key]
        chunks = (max(1, min(len(arr), CHUNK_ROWS)), *arr.shape[1:])
        gzip = {"compression": "gzip", "compression_opts": 4} if key.startswith("x") else {}
        f.create_dataset(key, data=arr, chunks=chunks, **gzip)
    f.attrs["num_classes"] = int(data["num_classes"])
    f.attrs["name"] = str(data["name"])
    f.attrs["format_version"] = FORMAT_VERSION


def write_dataset_h5(path, data: dict) -> None:
    """Write the data-set dict ``data`` to ``path``, atomically; ``data`` is not modified.

    The file is written under a temporary name in the same folder, synced, then renamed, so a
    reader never sees a half-written file and an interrupted write leaves the old file intact.
    """
    path = Path(path)
    _check_arrays(data, "data to write")
    # A unique name, not mkstemp: h5py then creates the file with the user's usual permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            _write_arrays(f, data)
            f.flush()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open(path) -> h5py.File:
    """Open a data-set file for reading after checking its version and keys."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: missing file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(f"{path}: not a readable HDF5 file ({err})") from err
    version = f.attrs.get("format_version")
    missing = [k for k in ARRAY_KEYS if k not in f]
    if version != FORMAT_VERSION or missing:
        f.close()
        what = f"missing dataset {', '.join(missing)}" if missing else \
            f"format_version {version}, expected {FORMAT_VERSION}"
        raise DataFormatError(f"{path}: {what}")
    try:
        _check_sizes(f, path)
    except DataFormatError:
        f.close()
        raise
    return f


def _check_sizes(f: h5py.File, path) -> None:
    for split in ("train", "test"):
        x, y = len(f[f"x_{split}"]), len(f[f"y_{split}"])
        if x != y:
            raise DataFormatError(f"{path}: x_{split} has {x} rows but y_{split} has {y} labels "
                                  "(every input needs one label)")
        if x == 0:
            raise DataFormatError(f"{path}: the {split} split is empty (x_{split} has no rows)")


def _check_labels(y: np.ndarray, num_classes: int, key: str, rows, path) -> None:
    """Labels must lie in 0 .. num_classes - 1; ``rows`` maps positions to row numbers."""
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        row = int(bad[0]) if rows is None else int(rows[bad[0]])
        raise DataFormatError(f"{path}: {key}[{row}] = {int(y[bad[0]])} is not a class "
                              f"(num_classes = {num_classes}: labels are 0 .. "
                              f"{num_classes - 1}); {bad.size} such label(s) in the rows read")


def _check_finite(x: np.ndarray, key: str, rows, path) -> None:
    if x.dtype.kind != "f":
        return
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        row = int(bad[0]) if rows is None else int(rows[bad[0]])
        raise DataFormatError(f"{path}: {key} row {row} holds NaN or infinite values "
                              f"({bad.size} such row(s) in the rows read)")


def _check_rows(rows: np.ndarray, n: int, path) -> None:
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{path}: train_rows must be a 1-D integer array, got {rows.dtype} "
                         f"{rows.shape}")
    if rows.size and (rows[0] < 0 or rows[-1] >= n or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"{path}: train_rows must be strictly increasing within 0..{n - 1}")


def _read_rows(dset: h5py.Dataset, rows: np.ndarray | None) -> np.ndarray:
    if rows is None:
        return dset[()]
    if rows.size == 0:  # h5py cannot select an empty list
        return np.empty((0, *dset.shape[1:]), dset.dtype)
    return dset[rows]


def read_dataset_h5(path, train_rows=None) -> dict:
    """Read a data-set dict from ``path``.

    ``train_rows`` (strictly increasing row indices) reads only those rows of x_train/y_train,
    so a rank loads just its clients' data; the test split is always read whole.
    """
    with _open(path) as f:
        rows = None if train_rows is None else np.asarray(train_rows)
        if rows is not None:
            _check_rows(rows, len(f["y_train"]), path)
        data = {key: _read_rows(f[key], rows if key.endswith("train") else None)
                for key in ARRAY_KEYS}
        data["num_classes"] = int(f.attrs["num_classes"])
        data["name"] = str(f.attrs["name"])
    _check_arrays(data, path)
    for split, split_rows in (("train", rows), ("test", None)):
        _check_labels(data[f"y_{split}"], data["num_classes"], f"y_{split}", split_rows, path)
        _check_finite(data[f"x_{split}"], f"x_{split}", split_rows, path)
    return data


def read_train_labels_h5(path) -> np.ndarray:
    """Only the training labels (int64 [N]): enough to compute the client partition."""
    with _open(path) as f:
        labels = np.asarray(f["y_train"][()], dtype=np.int64)
        _check_labels(labels, int(f.attrs["num_classes"]), "y_train", None, path)
        return labels


def dataset_h5_info(path) -> dict:
    """Return ``{"name", "num_classes", "shapes": {key: shape}}`` without reading the arrays."""
    with _open(path) as f:
        return {"name": str(f.attrs["name"]), "num_classes": int(f.attrs["num_classes"]),
                "shapes": {key: tuple(f[key].shape) for key in ARRAY_KEYS}}
