"""The compressor interface, and the small helpers every compressor shares.

A compressor turns a client's flat float32 update into a 1-D uint8 payload (exactly the bytes that
go to MPI) and back. The receiver rebuilds the update from the payload, the layout and the
compressor's settings only, so a compressor's payload format is fixed at construction
(``wire``) and its size ``payload_nbytes`` is known in advance.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from lbgm_mpi.compress.packing import Spec, pack, payload_nbytes, unpack
from lbgm_mpi.models.layout import Layout

_MASK64 = (1 << 64) - 1


class Compressor(ABC):
    """Lossy map from a flat update of ``layout.size`` values to a byte payload, and back."""

    name: str

    def __init__(self, layout: Layout, wire: Sequence[Spec]):
        self.layout = layout
        self.wire = tuple(wire)  # the payload's pieces, identical on sender and receiver
        self.sizes = layer_sizes(layout)

    @property
    def payload_nbytes(self) -> int:
        """Bytes of every payload this compressor produces."""
        return payload_nbytes(self.wire)

    @abstractmethod
    def compress(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the 1-D uint8 payload of update ``x`` (left unchanged).

        ``state`` is the client's own dict of tensors; a compressor may read and update it in
        place (it is checkpointed with the client).
        """

    @abstractmethod
    def decompress(self, payload: torch.Tensor) -> torch.Tensor:
        """Return a new float32 vector of ``layout.size`` values rebuilt from ``payload`` alone."""

    def encode(self, x: torch.Tensor,
               state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (payload, what the receiver rebuilds from it); as ``compress`` otherwise."""
        payload = self.compress(x, state)
        return payload, self.decompress(payload)

    def record_applied(self, state: dict[str, torch.Tensor], sent: torch.Tensor,
                       applied: torch.Tensor) -> None:
        """The server applied ``applied`` where the payload stood for ``sent`` (e.g. LBGM sent a
        multiple of an older update instead); a compressor with memory accounts for the
        difference in ``state``, in place. A memoryless compressor does nothing."""

    def _pack(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        return pack([p.to(dtype) for p, (dtype, _) in zip(pieces, self.wire, strict=True)])

    def _unpack(self, payload: torch.Tensor) -> list[torch.Tensor]:
        try:
            return unpack(payload, self.wire)
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from None

    def _as_update(self, x: torch.Tensor) -> torch.Tensor:
        """Check that ``x`` is a flat update; return it as float32 (x itself if it already is)."""
        if x.dim() != 1 or x.numel() != self.layout.size or not x.is_floating_point():
            raise ValueError(f"{self.name}: expected a flat float vector of {self.layout.size} "
                             f"values, got {x.dtype} of shape {tuple(x.shape)}")
        return x.to(torch.float32)

    def _layers(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Check ``x`` and split it into per-tensor float32 views."""
        return torch.split(self._as_update(x), self.sizes)


def layer_sizes(layout: Layout) -> list[int]:
    """Number of values of each tensor of the layout."""
    return [hi - lo for lo, hi in zip(layout.bounds[:-1], layout.bounds[1:])]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(rows, columns) of a tensor seen as a matrix (first axis by the rest), None below 2-D."""
    return (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else None


def derive_seed(*keys: int) -> int:
    """A 63-bit generator seed that depends on every key (splitmix64 chained over the keys)."""
    h = 0x9E3779B97F4A7C15
    for key in keys:
        h = (h ^ (key & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1
