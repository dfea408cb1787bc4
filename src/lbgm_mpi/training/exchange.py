"""The per-round exchange: how the participants' updates become one aggregate on every rank.

Dense FedAvg: each rank sums its participants' weighted updates; one Allreduce of d + 1 float32
(the last value carries the weighted training loss).

Every other exchange gathers, in two collectives (DESIGN.md section 2):
  1. an Allgatherv of one fixed-size record per participant (id, loss, payload size, per-segment
     refresh flag and float32 look-back coefficient); the counts are known to every rank because
     all ranks draw the same participants and know where each client lives;
  2. an Allgatherv of the payload bytes, exactly as many as the records announced (no padding).
Every rank then forms the same aggregate in client-id order, so it does not depend on the number
of ranks:
  - compressed FedAvg: every participant sends its compressed payload; the aggregate is the
    weighted sum of the decompressed payloads;
  - LBGM: per segment, a participant sends either a refresh (its update; with a compressor, its
    compressed payload) or a float32 look-back coefficient rho; every rank writes the refreshes
    (decompressed) into its bank replica and sums weight x coefficient x bank row.

LBGM stacked on a compressor: the compressor runs first, and LBGM projects the rebuilt
(decompressed) update on the client's bank row, the last rebuilt update it sent in full. A
compressor makes one payload per client, so stacking has one segment (granularity "model";
config.py rejects "layer"). With error feedback the residual is always e minus what the server
applies for the client: e - rebuilt after a refresh, e - rho * b after a scalar.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from lbgm_mpi.algorithm.bank import LookbackBank
from lbgm_mpi.algorithm.lbgm import decide
from lbgm_mpi.compress import ClientCompressors, make_compressor
from lbgm_mpi.kernels import select_kernels
from lbgm_mpi.training.phases import PhaseTimer

FLOAT_BYTES = 4
# config name -> name in lbgm_mpi.compress, where the two differ
COMPRESSOR_NAMES = {"lowrank": "atomo"}


@dataclass
class RoundTraffic:
    """What one round moved (bytes are per round, summed over participants where stated)."""

    refreshes: int = 0         # segments sent in full (compressed payloads count as full)
    scalars: int = 0           # segments sent as one float32 coefficient
    uplink_bytes: int = 0      # sum over participants of what each client sends
    dense_uplink_bytes: int = 0  # the same if every participant sent its full update
    downlink_bytes: int = 0    # what one rank receives from the collectives
    train_loss: float = 0.0    # weighted mean training loss of the participants


class Exchange:
    """What every exchange offers besides its per-round call.

    ``bank`` is the replicated look-back bank (None where there is none); checkpoints read its
    rows, valid flags and norms. ``client_state`` / ``load_client_state`` reach the persistent
    state of a client hosted on this rank (compressor memory, error-feedback residual).
    """

    def __init__(self, topology, bank: LookbackBank | None = None,
                 compressors: ClientCompressors | None = None, timer: PhaseTimer | None = None):
        self.topo = topology
        self.bank = bank
        self.compressors = compressors
        self.timer = timer or PhaseTimer()

    def client_state(self, k: int) -> dict[str, torch.Tensor]:
        """A snapshot of client k's persistent state (empty without a compressor)."""
        if self.compressors is not None:
            return self.compressors.state(k)
        self._check_local(k)
        return {}

    def load_client_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Replace client k's state with a copy of ``state`` (as ``client_state`` returned it)."""
        if self.compressors is not None:
            self.compressors.load_state(k, state)
            return
        self._check_local(k)
        if state:
            raise ValueError(f"client {k}: this run has no compressor, but the state to load "
                             f"holds {sorted(state)}: state from another configuration?")

    def _check_local(self, k: int) -> None:
        if k not in self.topo.local_clients:
            raise ValueError(f"client {k} is not hosted on rank {self.topo.rank}")


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


def record_dtype(num_segments: int) -> np.dtype:
    """The packed wire record of one participant."""
    return np.dtype([("client", "<i4"), ("loss", "<f4"), ("payload", "<i8"),
                     ("refresh", "u1", (num_segments,)), ("rho", "<f4", (num_segments,))])


class GatherExchange(Exchange, ABC):
    """Records, then payload bytes, by two Allgatherv; subclasses encode and combine."""

    def __init__(self, comm, topology, kernels, bounds: torch.Tensor, device="cpu",
                 bank: LookbackBank | None = None, compressors: ClientCompressors | None = None,
                 timer=None):
        super().__init__(topology, bank, compressors, timer)
        self.comm = comm
        self.device = device
        self.kernels = kernels
        self.bounds = bounds
        self.sizes = torch.diff(bounds).tolist()
        self.dtype = record_dtype(len(self.sizes))

    def __call__(self, participants, weights, updates, rnd):
        """Return (delta, RoundTraffic); ``updates`` maps this rank's participants to (g, loss)."""
        mine = sorted(updates)
        records = np.zeros(len(mine), dtype=self.dtype)
        records["client"] = mine
        records["loss"] = [updates[k][1] for k in mine]
        with self.timer("decide"):
            payloads = [self._encode(k, updates[k][0], records[i], rnd)
                        for i, k in enumerate(mine)]
        records["payload"] = [p.numel() for p in payloads]
        per_rank = [len(self.topo.clients_on(participants, r)) for r in range(self.comm.size)]
        got = self.comm.allgatherv_bytes(records, [n * self.dtype.itemsize for n in per_rank])
        got = got.view(self.dtype)
        self._check_ids(got, participants)
        send = torch.cat(payloads) if payloads else \
            torch.zeros(0, dtype=torch.uint8, device=self.device)
        data = self.comm.allgatherv_tensor(send, self._payload_bytes_per_rank(got, per_rank))
        chunks = torch.split(data, got["payload"].tolist())
        delta = self._combine(got, chunks, weights)
        return delta, self._traffic(got, weights, data.numel())

    @abstractmethod
    def _encode(self, k, g, record, rnd) -> torch.Tensor:
        """Fill client k's refresh flags and coefficients; return its payload (1-D uint8)."""

    @abstractmethod
    def _combine(self, got, chunks, weights) -> torch.Tensor:
        """The aggregate from every record and its payload bytes (identical on every rank)."""

    def _check_ids(self, got, participants) -> None:
        expected = [k for r in range(self.comm.size) for k in self.topo.clients_on(participants, r)]
        if got["client"].tolist() != expected:
            raise RuntimeError(f"round records disagree with the drawn participants: got "
                               f"{got['client'].tolist()}, expected {expected}")

    def _payload_bytes_per_rank(self, got, per_rank) -> list[int]:
        ends = np.cumsum(per_rank)
        return [int(got["payload"][e - n:e].sum()) for n, e in zip(per_rank, ends)]

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
        return RoundTraffic(
            refreshes=refreshes, scalars=scalars,
            uplink_bytes=int(got["payload"].sum()) + FLOAT_BYTES * scalars,
            dense_uplink_bytes=len(got) * d * FLOAT_BYTES,
            downlink_bytes=got.nbytes + payload_bytes, train_loss=loss)


class CompressedFedAvgExchange(GatherExchange):
    """FedAvg over a compressor: every participant's payload goes to every rank, which
    decompresses them all and forms the weighted sum (one segment, no bank)."""

    def _encode(self, k, g, record, rnd) -> torch.Tensor:
        record["refresh"] = 1
        return self.compressors.encode(k, g)[0]

    def _combine(self, got, chunks, weights) -> torch.Tensor:
        order, _, w = self._client_order(got, weights)
        with self.timer("aggregate"):
            rebuilt = torch.stack([self.compressors.decompress(chunks[i]) for i in order])
            return self.kernels.aggregate(rebuilt, torch.arange(len(order)), w[:, None],
                                          self.bounds)


class LbgmExchange(GatherExchange):
    """Look-back gradient multiplier, alone or stacked on a compressor, with a replicated bank."""

    def __init__(self, comm, topology, kernels, bank: LookbackBank, threshold: float,
                 compressors: ClientCompressors | None = None, scalar_ok: torch.Tensor = None,
                 timer=None):
        super().__init__(comm, topology, kernels, bank.bounds, bank.rows.device, bank,
                         compressors, timer)
        self.threshold = threshold
        # segments that may travel as a scalar (buffer segments always refresh, exactly)
        self.scalar_ok = torch.ones(len(self.sizes), dtype=torch.bool) if scalar_ok is None \
            else scalar_ok

    def _encode(self, k, g, record, rnd) -> torch.Tensor:
        if self.compressors is None:
            refresh = self._decide(k, g, record)
            parts = [seg for seg, r in zip(torch.split(g, self.sizes), refresh.tolist()) if r]
            empty = torch.zeros(0, device=g.device)
            return (torch.cat(parts) if parts else empty).view(torch.uint8)
        payload, sent = self.compressors.encode(k, g)
        if self._decide(k, sent, record).all():
            return payload
        # the server applies rho * b, with rho rounded to float32 as it travels
        applied = float(record["rho"][0]) * self.bank.row(k).to(torch.float32)
        self.compressors.record_applied(k, sent, applied)
        return torch.zeros(0, dtype=torch.uint8, device=g.device)

    def _decide(self, k, g, record) -> torch.Tensor:
        """Scalar or refresh for each segment of client k's update g; fill the record's refresh
        flags and coefficients; return the refresh flags (bool)."""
        dots, gnorm2 = self.kernels.project(g, self.bank.row(k), self.bounds)
        # updates are checked for finite values where they are made (Trainer._train_client)
        dec = decide(dots, gnorm2, self.bank.norm2[k], self.bank.valid[k] & self.scalar_ok,
                     self.threshold)
        record["refresh"] = dec.refresh.numpy()
        record["rho"] = dec.rho.numpy()
        return dec.refresh

    def _combine(self, got, chunks, weights) -> torch.Tensor:
        with self.timer("bank"):
            for rec, chunk in zip(got, chunks):
                segs = np.flatnonzero(rec["refresh"]).tolist()
                if segs:
                    self.bank.write(int(rec["client"]), segs, self._decode(chunk, segs))
        order, rows, w = self._client_order(got, weights)
        refresh = torch.from_numpy(got["refresh"][order].astype(bool))
        rho = torch.from_numpy(got["rho"][order].astype(np.float64))
        coefs = torch.where(refresh, torch.ones_like(rho), rho) * w[:, None]
        with self.timer("aggregate"):
            return self.kernels.aggregate(self.bank.rows, rows, coefs, self.bounds)

    def _decode(self, chunk: torch.Tensor, segs: list[int]) -> list[torch.Tensor]:
        """The refreshed segments ``segs`` of one client from its payload bytes."""
        if self.compressors is not None:
            return [self.compressors.decompress(chunk)]
        return list(torch.split(chunk.view(torch.float32), [self.sizes[s] for s in segs]))


def client_compressors(spec, topology, layout) -> ClientCompressors | None:
    """The compressors of the clients this rank hosts, seeded by (run.seed, client id); None
    when algo.compressor is "none"."""
    algo = spec.algo
    if algo.compressor == "none":
        return None
    name = COMPRESSOR_NAMES.get(algo.compressor, algo.compressor)

    def build(seed: int):
        return make_compressor(name, layout, ratio=algo.ratio, rank=algo.rank, seed=seed,
                               error_feedback=algo.error_feedback)

    return ClientCompressors(build, topology.local_clients, spec.run.seed)


BANK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_exchange(spec, comm, topology, layout, device="cpu", timer=None) -> Exchange:
    """The exchange of the configured algorithm and compressor, its tensors on ``device``;
    ``timer`` (a PhaseTimer) is charged with the exchange's phases."""
    if spec.algo.name == "fedavg" and spec.algo.compressor == "none":
        return FedAvgExchange(comm, topology, layout.size, device, timer)
    kernels = select_kernels(spec.system.kernels)
    compressors = client_compressors(spec, topology, layout)
    bounds = layout.bounds_tensor()
    if spec.algo.name == "fedavg":
        return CompressedFedAvgExchange(comm, topology, kernels, bounds[[0, -1]], device,
                                        compressors=compressors, timer=timer)
    scalar_ok = None
    if spec.algo.granularity == "model":
        bounds = bounds[[0, -1]]
    else:  # BatchNorm statistics are small: always sent in full, they average exactly
        scalar_ok = ~torch.tensor(layout.is_buffer(), dtype=torch.bool)
    bank = LookbackBank(spec.clients.count, bounds, BANK_DTYPES[spec.system.bank_dtype], device)
    return LbgmExchange(comm, topology, kernels, bank, spec.algo.threshold, compressors,
                        scalar_ok, timer)
