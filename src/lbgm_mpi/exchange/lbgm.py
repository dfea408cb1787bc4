"""Per-client LBGM (the paper's scope): per segment, a participant sends either a refresh (its
update; with a compressor, its compressed payload) or m float32 look-back coefficients; every
rank writes the refreshes into its bank (or its node's shared bank) and sums weight x
coefficient x bank row.

LBGM stacked on a compressor: the compressor runs first, and LBGM projects the rebuilt
(decompressed) update on the client's look-back gradients, the last rebuilt updates it sent in
full. A compressor makes one payload per client, so stacking has one segment (granularity "model";
config.py rejects "layer"). With error feedback the residual is always e minus what the server
applies for the client: e - rebuilt after a refresh, e - sum_j rho_j b_j after a scalar.
"""

import numpy as np
import torch

from lbgm_mpi.algorithm.bank import LookbackBank, Node
from lbgm_mpi.algorithm.lbgm import decide, decide_span
from lbgm_mpi.compress import ClientCompressors
from lbgm_mpi.exchange.gather import GatherExchange
from lbgm_mpi.exchange.records import PayloadMap
from lbgm_mpi.kernels.torch_ops import TorchKernels
from lbgm_mpi.units import FLOAT_BYTES


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

        self._move(pieces, counts, write)

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
                    rows.append(self.bank.row(k, j))
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


BANK_DTYPES = {"float32": (torch.float32, np.float32), "bfloat16": (torch.bfloat16, np.int16)}


def _float32_project(kernels):
    """The back end's projection for bank rows of any dtype (the kernels read float32)."""
    return lambda x, y, bounds: kernels.project(x.float(), y.float(), bounds)


def make_bank(spec, comm, topology, bounds, kernels, device):
    """The look-back bank: a tensor of this rank on ``device``, or one per node in shared host
    memory (system.bank); returns (bank, shared float32 delta or None). In a star the root's bank
    holds every client, a client rank's only its own."""
    m, d = spec.algo.lookback, int(bounds[-1])
    torch_dtype, np_dtype = BANK_DTYPES[spec.system.bank_dtype]
    shape = (spec.clients.count * m, d)
    if spec.system.bank == "replicated":
        # a star's client rank holds only its own clients' rows (what their decisions read)
        held = topology.local_clients if not topology.aggregates else None
        rows = torch.zeros((len(held) * m, d) if held is not None else shape, dtype=torch_dtype,
                           device=device)
        return LookbackBank(rows, spec.clients.count, bounds, m, topology.local_clients,
                            _float32_project(kernels), held=held), None
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
