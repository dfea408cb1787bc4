"""Exchanges that gather, in two Allgatherv: one fixed-size record per participant (id, loss,
payload size, per-segment refresh flags and look-back coefficients; the counts are known to every
rank because all ranks draw the same participants and know where each client lives), then the
payload bytes, exactly as many as the records announced, streamed in bounded steps: each received
part goes straight to where it belongs (a bank row, or a compressed client's payload), so no rank
ever holds the gathered payloads whole. Every rank then forms the same aggregate in client-id
order, so it does not depend on the number of ranks.

In a star (system.topology = "star") the same two steps go to the root alone (``gather_stream``:
a client rank's uplink carries only its own clients' records and payloads, and each client rank
keeps its own refreshes itself); the root forms the aggregate and sends it, with the round's
traffic figures, to every rank (``send_to_all``). The root's aggregate is computed exactly as a
replica's, so the star and the replicated topology give the same model."""

from abc import ABC, abstractmethod

import numpy as np
import torch

from lbgm_mpi.algorithm.bank import LookbackBank
from lbgm_mpi.compress import ClientCompressors
from lbgm_mpi.exchange.base import TRAFFIC_FIELDS, Exchange, RoundTraffic
from lbgm_mpi.exchange.records import PayloadMap, record_dtype
from lbgm_mpi.units import FLOAT_BYTES


class GatherExchange(Exchange, ABC):
    """Records, then payload bytes, by two Allgatherv; subclasses encode and combine."""

    def __init__(self, comm, topology, kernels, bounds: torch.Tensor, device="cpu",
                 bank: LookbackBank | None = None, compressors: ClientCompressors | None = None,
                 timer=None, lookback: int = 1):
        super().__init__(topology, bank, compressors, timer)
        self.comm = comm
        self.device = device
        self.kernels = kernels
        self.bounds = bounds
        self.sizes = torch.diff(bounds).tolist()
        self.lookback = lookback
        self.dtype = record_dtype(len(self.sizes), lookback)

    def __call__(self, participants, weights, updates, rnd):
        """Return (delta, RoundTraffic); ``updates`` maps this rank's participants to (g, loss)."""
        mine = sorted(updates)
        records = np.zeros(len(mine), dtype=self.dtype)
        records["client"] = mine
        records["loss"] = [updates[k][1] for k in mine]
        with self.timer("decide"):
            payloads = [self._encode(k, updates[k][0], records[i], rnd)
                        for i, k in enumerate(mine)]
        records["payload"] = [sum(p.numel() for p in parts) for parts in payloads]
        per_rank = [len(self.topo.clients_on(participants, r)) for r in range(self.comm.size)]
        if not self.topo.aggregates:  # a star's client rank sees its own records only
            per_rank = [n if r == self.comm.rank else 0 for r, n in enumerate(per_rank)]
        got = self._gather_records(records, [n * self.dtype.itemsize for n in per_rank])
        self._check_ids(got, participants, per_rank)
        counts = self._payload_bytes_per_rank(got, per_rank)
        received = self._receive(got, weights, per_rank, [p for ps in payloads for p in ps],
                                 counts)
        if not self.topo.star:
            return self._combine(got, weights, received), self._traffic(got, weights, sum(counts))
        delta, header = None, np.zeros(len(TRAFFIC_FIELDS), dtype=np.float64)
        if self.topo.is_root:
            delta = self._combine(got, weights, received)
            traffic = self._traffic(got, weights, sum(counts))
            header[:] = [getattr(traffic, f) for f in TRAFFIC_FIELDS]
        return self._send_aggregate(delta, header)

    def _gather_records(self, records: np.ndarray, counts: list[int]) -> np.ndarray:
        """Every participant's record on every rank (on the root only, in a star)."""
        if not self.topo.star:
            return self.comm.allgatherv_bytes(records, counts).view(self.dtype)
        if not self.topo.is_root:
            self.comm.gather_stream([torch.from_numpy(records.view(np.uint8))], None,
                                    lambda *_: None)
            return records
        out = np.empty(sum(counts), dtype=np.uint8)
        starts = np.cumsum([0, *counts])

        def keep(rank, offset, data):
            at = starts[rank] + offset
            out[at:at + len(data)] = data.numpy()

        self.comm.gather_stream([torch.from_numpy(records.view(np.uint8))], counts, keep)
        return out.view(self.dtype)

    def _move(self, pieces, counts, sink) -> None:
        """The payload gather: to every rank, or in a star to the root (a client rank's sink
        sees its own payload only)."""
        if not self.topo.star:
            self.comm.allgatherv_stream(pieces, counts, sink)
        else:
            self.comm.gather_stream(pieces, counts if self.topo.is_root else None, sink)

    def _send_aggregate(self, delta, header: np.ndarray):
        """The root's aggregate and traffic figures on every rank of a star, in one message:
        the d float32 values, then the float64 figures as pairs of float32 (bits kept)."""
        d = int(self.bounds[-1])
        buf = torch.empty(d + 2 * len(TRAFFIC_FIELDS), dtype=torch.float32, device=self.device)
        if delta is not None:
            buf[:d].copy_(delta)
            buf[d:].copy_(torch.from_numpy(header.view(np.float32)))
        self.comm.send_to_all(buf)
        figures = buf[d:].cpu().numpy().view(np.float64)
        values = {f: (float(v) if f == "train_loss" else int(v))
                  for f, v in zip(TRAFFIC_FIELDS, figures)}
        return buf[:d], RoundTraffic(**values)

    @abstractmethod
    def _encode(self, k, g, record, rnd) -> list[torch.Tensor]:
        """Fill client k's refresh flags and coefficients; return its payload as 1-D uint8
        pieces (views where possible: they are sent before ``updates`` is dropped)."""

    @abstractmethod
    def _receive(self, got, weights, per_rank, pieces, counts):
        """Run the payload gather (``_move``: to every rank, or to a star's server), put every
        part in place, and return what ``_combine`` needs of it."""

    @abstractmethod
    def _combine(self, got, weights, received) -> torch.Tensor:
        """The aggregate from every record and what ``_receive`` returned (the same on every
        rank that aggregates)."""

    def _collect(self, got, per_rank, pieces, counts) -> dict[int, torch.Tensor]:
        """Gather the payloads, each whole, by client id (for compressed payloads: small)."""
        buffers = {int(r["client"]): torch.empty(int(r["payload"]), dtype=torch.uint8)
                   for r in got}
        layout = PayloadMap([[(int(r["client"]), int(r["payload"])) for r in group]
                             for group in self._by_rank(got, per_rank)])

        def keep(rank, offset, data):
            for client, at, part in layout.split(rank, offset, data):
                buffers[client][at:at + len(part)].copy_(part)

        self._move(pieces, counts, keep)
        return buffers

    @staticmethod
    def _by_rank(got, per_rank):
        """The records of each rank, in rank order."""
        ends = np.cumsum(per_rank)
        return [got[e - n:e] for n, e in zip(per_rank, ends)]

    def _check_ids(self, got, participants, per_rank) -> None:
        expected = [k for r in range(self.comm.size) if per_rank[r]
                    for k in self.topo.clients_on(participants, r)]
        if got["client"].tolist() != expected:
            raise RuntimeError(f"round records disagree with the drawn participants: got "
                               f"{got['client'].tolist()}, expected {expected}")

    def _payload_bytes_per_rank(self, got, per_rank) -> list[int]:
        return [int(group["payload"].sum()) for group in self._by_rank(got, per_rank)]

    def _client_order(self, got, weights):
        """(record positions, client ids, float64 weights), all in ascending client id."""
        order = np.argsort(got["client"], kind="stable")
        rows = torch.from_numpy(got["client"][order].astype(np.int64))
        w = torch.tensor([float(weights[int(k)]) for k in rows], dtype=torch.float64)
        return order, rows, w

    def _traffic(self, got, weights, payload_bytes: int) -> RoundTraffic:
        refreshes = int(got["refresh"].sum())
        scalars = got["refresh"].size - refreshes
        d = int(self.bounds[-1])
        # summed in client order, so that the figure does not depend on the number of ranks
        loss = sum(float(weights[int(r["client"])]) * float(r["loss"])
                   for r in sorted(got, key=lambda r: int(r["client"])))
        # what one rank receives: every record and payload, or in a star the aggregate and these
        # figures
        downlink = (d * FLOAT_BYTES + len(TRAFFIC_FIELDS) * 8) if self.topo.star else \
            got.nbytes + payload_bytes
        return RoundTraffic(
            refreshes=refreshes, scalars=scalars,
            uplink_bytes=int(got["payload"].sum()) + FLOAT_BYTES * self.lookback * scalars,
            dense_uplink_bytes=len(got) * d * FLOAT_BYTES,
            downlink_bytes=downlink, train_loss=loss)


class CompressedFedAvgExchange(GatherExchange):
    """FedAvg over a compressor: every participant's payload goes to every rank, which
    decompresses them one at a time into the weighted sum (one segment, no bank)."""

    def _encode(self, k, g, record, rnd) -> list[torch.Tensor]:
        record["refresh"] = 1
        return [self.compressors.encode(k, g)[0]]

    def _receive(self, got, weights, per_rank, pieces, counts) -> dict[int, torch.Tensor]:
        return self._collect(got, per_rank, pieces, counts)

    def _combine(self, got, weights, received) -> torch.Tensor:
        _, clients, w = self._client_order(got, weights)
        with self.timer("aggregate"):
            delta = torch.zeros(int(self.bounds[-1]), dtype=torch.float32, device=self.device)
            for k, wk in zip(clients.tolist(), w.tolist()):
                rebuilt = self.compressors.decompress(received.pop(k).to(self.device))
                delta.add_(rebuilt, alpha=wk)
        return delta

