"""The look-back bank: one row per client, replicated on every rank."""

import torch


class LookbackBank:
    """Holds each client's last fully sent update, per segment, with validity and cached norms.

    rows:  K x d (float32 or bfloat16), on ``device``
    valid: K x L bool, a segment holds a usable look-back gradient (non-zero norm)
    norm2: K x L float64, ||row segment||^2 of the stored (possibly rounded) values
    """

    def __init__(self, num_clients: int, bounds: torch.Tensor, dtype=torch.float32,
                 device="cpu"):
        self.bounds = bounds
        self.sizes = torch.diff(bounds).tolist()
        num_segments = len(self.sizes)
        self.rows = torch.zeros(num_clients, int(bounds[-1]), dtype=dtype, device=device)
        self.valid = torch.zeros(num_clients, num_segments, dtype=torch.bool)
        self.norm2 = torch.zeros(num_clients, num_segments, dtype=torch.float64)

    def write(self, client: int, segments: list[int], values: list[torch.Tensor]) -> None:
        """Store ``values[i]`` as segment ``segments[i]`` of the client's row (in place).

        A segment whose stored norm is zero is kept but marked invalid, so that a zero look-back
        gradient is never used for a projection."""
        for seg, value in zip(segments, values):
            lo, hi = int(self.bounds[seg]), int(self.bounds[seg + 1])
            stored = self.rows[client, lo:hi]
            stored.copy_(value)
            n2 = torch.dot(stored.double(), stored.double()).item()
            self.norm2[client, seg] = n2
            self.valid[client, seg] = n2 > 0

    def row(self, client: int) -> torch.Tensor:
        """The client's row (a view; do not modify)."""
        return self.rows[client]
