"""What every exchange returns and offers: the round's traffic and the client/server state."""

from dataclasses import dataclass

import torch

from lbgm_mpi.algorithm.bank import LookbackBank
from lbgm_mpi.compress import ClientCompressors
from lbgm_mpi.training.phases import PhaseTimer


@dataclass
class RoundTraffic:
    """What one round moved (bytes are per round, summed over participants where stated)."""

    refreshes: int = 0         # segments sent in full (compressed payloads count as full)
    scalars: int = 0           # segments sent as look-back coefficients
    uplink_bytes: int = 0      # sum over participants of what each client sends
    dense_uplink_bytes: int = 0  # the same if every participant sent its full update
    downlink_bytes: int = 0    # what one rank receives from the collectives
    train_loss: float = 0.0    # weighted mean training loss of the participants


# what a star's root sends every client rank with the aggregate (as float64: exact below 2^53)
TRAFFIC_FIELDS = ("refreshes", "scalars", "uplink_bytes", "dense_uplink_bytes",
                  "downlink_bytes", "train_loss")


class Exchange:
    """What every exchange offers besides its per-round call.

    ``bank`` is the look-back bank (None where there is none); checkpoints read its rows and
    cursors. ``client_state`` / ``load_client_state`` reach the persistent state of a client hosted
    on this rank (compressor memory, error-feedback residual). ``timer`` is charged with the
    exchange's phases.
    """

    def __init__(self, topology, bank: LookbackBank | None = None,
                 compressors: ClientCompressors | None = None, timer: PhaseTimer | None = None):
        self.topo = topology
        self.bank = bank
        self.compressors = compressors
        self.timer = timer or PhaseTimer()

    def client_state(self, k: int) -> dict[str, torch.Tensor]:
        """A snapshot of client k's persistent state (empty without a compressor)."""
        if self.compressors is not None:
            return self.compressors.state(k)
        self._check_local(k)
        return {}

    def load_client_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Replace client k's state with a copy of ``state`` (as ``client_state`` returned it)."""
        if self.compressors is not None:
            self.compressors.load_state(k, state)
            return
        self._check_local(k)
        if state:
            raise ValueError(f"client {k}: this run has no compressor, but the state to load "
                             f"holds {sorted(state)}: state from another configuration?")

    def server_state(self) -> dict[str, torch.Tensor]:
        """Replicated state of the exchange's own that a checkpoint must keep (none here)."""
        return {}

    def load_server_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace what ``server_state`` returned with a copy of ``state``."""
        if state:
            raise ValueError(f"this exchange keeps no state, but the checkpoint holds "
                             f"{sorted(state)}: a checkpoint of another algorithm?")

    def rank_state(self) -> dict[str, torch.Tensor]:
        """State of this rank's own that a checkpoint must keep (none here)."""
        return {}

    def load_rank_states(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Load what ``rank_state`` returned on each rank of the checkpointed run (none here)."""
        if any(states):
            raise ValueError("this exchange keeps no per-rank state, but the checkpoint holds "
                             "some: a checkpoint of another configuration?")

    def _check_local(self, k: int) -> None:
        if k not in self.topo.local_clients:
            raise ValueError(f"client {k} is not hosted on rank {self.topo.rank}")

