"""The round loop: draw participants, train them locally, exchange, step the server, log."""

import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lbgm_mpi.algorithm.server import ServerOptimizer, participant_weights
from lbgm_mpi.checkpoint.store import CheckpointError, list_checkpoints
from lbgm_mpi.checkpoint.writer import BackgroundWriter
from lbgm_mpi.data.datasets import load_dataset, load_train_labels
from lbgm_mpi.data.partition import label_histograms, partition
from lbgm_mpi.errors import AgreedError, ConfigError, UserError
from lbgm_mpi.exchange import make_exchange
from lbgm_mpi.models import build_model
from lbgm_mpi.models.layout import flatten, layout_of
from lbgm_mpi.runs.log import Progress, RunLog
from lbgm_mpi.runs.resources import (
    device_peak_bytes,
    host_peak_bytes,
    host_shared_bytes,
    set_precision,
)
from lbgm_mpi.runs.signals import Preempted, StopFlag
from lbgm_mpi.topology import choose_device, make_topology
from lbgm_mpi.training.client import (
    eval_batch_size,
    evaluate,
    local_update,
    stream_seed,
)
from lbgm_mpi.training.phases import PhaseTimer
from lbgm_mpi.training.snapshot import restore, save
from lbgm_mpi.units import human_bytes

PARTICIPANT_STREAM = 0x5EED_C11E  # tag of the participant draw in the seed sequence


def draw_participants(seed: int, rnd: int, num_clients: int, per_round: int) -> list[int]:
    """The clients taking part in round ``rnd`` (ascending), identical on every rank."""
    if per_round in (0, num_clients):
        return list(range(num_clients))
    rng = np.random.default_rng([seed, PARTICIPANT_STREAM, rnd])
    return sorted(rng.choice(num_clients, size=per_round, replace=False).tolist())


class Trainer:
    """One federated run on this rank: a server replica plus the clients hosted here."""

    def __init__(self, spec, comm, out_dir: Path, quiet: bool = False,
                 stop: StopFlag | None = None):
        self.spec = spec
        self.comm = comm
        self.out_dir = Path(out_dir)
        self.stop = stop or StopFlag()
        self.stop_agreed = False
        torch.set_num_threads(spec.system.threads)
        set_precision(spec.system.precision)
        try:
            comm.max_message_bytes = spec.system.max_message_bytes
        except ValueError as err:
            raise ConfigError(f"system.max_message_bytes: {err}") from None
        self.topo = make_topology(comm.rank, comm.size, spec.clients.count,
                                  spec.clients.placement, spec.system.topology,
                                  spec.system.server)
        self.device = choose_device(comm, spec.system)
        labels = load_train_labels(spec.data)
        self.parts = partition(labels, spec.clients.count, spec.data, spec.run.seed)
        self.num_samples = [len(p) for p in self.parts]
        data = self._load_shards()
        self.model = build_model(spec.model, data.in_shape, data.num_classes,
                                 spec.run.seed).to(self.device)
        self.layout = layout_of(self.model)
        self.theta = flatten(self.model)
        self.server = ServerOptimizer(self.layout.size, spec.server.lr, spec.server.momentum,
                                      self.device, self.layout.param_size)
        self.variances = self.layout.slices_named("running_var")
        self.timer = PhaseTimer(self.device)
        self.exchange = make_exchange(spec, comm, self.topo, self.layout, self.device, self.timer,
                                      self.theta)
        self.writer = BackgroundWriter()
        if self.exchange.bank is not None:  # the bank changes only once a checkpoint is written
            self.exchange.bank.guard = self.writer.wait_data
        self.round = 0
        self.eval_batch = None  # samples per evaluation batch, sized at the first evaluation
        self.checkpoint_hold_s = 0.0  # loop time the checkpoint after the last round took
        self.waited_mark = 0.0  # writer.waited_s when the last metrics row was made
        # one Comm may serve several runs (compare)
        self.ledger_at_start = (comm.bytes_sent, comm.link_up, comm.link_down)
        self.log = RunLog(self.out_dir, spec, comm.is_root, self.parts,
                          label_histograms(labels, self.parts, data.num_classes))
        self.progress = Progress(spec.label(), spec.run.rounds, comm.is_root and not quiet)
        if self.device.type == "cuda":
            how = "directly" if comm.cuda_aware else "through pinned host buffers"
            self.progress.note(f"device {self.device} per rank; device buffers reach MPI {how}")
        if self.progress.active:
            self.progress.note(self._startup_line())

    def _load_shards(self):
        """Put this rank's clients' samples (and, on the root, the test set) on the device.

        Only the training rows of the clients hosted here are loaded (for an HDF5 file, read from
        disk). Returns the data set, whose training split holds just those rows."""
        rows = np.unique(np.concatenate([self.parts[k] for k in self.topo.local_clients]
                                        or [np.zeros(0, dtype=np.int64)]))
        data = load_dataset(self.spec.data, train_rows=rows)
        at = lambda k: torch.from_numpy(np.searchsorted(rows, self.parts[k]))
        put = lambda x: x.to(self.device)
        self.shards = {k: (put(data.x_train[at(k)]), put(data.y_train[at(k)]))
                       for k in self.topo.local_clients}
        self.test_set = (put(data.x_test), put(data.y_test)) if self.comm.is_root else None
        return data

    @property
    def num_params(self) -> int:
        return self.layout.size

    def step(self) -> dict:
        """Run one round; update theta in place; return the round's metrics row."""
        start = time.perf_counter()
        self.round += 1
        rnd, spec = self.round, self.spec
        participants = draw_participants(spec.run.seed, rnd, spec.clients.count,
                                         spec.clients.participants)
        weights = dict(zip(participants, participant_weights(self.num_samples, participants)))
        with self.timer("train"):
            updates = {k: self._train_client(k, rnd) for k in participants if k in self.shards}
        sent0, link0, comm0 = self.comm.bytes_sent, self.comm.link_bytes, self.comm.seconds
        delta, traffic = self.exchange(participants, weights, updates, rnd)
        with self.timer("aggregate"):
            self.server.step(self.theta, delta)
            for var in self.variances:  # a scalar-reconstructed variance can dip below 0
                self.theta[var].clamp_(min=0.0)
        comm_s = self.comm.seconds - comm0
        totals = self.comm.control_gather_ints([self.comm.bytes_sent - sent0,
                                                 int(self.stop.requested),
                                                 self.comm.link_bytes - link0])
        mpi_bytes = sum(t[0] for t in totals)
        self.stop_agreed = any(t[1] for t in totals)
        # the busiest rank's link: the one that paces the round where links are alike (not in a
        # star whose server has the fastest link: summary.json keeps every rank's, both ways)
        link_bytes = max(t[2] for t in totals)
        if spec.run.check_every and rnd % spec.run.check_every == 0:
            self.comm.check_same(self.theta.cpu().numpy(), f"the global model after round {rnd}")
        with self.timer("eval"):
            acc, loss = self._evaluate(rnd)
        row = {"round": rnd, "test_acc": acc, "test_loss": loss, "train_loss": traffic.train_loss,
               "participants": len(participants), "refreshes": traffic.refreshes,
               "scalars": traffic.scalars, "uplink_bytes": traffic.uplink_bytes,
               "dense_uplink_bytes": traffic.dense_uplink_bytes,
               "downlink_bytes": traffic.downlink_bytes, "mpi_bytes": mpi_bytes,
               "link_bytes": link_bytes,
               "round_s": time.perf_counter() - start + self.checkpoint_hold_s,
               "comm_s": comm_s, **self.timer.take(), "checkpoint_s": self._checkpoint_s()}
        self.log.append(row)
        self.progress.update(row, acc)
        return row

    def _checkpoint_s(self) -> float:
        """Seconds checkpoints held the loop up since the last row: writing the one after the
        last round, and waiting for a background write to finish before the bank changed."""
        held = self.checkpoint_hold_s + self.writer.waited_s - self.waited_mark
        self.checkpoint_hold_s, self.waited_mark = 0.0, self.writer.waited_s
        return held

    def _train_client(self, k: int, rnd: int):
        x, y = self.shards[k]
        update, loss = local_update(self.model, self.theta, x, y, self.spec.clients,
                                    stream_seed(self.spec.run.seed, k, rnd),
                                    self.spec.system.precision)
        if not torch.isfinite(update).all():
            raise UserError(f"client {k} produced a non-finite update in round {rnd} "
                            "(training diverged: lower clients.lr or server.lr)")
        return update, loss

    def _evaluate(self, rnd: int):
        due = rnd % self.spec.run.eval_every == 0 or rnd == self.spec.run.rounds
        if self.test_set is None or not due:
            return None, None
        if self.eval_batch is None:
            self.eval_batch = eval_batch_size(self.model, self.test_set[0])
        return evaluate(self.model, self.theta, *self.test_set, batch=self.eval_batch)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def checkpoint(self, background: bool = False):
        """Collective: write a checkpoint of this round (root); return its path on the root.

        In the background, the root writes while training goes on (the bank waits for it before
        it changes); otherwise every rank returns once the file is in place."""
        waited = self.writer.waited_s
        start = time.perf_counter()
        self.writer.join()  # one checkpoint at a time
        failed = self.writer.failure()  # of the one before, written in the background
        try:
            path = save(self, self.checkpoint_dir, self.writer if background else None)
        except CheckpointError as err:  # only the root writes
            path, failed = None, failed or str(err)
        # every rank learns whether the root could write (no rank may exit, which makes mpirun
        # end the job, before the file is in place), and a failure stops them all in one line
        failed = self.comm.control_bcast(failed if self.comm.is_root else None)
        if failed:
            raise AgreedError(failed)
        self.checkpoint_hold_s += time.perf_counter() - start - (self.writer.waited_s - waited)
        return path

    def resources(self) -> dict:
        """Collective: peak host and device memory of every rank, and the bank's bytes."""
        bank = self.exchange.bank
        peaks = self.comm.control_gather_ints([host_peak_bytes(), host_shared_bytes(),
                                               device_peak_bytes(self.device),
                                               0 if bank is None else bank.nbytes])
        _, node_size = self.comm.node_rank_and_size()
        # a shared bank once per node; private banks (of unequal sizes in a star) added up
        mine = 0 if bank is None else bank.nbytes
        shared = bank is not None and bank.shared
        per_node = mine if shared else sum(self.comm.node.control_gather_int(mine))
        return {"peak_host_bytes_by_rank": [p[0] for p in peaks],
                "shared_host_bytes_by_rank": [p[1] for p in peaks],
                "peak_device_bytes_by_rank": [p[2] for p in peaks],
                "bank": self.spec.system.bank if bank is not None else None,
                "bank_bytes_per_node": per_node, "bank_bytes_by_rank": [p[3] for p in peaks],
                "ranks_per_node": node_size}

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint at ``path`` (every rank reads it; they must agree)."""
        restore(self, path)
        self.comm.check_same(np.concatenate([[float(self.round)], self.theta.cpu().numpy()]),
                             f"the state resumed from {path}")
        self.progress.resume(self.log.rows)
        self.progress.note(f"resumed from {path} at round {self.round}")

    def check_fresh_folder(self) -> None:
        """Refuse to start a new run over the results of another one in the same folder."""
        metrics = self.out_dir / "metrics.jsonl"
        if list_checkpoints(self.checkpoint_dir) or (metrics.exists() and metrics.stat().st_size):
            raise UserError(f"{self.out_dir} already holds a run (metrics or checkpoints): pass "
                            "--resume latest to continue it, or choose another --out")

    def run(self) -> dict:
        """Train until run.rounds; write summary.json (root) and return the summary.

        Checkpoints every run.checkpoint_every rounds, whenever run.checkpoint_minutes have passed
        since the last one (the root's clock decides for every rank), and at the end. Raises
        Preempted on every rank, after a checkpoint, when a stop signal arrived; AgreedError on
        every rank, without a checkpoint, when the global model became non-finite (the last
        checkpoint stays the last good state)."""
        saved, saved_at = self.round, time.monotonic()
        while self.round < self.spec.run.rounds:
            self.step()
            finite, due, failed = self.comm.control_bcast(
                self._verdict(saved_at) if self.comm.is_root else None)
            if failed:
                raise AgreedError(failed)
            if not finite:
                raise AgreedError(self._diverged(saved))
            if self.stop_agreed:
                raise Preempted(self.round, self.checkpoint())
            if due and self.round < self.spec.run.rounds:
                self.checkpoint(background=True)
                saved, saved_at = self.round, time.monotonic()
        if saved != self.round:
            self.checkpoint()
        ledger = self.comm.control_gather_ints(
            [now - then for now, then in zip(
                (self.comm.bytes_sent, self.comm.link_up, self.comm.link_down),
                self.ledger_at_start)])
        return self.log.write_summary(self.num_params, {
            "mpi_bytes_by_rank": [r[0] for r in ledger],
            "link_up_bytes_by_rank": [r[1] for r in ledger],
            "link_down_bytes_by_rank": [r[2] for r in ledger],
            "topology": self.spec.system.topology, **self.resources()})

    def _verdict(self, saved_at: float) -> tuple[bool, bool, str | None]:
        """(is the global model finite, is a checkpoint due, why the checkpoint written in the
        background failed or None), as the root sees them."""
        every, minutes = self.spec.run.checkpoint_every, self.spec.run.checkpoint_minutes
        due = bool(every and self.round % every == 0) or \
            bool(minutes and time.monotonic() - saved_at >= 60.0 * minutes)
        return bool(torch.isfinite(self.theta).all()), due, self.writer.failure()

    def _diverged(self, saved: int) -> str:
        kept = f"the checkpoint of round {saved} stays the last good state" if saved else \
            "and there is no earlier checkpoint"
        return (f"the global model became non-finite in round {self.round} (training diverged: "
                f"lower server.lr or clients.lr); it was not checkpointed, {kept}")

    def _startup_line(self) -> str:
        """What runs where, in one line: ranks, clients per rank, parameters, bank memory,
        device, MPI library and whether it takes device buffers (CUDA-aware)."""
        from lbgm_mpi.comm.device import cuda_aware_mpi
        hosted = Counter(self.topo.host).values()
        low, high = min(hosted), max(hosted)
        clients = f"{low}" if low == high else f"{low}-{high}"
        bank, lookback = self.exchange.bank, getattr(self.exchange, "global_bank", None)
        if lookback is not None:
            rows = lookback.rows
            bank_text = (f"global look-back bank {rows.shape[0]} x {rows.shape[1]:,} "
                         f"({human_bytes(rows.numel() * rows.element_size())} per rank)")
        elif bank is None:
            bank_text = "no look-back bank"
        elif self.topo.star:
            bank_text = (f"look-back bank {human_bytes(bank.nbytes)} on the server, a client "
                         f"rank's own clients' rows elsewhere")
        else:
            where = "per node" if bank.shared else "per rank"
            bank_text = f"look-back bank {human_bytes(bank.nbytes)} {where}"
        aware = self.comm.cuda_aware if self.device.type == "cuda" else \
            cuda_aware_mpi(self.spec.system.cuda_aware_mpi)
        if self.topo.star:
            server = "hosts no clients" if self.spec.system.server == "dedicated" else \
                "also hosts clients"
            clients = f"star: rank 0 is the server and {server}; {clients}"
        return (f"{self.comm.size} rank(s), {clients} client(s) per rank of "
                f"{self.spec.clients.count}, {self.num_params:,} parameters, {bank_text}, "
                f"device {self.device}, {self.comm.library_version()} "
                f"({'CUDA-aware' if aware else 'not CUDA-aware'})")
