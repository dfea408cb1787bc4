"""Server-side optimizer, replicated on every rank."""

import torch


class ServerOptimizer:
    """SGD with optional heavy-ball momentum on the aggregated update of the parameters.

    For the first ``param_size`` values (the parameters):
        v <- momentum * v + delta;  theta <- theta - lr * v
    The values after them are buffers (BatchNorm running statistics): theta <- theta - delta,
    which makes them the weighted average of the clients' statistics; momentum or a learning rate
    there could drive a running variance negative. theta and v are updated in place.
    """

    def __init__(self, size: int, lr: float, momentum: float, device="cpu",
                 param_size: int | None = None):
        self.lr = lr
        self.momentum = momentum
        self.param_size = size if param_size is None else param_size
        self.velocity = torch.zeros(size, dtype=torch.float32, device=device)

    def step(self, theta: torch.Tensor, delta: torch.Tensor) -> None:
        """Apply one server step to ``theta`` in place."""
        p = self.param_size
        if self.momentum > 0:
            self.velocity[:p].mul_(self.momentum).add_(delta[:p])
            theta[:p].sub_(self.velocity[:p], alpha=self.lr)
        else:
            theta[:p].sub_(delta[:p], alpha=self.lr)
        theta[p:].sub_(delta[p:])


def participant_weights(num_samples, participants) -> torch.Tensor:
    """FedAvg weights of the participants: data share renormalised over them (float64)."""
    counts = torch.tensor([num_samples[k] for k in participants], dtype=torch.float64)
    return counts / counts.sum()
