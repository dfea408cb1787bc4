"""Dense FedAvg: each rank sums its participants' weighted updates; one Allreduce of d + 1
float32 (the last value carries the weighted training loss)."""

import torch

from lbgm_mpi.exchange.base import FLOAT_BYTES, Exchange, RoundTraffic



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
        total = self.comm.allreduce_tensor(buf)
        dense = len(participants) * self.d * FLOAT_BYTES
        traffic = RoundTraffic(refreshes=len(participants), uplink_bytes=dense,
                               dense_uplink_bytes=dense, downlink_bytes=total.numel() * FLOAT_BYTES,
                               train_loss=float(total[self.d]))
        return total[:self.d], traffic


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
