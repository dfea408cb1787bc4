"""The per-round exchange: how the participants' updates become one aggregate on every rank.

FedAvg: each rank sums its participants' weighted updates; one Allreduce of d + 1 float32 (the
last value carries the weighted training loss).

LBGM: two collectives (DESIGN.md section 2):
  1. an Allgatherv of one fixed-size record per participant (id, loss, payload size, per-segment
     refresh flag and float32 look-back coefficient); the counts are known to every rank because
     all ranks draw the same participants and know where each client lives;
  2. an Allgatherv of the refreshed segments only (float32), whose sizes the records announced.
Every rank then writes the refreshed rows into its bank replica and forms the same aggregate.
"""

from dataclasses import dataclass

import numpy as np
import torch

from lbgm_mpi.algorithm.bank import LookbackBank
from lbgm_mpi.algorithm.lbgm import decide
from lbgm_mpi.errors import UserError
from lbgm_mpi.kernels import select_kernels

FLOAT_BYTES = 4


@dataclass
class RoundTraffic:
    """What one round moved (bytes are per round, summed over participants where stated)."""

    refreshes: int = 0         # segments sent in full
    scalars: int = 0           # segments sent as one float32 coefficient
    uplink_bytes: int = 0      # sum over participants of what each client sends
    dense_uplink_bytes: int = 0  # the same if every participant sent its full update
    downlink_bytes: int = 0    # what one rank receives from the collectives
    train_loss: float = 0.0    # weighted mean training loss of the participants


class FedAvgExchange:
    """Dense baseline: weighted sum by one Allreduce."""

    def __init__(self, comm, num_params: int):
        self.comm = comm
        self.d = num_params

    def __call__(self, participants, weights, updates, rnd):
        """Return (delta, RoundTraffic); ``updates`` maps this rank's participants to (g, loss)."""
        buf = torch.zeros(self.d + 1, dtype=torch.float32)
        for k in sorted(updates):
            g, loss = updates[k]
            w = float(weights[k])
            buf[:self.d].add_(g, alpha=w)
            buf[self.d] += w * loss
        total = torch.from_numpy(self.comm.allreduce_sum(buf.numpy()))
        dense = len(participants) * self.d * FLOAT_BYTES
        traffic = RoundTraffic(refreshes=len(participants), uplink_bytes=dense,
                               dense_uplink_bytes=dense, downlink_bytes=total.numel() * FLOAT_BYTES,
                               train_loss=float(total[self.d]))
        return total[:self.d], traffic


def record_dtype(num_segments: int) -> np.dtype:
    """The packed wire record of one participant."""
    return np.dtype([("client", "<i4"), ("loss", "<f4"), ("payload", "<i8"),
                     ("refresh", "u1", (num_segments,)), ("rho", "<f4", (num_segments,))])


class LbgmExchange:
    """Look-back gradient multiplier over two Allgatherv, with a replicated bank."""

    def __init__(self, comm, topology, bank: LookbackBank, kernels, threshold: float):
        self.comm = comm
        self.topo = topology
        self.bank = bank
        self.kernels = kernels
        self.threshold = threshold
        self.bounds = bank.bounds
        self.sizes = bank.sizes
        self.dtype = record_dtype(len(self.sizes))

    def __call__(self, participants, weights, updates, rnd):
        """Return (delta, RoundTraffic); ``updates`` maps this rank's participants to (g, loss)."""
        mine = sorted(updates)
        records = np.zeros(len(mine), dtype=self.dtype)
        payloads = [self._encode(k, *updates[k], records[i], rnd) for i, k in enumerate(mine)]
        per_rank = [len(self.topo.clients_on(participants, r)) for r in range(self.comm.size)]
        got = self.comm.allgatherv_bytes(records, [n * self.dtype.itemsize for n in per_rank])
        got = got.view(self.dtype)
        self._check_ids(got, participants)
        sizes = self._payload_bytes_per_rank(got, per_rank)
        send = torch.cat(payloads) if payloads else torch.zeros(0)
        data = self.comm.allgatherv_bytes(send.numpy(), sizes)
        self._write_refreshes(got, data)
        delta = self._aggregate(got, weights)
        return delta, self._traffic(got, weights, data.nbytes)

    def _encode(self, k, g, loss, record, rnd) -> torch.Tensor:
        """Decide for client k; fill its record; return the refreshed segments (float32)."""
        dots, gnorm2 = self.kernels.project(g, self.bank.row(k), self.bounds)
        try:
            dec = decide(dots, gnorm2, self.bank.norm2[k], self.bank.valid[k], self.threshold)
        except FloatingPointError:
            raise UserError(f"client {k} produced a non-finite update in round {rnd} "
                            "(training diverged: lower clients.lr or server.lr)") from None
        record["client"], record["loss"] = k, loss
        record["refresh"] = dec.refresh.numpy()
        record["rho"] = dec.rho.numpy()
        parts = [seg for seg, r in zip(torch.split(g, self.sizes), dec.refresh.tolist()) if r]
        payload = torch.cat(parts) if parts else torch.zeros(0)
        record["payload"] = payload.numel() * FLOAT_BYTES
        return payload

    def _check_ids(self, got, participants) -> None:
        expected = [k for r in range(self.comm.size) for k in self.topo.clients_on(participants, r)]
        if got["client"].tolist() != expected:
            raise RuntimeError(f"round records disagree with the drawn participants: got "
                               f"{got['client'].tolist()}, expected {expected}")

    def _payload_bytes_per_rank(self, got, per_rank) -> list[int]:
        ends = np.cumsum(per_rank)
        return [int(got["payload"][e - n:e].sum()) for n, e in zip(per_rank, ends)]

    def _write_refreshes(self, got, data: np.ndarray) -> None:
        values = torch.from_numpy(data.view(np.float32))
        offset = 0
        for rec in got:
            segs = np.flatnonzero(rec["refresh"]).tolist()
            lengths = [self.sizes[s] for s in segs]
            chunk = values[offset:offset + sum(lengths)]
            offset += sum(lengths)
            self.bank.write(int(rec["client"]), segs, torch.split(chunk, lengths))

    def _aggregate(self, got, weights) -> torch.Tensor:
        order = np.argsort(got["client"], kind="stable")
        rows = torch.from_numpy(got["client"][order].astype(np.int64))
        refresh = torch.from_numpy(got["refresh"][order].astype(bool))
        rho = torch.from_numpy(got["rho"][order].astype(np.float64))
        w = torch.tensor([float(weights[int(k)]) for k in rows], dtype=torch.float64)
        coefs = torch.where(refresh, torch.ones_like(rho), rho) * w[:, None]
        return self.kernels.aggregate(self.bank.rows, rows, coefs, self.bounds)

    def _traffic(self, got, weights, payload_bytes: int) -> RoundTraffic:
        refreshes = int(got["refresh"].sum())
        scalars = got["refresh"].size - refreshes
        d = int(self.bounds[-1])
        # summed in client order, so that the figure does not depend on the number of ranks
        loss = sum(float(weights[int(r["client"])]) * float(r["loss"])
                   for r in sorted(got, key=lambda r: int(r["client"])))
        return RoundTraffic(
            refreshes=refreshes, scalars=scalars,
            uplink_bytes=int(got["payload"].sum()) + FLOAT_BYTES * scalars,
            dense_uplink_bytes=len(got) * d * FLOAT_BYTES,
            downlink_bytes=got.nbytes + payload_bytes, train_loss=loss)


def make_exchange(spec, comm, topology, layout):
    """The exchange of the configured algorithm."""
    if spec.algo.name == "fedavg":
        return FedAvgExchange(comm, layout.size)
    bounds = layout.bounds_tensor()
    if spec.algo.granularity == "model":
        bounds = bounds[[0, -1]]
    bank = LookbackBank(spec.clients.count, bounds)
    return LbgmExchange(comm, topology, bank, select_kernels(spec.system.kernels),
                        spec.algo.threshold)
