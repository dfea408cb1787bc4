"""The round loop: draw participants, train them locally, exchange, step the server, log."""

import time
from pathlib import Path

import numpy as np
import torch

from lbgm_mpi.algorithm.server import ServerOptimizer, participant_weights
from lbgm_mpi.analysis.report import human_bytes
from lbgm_mpi.data.datasets import load_dataset, load_train_labels
from lbgm_mpi.data.partition import label_histograms, partition
from lbgm_mpi.errors import UserError
from lbgm_mpi.models import build_model
from lbgm_mpi.models.layout import flatten, layout_of
from lbgm_mpi.topology import choose_device, make_topology
from lbgm_mpi.training.client import evaluate, local_update, stream_seed
from lbgm_mpi.training.exchange import make_exchange
from lbgm_mpi.training.phases import PhaseTimer
from lbgm_mpi.training.runlog import Progress, RunLog
from lbgm_mpi.training.signals import Preempted, StopFlag

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
        self.topo = make_topology(comm.rank, comm.size, spec.clients.count,
                                  spec.clients.placement)
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
        self.exchange = make_exchange(spec, comm, self.topo, self.layout, self.device, self.timer)
        self.round = 0
        self.checkpoint_hold_s = 0.0  # loop time taken by the checkpoint after the last round
        self.bytes_at_start = comm.bytes_sent  # one Comm may serve several runs (compare)
        self.log = RunLog(self.out_dir, spec, comm.is_root, self.parts,
                          label_histograms(labels, self.parts, data.num_classes))
        self.progress = Progress(spec.label(), spec.run.rounds, comm.is_root and not quiet)
        if self.device.type == "cuda":
            how = "directly" if comm.cuda_aware else "through pinned host buffers"
            self.progress.note(f"device {self.device} per rank; device buffers reach MPI {how}")

    def _load_shards(self):
        """Put this rank's clients' samples (and, on the root, the test set) on the device.

        Only the training rows of the clients hosted here are loaded (for an HDF5 file, read from
        disk). Returns the data set, whose training split holds just those rows."""
        rows = np.unique(np.concatenate([self.parts[k] for k in self.topo.local_clients]))
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
        sent0, comm0 = self.comm.bytes_sent, self.comm.seconds
        delta, traffic = self.exchange(participants, weights, updates, rnd)
        with self.timer("aggregate"):
            self.server.step(self.theta, delta)
            for var in self.variances:  # a scalar-reconstructed variance can dip below 0
                self.theta[var].clamp_(min=0.0)
        comm_s = self.comm.seconds - comm0
        totals = self.comm.control_gather_ints([self.comm.bytes_sent - sent0,
                                                 int(self.stop.requested)])
        mpi_bytes = sum(t[0] for t in totals)
        self.stop_agreed = any(t[1] for t in totals)
        if spec.run.check_every and rnd % spec.run.check_every == 0:
            self.comm.check_same(self.theta.cpu().numpy(), f"the global model after round {rnd}")
        with self.timer("eval"):
            acc, loss = self._evaluate(rnd)
        row = {"round": rnd, "test_acc": acc, "test_loss": loss, "train_loss": traffic.train_loss,
               "participants": len(participants), "refreshes": traffic.refreshes,
               "scalars": traffic.scalars, "uplink_bytes": traffic.uplink_bytes,
               "dense_uplink_bytes": traffic.dense_uplink_bytes,
               "downlink_bytes": traffic.downlink_bytes, "mpi_bytes": mpi_bytes,
               "round_s": time.perf_counter() - start, "comm_s": comm_s, **self.timer.take(),
               "checkpoint_s": self.checkpoint_hold_s}
        self.checkpoint_hold_s = 0.0
        self.log.append(row)
        self.progress.update(row, acc)
        return row

    def _train_client(self, k: int, rnd: int):
        x, y = self.shards[k]
        update, loss = local_update(self.model, self.theta, x, y, self.spec.clients,
                                    stream_seed(self.spec.run.seed, k, rnd))
        if not torch.isfinite(update).all():
            raise UserError(f"client {k} produced a non-finite update in round {rnd} "
                            "(training diverged: lower clients.lr or server.lr)")
        return update, loss

    def _evaluate(self, rnd: int):
        due = rnd % self.spec.run.eval_every == 0 or rnd == self.spec.run.rounds
        if self.test_set is None or not due:
            return None, None
        return evaluate(self.model, self.theta, *self.test_set)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def checkpoint(self):
        """Collective: write a checkpoint of this round (root); return its path on the root."""
        from lbgm_mpi.checkpoint.state import save
        start = time.perf_counter()
        saved = save(self, self.checkpoint_dir)
        # no rank may run ahead (or exit, which makes mpirun end the job) before the file is in
        # place
        self.comm.barrier()
        self.checkpoint_hold_s += time.perf_counter() - start
        if saved is None:
            return None
        path, size, seconds = saved
        self.progress.note(f"checkpoint {path.name}: {human_bytes(size)} in {seconds:.2f} s")
        return path

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint at ``path`` (every rank reads it; they must agree)."""
        from lbgm_mpi.checkpoint.state import restore
        restore(self, path)
        self.comm.check_same(np.concatenate([[float(self.round)], self.theta.cpu().numpy()]),
                             f"the state resumed from {path}")
        self.progress.resume(self.log.rows)
        self.progress.note(f"resumed from {path} at round {self.round}")

    def check_fresh_folder(self) -> None:
        """Refuse to start a new run over the results of another one in the same folder."""
        from lbgm_mpi.checkpoint.store import list_checkpoints
        metrics = self.out_dir / "metrics.jsonl"
        if list_checkpoints(self.checkpoint_dir) or (metrics.exists() and metrics.stat().st_size):
            raise UserError(f"{self.out_dir} already holds a run (metrics or checkpoints): pass "
                            "--resume latest to continue it, or choose another --out")

    def run(self) -> dict:
        """Train until run.rounds, checkpointing as configured; write summary.json (root).

        Raises Preempted on every rank, after a checkpoint, when a stop signal arrived."""
        every = self.spec.run.checkpoint_every
        while self.round < self.spec.run.rounds:
            self.step()
            if self.stop_agreed:
                raise Preempted(self.round, self.checkpoint())
            if every and self.round % every == 0 and self.round < self.spec.run.rounds:
                self.checkpoint()
        self.checkpoint()
        by_rank = self.comm.control_gather_int(self.comm.bytes_sent - self.bytes_at_start)
        return self.log.write_summary(self.num_params, {"mpi_bytes_by_rank": by_rank})
