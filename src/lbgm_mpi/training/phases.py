"""Seconds spent in each phase of a round, on this rank.

The phases, as they appear in metrics.jsonl (each key ends in ``_s``):

    train_s      local training of this rank's participants
    decide_s     LBGM's projection and scalar-or-refresh decision (and compression, if any)
    comm_s       inside the data collectives (measured by the comm module)
    bank_s       writing received refreshes into the look-back bank
    aggregate_s  the aggregate over the participants and the server step
    eval_s       evaluating the global model (root only)
    checkpoint_s what the checkpoint after the previous round held the training loop up

``round_s`` is the wall time of the whole round, so ``round_s`` minus the phases is what no phase
accounts for (bookkeeping gathers, the model-hash check, Python). On a GPU each phase ends with a
device synchronisation, so asynchronous work is charged to the phase that queued it.
"""

import contextlib
import time

import torch

PHASES = ("train", "decide", "bank", "aggregate", "eval")


class PhaseTimer:
    """Accumulates wall seconds per phase until ``take`` hands them over and starts afresh."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        """Charge the wall time of the ``with`` body to ``phase``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The seconds per phase since the last call, as ``{"<phase>_s": seconds}``."""
        out = {f"{phase}_s": s for phase, s in self.seconds.items()}
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return out


def timing_keys(row: dict) -> list[str]:
    """The keys of a metrics row that hold seconds (they differ between two identical runs)."""
    return [key for key in row if key.endswith("_s")]
