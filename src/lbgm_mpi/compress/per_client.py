"""The compressors of the clients one rank hosts: one each, seeded by (seed, client id), each with
its own persistent state (compressor memory, error-feedback residual) that checkpoints save."""

from collections.abc import Callable, Iterable

import torch

from lbgm_mpi.compress.base import Compressor, derive_seed

COMPRESSOR_STREAM = 0xC0DEC  # tag of the compressor seeds in the seed derivation


class ClientCompressors:
    """Per-client compressors and states for ``clients``; ``build(seed)`` makes one compressor.

    Seeds depend on (seed, client id) only, never on the rank, so a client draws the same random
    numbers (random-k indices, PowerSGD's first Q) however many ranks run the job.
    """

    def __init__(self, build: Callable[[int], Compressor], clients: Iterable[int], seed: int):
        self._compressors = {k: build(derive_seed(seed, COMPRESSOR_STREAM, k)) for k in clients}
        self._states: dict[int, dict[str, torch.Tensor]] = {k: {} for k in self._compressors}
        # decompression needs only the payload and the layout, never a client's seed or state
        self._decoder = build(derive_seed(seed, COMPRESSOR_STREAM))

    @property
    def payload_nbytes(self) -> int:
        """Bytes of every payload (the same for every client)."""
        return self._decoder.payload_nbytes

    def encode(self, k: int, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(payload, rebuilt update) of client k's update g; updates k's state, not g."""
        return self._compressors[self._local(k)].encode(g, self._states[k])

    def decompress(self, payload: torch.Tensor) -> torch.Tensor:
        """The float32 update any client's ``payload`` stands for (payload unchanged)."""
        return self._decoder.decompress(payload)

    def record_applied(self, k: int, sent: torch.Tensor, applied: torch.Tensor) -> None:
        """The server used ``applied`` for client k instead of its rebuilt update ``sent``."""
        self._compressors[self._local(k)].record_applied(self._states[k], sent, applied)

    def state(self, k: int) -> dict[str, torch.Tensor]:
        """A snapshot of client k's state (the dict is new; its tensors are never changed in
        place, so the snapshot stays valid)."""
        return dict(self._states[self._local(k)])

    def load_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Replace client k's state with a copy of ``state`` (as returned by ``state``)."""
        self._states[self._local(k)] = {key: value.clone() for key, value in state.items()}

    def _local(self, k: int) -> int:
        if k not in self._compressors:
            raise ValueError(f"client {k} is not hosted on this rank (hosted: "
                             f"{sorted(self._compressors)})")
        return k
