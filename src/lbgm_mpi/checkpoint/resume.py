"""Which checkpoint a resume starts from, and whether it fits the run's config."""

from pathlib import Path

from lbgm_mpi.checkpoint.store import (
    CheckpointError,
    list_checkpoints,
    verify_checkpoint,
)

# Keys that may change on resume: they do not change what a round computes.
SAFE_KEYS = {"run.rounds", "run.eval_every", "run.check_every", "run.checkpoint_every",
             "run.checkpoint_minutes", "run.keep_checkpoints", "run.label", "run.plots",
             "system.threads", "system.device", "system.kernels", "system.cuda_aware_mpi",
             "system.allow_gpu_sharing", "system.bank", "system.max_message_bytes",
             "system.topology", "system.server"}


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
