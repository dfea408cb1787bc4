"""The look-back bank: each client's look-back gradients, the last ``lookback`` (m) updates it
sent in full, per segment.

Storage is one (H * m) x d matrix of float32 or bfloat16 values for the H clients the bank holds
(all K of them on a server replica; in a star, only its own clients on a client rank): slot j of
the i-th held client is row i * m + j, so slot j of client k is row k * m + j where all are held. For each (client, segment) a cursor names the slot the next refresh overwrites (the
oldest), so a segment's m slots hold its m latest refreshes. The matrix is either a tensor of this
rank (replicated on every rank) or one copy per node in shared memory; in the second case each rank
of the node owns a slice of the columns: it writes only that slice of every refresh and aggregates
only that slice, and ``sync`` separates a phase of writes from a phase of reads.

No MPI in here: the caller passes the matrix and the node's ``sync``.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

COLUMN_ALIGN = 64  # a node rank's column slice starts on a multiple of this many values


@dataclass(frozen=True)
class Node:
    """The ranks sharing one bank: this rank's index among them, their number, and the
    collective that makes every rank's writes visible to all (a no-op for a private bank)."""

    rank: int = 0
    size: int = 1
    sync: Callable[[], None] = lambda: None


def column_slice(d: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s share [lo, hi) of d columns split among ``size`` ranks (aligned starts)."""
    step = -(-d // size)
    step = -(-step // COLUMN_ALIGN) * COLUMN_ALIGN
    return min(d, rank * step), min(d, (rank + 1) * step)


class LookbackBank:
    """Look-back gradients of K clients, m slots each, with the Gram matrices of the slots of the
    clients hosted here (what their decisions need).

    rows:    (H * m) x d, float32 or bfloat16 (given: a private tensor or node-shared memory), for
             the H clients of ``held`` (default: all K)
    cursor:  K x L int64, the slot the next refresh of (client, segment) overwrites (kept up to
             date for the held clients)
    gram:    {local client: L x m x m float64}, <slot i, slot j> per segment of the stored values
    ``project(x, y, bounds) -> (dots, ||x||^2)`` computes per-segment products (a kernel back end).
    """

    def __init__(self, rows: torch.Tensor, num_clients: int, bounds: torch.Tensor, lookback: int,
                 local_clients, project, node: Node = Node(), held=None):
        self.held = tuple(range(num_clients)) if held is None else tuple(held)
        if rows.shape[0] != len(self.held) * lookback or rows.shape[1] != int(bounds[-1]):
            raise ValueError(f"bank rows {tuple(rows.shape)} do not match {len(self.held)} "
                             f"clients x {lookback} slots x {int(bounds[-1])} values")
        self._index = {k: i for i, k in enumerate(self.held)}
        self.num_clients = num_clients
        self.rows = rows
        self.bounds = bounds
        self.sizes = torch.diff(bounds).tolist()
        self.lookback = lookback
        self.node = node
        self.columns = column_slice(rows.shape[1], node.rank, node.size)
        self.cursor = torch.zeros(num_clients, len(self.sizes), dtype=torch.int64)
        self._project = project
        self.gram = {k: torch.zeros(len(self.sizes), lookback, lookback, dtype=torch.float64)
                     for k in local_clients}
        self.guard: Callable[[], None] | None = None  # waits for a reader of the rows (checkpoint)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored rows (per rank when private, per node when shared)."""
        return self.rows.numel() * self.rows.element_size()

    @property
    def shared(self) -> bool:
        return self.node.size > 1

    @property
    def holds_all(self) -> bool:
        """Whether the bank holds every client's rows (a server's bank)."""
        return len(self.held) == self.num_clients

    def row(self, client: int, slot: int) -> int:
        """The index in ``rows`` of slot ``slot`` of ``client`` (a held client)."""
        return self._index[client] * self.lookback + slot

    def slot_row(self, client: int, slot: int) -> torch.Tensor:
        """Row of slot ``slot`` of ``client`` (a view; do not modify)."""
        return self.rows[self.row(client, slot)]

    def norm2(self, client: int) -> torch.Tensor:
        """L x m float64: squared norm of each slot's segment (local clients only)."""
        return torch.diagonal(self.gram[client], dim1=1, dim2=2)

    def valid(self, client: int) -> torch.Tensor:
        """L x m bool: the slot's segment holds a usable look-back gradient (non-zero norm)."""
        return self.norm2(client) > 0

    def begin_writes(self) -> None:
        """Before a round's refreshes are written: wait until nothing reads the rows any more
        (a checkpoint being written) and, when shared, until every rank of the node is done."""
        if self.guard is not None:
            self.guard()
        self.node.sync()

    def slot_for(self, client: int, segment: int) -> int:
        """The row a refresh of ``segment`` of ``client`` goes to this round (the oldest slot)."""
        return self.row(client, int(self.cursor[client, segment]))

    def write_at(self, row: int, start: int, values: torch.Tensor) -> None:
        """Store ``values`` at columns [start, start + len) of ``row``, keeping only what lies in
        this rank's columns (in place; ``values`` may be on another device)."""
        a, b = max(self.columns[0], start), min(self.columns[1], start + values.numel())
        if a < b:
            self.rows[row, a:b].copy_(values[a - start:b - start])

    def write(self, client: int, segment: int, values: torch.Tensor) -> None:
        """Store a refresh of ``segment`` of ``client`` (all of the segment's values)."""
        self.write_at(self.slot_for(client, segment), int(self.bounds[segment]), values)

    def end_writes(self, refreshed: dict[int, list[int]], known=None) -> None:
        """After the writes of a round: publish them to the node, refresh the Gram matrices of
        the local clients that refreshed, and advance the cursors. ``refreshed`` maps every
        participant that refreshed to its refreshed segments (identical on every rank).

        ``known`` maps local clients to the (L x m dots with the slots, L norms) their decisions
        computed from the update itself: where the bank stores that update exactly (float32, no
        compressor) these are the new Gram entries, bit for bit, and no row is read again."""
        self.node.sync()
        for k, segments in refreshed.items():
            if k in self.gram:
                if known is not None and k in known:
                    self._set_gram(k, segments, *known[k])
                else:
                    self._update_gram(k, segments)
        for k, segments in refreshed.items():
            self.cursor[k, segments] = (self.cursor[k, segments] + 1) % self.lookback

    def _set_gram(self, k: int, segments: list[int], dots: torch.Tensor,
                  gnorm2: torch.Tensor) -> None:
        """Gram entries of the slots just written with the update whose products with the old
        slots (``dots``, L x m) and norms (``gnorm2``, L) are known."""
        for s in segments:
            j = int(self.cursor[k, s])
            row = dots[s].clone()
            row[j] = gnorm2[s]
            self.gram[k][s, j, :] = row
            self.gram[k][s, :, j] = row

    def _update_gram(self, k: int, segments: list[int]) -> None:
        """Recompute row and column ``j`` of client k's Gram matrices for the segments just
        written into slot j (a segment's slot is its cursor)."""
        cursor = self.cursor[k]
        for j in sorted({int(cursor[s]) for s in segments}):
            mine = [s for s in segments if int(cursor[s]) == j]
            new = self.slot_row(k, j)
            for i in range(self.lookback):
                dots = self._project(new, self.slot_row(k, i), self.bounds)[0]
                self.gram[k][mine, j, i] = dots[mine]
                self.gram[k][mine, i, j] = dots[mine]

    def rebuild_gram(self) -> None:
        """Recompute every local client's Gram matrices from the rows (after a restore)."""
        for k in self.gram:
            for j in range(self.lookback):
                for i in range(j + 1):
                    dots = self._project(self.slot_row(k, j), self.slot_row(k, i),
                                         self.bounds)[0]
                    self.gram[k][:, j, i] = dots
                    self.gram[k][:, i, j] = dots
