"""The run folder's lock: at most one run (train or compare) writes a folder at a time.

The root rank holds an exclusive ``flock`` on ``OUT/.lock`` for as long as the run lives, and
writes into the file who holds it (host, pid, start time, command). The kernel drops the lock when
the process ends, however it ends, so a crashed run never blocks its folder: the next run finds the
old holder's line, says that it takes over, and goes on. A run that finds the lock held but the
record empty (its holder is starting or ending at that instant) waits a moment for one or the
other before it names the holder. The file is emptied on release but kept,
except where the run created it and left nothing else in the folder (its start failed a check):
then the lock file, and the folders the run created, go, so that a refused start leaves no
trace. A lock counts only on the file that has the name at that moment (a late opener that
locked a removed file tries again), so removing it is safe.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from lbgm_mpi.errors import UserError

LOCK_NAME = ".lock"
# flock() answers these where the file system cannot lock (e.g. Lustre mounted without flock)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
_ATTEMPTS = 5  # tries to lock the file that has the name (see RunLock._try_acquire)
HOLDER_WAIT_S = 2.0  # how long an empty holder record under a held lock is waited on


def _holder_text(raw: str) -> str:
    """A holder record as words: "pid 12 on host n1, started 2026-01-01 10:00:00, command ..."."""
    try:
        h = json.loads(raw)
        return (f"pid {h['pid']} on host {h['host']}, started {h['started']}, "
                f"command: {h['command']}")
    except (ValueError, KeyError, TypeError):
        return f"unreadable holder record {raw[:80]!r}"


def make_folder(folder: Path, what: str = "--out") -> list[Path]:
    """Create ``folder`` (and its parents); a path that cannot be a folder is a UserError.
    Returns the folders this call created, deepest first."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{what} {folder} is a file, not a folder: choose another {what}") from None
    except OSError as err:
        raise UserError(f"{what} {folder}: cannot create the folder ({err.strerror})") from None
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; stop at the first that is not."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty (another run's files), or gone already
            return


class RunLock:
    """An exclusive lock on a run folder, held by one process; see the module docstring."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.taken_over = ""  # the holder record a crashed run left behind, if any
        self.unlocked = False  # True where the file system has no locks (a warning is due)
        self.made: list[Path] = []  # folders acquire() created, deepest first
        self.made_file = False  # whether acquire() created the lock file

    def acquire(self) -> "RunLock":
        """Take the lock (creating the folder); raise UserError naming the holder if it is held."""
        for _ in range(_ATTEMPTS):
            if self._try_acquire():
                break
        else:
            raise UserError(f"--out {self.folder}: its lock file keeps disappearing (another "
                            "process removes it): choose another --out")
        self.taken_over = self._read()
        try:
            self._write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "command": " ".join(["lbgm-mpi", *sys.argv[1:]])}))
        except OSError as err:  # a full disk
            self._close()
            raise UserError(f"--out {self.folder}: cannot write {self.path} "
                            f"({err.strerror})") from None
        return self

    def _try_acquire(self) -> bool:
        """One attempt: True once this process holds the lock on the file named ``path``; False
        where that file was removed or replaced meanwhile (a start that failed its checks removes
        its folder), so that a lock on a file without the name is never mistaken for the lock."""
        self.made += [p for p in make_folder(self.folder) if p not in self.made]
        existed = self.path.exists()
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder went between make_folder and open
            return False
        except OSError as err:
            raise UserError(f"--out {self.folder} is not writable ({err.strerror}): choose "
                            "another --out") from None
        self.made_file = self.made_file or not existed
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in _NO_LOCKS:
                self.unlocked = True
            else:
                holder = self._holder_or_lock()
                if holder is not None:
                    self._close()
                    raise UserError(f"{self.folder} is in use by another run "
                                    f"({_holder_text(holder)}): wait for it to end, or choose "
                                    "another --out") from None
        if not self._holds_the_name():
            self._close()
            return False
        return True

    def _holder_or_lock(self) -> str | None:
        """The record of the run that holds the lock, or None once this process holds it.

        A holder writes its record just after it takes the lock and empties it just before it
        lets go. So an empty record under a held lock is a run that is starting or ending at
        this moment, and is waited on (HOLDER_WAIT_S at most) until one or the other shows."""
        deadline = time.monotonic() + HOLDER_WAIT_S
        while True:
            raw = self._read()
            if raw or time.monotonic() > deadline:
                return raw
            time.sleep(0.01)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                continue

    def _holds_the_name(self) -> bool:
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def notes(self) -> list[str]:
        """What the user should hear about this lock (a takeover, or no locking at all)."""
        notes = []
        if self.taken_over:
            notes.append(f"taking over {self.folder}: the run that held it "
                         f"({_holder_text(self.taken_over)}) ended without releasing it")
        if self.unlocked:
            notes.append(f"warning: the file system of {self.folder} cannot lock files; make "
                         "sure no other run writes to this folder")
        return notes

    def release(self) -> None:
        """Empty the holder record and drop the lock. The file stays, unless this lock created it
        and nothing else is in the folder (the run's start failed a check): then the file goes,
        and so do the folders acquire() created (see the module docstring)."""
        if self.fd is None:
            return
        if self.made_file and self._only_the_lock():
            os.unlink(self.path)  # while locked: a late opener finds the name gone and retries
            self._close()
            remove_if_empty(self.made)
            return
        self._write("")
        self._close()

    def _only_the_lock(self) -> bool:
        try:
            return [p.name for p in self.folder.iterdir()] == [LOCK_NAME]
        except OSError:
            return False

    def _read(self) -> str:
        os.lseek(self.fd, 0, os.SEEK_SET)
        return os.read(self.fd, 4096).decode(errors="replace").strip()

    def _write(self, text: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def _close(self) -> None:
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
