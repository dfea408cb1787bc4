"""signSGD with a per-layer scale: one bit per entry, 8 packed per byte.

Payload: one float32 scale per layer (mean |x_l|), then each layer's sign bits, ceil(n_l / 8)
bytes per layer (bit j of byte i is entry 8 i + j; the unused high bits of a layer's last byte are
zero): sum_l (4 + ceil(n_l / 8)) bytes. Decompression gives scale_l * sign(x_l), where an entry
equal to zero counts as positive. Wrap in ErrorFeedback for EF-signSGD.
"""

import torch

from lbgm_mpi.compress.base import Compressor, layer_sizes
from lbgm_mpi.models.layout import Layout

_BIT_VALUES = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """New uint8 tensor of ceil(n / 8) bytes holding the n booleans of ``bits`` (unchanged)."""
    padded = torch.zeros(-(-bits.numel() // 8) * 8, dtype=torch.uint8, device=bits.device)
    padded[:bits.numel()] = bits
    return (padded.view(-1, 8) * _BIT_VALUES.to(bits.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """New bool tensor of the first n bits stored in ``packed`` by ``pack_bits``."""
    bits = (packed.unsqueeze(1) & _BIT_VALUES.to(packed.device)) != 0
    return bits.reshape(-1)[:n]


class SignCompressor(Compressor):
    """Sends sign(x_l) as bits and mean |x_l| as a float32, for every layer l."""

    name = "sign"

    def __init__(self, layout: Layout):
        self._nbytes = [-(-n // 8) for n in layer_sizes(layout)]  # ceil(n_l / 8)
        super().__init__(layout, [(torch.float32, len(self._nbytes)),
                                  (torch.uint8, sum(self._nbytes))])

    def compress(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Payload of the layer scales and sign bits of x (x and state unchanged)."""
        layers = self._layers(x)
        scales = torch.stack([seg.abs().sum() / max(1, seg.numel()) for seg in layers])
        bits = torch.cat([pack_bits(seg >= 0) for seg in layers])
        return self._pack([scales, bits])

    def decompress(self, payload: torch.Tensor) -> torch.Tensor:
        """Dense vector scale_l * (+1 or -1), layer by layer."""
        scales, bits = self._unpack(payload)
        parts = []
        for scale, packed, n in zip(scales, torch.split(bits, self._nbytes), self.sizes):
            positive = unpack_bits(packed, n)
            parts.append(torch.where(positive, scale, -scale))
        return torch.cat(parts)
