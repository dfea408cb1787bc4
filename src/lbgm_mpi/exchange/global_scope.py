"""LBGM on the aggregate (``algo.scope = "global"``): Allreduce only, no per-client bank.

Each rank forms its partial aggregate a_p (the weighted sum of its participants' updates, plus its
error-feedback residual) exactly as dense FedAvg does. Then, per round:

1. unless every segment must refresh anyway (threshold 0, warm-up, an empty bank), one small
   Allreduce of a float64 record: the weighted loss, the m look-back coefficients of every segment
   and a count sketch of a_p's residual off the bank (algorithm/global_lookback.py). The sums are
   the aggregate's exact coefficients and its residual's sketch, so every rank takes the same
   decision per segment;
2. scalar segments: the aggregate is Q^T c, and nothing else is sent;
3. refreshing segments: one dense Allreduce of just those segments (plus the loss), in
   system.max_message_bytes steps; or, with algo.compressor = "powersgd", the two Allreduces of
   PowerSGD's Allreduce form. The exact (or PowerSGD) aggregate joins the bank.

The worst round therefore costs a FedAvg round plus the record; threshold 0 sends no record and
is FedAvg bit for bit. ``algo.name = "fedavg"`` with PowerSGD runs step 3 every round
(``allreduce-powersgd``). Error feedback is per rank and linear: after a scalar segment the rank
keeps its own residual a_p - Q^T Q a_p (the ranks' residuals sum to the aggregate's), after a
dense one nothing, after PowerSGD its share's error.

Traffic: ``uplink_bytes`` counts, per participant, what a rank contributes (the record and the
values of the refreshing segments), so threshold 0 reports FedAvg's 4 d per participant;
``refreshes`` / ``scalars`` count participants x segments.
"""

import torch

from lbgm_mpi.algorithm.global_lookback import (CountSketch, GlobalBank, decide_global,
                                                sketch_widths)
from lbgm_mpi.compress.allreduce_powersgd import AllreducePowerSGD
from lbgm_mpi.exchange.base import Exchange, RoundTraffic
from lbgm_mpi.exchange.fedavg import weighted_sum
from lbgm_mpi.units import FLOAT_BYTES

RESIDUAL = "ef_residual"  # a rank's error-feedback residual, in its rank state


class GlobalExchange(Exchange):
    """The global scope. ``bounds`` are the segments' offsets (one segment: model granularity);
    ``scalar_ok`` marks the segments that may go as a scalar; ``schedule`` maps a round to its
    threshold (None: never a scalar, as for allreduce-powersgd alone); ``powersgd`` (or None)
    replaces the dense Allreduce of refreshing rounds."""

    def __init__(self, comm, topology, bounds: list[int], lookback: int, sketch: int,
                 seed: int, schedule, scalar_ok: torch.Tensor | None = None,
                 error_feedback: bool = False, powersgd: AllreducePowerSGD | None = None,
                 device="cpu", timer=None):
        super().__init__(topology, timer=timer)
        self.comm, self.device = comm, device
        self.bounds, self.d = list(bounds), bounds[-1]
        self.sizes = [hi - lo for lo, hi in zip(bounds, bounds[1:])]
        self.schedule, self.powersgd = schedule, powersgd
        self.scalar_ok = torch.ones(len(self.sizes), dtype=torch.bool) if scalar_ok is None \
            else scalar_ok
        self.global_bank = GlobalBank(self.bounds, lookback, device) if schedule else None
        self.sketch = CountSketch(self.sizes, sketch_widths(self.sizes, sketch), seed)
        self.residual = torch.zeros(self.d, dtype=torch.float32, device=device) \
            if error_feedback else None

    # ---- one round ---------------------------------------------------------------------------

    def __call__(self, participants, weights, updates, rnd):
        """Return (delta, RoundTraffic); ``updates`` maps this rank's participants to (g, loss)."""
        partial = self._partial(weights, updates)
        refresh, coefs, loss, record_bytes = self._decide(partial, rnd)
        delta = torch.zeros(self.d, dtype=torch.float32, device=self.device)
        scalar = [s for s, r in enumerate(refresh.tolist()) if not r]
        if scalar:
            with self.timer("aggregate"):
                self.global_bank.combine(coefs, delta, scalar)
        dense = [s for s, r in enumerate(refresh.tolist()) if r]
        sent, dense_loss = self._refresh(partial, dense, delta) if dense else (0, None)
        loss = dense_loss if loss is None else loss
        n = len(participants)
        return delta, RoundTraffic(
            refreshes=n * len(dense), scalars=n * len(scalar),
            uplink_bytes=n * (record_bytes + FLOAT_BYTES * sent),
            dense_uplink_bytes=n * self.d * FLOAT_BYTES,
            downlink_bytes=record_bytes + FLOAT_BYTES * (sent + 1 if dense else 0),
            train_loss=float(loss))

    def _partial(self, weights, updates) -> torch.Tensor:
        """This rank's weighted sum of updates (+ residual) and weighted loss: d + 1 float32,
        summed in the order dense FedAvg sums them."""
        with self.timer("aggregate"):
            buf = weighted_sum(self.d, weights, updates, self.device)
            if self.residual is not None:
                buf[:self.d].add_(self.residual)
        return buf

    def _decide(self, partial: torch.Tensor, rnd: int):
        """(refresh flags, the aggregate's coefficients, summed loss or None, record bytes).
        Sends the record unless no segment could go as a scalar this round."""
        threshold = self.schedule(rnd) if self.schedule else 0.0
        usable = self.global_bank.usable() & self.scalar_ok if threshold > 0 else None
        if usable is None or not usable.any():
            return torch.ones(len(self.sizes), dtype=torch.bool), None, None, 0
        L, m = len(self.sizes), self.global_bank.m
        with self.timer("decide"):
            coefs = self.global_bank.coefficients(partial[:self.d])
            record = torch.zeros(1 + L * m + self.sketch.size, dtype=torch.float64,
                                 device=self.device)
            record[0] = float(partial[self.d])
            record[1:1 + L * m] = coefs.reshape(-1).to(self.device)
            self.global_bank.residual(partial[:self.d], coefs, self.sketch, record[1 + L * m:],
                                   keep=self.residual)
        total = self._allreduce(record).cpu()
        with self.timer("decide"):
            coefs = total[1:1 + L * m].view(L, m)
            refresh, _ = decide_global(coefs, self.sketch.norms2(total[1 + L * m:]), usable,
                                       threshold)
        return refresh, coefs, float(total[0]), record.numel() * 8

    def _allreduce(self, t: torch.Tensor) -> torch.Tensor:
        return self.comm.allreduce_tensor(t)

    def _refresh(self, partial: torch.Tensor, dense: list[int], delta: torch.Tensor):
        """Sum the refreshing segments exactly (or by PowerSGD) into ``delta``; they join the
        bank. Returns (float32 values this rank handed to MPI, less the loss; summed loss)."""
        if self.powersgd is not None:  # model granularity: the one segment
            out, share_error, loss = self.powersgd.exchange(partial[:self.d],
                                                            float(partial[self.d]),
                                                            self._allreduce)
            delta.copy_(out)
            if self.residual is not None:
                self.residual.copy_(share_error)
            sent = sum(self.powersgd.values_sent())
        else:
            loss, sent = self._dense(partial, dense, delta), sum(self.sizes[s] for s in dense)
        with self.timer("bank"):
            for s in dense:
                if self.residual is not None and self.powersgd is None:
                    self.residual[self.bounds[s]:self.bounds[s + 1]].zero_()
                if self.global_bank is not None:
                    self.global_bank.add(s, delta[self.bounds[s]:self.bounds[s + 1]])
        return sent, loss

    def _dense(self, partial: torch.Tensor, dense: list[int], delta: torch.Tensor) -> float:
        """One Allreduce of the refreshing segments and the loss (all of ``partial`` when every
        segment refreshes: dense FedAvg's very buffer); write the sums into ``delta``."""
        if len(dense) == len(self.sizes):
            total = self._allreduce(partial)
            delta.copy_(total[:self.d])
            return float(total[self.d])
        spans = [(self.bounds[s], self.bounds[s + 1]) for s in dense]
        total = self._allreduce(torch.cat([partial[lo:hi] for lo, hi in spans]
                                          + [partial[self.d:]]))
        at = 0
        for lo, hi in spans:
            delta[lo:hi].copy_(total[at:at + hi - lo])
            at += hi - lo
        return float(total[-1])

    # ---- state -------------------------------------------------------------------------------

    def server_state(self) -> dict[str, torch.Tensor]:
        """The replicated state: the bank (rows, directions and kept coordinates per segment)
        and PowerSGD's warm-start Q's."""
        state = {f"bank_{k}": v for k, v in self.global_bank.state().items()} \
            if self.global_bank is not None else {}
        if self.powersgd is not None:
            state.update(self.powersgd.state())
        return state

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the replicated state with a copy of what ``server_state`` returned."""
        if set(state) != set(self.server_state()):
            raise ValueError(f"the checkpoint holds {sorted(state)}, the global scope of this run "
                             f"keeps {sorted(self.server_state())}: another configuration?")
        if self.global_bank is not None:
            self.global_bank.load_state({k[5:]: v for k, v in state.items()
                                      if k.startswith("bank_")})
        if self.powersgd is not None:
            self.powersgd.load_state(state)

    def rank_state(self) -> dict[str, torch.Tensor]:
        """This rank's own state: its error-feedback residual (empty without error feedback)."""
        return {} if self.residual is None else {RESIDUAL: self.residual}

    def load_rank_states(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Load what ``rank_state`` returned on each rank of the checkpointed run. At the same
        number of ranks each rank takes its own back; at another, the first rank takes their sum
        and the others start from zero: only the sum enters the aggregate."""
        if self.residual is None:
            return
        if len(states) == self.comm.size:
            self.residual.copy_(states[self.comm.rank][RESIDUAL].to(self.device))
        elif self.comm.rank == 0:
            self.residual.copy_(sum(s[RESIDUAL].to(torch.float64) for s in states).float())
        else:
            self.residual.zero_()
