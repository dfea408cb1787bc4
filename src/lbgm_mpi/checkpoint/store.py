"""An HDF5 file of named arrays plus JSON-able attributes, written atomically, checksummed.

Layout: every array is a dataset at its name (``theta``, ``bank/rows``, ``clients/3/ef_residual``);
large integer arrays (partition indices, metrics text) are chunked and gzip-compressed, where it
pays; float arrays are stored contiguous and raw, since trained weights barely compress and gzip
made a 10M-parameter checkpoint 10x slower to write for a 20% smaller file; ``attrs`` go to the
root group's attributes as JSON strings. No pickle anywhere.

The checksum covers the whole file: the first 512 bytes (HDF5's "user block", which HDF5 leaves to
the application) hold a header, ``MAGIC`` then one JSON line with the format version, the file's
size and a BLAKE2b digest of every byte after the header. A reader checks it before HDF5 parses
anything, so every byte that resume reads (arrays, attributes, HDF5's own metadata) is verified,
and a damaged file is refused in one line: HDF5 itself can hang or fail in odd ways on damaged
metadata.
"""

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from lbgm_mpi.errors import UserError

FORMAT_VERSION = 2  # 1 had no header (its checksum covered the arrays only)
MAGIC = b"lbgm-mpi checkpoint\n"
HEADER_BYTES = 512  # the smallest HDF5 user block
CHECKPOINT_RE = re.compile(r"^round-(\d{6,})\.h5$")
COMPRESS_MIN_BYTES = 1 << 20
READ_CHUNK = 1 << 22
HDF5_BYTES_PER_DATASET = 4096  # a generous bound on HDF5's metadata for one dataset


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def write_checkpoint(path: Path, arrays: dict[str, np.ndarray], attrs: dict,
                     before_rename=None, data_written=None, raw=()) -> int:
    """Write ``arrays`` and ``attrs`` to ``path`` atomically; return the file size in bytes.

    The data go to a temporary file in the same folder, which is sealed with its header, fsync'ed,
    then renamed over ``path``: a crash at any point leaves the previous file intact. A write that
    fails (a full disk) removes the temporary file and raises CheckpointError naming ``path``.
    ``data_written`` is called once every array has been read and handed to the file (the caller
    may change them from then on, while the file is sealed and synced); ``before_rename`` just
    before the rename (tests use it to kill the process there). The arrays named in ``raw`` are
    never compressed (integer arrays that hold floats, such as a bfloat16 bank)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _check_room(path, arrays)
    try:
        with h5py.File(tmp, "w", libver="latest", userblock_size=HEADER_BYTES) as f:
            for name, array in arrays.items():
                _write_array(f, name, np.ascontiguousarray(array), name not in raw)
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value)
        if data_written is not None:
            data_written()
        _seal(tmp)
    except (OSError, RuntimeError) as err:  # h5py reports a failed write as either
        tmp.unlink(missing_ok=True)
        full = getattr(err, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(err)
        raise _cannot_write(path, "the disk is full" if full else _first_line(err)) from None
    if before_rename is not None:
        before_rename(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path.stat().st_size


def _check_room(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Refuse a write that the free space of ``path``'s file system cannot hold.

    Checked first because HDF5 reports some failed writes while it frees objects, which Python
    passes to sys.excepthook, and the one that the CLI installs aborts the whole MPI job."""
    need = sum(a.nbytes for a in arrays.values()) + HDF5_BYTES_PER_DATASET * (len(arrays) + 16)
    st = os.statvfs(path.parent)
    if st.f_bavail * st.f_frsize < need:
        raise _cannot_write(path, f"the disk is full ({st.f_bavail * st.f_frsize} bytes free, "
                                  f"about {need} needed)")


def _cannot_write(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"cannot write checkpoint {path}: {why}; the checkpoints already in "
                           f"{path.parent} are intact")


def _write_array(f: h5py.File, name: str, array: np.ndarray, compressible: bool) -> None:
    # integer arrays (partition indices, the metrics text) compress well; floats barely do, at a
    # cost of seconds and buffers per GB
    big = (compressible and array.nbytes >= COMPRESS_MIN_BYTES and array.ndim >= 1
           and array.dtype.kind in "iub")
    f.create_dataset(name, data=array, chunks=True if big else None,
                     compression="gzip" if big else None, compression_opts=1 if big else None)


def _digest(f) -> tuple[str, int]:
    """(BLAKE2b of the bytes after the header, size of the whole file) of the open file ``f``."""
    h = hashlib.blake2b(digest_size=16)
    f.seek(HEADER_BYTES)
    size = HEADER_BYTES
    while chunk := f.read(READ_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _seal(path: Path) -> None:
    """Write the header (version, size, digest) into the user block of the closed HDF5 file."""
    with open(path, "r+b") as f:
        digest, size = _digest(f)
        line = json.dumps({"format_version": FORMAT_VERSION, "size": size, "blake2b": digest})
        f.seek(0)
        f.write((MAGIC + line.encode()).ljust(HEADER_BYTES, b"\0"))
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _header(head: bytes, path: Path) -> dict:
    """The parsed header of the checkpoint at ``path``, whose first bytes are ``head``."""
    if head.startswith(b"\x89HDF"):
        raise CheckpointError(f"checkpoint {path} has no lbgm-mpi header: it is of format "
                              f"version 1, or not an lbgm-mpi checkpoint; this lbgm-mpi reads "
                              f"format version {FORMAT_VERSION}")
    try:
        if not head.startswith(MAGIC):
            raise ValueError("no lbgm-mpi header")
        header = json.loads(head[len(MAGIC):].rstrip(b"\0"))
        version, size, digest = header["format_version"], header["size"], header["blake2b"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated, damaged or not an "
                              f"lbgm-mpi checkpoint): {_first_line(err)}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this lbgm-mpi "
                              f"reads version {FORMAT_VERSION}")
    return {"size": size, "blake2b": digest}


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming ``path`` unless its bytes match its header (reads the file
    once; parses no HDF5)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        header = _header(f.read(HEADER_BYTES), path)
        digest, size = _digest(f)
    if size != header["size"]:
        raise CheckpointError(f"checkpoint {path} cannot be read: it was truncated or changed "
                              f"after it was written ({size} bytes, its header says "
                              f"{header['size']})")
    if digest != header["blake2b"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch")


def read_checkpoint(path: Path, names=None, skip=()) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify a checkpoint; return (arrays, attrs).

    The whole file is verified against its header first, so a truncated or corrupted file is
    refused with a CheckpointError naming it. ``names`` (optional) limits the arrays returned;
    the arrays named in ``skip`` are left unread (``read_rows`` reads one in blocks)."""
    verify_checkpoint(path)
    return _read(path, lambda ds: ds[()], skip, names)


def checkpoint_layout(path: Path) -> tuple[dict[str, tuple[np.dtype, tuple]], dict]:
    """Verify a checkpoint; return ({array name: (dtype, shape)}, attrs) without reading the
    arrays."""
    verify_checkpoint(path)
    return _read(path, lambda ds: (ds.dtype, ds.shape))


def _read(path: Path, take, skip=(), names=None) -> tuple[dict, dict]:
    """({dataset name: take(dataset)}, attrs) of the checkpoint at ``path``."""
    try:
        with h5py.File(path, "r") as f:
            arrays = {}
            f.visititems(lambda name, obj: arrays.__setitem__(name, take(obj))
                         if isinstance(obj, h5py.Dataset) and name not in skip else None)
            attrs = {k: json.loads(v) for k, v in f.attrs.items()}
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        # the bytes are those written, so only a file written by something else gets here
        raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(err)}") from None
    if names is not None:
        arrays = {k: v for k, v in arrays.items() if k in names or k.split("/")[0] in names}
    return arrays, attrs


def read_rows(path: Path, name: str, shape: tuple[int, int], dtype: np.dtype,
              columns: tuple[int, int], write, step_bytes: int = 64 << 20) -> None:
    """Read columns [lo, hi) of the 2-D array ``name`` of the (verified) checkpoint at ``path``
    in blocks of rows of at most ``step_bytes``, calling ``write(first_row, block)`` for each:
    a reader that copies each block into place never holds a second copy of the array. Raises
    CheckpointError unless the array has ``shape`` and ``dtype``."""
    lo, hi = columns
    try:
        with h5py.File(path, "r") as f:
            ds = f[name]
            if ds.shape != tuple(shape) or ds.dtype != np.dtype(dtype):
                raise CheckpointError(f"checkpoint {path}: {name} is {ds.dtype} {ds.shape}, this "
                                      f"run needs {np.dtype(dtype)} {tuple(shape)}")
            step = max(1, step_bytes // max(1, (hi - lo) * ds.dtype.itemsize))
            for first in range(0, ds.shape[0], step):
                write(first, ds[first:first + step, lo:hi])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def checkpoint_path(folder: Path, rnd: int) -> Path:
    return Path(folder) / f"round-{rnd:06d}.h5"


def list_checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints in ``folder``, oldest first (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (and stale temporary files)."""
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()
    for stale in Path(folder).glob(".round-*.h5.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)


def set_aside_newer(folder: Path, rnd: int) -> list[Path]:
    """Rename the checkpoints in ``folder`` newer than round ``rnd`` to ``NAME.superseded`` (kept,
    but no longer found by list_checkpoints); return their new paths.

    A run resumed from an older checkpoint replaces their future, and 'latest' must not jump back
    to them later."""
    moved = []
    for path in list_checkpoints(folder):
        if int(CHECKPOINT_RE.match(path.name).group(1)) > rnd:
            moved.append(path.with_name(path.name + ".superseded"))
            os.replace(path, moved[-1])
    return moved


def json_array(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def pack_arrays(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Named arrays as one uint8 array: an 8-byte header length, a JSON header (names, dtypes,
    shapes), then the arrays' bytes in header order. No pickle."""
    items = [(name, np.ascontiguousarray(a)) for name, a in arrays.items()]
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in items]).encode()
    parts = [np.array([len(header)], dtype="<i8").view(np.uint8),
             np.frombuffer(header, dtype=np.uint8)]
    parts += [a.reshape(-1).view(np.uint8) for _, a in items]
    return np.concatenate(parts)


def unpack_arrays(data: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays ``pack_arrays`` packed (new arrays that do not share ``data``'s memory)."""
    size = int(data[:8].view("<i8")[0])
    at, out = 8 + size, {}
    for name, dtype, shape in json.loads(data[8:at].tobytes()):
        count = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        out[name] = data[at:at + count].view(dtype).reshape(shape).copy()
        at += count
    return out
