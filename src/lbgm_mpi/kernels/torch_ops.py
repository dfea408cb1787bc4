"""Reference kernels through PyTorch: the CPU path, and the GPU fallback without CuPy."""

import bisect

import torch

BLOCK = 1 << 20  # values converted to float64 at a time: bounds the projection's scratch memory
AGGREGATE_BLOCK = 1 << 16  # columns summed over every row at a time (256 KB: stays in cache)
FEW_SEGMENTS = 4  # a block crossing more segments than this scales by a vector, not per segment
_SCRATCH: dict[torch.device, torch.Tensor] = {}  # device -> 2 x BLOCK float64, reused by project


def _float64_scratch(device: torch.device) -> torch.Tensor:
    """The projection's float64 blocks on ``device``, allocated once: fresh 8 MB blocks on every
    call cost page faults, which made the CPU projection 10x slower (0.4 s a round at 50 local
    clients of 1M values) until the allocator happened to keep them."""
    scratch = _SCRATCH.get(device)
    if scratch is None:
        scratch = _SCRATCH[device] = torch.empty(2, BLOCK, dtype=torch.float64, device=device)
    return scratch


class TorchKernels:
    """Projection and bank aggregation with plain PyTorch ops (see lbgm_mpi.kernels)."""

    name = "torch"

    def project(self, g: torch.Tensor, b: torch.Tensor, bounds: torch.Tensor):
        """Per-segment <g, b> and ||g||^2 in float64, on the host; inputs are left unchanged.
        Works through blocks of BLOCK values, so its scratch memory does not grow with d, and
        sums on the inputs' device, so a GPU waits once per call, not once per segment."""
        edges = bounds.tolist()
        sums = torch.zeros(2, len(edges) - 1, dtype=torch.float64, device=g.device)
        scratch = _float64_scratch(g.device)
        for lo in range(0, edges[-1], BLOCK):
            hi = min(lo + BLOCK, edges[-1])
            g64 = scratch[0, :hi - lo].copy_(g[lo:hi])
            b64 = scratch[1, :hi - lo].copy_(b[lo:hi])
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
        so summing a slice of the columns gives exactly the same bits as summing all of them.
        Works through blocks of columns that stay in cache while every row passes over them."""
        out = torch.zeros(bank.shape[1], dtype=torch.float32, device=bank.device)
        tmp = torch.empty(min(AGGREGATE_BLOCK, bank.shape[1]), dtype=torch.float32,
                          device=bank.device)
        scales = coefs.to(torch.float32)
        picked = rows.tolist()
        edges = bounds.tolist()
        for lo in range(0, bank.shape[1], AGGREGATE_BLOCK):
            hi = min(lo + AGGREGATE_BLOCK, bank.shape[1])
            pieces = _block_pieces(scales, edges, lo, hi, bank.device)
            for i, r in enumerate(picked):
                for a, z, scale in pieces:
                    part = tmp[:z - a]
                    if bank.dtype == torch.float32:
                        torch.mul(bank[r, a:z], scale[i], out=part)
                    else:  # widen first: the product must be a float32 one, rounded once
                        part.copy_(bank[r, a:z])
                        part.mul_(scale[i])
                    out[a:z].add_(part)
        return out


def _block_pieces(scales: torch.Tensor, edges: list[int], lo: int, hi: int, device):
    """Column ranges [a, z) covering [lo, hi), each with its scale per row: a float where the
    range lies in one segment (a block crossing a few segments is cut at their edges), else a
    vector of z - a float32 values on ``device`` (a block crossing many small segments)."""
    first = bisect.bisect_right(edges, lo) - 1
    last = bisect.bisect_left(edges, hi) - 1
    cuts = [(max(edges[s], lo), min(edges[s + 1], hi), s) for s in range(first, last + 1)]
    cuts = [(a, z, s) for a, z, s in cuts if a < z]
    if len(cuts) <= FEW_SEGMENTS:
        return [(a, z, scales[:, s].tolist()) for a, z, s in cuts]
    lengths = torch.tensor([z - a for a, z, _ in cuts])
    vectors = torch.repeat_interleave(scales[:, [s for _, _, s in cuts]], lengths, dim=1)
    return [(lo, hi, vectors.to(device))]
