"""Reference kernels through PyTorch: the CPU path, and the GPU fallback without CuPy."""

import bisect

import torch

BLOCK = 1 << 20  # values converted to float64 at a time: bounds the projection's scratch memory


class TorchKernels:
    """Projection and bank aggregation with plain PyTorch ops (see lbgm_mpi.kernels)."""

    name = "torch"

    def project(self, g: torch.Tensor, b: torch.Tensor, bounds: torch.Tensor):
        """Per-segment <g, b> and ||g||^2 in float64, on the host; inputs are left unchanged.
        Works through blocks of BLOCK values, so its scratch memory does not grow with d, and
        sums on the inputs' device, so a GPU waits once per call, not once per segment."""
        edges = bounds.tolist()
        sums = torch.zeros(2, len(edges) - 1, dtype=torch.float64, device=g.device)
        for lo in range(0, edges[-1], BLOCK):
            hi = min(lo + BLOCK, edges[-1])
            g64, b64 = g[lo:hi].to(torch.float64), b[lo:hi].to(torch.float64)
            first = max(0, bisect.bisect_right(edges, lo) - 1)
            for seg in range(first, len(edges) - 1):
                if edges[seg] >= hi:
                    break
                a, z = max(edges[seg], lo) - lo, min(edges[seg + 1], hi) - lo
                if a < z:
                    sums[0, seg] += torch.dot(g64[a:z], b64[a:z])
                    sums[1, seg] += torch.dot(g64[a:z], g64[a:z])
        sums = sums.cpu()
        return sums[0], sums[1]

    def aggregate(self, bank: torch.Tensor, rows: torch.Tensor, coefs: torch.Tensor,
                  bounds: torch.Tensor) -> torch.Tensor:
        """Weighted sum of bank rows, segment by segment, as a new float32 vector.

        Reads the rows in place (no gathered copy), in the given order, one multiply and one add
        per value and row, each rounded once: every output value depends only on its own column,
        so summing a slice of the columns gives exactly the same bits as summing all of them."""
        out = torch.zeros(bank.shape[1], dtype=torch.float32, device=bank.device)
        tmp = torch.empty_like(out)
        scales = coefs.to(torch.float32)
        sizes = torch.diff(bounds).to(bank.device)
        for i, r in enumerate(rows.tolist()):
            scale = (scales[i, 0].item() if len(sizes) == 1 else
                     torch.repeat_interleave(scales[i].to(bank.device), sizes))
            if bank.dtype == torch.float32:
                torch.mul(bank[r], scale, out=tmp)
            else:  # widen first: the product must be a float32 one, rounded once
                tmp.copy_(bank[r])
                tmp.mul_(scale)
            out.add_(tmp)
        return out
