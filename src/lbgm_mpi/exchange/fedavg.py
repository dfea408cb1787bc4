"""Dense FedAvg: each rank sums its participants' weighted updates; one Allreduce of d + 1
float32 (the last value carries the weighted training loss). In a star, the ranks that host
participants send their sums to the root, which adds them in rank order and sends the total back
to every rank: a client rank's uplink carries one d + 1 vector, its downlink another."""

import torch

from lbgm_mpi.exchange.base import Exchange, RoundTraffic
from lbgm_mpi.units import FLOAT_BYTES


class FedAvgExchange(Exchange):
    """Dense baseline: weighted sum by one Allreduce."""

    def __init__(self, comm, topology, num_params: int, device="cpu", timer=None):
        super().__init__(topology, timer=timer)
        self.comm = comm
        self.d = num_params
        self.device = device

    def __call__(self, participants, weights, updates, rnd):
        """Return (delta, RoundTraffic); ``updates`` maps this rank's participants to (g, loss)."""
        with self.timer("aggregate"):
            buf = weighted_sum(self.d, weights, updates, self.device)
        total = self._star_sum(participants, buf) if self.topo.star else \
            self.comm.allreduce_tensor(buf)
        dense = len(participants) * self.d * FLOAT_BYTES
        traffic = RoundTraffic(refreshes=len(participants), uplink_bytes=dense,
                               dense_uplink_bytes=dense, downlink_bytes=total.numel() * FLOAT_BYTES,
                               train_loss=float(total[self.d]))
        return total[:self.d], traffic

    def _star_sum(self, participants, buf: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``buf``, formed on the root and sent to every rank."""
        nbytes = buf.numel() * FLOAT_BYTES
        counts = [nbytes if self.topo.clients_on(participants, r) else 0
                  for r in range(self.comm.size)]
        # buf is this rank's own (weighted_sum made it): the root adds into it, the others
        # receive the total into it once it has been sent
        total = buf if counts[self.comm.rank] else torch.zeros_like(buf)

        def add(rank, offset, data):  # offsets are multiples of the float size
            if self.topo.is_root and rank != self.comm.rank:
                at = offset // FLOAT_BYTES
                part = data.view(torch.float32).to(self.device)
                total[at:at + part.numel()].add_(part)

        mine = [buf.view(torch.uint8)] if counts[self.comm.rank] else []
        self.comm.gather_stream(mine, counts if self.topo.is_root else None, add)
        return self.comm.send_to_all(total)


def weighted_sum(d: int, weights, updates, device="cpu") -> torch.Tensor:
    """This rank's weighted sum of its participants' updates and, as value d, of their losses:
    a new d + 1 float32 vector, summed in client-id order (``updates``: client -> (g, loss))."""
    buf = torch.zeros(d + 1, dtype=torch.float32, device=device)
    for k in sorted(updates):
        g, loss = updates[k]
        w = float(weights[k])
        buf[:d].add_(g, alpha=w)
        buf[d] += w * loss
    return buf
