"""The data-set readers on small files written in each real on-disk format, and the HDF5 store."""

import gzip

import numpy as np
import pytest

from lbgm_mpi.data.formats import (DataFormatError, load_celeba, load_cifar10, load_cifar100,
                                   load_fashion_mnist, load_mnist)
from lbgm_mpi.data.hdf5_store import dataset_h5_info, read_dataset_h5, write_dataset_h5

N_TRAIN, N_TEST = 300, 100


def _random_split(rng, n, shape, num_classes):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, num_classes, n)


def _write_idx(path, arr: np.ndarray, magic: int, compress: bool):
    header = np.array([magic, *arr.shape], ">u4").tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _write_mnist(folder, rng, compress=False):
    """Write the four IDX files; return the arrays written, as the loader should return them."""
    suffix = ".gz" if compress else ""
    out = {}
    for prefix, split, n in (("train", "train", N_TRAIN), ("t10k", "test", N_TEST)):
        x, y = _random_split(rng, n, (28, 28), 10)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, 0x803, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, 0x801, compress)
        out[f"x_{split}"], out[f"y_{split}"] = x[:, None], y
    return out


def _assert_arrays_equal(got: dict, want: dict):
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(got[key], want[key])
    assert got["x_train"].dtype == np.uint8 and got["y_train"].dtype == np.int64


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
def test_idx_plain_and_gz_load(tmp_path, compress, loader):
    want = _write_mnist(tmp_path, np.random.default_rng(0), compress)
    got = loader(tmp_path)
    assert got["x_train"].shape == (N_TRAIN, 1, 28, 28) and got["x_test"].shape == (N_TEST, 1, 28, 28)
    assert got["num_classes"] == 10
    _assert_arrays_equal(got, want)


def test_idx_truncated_file_names_file(tmp_path):
    _write_mnist(tmp_path, np.random.default_rng(1))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.*need.*file has"):
        load_mnist(tmp_path)


def test_idx_wrong_magic_names_file(tmp_path):
    _write_mnist(tmp_path, np.random.default_rng(2))
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(DataFormatError, match="t10k-labels-idx1-ubyte.*0x00000801.*0x00000803"):
        load_mnist(tmp_path)


def test_idx_count_mismatch(tmp_path):
    rng = np.random.default_rng(3)
    _write_mnist(tmp_path, rng)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1), 0x801, False)
    with pytest.raises(DataFormatError, match="300 images.*299 labels"):
        load_mnist(tmp_path)


def test_idx_missing_file_lists_expected_names(tmp_path):
    _write_mnist(tmp_path, np.random.default_rng(4))
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataFormatError, match="t10k-images-idx3-ubyte, t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)


def _cifar_bytes(x, labels: list[np.ndarray]) -> bytes:
    """Records of the label bytes followed by the 3072 image bytes."""
    return np.concatenate([*(y[:, None] for y in labels), x.reshape(len(x), -1)], 1) \
        .astype(np.uint8).tobytes()


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    parts = [_random_split(rng, N_TRAIN // 5, (3, 32, 32), 10) for _ in range(5)]
    for i, (x, y) in enumerate(parts, 1):
        (root / f"data_batch_{i}.bin").write_bytes(_cifar_bytes(x, [y]))
    x_test, y_test = _random_split(rng, N_TEST, (3, 32, 32), 10)
    (root / "test_batch.bin").write_bytes(_cifar_bytes(x_test, [y_test]))
    want = {"x_train": np.concatenate([x for x, _ in parts]),
            "y_train": np.concatenate([y for _, y in parts]), "x_test": x_test, "y_test": y_test}
    for folder in (tmp_path, root):
        got = load_cifar10(folder)
        assert got["x_train"].shape == (N_TRAIN, 3, 32, 32) and got["num_classes"] == 10
        _assert_arrays_equal(got, want)


def _write_cifar100(root, rng):
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, fine = _random_split(rng, n, (3, 32, 32), 100)
        coarse = fine // 5
        (root / f"{split}.bin").write_bytes(_cifar_bytes(x, [coarse, fine]))
        out[split] = (x, fine, coarse)
    return out


@pytest.mark.parametrize("label,col,num_classes", [("fine", 1, 100), ("coarse", 2, 20)])
def test_cifar100_fine_and_coarse(tmp_path, label, col, num_classes):
    written = _write_cifar100(tmp_path, np.random.default_rng(6))
    got = load_cifar100(tmp_path, label=label)
    assert got["num_classes"] == num_classes
    want = {f"{k}_{s}": written[s][i] for s in ("train", "test") for k, i in (("x", 0), ("y", col))}
    _assert_arrays_equal(got, want)


def test_cifar_bad_size_and_label(tmp_path):
    written = _write_cifar100(tmp_path, np.random.default_rng(7))
    raw = (tmp_path / "test.bin").read_bytes()
    (tmp_path / "test.bin").write_bytes(raw[:-1])
    with pytest.raises(DataFormatError, match="test.bin.*not a positive multiple of the 3074"):
        load_cifar100(tmp_path)
    x, fine, coarse = written["test"]
    (tmp_path / "test.bin").write_bytes(_cifar_bytes(x, [coarse, fine + 100]))
    with pytest.raises(DataFormatError, match="test.bin.*out of range"):
        load_cifar100(tmp_path)


ATTRS = [f"Attr{i}" for i in range(39)] + ["Smiling"]


def _write_celeba(root, rows, present):
    """Write the two list files for ``rows`` = [(file, partition, smiling)] and JPEGs for
    the files in ``present``, each a solid colour that encodes its row number."""
    from PIL import Image

    lines = [str(len(rows)), " ".join(ATTRS)]
    lines += [f"{f} " + " ".join(["-1"] * 39 + ["1" if s else "-1"]) for f, _, s in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p, _ in rows))
    (root / "img_align_celeba").mkdir()
    for i, (f, _, _) in enumerate(rows):
        if f in present:
            Image.new("RGB", (20, 24), (10 * i, 0, 200)).save(root / "img_align_celeba" / f)


def test_celeba_uses_only_existing_images(tmp_path):
    rows = [(f"{i:06d}.jpg", [0, 0, 0, 1, 2, 2][i], i % 2 == 0) for i in range(6)]
    _write_celeba(tmp_path, rows, present={"000000.jpg", "000001.jpg", "000003.jpg", "000004.jpg"})
    got = load_celeba(tmp_path, size=8)
    assert got["x_train"].shape == (2, 3, 8, 8) and got["x_test"].shape == (1, 3, 8, 8)
    assert got["x_train"].dtype == np.uint8 and got["num_classes"] == 2
    np.testing.assert_array_equal(got["y_train"], [1, 0])
    np.testing.assert_array_equal(got["y_test"], [1])
    # JPEG is lossy: the red channel of each solid image is near 10 * its row number
    np.testing.assert_allclose(got["x_train"][:, 0].mean((1, 2)), [0, 10], atol=4)
    np.testing.assert_allclose(got["x_test"][:, 2].mean(), 200, atol=4)


def test_celeba_without_images_errors(tmp_path):
    _write_celeba(tmp_path, [("000000.jpg", 0, True)], present=set())
    with pytest.raises(DataFormatError, match="img_align_celeba.*none of the 1 images"):
        load_celeba(tmp_path)


def test_celeba_unknown_attribute(tmp_path):
    _write_celeba(tmp_path, [("000000.jpg", 0, True)], present={"000000.jpg"})
    with pytest.raises(DataFormatError, match="list_attr_celeba.txt.*'Bald'"):
        load_celeba(tmp_path, attribute="Bald")


def _small_dataset(rng):
    x_train, y_train = _random_split(rng, N_TRAIN, (3, 8, 8), 10)
    x_test, y_test = _random_split(rng, N_TEST, (3, 8, 8), 10)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "num_classes": 10, "name": "tiny"}


def test_hdf5_round_trip_and_info(tmp_path):
    data = _small_dataset(np.random.default_rng(8))
    path = tmp_path / "tiny.h5"
    write_dataset_h5(path, data)
    got = read_dataset_h5(path)
    _assert_arrays_equal(got, data)
    assert got["num_classes"] == 10 and got["name"] == "tiny"
    info = dataset_h5_info(path)
    assert info["shapes"]["x_train"] == (N_TRAIN, 3, 8, 8) and info["num_classes"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.h5"]  # no temporary file left


def test_hdf5_partial_row_read(tmp_path):
    data = _small_dataset(np.random.default_rng(9))
    path = tmp_path / "tiny.h5"
    write_dataset_h5(path, data)
    rows = np.array([0, 5, 6, 7, 150, 299])
    got = read_dataset_h5(path, train_rows=rows)
    np.testing.assert_array_equal(got["x_train"], data["x_train"][rows])
    np.testing.assert_array_equal(got["y_train"], data["y_train"][rows])
    np.testing.assert_array_equal(got["x_test"], data["x_test"])
    assert read_dataset_h5(path, train_rows=np.array([], int))["x_train"].shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="strictly increasing"):
        read_dataset_h5(path, train_rows=np.array([5, 3]))


def test_hdf5_bad_files_name_the_file(tmp_path):
    import h5py

    path = tmp_path / "old.h5"
    write_dataset_h5(path, _small_dataset(np.random.default_rng(10)))
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(DataFormatError, match="old.h5.*format_version 99, expected 1"):
        read_dataset_h5(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
        del f["y_test"]
    with pytest.raises(DataFormatError, match="old.h5.*missing dataset y_test"):
        dataset_h5_info(path)


def test_digits_read_from_the_shipped_file_are_load_digits():
    """The embedded digits are read from scikit-learn's CSV without importing it: the same
    images (float64, 0..16) and labels as load_digits, in the same order."""
    from sklearn.datasets import load_digits

    from lbgm_mpi.data.datasets import digits_arrays
    images, labels = digits_arrays()
    raw = load_digits()
    assert images.dtype == raw.images.dtype and images.shape == (1797, 8, 8)
    assert np.array_equal(images, raw.images) and np.array_equal(labels, raw.target)
