"""Local training of one client from the global model, keyed by (seed, client, round)."""

import numpy as np
import torch
import torch.nn.functional as F

from lbgm_mpi.models.layout import flatten, load_flat


def stream_seed(seed: int, client: int, rnd: int) -> int:
    """A 63-bit seed for client ``client`` in round ``rnd``: independent of the rank count."""
    return int(np.random.SeedSequence([seed, client, rnd]).generate_state(1, np.uint64)[0] >> 1)


def local_update(model: torch.nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 cfg, seed: int, precision: str = "fp32") -> tuple[torch.Tensor, float]:
    """Train a copy of the global model ``theta`` on (x, y); return (theta - trained, mean loss).

    ``cfg`` is the [clients] section: ``local`` runs local_epochs of minibatch SGD over a
    shuffled shard, ``fedsgd`` one SGD step on the full local batch (so the update is
    lr x gradient). With ``precision`` "bf16" the forward pass and the loss run under bfloat16
    autocast; parameters, gradients and the update stay float32. ``model`` is overwritten;
    ``theta`` is not changed."""
    load_flat(model, theta)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    losses = []
    for batch in _batches(len(y), cfg, gen):
        with autocast:
            loss = F.cross_entropy(model(x[batch]), y[batch])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, grad in zip(params, grads):
                p.sub_(grad, alpha=cfg.lr)
        losses.append(loss.item())
    update = theta - flatten(model).to(theta.device)
    return update, float(np.mean(losses))


def _batches(n: int, cfg, gen: torch.Generator):
    if cfg.update == "fedsgd":
        yield torch.arange(n)
        return
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=gen)
        yield from torch.split(order, cfg.batch_size)


EVAL_BYTES = {"cpu": 64 << 20, "gpu": 2 << 30}  # module outputs one evaluation batch may hold
EVAL_BATCH = 1024  # samples per evaluation batch where the outputs stay within EVAL_BYTES


@torch.no_grad()
def eval_batch_size(model: torch.nn.Module, sample: torch.Tensor) -> int:
    """Samples per evaluation batch: at most EVAL_BATCH, and few enough that the outputs of all
    of ``model``'s leaf modules for the batch, summed (more than a forward holds at once), stay
    within EVAL_BYTES for ``sample``'s device. A 16.8M-parameter MLP with 224,000 hidden units
    would otherwise hold 1.8 GB per 1,024 samples, a CIFAR ResNet-18 on the CPU several."""
    total = 0

    def count(_module, _inputs, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not any(m.children())]
    try:
        model(sample[:1])
    finally:
        for hook in hooks:
            hook.remove()
    budget = EVAL_BYTES["cpu" if sample.device.type == "cpu" else "gpu"]
    return max(1, min(EVAL_BATCH, budget // max(total, 1)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             batch: int | None = None) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``theta`` on (x, y), in batches of ``batch`` samples
    (default: eval_batch_size); ``model`` is overwritten."""
    load_flat(model, theta)
    model.eval()
    batch = batch or eval_batch_size(model, x)
    correct, total_loss = 0, 0.0
    for lo in range(0, len(y), batch):
        logits = model(x[lo:lo + batch])
        total_loss += F.cross_entropy(logits, y[lo:lo + batch], reduction="sum").item()
        correct += int((logits.argmax(1) == y[lo:lo + batch]).sum())
    return correct / len(y), total_loss / len(y)
