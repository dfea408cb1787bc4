"""Reference kernels through PyTorch: the CPU path, and the GPU fallback without CuPy."""

import torch


class TorchKernels:
    """Projection and bank aggregation with plain PyTorch ops (see lbgm_mpi.kernels)."""

    name = "torch"

    def project(self, g: torch.Tensor, b: torch.Tensor, bounds: torch.Tensor):
        """Per-segment <g, b> and ||g||^2 in float64; inputs are left unchanged."""
        sizes = torch.diff(bounds).tolist()
        dots, gnorms = [], []
        for gs, bs in zip(torch.split(g, sizes), torch.split(b, sizes)):
            gs64 = gs.to(torch.float64)
            dots.append(torch.dot(gs64, bs.to(torch.float64)))
            gnorms.append(torch.dot(gs64, gs64))
        return torch.stack(dots).cpu(), torch.stack(gnorms).cpu()

    def aggregate(self, bank: torch.Tensor, rows: torch.Tensor, coefs: torch.Tensor,
                  bounds: torch.Tensor) -> torch.Tensor:
        """Weighted sum of bank rows, segment by segment, as a new float32 vector."""
        sizes = torch.diff(bounds).tolist()
        picked = bank.index_select(0, rows.to(bank.device)).to(torch.float32)
        weights = coefs.to(device=bank.device, dtype=torch.float32)
        parts = [torch.mv(seg.t(), weights[:, l])
                 for l, seg in enumerate(torch.split(picked, sizes, dim=1))]
        return torch.cat(parts)
