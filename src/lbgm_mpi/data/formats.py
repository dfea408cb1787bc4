"""Readers for the paper's data sets in their published on-disk formats.

Every loader reads from a folder the user names and never downloads. Each returns a dict
``{"x_train", "y_train", "x_test", "y_test", "num_classes", "name"}`` with images as uint8
``[N, C, H, W]`` and labels as int64 ``[N]``. Bad or missing files raise DataFormatError naming
the file and what is wrong. Nothing is ever unpickled: CIFAR is read from its binary version.
"""

import gzip
from pathlib import Path

import numpy as np

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
MNIST_SIDE = 28
CIFAR_IMAGE_BYTES = 3 * 32 * 32
CELEBA_ATTRS = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_IMAGES = "img_align_celeba"


class DataFormatError(ValueError):
    """A data file is missing, truncated or not in the format its loader expects."""


# ---------------------------------------------------------------- shared helpers


def _dataset(x_train, y_train, x_test, y_test, num_classes: int, name: str) -> dict:
    return {"x_train": x_train, "y_train": y_train.astype(np.int64), "x_test": x_test,
            "y_test": y_test.astype(np.int64), "num_classes": int(num_classes), "name": name}


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise DataFormatError(f"{path}: label {int(labels.max())} is out of range "
                              f"0..{num_classes - 1}")


def _find_file(folder: Path, names: tuple[str, ...]) -> Path:
    """Return the first of ``names`` that exists in ``folder``."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataFormatError(f"{folder}: missing file, expected one of {', '.join(names)}")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)


def _read_maybe_gz(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError
        raise DataFormatError(f"{path}: cannot decompress gzip data ({err})") from err


def _parse_idx(raw: bytes, path: Path, magic: int) -> np.ndarray:
    """Decode an IDX file of unsigned bytes whose header must carry ``magic``."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated header, expected at least {header} bytes, "
                              f"found {len(raw)}")
    found = int(np.frombuffer(raw, ">u4", 1)[0])
    if found != magic:
        raise DataFormatError(f"{path}: wrong magic number, expected 0x{magic:08x}, "
                              f"found 0x{found:08x}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataFormatError(f"{path}: header dims {dims} need {expected} bytes, "
                              f"file has {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_idx_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<prefix>-images-idx3-ubyte`` and its labels; return ([N,1,28,28], [N])."""
    img_name, lbl_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    img_path = _find_file(folder, (img_name, img_name + ".gz"))
    lbl_path = _find_file(folder, (lbl_name, lbl_name + ".gz"))
    images = _parse_idx(_read_maybe_gz(img_path), img_path, IDX_IMAGES_MAGIC)
    labels = _parse_idx(_read_maybe_gz(lbl_path), lbl_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
        raise DataFormatError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, "
                              f"expected {MNIST_SIDE}x{MNIST_SIDE}")
    if len(images) != len(labels):
        raise DataFormatError(f"{img_path} has {len(images)} images but {lbl_path} has "
                              f"{len(labels)} labels")
    _check_labels(labels, 10, lbl_path)
    return images[:, None].copy(), labels


def _load_idx_dataset(folder, name: str) -> dict:
    folder = Path(folder)
    x_train, y_train = _load_idx_split(folder, "train")
    x_test, y_test = _load_idx_split(folder, "t10k")
    return _dataset(x_train, y_train, x_test, y_test, 10, name)


def load_mnist(folder) -> dict:
    """Load MNIST from the four IDX files (plain or .gz) in ``folder``."""
    return _load_idx_dataset(folder, "mnist")


def load_fashion_mnist(folder) -> dict:
    """Load Fashion-MNIST from the four IDX files (plain or .gz) in ``folder``."""
    return _load_idx_dataset(folder, "fmnist")


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100 (binary)


def _read_records(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a CIFAR binary file into ([N,3,32,32] images, [N,label_bytes] labels)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: missing file")
    raw = path.read_bytes()
    record = label_bytes + CIFAR_IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise DataFormatError(f"{path}: size {len(raw)} bytes is not a positive multiple of "
                              f"the {record}-byte record")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), rows[:, :label_bytes]


def _cifar_root(folder, subfolder: str, marker: str) -> Path:
    """Return ``folder/subfolder`` if it holds ``marker``, else ``folder`` itself."""
    folder = Path(folder)
    return folder / subfolder if (folder / subfolder / marker).is_file() else folder


def _load_cifar_files(paths: list[Path], label_bytes: int, label_col: int, num_classes: int):
    parts = [_read_records(p, label_bytes) for p in paths]
    for path, (_, labels) in zip(paths, parts):
        _check_labels(labels[:, label_col], num_classes, path)
    images = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y[:, label_col] for _, y in parts])
    return images, labels


def load_cifar10(folder) -> dict:
    """Load CIFAR-10 (binary version) from ``folder`` or ``folder/cifar-10-batches-bin``."""
    root = _cifar_root(folder, "cifar-10-batches-bin", "test_batch.bin")
    train = [root / f"data_batch_{i}.bin" for i in range(1, 6)]
    x_train, y_train = _load_cifar_files(train, 1, 0, 10)
    x_test, y_test = _load_cifar_files([root / "test_batch.bin"], 1, 0, 10)
    return _dataset(x_train, y_train, x_test, y_test, 10, "cifar10")


def load_cifar100(folder, label: str = "fine") -> dict:
    """Load CIFAR-100 (binary version) from ``folder`` or ``folder/cifar-100-binary``.

    ``label`` picks the 100 fine classes or the 20 coarse superclasses.
    """
    columns = {"coarse": (0, 20), "fine": (1, 100)}
    if label not in columns:
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    col, num_classes = columns[label]
    root = _cifar_root(folder, "cifar-100-binary", "test.bin")
    x_train, y_train = _load_cifar_files([root / "train.bin"], 2, col, num_classes)
    x_test, y_test = _load_cifar_files([root / "test.bin"], 2, col, num_classes)
    name = "cifar100" if label == "fine" else "cifar100_coarse"
    return _dataset(x_train, y_train, x_test, y_test, num_classes, name)


# ---------------------------------------------------------------- CelebA


def _read_text_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFormatError(f"{path}: missing file")
    return [line for line in path.read_text().splitlines() if line.strip()]


def _read_celeba_attribute(path: Path, attribute: str) -> dict[str, int]:
    """Map each file name in ``list_attr_celeba.txt`` to 1 if it has ``attribute``, else 0."""
    lines = _read_text_lines(path)
    if len(lines) < 2:
        raise DataFormatError(f"{path}: expected a count line and an attribute-name line")
    names = lines[1].split()
    if attribute not in names:
        raise DataFormatError(f"{path}: no attribute {attribute!r}; it has {', '.join(names)}")
    if lines[0].strip() != str(len(lines) - 2):
        raise DataFormatError(f"{path}: first line says {lines[0].strip()!r} rows, "
                              f"file has {len(lines) - 2}")
    col, labels = names.index(attribute) + 1, {}
    for line in lines[2:]:
        fields = line.split()
        if len(fields) != len(names) + 1 or fields[col] not in ("1", "-1"):
            raise DataFormatError(f"{path}: bad row {line!r}, expected a file name and "
                                  f"{len(names)} values of 1 or -1")
        labels[fields[0]] = int(fields[col] == "1")
    return labels


def _read_celeba_partition(path: Path) -> dict[str, int]:
    """Map each file name in ``list_eval_partition.txt`` to 0 (train), 1 (val) or 2 (test)."""
    split = {}
    for line in _read_text_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataFormatError(f"{path}: bad row {line!r}, expected 'file name 0|1|2'")
        split[fields[0]] = int(fields[1])
    return split


def _read_celeba_images(folder: Path, files: list[str], size: int) -> np.ndarray:
    """Centre-crop each JPEG to a square, resize it to ``size`` and stack as [N,3,size,size]."""
    from PIL import Image, ImageOps

    out = np.empty((len(files), 3, size, size), np.uint8)
    for i, name in enumerate(files):
        with Image.open(folder / name) as img:
            img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(img).transpose(2, 0, 1)
    return out


def load_celeba(folder, attribute: str = "Smiling", size: int = 32) -> dict:
    """Load CelebA as a binary task: does the face have ``attribute``?

    Train is partition 0 and test is partition 2 of ``list_eval_partition.txt``; the validation
    partition is not used. Only rows whose image exists in ``img_align_celeba/`` are kept.
    """
    folder = Path(folder)
    labels = _read_celeba_attribute(folder / CELEBA_ATTRS, attribute)
    split = _read_celeba_partition(folder / CELEBA_PARTITION)
    images = folder / CELEBA_IMAGES
    present = [f for f in labels if (images / f).is_file()]
    if not present:
        raise DataFormatError(f"{images}: none of the {len(labels)} images listed in "
                              f"{CELEBA_ATTRS} exist")
    missing = [f for f in present if f not in split]
    if missing:
        raise DataFormatError(f"{folder / CELEBA_PARTITION}: no partition for {missing[0]}")
    parts = []
    for part, split_name in ((0, "train"), (2, "test")):
        files = [f for f in present if split[f] == part]
        if not files:
            raise DataFormatError(f"{images}: no existing images in the {split_name} partition")
        parts += [_read_celeba_images(images, files, size), np.array([labels[f] for f in files])]
    return _dataset(*parts, 2, f"celeba_{attribute.lower()}")


LOADERS = {
    "mnist": load_mnist,
    "fmnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "celeba": load_celeba,
}
