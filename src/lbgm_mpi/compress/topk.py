"""Sparsifiers: top-k and random-k per layer, sharing one wire format.

Payload: the kept values of every layer (float32), then their indices local to each layer (int32),
layer after layer: 8 * sum_l k_l bytes, with k_l = min(n_l, max(1, ceil(ratio * n_l))).
"""

import math
from abc import abstractmethod

import torch

from lbgm_mpi.compress.base import Compressor, derive_seed, layer_sizes
from lbgm_mpi.models.layout import Layout

CALLS_KEY = "randk_calls"  # random-k: number of payloads this client has made so far


def keep_count(ratio: float, n: int) -> int:
    """Entries kept of a layer of n: ceil(ratio * n), at least 1, at most n."""
    # the relative nudge keeps products such as 0.1 * 30 = 3.0000000000000004 from rounding up
    return min(n, max(1, math.ceil(ratio * n * (1 - 1e-12))))


class _Sparsifier(Compressor):
    """Sends k_l chosen entries of each layer; subclasses say which (``_choose``)."""

    def __init__(self, layout: Layout, ratio: float):
        if not 0 < ratio <= 1:
            raise ValueError(f"{self.name}: ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.k_per_layer = tuple(keep_count(ratio, n) for n in layer_sizes(layout))
        kept = sum(self.k_per_layer)
        super().__init__(layout, [(torch.float32, kept), (torch.int32, kept)])
        # global position of each index's layer start, to turn local indices into positions in x
        self._offsets = torch.repeat_interleave(layout.bounds_tensor()[:-1],
                                                torch.tensor(self.k_per_layer))

    @abstractmethod
    def _choose(self, layers, state) -> list[torch.Tensor]:
        """Indices (local to each layer) of the entries to send; may update ``state``."""

    def compress(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Payload of the chosen entries of x (x unchanged)."""
        layers = self._layers(x)
        picks = self._choose(layers, state)
        values = torch.cat([seg[idx] for seg, idx in zip(layers, picks)])
        return self._pack([values, torch.cat(picks)])

    def decompress(self, payload: torch.Tensor) -> torch.Tensor:
        """Dense vector with the sent values at their positions, zeros elsewhere."""
        values, local = self._unpack(payload)
        out = torch.zeros(self.layout.size, dtype=torch.float32, device=payload.device)
        out[local.long() + self._offsets.to(payload.device)] = values
        return out


class TopKCompressor(_Sparsifier):
    """Keeps the k_l entries of largest magnitude of each layer (ties broken arbitrarily)."""

    name = "topk"

    def _choose(self, layers, state):
        return [torch.topk(seg.abs(), k, sorted=False).indices
                for seg, k in zip(layers, self.k_per_layer)]


class RandomKCompressor(_Sparsifier):
    """Keeps k_l entries of each layer drawn uniformly without replacement.

    The draw is keyed by (seed, number of earlier calls with this state), counted in
    state["randk_calls"]; the receiver needs no generator because the indices travel.
    """

    name = "randomk"

    def __init__(self, layout: Layout, ratio: float, seed: int):
        super().__init__(layout, ratio)
        self.seed = seed

    def _choose(self, layers, state):
        calls = state.get(CALLS_KEY, torch.tensor(0, dtype=torch.int64))
        gen = torch.Generator().manual_seed(derive_seed(self.seed, int(calls)))
        state[CALLS_KEY] = calls + 1
        return [torch.randperm(seg.numel(), generator=gen)[:k].to(seg.device)
                for seg, k in zip(layers, self.k_per_layer)]
