"""The run folder (written by the root rank only) and the live progress line."""

import errno
import json
import math
import sys
import time
from pathlib import Path

from lbgm_mpi.config import to_toml
from lbgm_mpi.errors import UserError
from lbgm_mpi.runs.folder import summarize
from lbgm_mpi.units import duration, human_bytes


def write_file(path: Path, text: str, mode: str = "w") -> None:
    """Write (or with mode "a", append) ``text`` to ``path``; a failure, such as a full disk,
    is a UserError naming the file."""
    try:
        with open(path, mode) as f:
            f.write(text)
    except OSError as err:
        why = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or str(err)
        raise UserError(f"cannot write {path}: {why}") from None


class RunLog:
    """Writes config.toml, partition.json, metrics.jsonl and summary.json into ``out_dir``.

    Nothing but the run's lock (training.runlock) touches the folder before the first round is
    logged (so a refused resume leaves it as it was). On non-root ranks nothing is written, so
    callers need no rank checks."""

    def __init__(self, out_dir: Path, spec, active: bool, parts, histograms):
        self.out_dir = Path(out_dir)
        self.spec = spec
        self.active = active
        self.parts = parts
        self.histograms = histograms
        self.rows: list[dict] = []
        self.opened = False

    def _open(self) -> None:
        """On first use: write config.toml and partition.json, and metrics.jsonl holding exactly
        the rounds so far (none, or those of the checkpoint resumed from: later lines go)."""
        self.opened = True
        if not self.active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_file(self.out_dir / "config.toml", to_toml(self.spec))
        clients = [{"client": k, "samples": len(p), "label_histogram": h}
                   for k, (p, h) in enumerate(zip(self.parts, self.histograms))]
        write_file(self.out_dir / "partition.json", json.dumps(
            {"partition": self.spec.data.partition, "clients": clients}, indent=1))
        write_file(self.out_dir / "metrics.jsonl", "".join(_line(r) for r in self.rows))

    def restore(self, rows: list[dict]) -> None:
        """Continue after ``rows`` (from a checkpoint)."""
        self.rows = list(rows)

    def append(self, row: dict) -> None:
        """Add one round's metrics line."""
        if not self.opened:
            self._open()
        self.rows.append(row)
        if self.active:
            write_file(self.out_dir / "metrics.jsonl", _line(row), mode="a")

    def write_summary(self, num_params: int, extra: dict) -> dict:
        """Write summary.json from the rounds logged so far (plus ``extra``) and return it."""
        if not self.opened:
            self._open()
        summary = {**summarize(self.rows, self.spec, num_params), **extra}
        if self.active:
            write_file(self.out_dir / "summary.json", json.dumps(summary, indent=1))
        return summary


def _line(row: dict) -> str:
    """One strict-JSON line: a non-finite number (a diverged loss) is written as null."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v
             for k, v in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class Progress:
    """Status lines on the root rank: a live bar on a terminal; elsewhere (a SLURM log) a line
    every rounds/10 rounds, and at least one every QUIET_S seconds. Each shows the latest
    accuracy, the uplink saved, the time so far and an estimate of the time left (from this
    process's rounds)."""

    QUIET_S = 60.0  # the longest a log stays silent while rounds finish

    def __init__(self, label: str, rounds: int, active: bool, stream=None,
                 clock=time.monotonic):
        self.label = label
        self.rounds = rounds
        self.active = active
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = max(1, rounds // 10)
        self.clock = clock
        self.start = self.last_line = clock()
        self.first = 0  # rounds run before this process started (a resumed run)
        self.uplink = self.dense = 0

    def resume(self, rows: list[dict]) -> None:
        """Start the cumulative figures, and the time estimate, after the rounds already run."""
        self.uplink = sum(r["uplink_bytes"] for r in rows)
        self.dense = sum(r["dense_uplink_bytes"] for r in rows)
        self.first = len(rows)

    def note(self, text: str) -> None:
        """A one-off line (checkpoint written, resumed from ...)."""
        if self.active:
            self.stream.write(f"[{self.label}] {text}\n")
            self.stream.flush()

    def update(self, row: dict, acc: float | None) -> None:
        """Show round ``row['round']`` with the latest accuracy and cumulative savings."""
        self.uplink += row["uplink_bytes"]
        self.dense += row["dense_uplink_bytes"]
        rnd, now = row["round"], self.clock()
        due = self.tty or rnd % self.every == 0 or rnd == self.rounds or \
            now - self.last_line >= self.QUIET_S
        if not self.active or not due:
            return
        self.last_line = now
        width = 20
        filled = int(width * rnd / self.rounds)
        saving = 100.0 * (1 - self.uplink / self.dense) if self.dense else 0.0
        acc_text = f"{100 * acc:5.1f}%" if acc is not None else "  n/a"
        line = (f"[{self.label}] |{'#' * filled}{'.' * (width - filled)}| round {rnd}/{self.rounds}"
                f"  acc {acc_text}  uplink {human_bytes(self.uplink)} ({saving:.0f}% saved)"
                f"  {duration(now - self.start)}{self._left(rnd, now)}")
        end = "\n" if not self.tty or rnd == self.rounds else "\r"
        self.stream.write(line + end)
        self.stream.flush()

    def _left(self, rnd: int, now: float) -> str:
        done = rnd - self.first
        if rnd >= self.rounds or done <= 0:
            return ""
        return f", ETA {duration((now - self.start) / done * (self.rounds - rnd))}"
