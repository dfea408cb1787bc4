"""Several tensors of different dtypes packed back to back into one byte payload, and back.

A payload's format is a list of specs ``(dtype, numel)``, one per piece, that the sender and the
receiver both derive from the layout and the compressor's settings; nothing else travels. Bytes are
in the machine's native order (little-endian on every platform the trainer runs on).
"""

from collections.abc import Sequence

import torch

Spec = tuple[torch.dtype, int]  # one piece of a payload: its dtype and number of elements


def payload_nbytes(specs: Sequence[Spec]) -> int:
    """Number of bytes of a payload with the format ``specs``."""
    return sum(numel * dtype.itemsize for dtype, numel in specs)


def pack(pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return a new 1-D uint8 tensor holding the bytes of ``pieces`` back to back, unpadded.

    The pieces (any shapes and dtypes, on one device) are left unchanged.
    """
    return torch.cat([p.contiguous().reshape(-1).view(torch.uint8) for p in pieces])


def unpack(payload: torch.Tensor, specs: Sequence[Spec]) -> list[torch.Tensor]:
    """Split ``payload`` into new 1-D tensors with the dtypes and lengths of ``specs``.

    The payload is left unchanged; a payload of the wrong type or length is a ValueError.
    """
    if payload.dtype != torch.uint8 or payload.dim() != 1:
        raise ValueError(f"a payload is a 1-D uint8 tensor, got {payload.dtype} of shape "
                         f"{tuple(payload.shape)}")
    expected = payload_nbytes(specs)
    if payload.numel() != expected:
        raise ValueError(f"payload has {payload.numel()} bytes, its format needs {expected}: "
                         "sender and receiver disagree on the layout or the compressor settings")
    pieces, offset = [], 0
    for dtype, numel in specs:
        end = offset + numel * dtype.itemsize
        # clone: a slice at an offset not divisible by the item size cannot be viewed as dtype
        pieces.append(payload[offset:end].clone().view(dtype))
        offset = end
    return pieces
