"""The per-round exchange: how the participants' updates become one aggregate on every rank.

Dense FedAvg: each rank sums its participants' weighted updates; one Allreduce of d + 1 float32
(the last value carries the weighted training loss).

Every other exchange gathers, in two collectives:
  1. an Allgatherv of one fixed-size record per participant (id, loss, payload size, per-segment
     refresh flag and float32 look-back coefficients); the counts are known to every rank because
     all ranks draw the same participants and know where each client lives;
  2. an Allgatherv of the payload bytes, exactly as many as the records announced (no padding),
     streamed in bounded steps: each received part goes straight to where it belongs (a bank row,
     or a compressed client's payload), so no rank ever holds the gathered payloads whole.
Every rank then forms the same aggregate in client-id order, so it does not depend on the number
of ranks:
  - compressed FedAvg: every participant sends its compressed payload; the aggregate is the
    weighted sum of the decompressed payloads, rebuilt one at a time;
  - LBGM: per segment, a participant sends either a refresh (its update; with a compressor, its
    compressed payload) or m float32 look-back coefficients; every rank writes the refreshes into
    its bank (or its node's shared bank) and sums weight x coefficient x bank row.

LBGM stacked on a compressor: the compressor runs first, and LBGM projects the rebuilt
(decompressed) update on the client's look-back gradients, the last rebuilt updates it sent in
full. A compressor makes one payload per client, so stacking has one segment (granularity "model";
config.py rejects "layer"). With error feedback the residual is always e minus what the server
applies for the client: e - rebuilt after a refresh, e - sum_j rho_j b_j after a scalar.
"""

import bisect
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from lbgm_mpi.algorithm.bank import LookbackBank, Node
from lbgm_mpi.algorithm.lbgm import decide, decide_span, scheduled_threshold
from lbgm_mpi.compress import ClientCompressors, make_compressor
from lbgm_mpi.kernels import select_kernels
from lbgm_mpi.kernels.torch_ops import TorchKernels
from lbgm_mpi.training.phases import PhaseTimer

FLOAT_BYTES = 4
# config name -> name in lbgm_mpi.compress, where the two differ
COMPRESSOR_NAMES = {"lowrank": "atomo"}


@dataclass
class RoundTraffic:
    """What one round moved (bytes are per round, summed over participants where stated)."""

    refreshes: int = 0         # segments sent in full (compressed payloads count as full)
    scalars: int = 0           # segments sent as look-back coefficients
    uplink_bytes: int = 0      # sum over participants of what each client sends
    dense_uplink_bytes: int = 0  # the same if every participant sent its full update
    downlink_bytes: int = 0    # what one rank receives from the collectives
    train_loss: float = 0.0    # weighted mean training loss of the participants


class Exchange:
    """What every exchange offers besides its per-round call.

    ``bank`` is the look-back bank (None where there is none); checkpoints read its rows and
    cursors. ``client_state`` / ``load_client_state`` reach the persistent state of a client hosted
    on this rank (compressor memory, error-feedback residual). ``timer`` is charged with the
    exchange's phases.
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

    def server_state(self) -> dict[str, torch.Tensor]:
        """Replicated state of the exchange's own that a checkpoint must keep (none here)."""
        return {}

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace what ``server_state`` returned with a copy of ``state``."""
        if state:
            raise ValueError(f"this exchange keeps no state, but the checkpoint holds "
                             f"{sorted(state)}: a checkpoint of another algorithm?")

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


def record_dtype(num_segments: int, lookback: int = 1) -> np.dtype:
    """The packed wire record of one participant (m = ``lookback`` coefficients per segment)."""
    rho = (num_segments,) if lookback == 1 else (num_segments, lookback)
    return np.dtype([("client", "<i4"), ("loss", "<f4"), ("payload", "<i8"),
                     ("refresh", "u1", (num_segments,)), ("rho", "<f4", rho)])


class PayloadMap:
    """Where the bytes of each rank's gathered payload go: rank r's payload is the concatenation
    of its parts ``parts[r] = [(target, nbytes), ...]``."""

    def __init__(self, parts: list[list[tuple[object, int]]]):
        self.targets = [[t for t, _ in ps] for ps in parts]
        self.starts = [[0, *itertools.accumulate(n for _, n in ps)] for ps in parts]

    def split(self, rank: int, offset: int, data: torch.Tensor):
        """Yield (target, position in the target, bytes) for the bytes ``data`` at ``offset`` of
        rank ``rank``'s payload."""
        starts, done = self.starts[rank], 0
        part = bisect.bisect_right(starts, offset) - 1
        while done < len(data):
            take = min(len(data) - done, starts[part + 1] - (offset + done))
            if take > 0:
                yield (self.targets[rank][part], offset + done - starts[part],
                       data[done:done + take])
            done += take
            part += 1


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
        got = self.comm.allgatherv_bytes(records, [n * self.dtype.itemsize for n in per_rank])
        got = got.view(self.dtype)
        self._check_ids(got, participants)
        counts = self._payload_bytes_per_rank(got, per_rank)
        received = self._receive(got, weights, per_rank, [p for ps in payloads for p in ps],
                                 counts)
        delta = self._combine(got, weights, received)
        return delta, self._traffic(got, weights, sum(counts))

    @abstractmethod
    def _encode(self, k, g, record, rnd) -> list[torch.Tensor]:
        """Fill client k's refresh flags and coefficients; return its payload as 1-D uint8
        pieces (views where possible: they are sent before ``updates`` is dropped)."""

    @abstractmethod
    def _receive(self, got, weights, per_rank, pieces, counts):
        """Run the payload gather (``comm.allgatherv_stream``), put every part in place, and
        return what ``_combine`` needs of it."""

    @abstractmethod
    def _combine(self, got, weights, received) -> torch.Tensor:
        """The aggregate from every record and what ``_receive`` returned (same on every
        rank)."""

    def _collect(self, got, per_rank, pieces, counts) -> dict[int, torch.Tensor]:
        """Gather the payloads, each whole, by client id (for compressed payloads: small)."""
        buffers = {int(r["client"]): torch.empty(int(r["payload"]), dtype=torch.uint8)
                   for r in got}
        layout = PayloadMap([[(int(r["client"]), int(r["payload"])) for r in group]
                             for group in self._by_rank(got, per_rank)])

        def keep(rank, offset, data):
            for client, at, part in layout.split(rank, offset, data):
                buffers[client][at:at + len(part)].copy_(part)

        self.comm.allgatherv_stream(pieces, counts, keep)
        return buffers

    @staticmethod
    def _by_rank(got, per_rank):
        """The records of each rank, in rank order."""
        ends = np.cumsum(per_rank)
        return [got[e - n:e] for n, e in zip(per_rank, ends)]

    def _check_ids(self, got, participants) -> None:
        expected = [k for r in range(self.comm.size) for k in self.topo.clients_on(participants, r)]
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
        return RoundTraffic(
            refreshes=refreshes, scalars=scalars,
            uplink_bytes=int(got["payload"].sum()) + FLOAT_BYTES * self.lookback * scalars,
            dense_uplink_bytes=len(got) * d * FLOAT_BYTES,
            downlink_bytes=got.nbytes + payload_bytes, train_loss=loss)


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


class LbgmExchange(GatherExchange):
    """Look-back gradient multiplier, alone or stacked on a compressor, over a look-back bank of
    m slots per client (m = 1 is the paper's LBGM). ``shared_delta`` is the node-shared float32
    vector the node's ranks assemble the aggregate in when the bank is shared (else None)."""

    def __init__(self, comm, topology, kernels, bank: LookbackBank, schedule,
                 compressors: ClientCompressors | None = None, scalar_ok: torch.Tensor = None,
                 timer=None, device="cpu", shared_delta: torch.Tensor | None = None):
        super().__init__(comm, topology, kernels, bank.bounds, device, bank, compressors, timer,
                         bank.lookback)
        self.schedule = schedule  # round -> threshold
        # segments that may travel as a scalar (buffer segments always refresh, exactly)
        self.scalar_ok = torch.ones(len(self.sizes), dtype=torch.bool) if scalar_ok is None \
            else scalar_ok
        self.shared_delta = shared_delta
        # the bank stores refreshes exactly as sent: the decision's products are its Gram entries
        self.exact = compressors is None and bank.rows.dtype == torch.float32
        self.known = {}  # local client -> (L x m dots with its slots, L norms), this round

    # ---- the client side ---------------------------------------------------------------------

    def _encode(self, k, g, record, rnd) -> list[torch.Tensor]:
        threshold = self.schedule(rnd)
        if self.compressors is None:
            refresh = self._decide(k, g, record, threshold).tolist()
            return [seg.view(torch.uint8) for seg, r in zip(torch.split(g, self.sizes), refresh)
                    if r]
        payload, sent = self.compressors.encode(k, g)
        if self._decide(k, sent, record, threshold).all():
            return [payload]
        self.compressors.record_applied(k, sent, self._applied(k, record))
        return []

    def _decide(self, k, g, record, threshold: float) -> torch.Tensor:
        """Scalar or refresh for each segment of client k's update g; fill the record's refresh
        flags and coefficients; return the refresh flags (bool)."""
        bank, usable = self.bank, self.bank.valid(k) & self.scalar_ok[:, None]
        projections = [self.kernels.project(g, self._slot(k, j), self.bounds)
                       for j in range(self.lookback)]
        dots, gnorm2 = torch.stack([p[0] for p in projections], dim=1), projections[0][1]
        if self.exact:
            self.known[k] = (dots, gnorm2)
        # updates are checked for finite values where they are made (Trainer._train_client)
        if self.lookback == 1:
            dec = decide(dots[:, 0], gnorm2, bank.norm2(k)[:, 0], usable[:, 0], threshold)
        else:
            dec = decide_span(dots, gnorm2, bank.gram[k], usable, threshold)
        record["refresh"] = dec.refresh.numpy()
        record["rho"] = dec.rho.numpy()
        return dec.refresh

    def _slot(self, k: int, j: int) -> torch.Tensor:
        """Slot j of client k as float32 on the device of the updates."""
        return self.bank.slot_row(k, j).to(device=self.device, dtype=torch.float32)

    def _applied(self, k: int, record) -> torch.Tensor:
        """What the server applies for client k's scalars: sum_j rho_j b_j, with rho rounded to
        float32 as it travels (one segment: stacking is at model granularity)."""
        rho = np.asarray(record["rho"], dtype=np.float32).reshape(-1)
        applied = torch.zeros(int(self.bounds[-1]), dtype=torch.float32, device=self.device)
        for j, r in enumerate(rho.tolist()):
            if r != 0.0:
                applied.add_(self._slot(k, j), alpha=r)
        return applied

    # ---- every rank ----------------------------------------------------------------------------

    def _receive(self, got, weights, per_rank, pieces, counts):
        """Write the refreshes into the bank; return the aggregate's (rows, coefficients)."""
        coefficients = self._coefficients(got, weights)  # before the cursors move on
        self.bank.begin_writes()
        if self.compressors is None:
            self._write_raw(got, per_rank, pieces, counts)
        else:
            received = self._collect(got, per_rank, pieces, counts)
            with self.timer("bank"):
                for k, payload in received.items():
                    if payload.numel():
                        self.bank.write(k, 0, self.compressors.decompress(payload))
        with self.timer("bank"):
            self.bank.end_writes({int(r["client"]): np.flatnonzero(r["refresh"]).tolist()
                                  for r in got if r["refresh"].any()}, self.known)
        self.known = {}
        return coefficients

    def _write_raw(self, got, per_rank, pieces, counts) -> None:
        """Gather the refreshed segments straight into the bank rows (this rank's columns)."""
        layout = PayloadMap([[part for r in group for part in self._runs(r)]
                             for group in self._by_rank(got, per_rank)])

        def write(rank, offset, data):
            with self.timer("bank"):
                for (row, start), at, part in layout.split(rank, offset, data):
                    self.bank.write_at(row, start + at // FLOAT_BYTES, part.view(torch.float32))

        self.comm.allgatherv_stream(pieces, counts, write)

    def _runs(self, record) -> list[tuple[tuple[int, int], int]]:
        """A record's refreshed segments as ((bank row, first column), payload bytes) runs:
        consecutive segments bound for the same row are one run, so a client that refreshes
        everything is written with one copy, not one per tensor."""
        k, runs = int(record["client"]), []
        for s in np.flatnonzero(record["refresh"]).tolist():
            row, start, nbytes = self.bank.slot_for(k, s), int(self.bounds[s]), \
                FLOAT_BYTES * self.sizes[s]
            if runs and runs[-1][0][0] == row and runs[-1][0][1] + runs[-1][1] // FLOAT_BYTES \
                    == start:
                runs[-1] = (runs[-1][0], runs[-1][1] + nbytes)
            else:
                runs.append(((row, start), nbytes))
        return runs

    def _coefficients(self, got, weights):
        """(bank rows, L-column float64 coefficients) of the aggregate, rows in client order:
        weight x rho for a scalar, weight on the slot being written for a refresh."""
        m = self.lookback
        rows, coefs = [], []
        for rec in sorted(got, key=lambda r: int(r["client"])):
            k = int(rec["client"])
            rho = np.asarray(rec["rho"], dtype=np.float64).reshape(len(self.sizes), m)
            refresh = rec["refresh"].astype(bool)
            slot = self.bank.cursor[k].numpy()
            for j in range(m):
                c = np.where(refresh, (slot == j).astype(np.float64), rho[:, j]) * float(
                    weights[k])
                if c.any():
                    rows.append(k * m + j)
                    coefs.append(c)
        return (torch.tensor(rows, dtype=torch.int64),
                torch.from_numpy(np.array(coefs, dtype=np.float64).reshape(len(rows),
                                                                           len(self.sizes))))

    def _combine(self, got, weights, received) -> torch.Tensor:
        rows, coefs = received
        with self.timer("aggregate"):
            if self.shared_delta is None:
                return self.kernels.aggregate(self.bank.rows, rows, coefs, self.bounds)
            lo, hi = self.bank.columns
            part = TorchKernels().aggregate(self.bank.rows[:, lo:hi], rows, coefs,
                                            self.bounds.clamp(lo, hi) - lo)
            self.shared_delta[lo:hi].copy_(part)
            self.bank.node.sync()
            return self.shared_delta.to(self.device)


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


BANK_DTYPES = {"float32": (torch.float32, np.float32), "bfloat16": (torch.bfloat16, np.int16)}


def _float32_project(kernels):
    """The back end's projection for bank rows of any dtype (the kernels read float32)."""
    return lambda x, y, bounds: kernels.project(x.float(), y.float(), bounds)


def make_bank(spec, comm, topology, bounds, kernels, device):
    """The look-back bank: a tensor of this rank on ``device``, or one per node in shared host
    memory (system.bank); returns (bank, shared float32 delta or None)."""
    m, d = spec.algo.lookback, int(bounds[-1])
    torch_dtype, np_dtype = BANK_DTYPES[spec.system.bank_dtype]
    shape = (spec.clients.count * m, d)
    if spec.system.bank == "replicated":
        rows = torch.zeros(shape, dtype=torch_dtype, device=device)
        return LookbackBank(rows, spec.clients.count, bounds, m, topology.local_clients,
                            _float32_project(kernels)), None
    nbytes = shape[0] * d * np.dtype(np_dtype).itemsize
    memory = comm.shared_memory(nbytes + FLOAT_BYTES * d, "the look-back bank")
    rows = torch.from_numpy(memory.view(0, shape, np_dtype)).view(torch_dtype)
    delta = torch.from_numpy(memory.view(nbytes, (d,), np.float32))
    node = Node(comm.node.rank, comm.node.size, memory.sync)  # keeps the window alive
    bank = LookbackBank(rows, spec.clients.count, bounds, m, topology.local_clients,
                        _float32_project(TorchKernels()), node)
    lo, hi = bank.columns  # each rank zeroes what it owns: no rank touches every page
    rows[:, lo:hi].zero_()
    delta[lo:hi].zero_()
    memory.sync()
    return bank, delta


def make_exchange(spec, comm, topology, layout, device="cpu", timer=None,
                  theta: torch.Tensor | None = None) -> Exchange:
    """The exchange of the configured algorithm and compressor, its tensors on ``device``;
    ``timer`` (a PhaseTimer) is charged with the exchange's phases; ``theta`` is the model vector,
    which FedLUAR reads to choose the layers it recycles."""
    if spec.algo.name == "fedavg" and spec.algo.compressor == "none":
        return FedAvgExchange(comm, topology, layout.size, device, timer)
    if spec.algo.name == "fedluar":
        from lbgm_mpi.training.recycling import RecyclingExchange  # it builds on this module
        return RecyclingExchange(comm, topology, layout, theta, spec.algo.recycle_layers,
                                 spec.run.seed, device, timer)
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
    bank, shared_delta = make_bank(spec, comm, topology, bounds, kernels, device)
    algo = spec.algo
    schedule = lambda rnd: scheduled_threshold(algo.threshold, algo.threshold_decay,
                                               algo.warmup_rounds, rnd)
    return LbgmExchange(comm, topology, kernels, bank, schedule, compressors, scalar_ok, timer,
                        device, shared_delta)
