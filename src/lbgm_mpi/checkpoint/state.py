"""Saving and restoring a Trainer's whole state, so that a resumed run continues bit for bit.

What is saved: the global model and the server's momentum, the look-back bank (rows and slot
cursors; the Gram matrices the decisions use are recomputed from the rows), every client's
persistent state (compressor and error-feedback memory, gathered from the ranks that host them),
the exchange's replicated state (the global scope's orthonormal bank, PowerSGD's warm-start Q's,
FedLUAR's last update) and each rank's own (the global scope's error-feedback residual), the round, the metrics so far, the partition and the resolved
config. Random streams need no saving: the participant draw is keyed by (seed, round) and each
client's stream by (seed, client, round), so the round number restores them.
"""

import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from lbgm_mpi.analysis.report import human_bytes
from lbgm_mpi.checkpoint.store import (CheckpointError, checkpoint_path, list_checkpoints,
                                       prune_checkpoints, read_checkpoint, read_rows,
                                       verify_checkpoint, write_checkpoint)

BANK_ROWS = "bank/rows"  # the look-back bank's rows: read on resume a block at a time

# Keys that may change on resume: they do not change what a round computes.
SAFE_KEYS = {"run.rounds", "run.eval_every", "run.check_every", "run.checkpoint_every",
             "run.checkpoint_minutes", "run.keep_checkpoints", "run.label", "system.threads",
             "system.device", "system.kernels", "system.cuda_aware_mpi",
             "system.allow_gpu_sharing", "system.bank", "system.max_message_bytes"}


def _json_array(obj) -> np.ndarray:
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


def _local_states(trainer) -> dict[str, np.ndarray]:
    """This rank's share of the state: its clients' and its own (``ranks/R/...``: the global
    scope's error-feedback residual)."""
    states = {}
    for k in trainer.topo.local_clients:
        for name, t in trainer.exchange.client_state(k).items():
            states[f"clients/{k}/{name}"] = t.detach().cpu().numpy()
    for name, t in trainer.exchange.rank_state().items():
        states[f"ranks/{trainer.comm.rank}/{name}"] = t.detach().cpu().numpy().copy()
    return states


def capture(trainer) -> dict[str, np.ndarray] | None:
    """Collective: every rank calls it; the root gets the arrays of the whole state.

    Everything is a snapshot except ``bank/rows``, which is the live bank (a view): a writer must
    finish reading it before the bank is written again (``LookbackBank.guard``)."""
    gathered = trainer.comm.control_gather_bytes(pack_arrays(_local_states(trainer)))
    if not trainer.comm.is_root:
        return None
    arrays = {"theta": trainer.theta.cpu().numpy().copy(),
              "server/velocity": trainer.server.velocity.cpu().numpy().copy(),
              "metrics_json": _json_array(trainer.log.rows),
              "partition/indices": np.concatenate(trainer.parts),
              "partition/counts": np.array([len(p) for p in trainer.parts], dtype=np.int64)}
    for name, value in trainer.exchange.server_state().items():
        arrays[f"exchange/{name}"] = value.detach().cpu().numpy().copy()
    bank = trainer.exchange.bank
    if bank is not None:
        arrays[BANK_ROWS] = _stored_rows(bank).cpu().numpy()
        arrays["bank/cursor"] = bank.cursor.numpy().copy()
    for packed in gathered:
        arrays.update(unpack_arrays(packed))
    return arrays


def _stored_rows(bank) -> torch.Tensor:
    """The bank's rows as the file stores them: bfloat16 as int16 (HDF5 has no bfloat16)."""
    return bank.rows if bank.rows.dtype != torch.bfloat16 else bank.rows.view(torch.int16)


class BackgroundWriter:
    """Writes one checkpoint at a time in a thread. ``wait_data`` returns once the writer no
    longer reads the live bank (its rows are in the file, which may still be syncing to disk);
    ``join`` once the file is in place. A failed write is handed to the training thread by
    ``failure`` (a CheckpointError, as its message) or raised by ``wait``."""

    def __init__(self):
        self._thread = None
        self._error = None
        self._data = threading.Event()
        self._data.set()
        self.waited_s = 0.0  # seconds callers spent waiting for a running write

    def start(self, write) -> None:
        """Run ``write(data_written)`` in the background (after the previous write has finished);
        ``write`` calls ``data_written()`` once it has read everything it writes."""
        self.wait()
        self._data.clear()

        def run():
            try:
                write(self._data.set)
            except BaseException as err:  # handed to the training thread by wait()
                self._error = err
            finally:
                self._data.set()

        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait_data(self) -> None:
        """Block until the running write, if any, has read all its data. A failed write is not
        raised here (in the middle of a round, where the other ranks could not learn of it) but
        kept for ``failure`` or ``wait``."""
        if not self._data.is_set():
            start = time.perf_counter()
            self._data.wait()
            self.waited_s += time.perf_counter() - start

    def failure(self) -> str | None:
        """The message of a write that failed with a CheckpointError (a full disk), taken: the
        loop tells every rank and stops them together. Any other error raises here."""
        if isinstance(self._error, CheckpointError):
            error, self._error = self._error, None
            return str(error)
        self._raise()
        return None

    def join(self) -> None:
        """Block until no write is running (a failure is kept for ``failure`` or ``wait``)."""
        if self._thread is not None:
            start = time.perf_counter()
            self._thread.join()
            self.waited_s += time.perf_counter() - start
            self._thread = None

    def wait(self) -> None:
        """Block until no write is running; raise what it raised."""
        self.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def save(trainer, folder: Path, writer: BackgroundWriter | None = None):
    """Collective: write a checkpoint of the current round into ``folder`` (root writes).

    With a ``writer`` the root writes in the background and returns at once (the bank's guard
    waits for it before the bank changes); without one it writes before returning. Returns the
    path on the root, None elsewhere."""
    arrays = capture(trainer)
    if arrays is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, trainer.round)
    attrs = {"round": trainer.round, "config": trainer.spec.to_dict(),
             "num_params": trainer.num_params, "ranks": trainer.comm.size}
    keep = trainer.spec.run.keep_checkpoints

    def write(data_written=None):
        start = time.perf_counter()
        size = write_checkpoint(path, arrays, attrs, data_written=data_written, raw={BANK_ROWS})
        prune_checkpoints(folder, keep)
        trainer.progress.note(f"checkpoint {path.name}: {human_bytes(size)} in "
                              f"{time.perf_counter() - start:.2f} s")

    if writer is None:
        write()
    else:
        writer.start(write)
    return path


def resolve(resume: str, folder: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint named by --resume, and notes for the user.

    For a path: that path (read_checkpoint refuses it later if it is unusable). For 'latest': the
    newest checkpoint in ``folder`` that reads back whole (each candidate is verified), with a
    note for each newer one refused; None if there is none yet."""
    if resume != "latest":
        return Path(resume), []
    notes = []
    for path in reversed(list_checkpoints(folder)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            notes.append(f"refused {err}")
            continue
        if notes:
            notes.append(f"resuming from the newest good checkpoint instead: {path}")
        return path, notes
    if notes:
        raise CheckpointError(f"no usable checkpoint in {folder}: {'; '.join(notes)}")
    return None, notes


def _flat(config: dict) -> dict[str, object]:
    return {f"{s}.{k}": v for s, values in config.items() for k, v in values.items()}


def check_compatible(path: Path, saved: dict, current: dict) -> None:
    """Refuse a checkpoint whose config differs from ``current`` outside SAFE_KEYS."""
    a, b = _flat(saved), _flat(current)
    diff = sorted(k for k in a.keys() | b.keys() if k not in SAFE_KEYS and a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k} (checkpoint {a.get(k)!r}, now {b.get(k)!r})" for k in diff[:5])
        raise CheckpointError(f"checkpoint {path} is from an incompatible config: {shown}; only "
                              f"{', '.join(sorted(SAFE_KEYS))} may change on resume")


def restore(trainer, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``trainer`` (every rank reads the file)."""
    arrays, attrs = read_checkpoint(path, skip={BANK_ROWS})
    check_compatible(path, attrs["config"], trainer.spec.to_dict())
    if attrs["round"] > trainer.spec.run.rounds:
        raise CheckpointError(f"checkpoint {path} is at round {attrs['round']}, past run.rounds = "
                              f"{trainer.spec.run.rounds}: set run.rounds to at least "
                              f"{attrs['round']} (--set run.rounds={attrs['round']})")
    counts = arrays["partition/counts"].tolist()
    if counts != [len(p) for p in trainer.parts] or not np.array_equal(
            arrays["partition/indices"], np.concatenate(trainer.parts)):
        raise CheckpointError(f"checkpoint {path}: its client partition differs from this run's "
                              "(another data set or partition code)")
    trainer.theta.copy_(torch.from_numpy(arrays["theta"]))
    trainer.server.velocity.copy_(torch.from_numpy(arrays["server/velocity"]))
    _restore_bank(trainer, path, arrays)
    _restore_clients(trainer, arrays)
    trainer.exchange.load_rank_states(
        [{name.split("/", 2)[2]: torch.from_numpy(np.array(value))
          for name, value in arrays.items() if name.startswith(f"ranks/{r}/")}
         for r in range(int(attrs["ranks"]))])
    trainer.exchange.load_server_state(
        {name.split("/", 1)[1]: torch.from_numpy(np.array(value))
         for name, value in arrays.items() if name.startswith("exchange/")})
    trainer.round = int(attrs["round"])
    trainer.log.restore(json.loads(arrays["metrics_json"].tobytes().decode()))


def _restore_bank(trainer, path: Path, arrays) -> None:
    """Read the rows (this rank's columns, for a node-shared bank) from the file into the bank a
    block of rows at a time (no second K x d buffer); copy the cursors; rebuild the local
    clients' Gram matrices from the rows."""
    bank = trainer.exchange.bank
    if bank is None:
        return
    rows = _stored_rows(bank)
    lo, hi = bank.columns

    def write(first: int, block: np.ndarray) -> None:
        rows[first:first + len(block), lo:hi].copy_(torch.from_numpy(block))

    dtype = torch.empty(0, dtype=rows.dtype).numpy().dtype
    read_rows(path, BANK_ROWS, tuple(rows.shape), dtype, (lo, hi), write)
    bank.cursor.copy_(torch.from_numpy(arrays["bank/cursor"]))
    bank.node.sync()
    bank.rebuild_gram()


def _restore_clients(trainer, arrays) -> None:
    for k in trainer.topo.local_clients:
        prefix = f"clients/{k}/"
        state = {name[len(prefix):]: torch.from_numpy(np.array(v))
                 for name, v in arrays.items() if name.startswith(prefix)}
        if state:
            trainer.exchange.load_client_state(k, state)
