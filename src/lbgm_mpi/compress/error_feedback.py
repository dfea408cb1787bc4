"""Error feedback: what a compressor drops this round is added back to the next round's update."""

import torch

from lbgm_mpi.compress.base import Compressor

RESIDUAL_KEY = "ef_residual"  # the client's error memory, in its state dict


class ErrorFeedback(Compressor):
    """Wraps ``inner``: compresses e = x + residual and keeps e - decompress(payload) as residual.

    Same payload format as ``inner``, so the receiver needs no error memory at all.
    """

    def __init__(self, inner: Compressor):
        super().__init__(inner.layout, inner.wire)
        self.inner = inner
        self.name = f"ef-{inner.name}"

    def compress(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Payload of x plus the stored residual; replaces state["ef_residual"] (x unchanged)."""
        e = self._as_update(x)
        residual = state.get(RESIDUAL_KEY)
        if residual is not None:
            if residual.shape != e.shape:
                raise ValueError(f"{self.name}: stored residual has shape {tuple(residual.shape)}, "
                                 f"the update has {tuple(e.shape)}: state from another model?")
            e = e + residual.to(e.device)
        payload = self.inner.compress(e, state)
        state[RESIDUAL_KEY] = e - self.inner.decompress(payload)
        return payload

    def decompress(self, payload: torch.Tensor) -> torch.Tensor:
        return self.inner.decompress(payload)
