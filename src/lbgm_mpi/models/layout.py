"""The flat view of a model that the whole trainer works on.

A model's state is one flat float32 vector: every parameter, then every floating-point buffer
(BatchNorm running statistics), in ``named_parameters`` / ``named_buffers`` order. Buffers ride in
the same vector so that federated averaging treats them like weights: their round-to-round change
is part of a client's update, averaged with the same weights (see README, "BatchNorm").
Integer buffers (``num_batches_tracked``) are local bookkeeping and are not part of the vector.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of the tensors packed in a flat model vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    bounds: tuple[int, ...]  # L+1 offsets: tensor l is flat[bounds[l]:bounds[l+1]]
    num_parameters: int = 0  # tensors 0..num_parameters-1 are parameters, the rest buffers

    @property
    def size(self) -> int:
        """Total number of values d."""
        return self.bounds[-1]

    def bounds_tensor(self) -> torch.Tensor:
        return torch.tensor(self.bounds, dtype=torch.int64)

    @property
    def param_size(self) -> int:
        """Number of values that are parameters (the buffers follow them)."""
        return self.bounds[self.num_parameters]

    def is_buffer(self) -> list[bool]:
        """Per tensor: True for a buffer (BatchNorm statistics), False for a parameter."""
        return [l >= self.num_parameters for l in range(len(self.names))]

    def slices_named(self, suffix: str) -> list[slice]:
        """The flat slices of the tensors whose name ends with ``suffix``."""
        return [slice(self.bounds[l], self.bounds[l + 1])
                for l, name in enumerate(self.names) if name.endswith(suffix)]


def _state_tensors(model: torch.nn.Module):
    yield from model.named_parameters()
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            yield name, buf


def layout_of(model: torch.nn.Module) -> Layout:
    """Describe the flat vector of ``model`` (parameters, then float buffers)."""
    names, shapes, bounds = [], [], [0]
    for name, t in _state_tensors(model):
        names.append(name)
        shapes.append(tuple(t.shape))
        bounds.append(bounds[-1] + t.numel())
    num_parameters = sum(1 for _ in model.parameters())
    return Layout(tuple(names), tuple(shapes), tuple(bounds), num_parameters)


def flatten(model: torch.nn.Module) -> torch.Tensor:
    """Return a new flat float32 vector holding the model's state."""
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for _, t in _state_tensors(model)])


@torch.no_grad()
def load_flat(model: torch.nn.Module, flat: torch.Tensor) -> None:
    """Copy ``flat`` into the model's parameters and float buffers, in place."""
    offset = 0
    for _, t in _state_tensors(model):
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} values, the model needs {offset}")
