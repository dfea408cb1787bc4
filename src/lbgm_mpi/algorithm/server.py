"""Server-side optimizer, replicated on every rank."""

import torch


class ServerOptimizer:
    """SGD with optional heavy-ball momentum on the aggregated update.

    v <- momentum * v + delta;  theta <- theta - lr * v   (theta and v are updated in place)
    """

    def __init__(self, size: int, lr: float, momentum: float, device="cpu"):
        self.lr = lr
        self.momentum = momentum
        self.velocity = torch.zeros(size, dtype=torch.float32, device=device)

    def step(self, theta: torch.Tensor, delta: torch.Tensor) -> None:
        """Apply one server step to ``theta`` in place."""
        if self.momentum > 0:
            self.velocity.mul_(self.momentum).add_(delta)
            theta.sub_(self.velocity, alpha=self.lr)
        else:
            theta.sub_(delta, alpha=self.lr)


def participant_weights(num_samples, participants) -> torch.Tensor:
    """FedAvg weights of the participants: data share renormalised over them (float64)."""
    counts = torch.tensor([num_samples[k] for k in participants], dtype=torch.float64)
    return counts / counts.sum()
