"""Stopping a run: SIGUSR1, SIGTERM, SIGINT (Ctrl-C) or SIGHUP ask it to stop after the current
round, with a checkpoint, and exit 75.

The signal may reach only one rank; the flag it sets is shared with the others through the
per-round bookkeeping gather (Trainer.step), so every rank stops after the same round.

mpirun itself answers SIGTERM, SIGINT and SIGHUP by killing the ranks 0.5 s later, which is too
short to finish a round; jobs/mpirun-local.sh and the SLURM templates therefore turn those signals
into SIGUSR1, which mpirun passes on to every rank and otherwise ignores.
"""

import signal
import sys

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" -- job scripts requeue on it
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: a second Ctrl-C quit without a checkpoint
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Preempted(Exception):
    """Raised on every rank once the run has checkpointed after a stop signal."""

    def __init__(self, rnd: int, path):
        super().__init__(f"stopped by a signal after round {rnd}; checkpoint {path}")
        self.round = rnd
        self.path = path


class StopFlag:
    """Set by any of STOP_SIGNALS once installed; read by the training loop.

    A second SIGINT (Ctrl-C twice) is not a request but an interruption: it raises
    KeyboardInterrupt, for a user who will not wait for the round to end."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = self.signal_name or name
        if signum == signal.SIGINT:
            # a terminal's Ctrl-C reaches a process run without mpirun: say what happens next
            sys.stderr.write("\nlbgm-mpi: Ctrl-C: stopping after this round with a checkpoint "
                             "(Ctrl-C again quits at once, without one)\n")
            sys.stderr.flush()
