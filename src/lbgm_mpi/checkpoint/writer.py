"""Writing a checkpoint in the background while training goes on."""

import threading
import time

from lbgm_mpi.checkpoint.store import CheckpointError


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
