"""Preemption: SIGUSR1 / SIGTERM ask the run to stop after the current round, with a checkpoint.

The signal may reach only one rank; the flag it sets is shared with the others through the
per-round bookkeeping gather (Trainer.step), so every rank stops after the same round.
"""

import signal

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" -- job scripts requeue on it
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(Exception):
    """Raised on every rank once the run has checkpointed after a stop signal."""

    def __init__(self, rnd: int, path):
        super().__init__(f"stopped by a signal after round {rnd}; checkpoint {path}")
        self.round = rnd
        self.path = path


class StopFlag:
    """Set by SIGUSR1 / SIGTERM once installed; read by the training loop."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
