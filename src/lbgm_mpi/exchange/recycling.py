"""FedLUAR's exchange: FedAvg over the layers that are not recycled this round.

Every rank is a server replica, so every rank draws the same recycled layers from its replica of
the model and of the last applied update (algorithm/fedluar.py). The participants then send only
the other tensors: FedAvg's Allreduce over the concatenation of the sent tensors (plus the loss),
so its sums agree across rank counts to float rounding, as FedAvg's do. The server applies, per
tensor, the fresh average where it was sent and the last applied update where it was recycled.

Bytes: each participant uplinks 4 x (values sent); MPI moves P x 4 x (values sent + 1).
``refreshes`` counts the tensors sent (participants x (tensors - recycled)); nothing is sent as a
scalar. The last applied update is the exchange's server state (checkpoints keep it).
"""

import dataclasses

import torch

from lbgm_mpi.algorithm.fedluar import candidate_layers, draw_recycled, recycle_weights
from lbgm_mpi.errors import ConfigError
from lbgm_mpi.exchange.base import Exchange
from lbgm_mpi.exchange.fedavg import FedAvgExchange
from lbgm_mpi.units import FLOAT_BYTES


class RecyclingExchange(Exchange):
    """FedLUAR with ``count`` recycled layers per round. ``theta`` is the trainer's model vector
    (read, never written: the server updates it in place after each exchange)."""

    def __init__(self, comm, topology, layout, theta: torch.Tensor, count: int, seed: int,
                 device="cpu", timer=None):
        super().__init__(topology, timer=timer)
        self.comm = comm
        self.theta = theta
        self.bounds = layout.bounds
        self.candidates = candidate_layers(layout.shapes, layout.is_buffer())
        if count >= max(1, len(self.candidates)):
            raise ConfigError(f"algo.recycle_layers: {count} recycled of this model's "
                              f"{len(self.candidates)} weight layers; at most "
                              f"{max(0, len(self.candidates) - 1)} (one must stay fresh)")
        self.count = count
        self.seed = seed
        self.device = device
        self.previous = torch.zeros(layout.size, dtype=torch.float32, device=device)

    def recycled(self, rnd: int) -> list[int]:
        """The tensors recycled in round ``rnd`` (layout indices, ascending)."""
        weights = recycle_weights(self.previous, self.theta, self.bounds, self.candidates)
        return [self.candidates[i] for i in draw_recycled(weights, self.count, self.seed, rnd)]

    def __call__(self, participants, weights, updates, rnd):
        """Return (delta, RoundTraffic); ``updates`` maps this rank's participants to (g, loss)."""
        with self.timer("decide"):
            recycled = set(self.recycled(rnd))
        sent = [(lo, hi) for l, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:]))
                if l not in recycled]
        size = sum(hi - lo for lo, hi in sent)
        parts = {k: (torch.cat([g[lo:hi] for lo, hi in sent]), loss)
                 for k, (g, loss) in updates.items()}
        mean, traffic = FedAvgExchange(self.comm, self.topo, size, self.device, self.timer)(
            participants, weights, parts, rnd)
        at = 0
        for lo, hi in sent:  # recycled tensors keep their last update in self.previous
            self.previous[lo:hi].copy_(mean[at:at + hi - lo])
            at += hi - lo
        tensors = len(self.bounds) - 1
        return self.previous.clone(), dataclasses.replace(
            traffic, refreshes=len(participants) * (tensors - len(recycled)),
            dense_uplink_bytes=len(participants) * self.bounds[-1] * FLOAT_BYTES)

    def server_state(self) -> dict[str, torch.Tensor]:
        """The last applied update (what the next recycled layers reuse)."""
        return {"previous_delta": self.previous}

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the last applied update with a copy of ``state["previous_delta"]``."""
        if set(state) != {"previous_delta"}:
            raise ValueError(f"FedLUAR keeps 'previous_delta', but the state holds "
                             f"{sorted(state)}: a checkpoint of another algorithm?")
        self.previous.copy_(state["previous_delta"].to(self.device))
