"""Saving and restoring a Trainer's whole state, so that a resumed run continues bit for bit.

What is saved: the global model and the server's momentum, the look-back bank (rows, valid flags,
cached norms), every client's persistent state (compressor and error-feedback memory, gathered
from the ranks that host them), the round, the metrics so far, the partition and the resolved
config. Random streams need no saving: the participant draw is keyed by (seed, round) and each
client's stream by (seed, client, round), so the round number restores them.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch

from lbgm_mpi.checkpoint.store import (CheckpointError, checkpoint_path, list_checkpoints,
                                       prune_checkpoints, read_checkpoint, verify_checkpoint,
                                       write_checkpoint)

# Keys that may change on resume: they do not change what a round computes.
SAFE_KEYS = {"run.rounds", "run.eval_every", "run.check_every", "run.checkpoint_every",
             "run.checkpoint_minutes", "run.keep_checkpoints", "run.label", "system.threads",
             "system.device", "system.kernels", "system.cuda_aware_mpi",
             "system.allow_gpu_sharing"}


def _json_array(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def _local_client_states(trainer) -> dict[int, dict[str, np.ndarray]]:
    states = {}
    for k in trainer.topo.local_clients:
        state = trainer.exchange.client_state(k)
        if state:
            states[k] = {name: t.detach().cpu().numpy() for name, t in state.items()}
    return states


def capture(trainer) -> dict[str, np.ndarray] | None:
    """Collective: every rank calls it; the root gets the arrays of the whole state."""
    gathered = trainer.comm.control_gather_objects(_local_client_states(trainer))
    if not trainer.comm.is_root:
        return None
    arrays = {"theta": trainer.theta.cpu().numpy(),
              "server/velocity": trainer.server.velocity.cpu().numpy(),
              "metrics_json": _json_array(trainer.log.rows),
              "partition/indices": np.concatenate(trainer.parts),
              "partition/counts": np.array([len(p) for p in trainer.parts], dtype=np.int64)}
    bank = trainer.exchange.bank
    if bank is not None:
        arrays["bank/rows"] = bank.rows.cpu().view(torch.int16 if bank.rows.dtype ==
                                                   torch.bfloat16 else bank.rows.dtype).numpy()
        arrays["bank/valid"] = bank.valid.numpy().astype(np.uint8)
        arrays["bank/norm2"] = bank.norm2.numpy()
    for states in gathered:
        for k, state in states.items():
            for name, value in state.items():
                arrays[f"clients/{k}/{name}"] = value
    return arrays


def save(trainer, folder: Path) -> tuple[Path, int, float] | None:
    """Collective: write a checkpoint of the current round into ``folder`` (root writes).

    Returns (path, bytes, seconds) on the root, None elsewhere."""
    start = time.perf_counter()
    arrays = capture(trainer)
    if arrays is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, trainer.round)
    attrs = {"round": trainer.round, "config": trainer.spec.to_dict(),
             "num_params": trainer.num_params, "ranks": trainer.comm.size}
    size = write_checkpoint(path, arrays, attrs)
    prune_checkpoints(folder, trainer.spec.run.keep_checkpoints)
    return path, size, time.perf_counter() - start


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
    arrays, attrs = read_checkpoint(path)
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
    _restore_bank(trainer, arrays)
    _restore_clients(trainer, arrays)
    trainer.round = int(attrs["round"])
    trainer.log.restore(json.loads(arrays["metrics_json"].tobytes().decode()))


def _restore_bank(trainer, arrays) -> None:
    bank = trainer.exchange.bank
    if bank is None:
        return
    rows = torch.from_numpy(arrays["bank/rows"])
    bank.rows.copy_(rows.view(bank.rows.dtype) if rows.dtype != bank.rows.dtype else rows)
    bank.valid.copy_(torch.from_numpy(arrays["bank/valid"].astype(bool)))
    bank.norm2.copy_(torch.from_numpy(arrays["bank/norm2"]))


def _restore_clients(trainer, arrays) -> None:
    for k in trainer.topo.local_clients:
        prefix = f"clients/{k}/"
        state = {name[len(prefix):]: torch.from_numpy(np.array(v))
                 for name, v in arrays.items() if name.startswith(prefix)}
        if state:
            trainer.exchange.load_client_state(k, state)
