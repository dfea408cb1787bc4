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
        buf = torch.zeros(self.d + 1, dtype=torch.float32, device=self.device)
        with self.timer("aggregate"):
            for k in sorted(updates):
                g, loss = updates[k]
                w = float(weights[k])
                buf[:self.d].add_(g, alpha=w)
                buf[self.d] += w * loss
        total = self.comm.allreduce_tensor(buf)
        dense = len(participants) * self.d * FLOAT_BYTES
        traffic = RoundTraffic(refreshes=len(participants), uplink_bytes=dense,
                               dense_uplink_bytes=dense, downlink_bytes=total.numel() * FLOAT_BYTES,
                               train_loss=float(total[self.d]))
        return total[:self.d], traffic

