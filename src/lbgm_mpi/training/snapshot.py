"""Saving and restoring a Trainer's whole state, so that a resumed run continues bit for bit
(the file format, its writer and the resume rules are lbgm_mpi.checkpoint's).

What is saved: the global model and the server's momentum, the look-back bank (rows and slot
cursors, from the root: in a star, the server's bank of every client; the Gram matrices the
decisions use are recomputed from the rows), every client's
persistent state (compressor and error-feedback memory, gathered from the ranks that host them),
the exchange's replicated state (the global scope's orthonormal bank, PowerSGD's warm-start Q's,
FedLUAR's last update) and each rank's own (the global scope's error-feedback residual), the
round, the metrics so far, the partition and the resolved config. Random streams need no saving: the participant draw is keyed by (seed, round) and each
client's stream by (seed, client, round), so the round number restores them.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch

from lbgm_mpi.checkpoint.resume import check_compatible
from lbgm_mpi.checkpoint.store import (
    CheckpointError,
    checkpoint_path,
    json_array,
    pack_arrays,
    prune_checkpoints,
    read_checkpoint,
    read_rows,
    unpack_arrays,
    write_checkpoint,
)
from lbgm_mpi.checkpoint.writer import BackgroundWriter
from lbgm_mpi.units import human_bytes

BANK_ROWS = "bank/rows"  # the look-back bank's rows: read on resume a block at a time


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
              "metrics_json": json_array(trainer.log.rows),
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
    """Read the rows (this rank's columns, for a node-shared bank; its own clients' rows, on a
    star's client rank) from the file into the bank a block of rows at a time (no second K x d
    buffer); copy the cursors; rebuild the local clients' Gram matrices from the rows."""
    bank = trainer.exchange.bank
    if bank is None:
        return
    rows = _stored_rows(bank)
    lo, hi = bank.columns
    m = bank.lookback
    shape = (bank.num_clients * m, rows.shape[1])
    held = {k * m + j: bank.row(k, j) for k in bank.held for j in range(m)}

    def write(first: int, block: np.ndarray) -> None:
        if bank.holds_all:
            rows[first:first + len(block), lo:hi].copy_(torch.from_numpy(block))
            return
        for i in range(len(block)):
            if first + i in held:
                rows[held[first + i], lo:hi].copy_(torch.from_numpy(block[i]))

    dtype = torch.empty(0, dtype=rows.dtype).numpy().dtype
    read_rows(path, BANK_ROWS, shape, dtype, (lo, hi), write)
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
