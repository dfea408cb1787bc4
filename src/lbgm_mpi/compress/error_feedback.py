"""Error feedback: what a compressor drops this round is added back to the next round's update."""

import torch

from lbgm_mpi.compress.base import Compressor

RESIDUAL_KEY = "ef_residual"  # the client's error memory, in its state dict


class ErrorFeedback(Compressor):
    """Wraps ``inner``: compresses e = x + residual and keeps e - (what the server applies) as
    the residual; by default the server applies decompress(payload).

    Same payload format as ``inner``, so the receiver needs no error memory at all.
    """

    def __init__(self, inner: Compressor):
        super().__init__(inner.layout, inner.wire)
        self.inner = inner
        self.name = f"ef-{inner.name}"

    def compress(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Payload of x plus the stored residual; replaces state["ef_residual"] (x unchanged)."""
        return self.encode(x, state)[0]

    def encode(self, x: torch.Tensor,
               state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(payload, rebuilt update) of x plus the stored residual; the new residual is
        e - rebuilt, stored in state["ef_residual"] (x unchanged)."""
        e = self._as_update(x)
        residual = state.get(RESIDUAL_KEY)
        if residual is not None:
            if residual.shape != e.shape:
                raise ValueError(f"{self.name}: stored residual has shape {tuple(residual.shape)}, "
                                 f"the update has {tuple(e.shape)}: state from another model?")
            e = e + residual.to(e.device)
        payload = self.inner.compress(e, state)
        rebuilt = self.inner.decompress(payload)
        state[RESIDUAL_KEY] = e - rebuilt
        return payload, rebuilt

    def decompress(self, payload: torch.Tensor) -> torch.Tensor:
        return self.inner.decompress(payload)

    def record_applied(self, state: dict[str, torch.Tensor], sent: torch.Tensor,
                       applied: torch.Tensor) -> None:
        """Make the residual e - applied instead of e - sent (a new tensor in ``state``)."""
        state[RESIDUAL_KEY] = state[RESIDUAL_KEY] + (sent - applied.to(sent.dtype))
