"""Fused GPU kernels through CuPy: the projection and the bank aggregation (see lbgm_mpi.kernels).

Tensors stay PyTorch CUDA tensors; CuPy sees them through DLPack (no copies) and launches on
PyTorch's current stream, so ordering with the surrounding PyTorch work is kept. The kernel
source lives in the .cu files beside this module and is compiled once per process (and cached on
disk by CuPy). This module imports without CuPy; only using CupyKernels needs it.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BLOCK = 256           # threads per block of the two main kernels
COMBINE_BLOCK = 128   # threads per block of the per-segment combine pass
MIN_CHUNK = 4096      # elements: below this a block's launch costs more than its reads
CHUNKS_PER_SM = 32    # enough chunks that uneven segments still balance across the SMs
INT32_MAX = 2**31 - 1  # cuBLAS's classic API counts in 32-bit ints


def cupy_available() -> bool:
    """True when CuPy imports and a CUDA device is usable by both CuPy and PyTorch; never raises."""
    try:
        import cupy
        return torch.cuda.is_available() and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # a missing driver or a broken CUDA install must read as "not available"
        return False


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("the cupy kernel back end needs CuPy: pip install cupy-cuda12x "
                           "(or cupy-cuda13x, matching the CUDA of your PyTorch build), or set "
                           "the kernel back end to 'torch'") from exc
    return cupy


@functools.cache
def _module(filename: str):
    source = Path(__file__).with_name(filename).read_text()
    return _cupy().RawModule(code=source, options=("--std=c++17",))


def _kernel(filename: str, name: str):
    return _module(filename).get_function(name)


@contextlib.contextmanager
def _torch_stream(device: torch.device):
    """Make PyTorch's current stream on ``device`` CuPy's current stream too."""
    cupy = _cupy()
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index):
        if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
            external = cupy.cuda.Stream.from_external(stream)
        else:  # CuPy < 14 or a PyTorch without the CUDA stream protocol
            external = cupy.cuda.ExternalStream(stream.cuda_stream, device.index)
        with external:
            yield cupy


def _view(tensor: torch.Tensor):
    """The CuPy array over ``tensor``'s memory; bfloat16 is seen as its raw 16-bit patterns."""
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return _cupy().from_dlpack(tensor.detach())


@dataclass(frozen=True)
class Plan:
    """How [0, d) is cut into chunks for one ``bounds``: chunk c is [begin[c], end[c]) inside
    segment seg[c]; segment l owns chunks [seg_first[l], seg_first[l + 1]). Device arrays."""

    begin: object
    end: object
    seg: object
    seg_first: object
    n_chunks: int
    n_segments: int
    grid: int


def _chunk_layout(bounds: np.ndarray, n_sms: int):
    """Host side of Plan: chunk begins, ends, segments and each segment's first chunk."""
    lengths = np.diff(bounds)
    d = int(bounds[-1])
    size = max(MIN_CHUNK, -(-d // (n_sms * CHUNKS_PER_SM)))
    size = -(-size // 64) * 64  # chunk starts inside a segment keep the segment's alignment
    per_segment = -(-lengths // size)
    seg = np.repeat(np.arange(len(lengths), dtype=np.int32), per_segment)
    seg_first = np.concatenate(([0], np.cumsum(per_segment))).astype(np.int64)
    within = np.arange(len(seg), dtype=np.int64) - seg_first[seg]
    begin = bounds[seg] + within * size
    end = np.minimum(begin + size, bounds[seg + 1])
    return begin, end, seg, seg_first


def _check_bounds(bounds: torch.Tensor, d: int) -> np.ndarray:
    b = bounds.detach().cpu().numpy().astype(np.int64)
    if b.ndim != 1 or len(b) < 2 or b[0] != 0 or b[-1] != d or np.any(np.diff(b) < 0):
        raise ValueError(f"bounds must be L+1 non-decreasing offsets from 0 to d={d}, got "
                         f"{b[:4].tolist()}{'...' if len(b) > 4 else ''} (length {len(b)})")
    return b


def _check_cuda(tensor: torch.Tensor, name: str, dtypes, ndim: int) -> None:
    if not tensor.is_cuda or tensor.dtype not in dtypes or tensor.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D CUDA tensor of {dtypes}, got "
                         f"{tensor.dim()}-D {tensor.dtype} on {tensor.device}")
    if tensor.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride along its last dimension")


def _aligned(*tensors: torch.Tensor) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors)


class CupyKernels:
    """Projection and bank aggregation as fused CUDA kernels (see lbgm_mpi.kernels).

    Inputs and outputs are PyTorch CUDA tensors. The ``*_into`` variants write into buffers the
    caller owns (and can reuse across rounds); the plain ones allocate their result.
    """

    name = "cupy"

    def __init__(self, prefer_cublas: bool = False):
        if not cupy_available():
            raise RuntimeError("the cupy kernel back end needs CuPy and a CUDA device visible to "
                               "both CuPy and PyTorch; none found (use the 'torch' back end)")
        self._plans: dict[tuple, Plan] = {}
        # Measured on an H200 (bench_kernels.py): the aggregation kernel read 128 consecutive
        # float32 rows of 1e8 values in 12.1 ms, cuBLAS sgemv in 18.1 ms; so the kernel serves
        # every case unless asked otherwise (the benchmark times both paths).
        self.prefer_cublas = prefer_cublas

    def _plan(self, bounds: torch.Tensor, d: int, device: torch.device) -> Plan:
        """The chunk plan for ``bounds`` over d elements on ``device``, built once and cached."""
        b = _check_bounds(bounds, d)
        key = (b.tobytes(), device.index)
        if key not in self._plans:
            with _torch_stream(device) as cupy:
                n_sms = cupy.cuda.Device(device.index).attributes["MultiProcessorCount"]
                begin, end, seg, seg_first = _chunk_layout(b, n_sms)
                self._plans[key] = Plan(
                    begin=cupy.asarray(begin), end=cupy.asarray(end), seg=cupy.asarray(seg),
                    seg_first=cupy.asarray(seg_first), n_chunks=len(seg),
                    n_segments=len(b) - 1,
                    grid=max(1, min(len(seg), n_sms * CHUNKS_PER_SM)))
        return self._plans[key]

    def project(self, g: torch.Tensor, b: torch.Tensor, bounds: torch.Tensor):
        """Per-segment <g, b> and ||g||^2 as float64 host tensors; g and b are left unchanged."""
        out = torch.empty((2, len(bounds) - 1), dtype=torch.float64, device=g.device)
        self.project_into(g, b, bounds, out)
        host = out.cpu()
        return host[0], host[1]

    def project_into(self, g: torch.Tensor, b: torch.Tensor, bounds: torch.Tensor,
                     out: torch.Tensor) -> None:
        """Write <g, b> per segment into out[0] and ||g||^2 into out[1] (a (2, L) float64 CUDA
        tensor), reading g and b once; g and b are left unchanged. Asynchronous on the stream."""
        _check_cuda(g, "g", (torch.float32,), 1)
        _check_cuda(b, "b", (torch.float32,), 1)
        if b.shape != g.shape or b.device != g.device:
            raise ValueError(f"g and b must match: {tuple(g.shape)} on {g.device} against "
                             f"{tuple(b.shape)} on {b.device}")
        plan = self._plan(bounds, g.numel(), g.device)
        _check_cuda(out, "out", (torch.float64,), 2)
        if tuple(out.shape) != (2, plan.n_segments) or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous (2, {plan.n_segments}) tensor")
        with _torch_stream(g.device) as cupy:
            partial = cupy.empty(2 * max(plan.n_chunks, 1), dtype=cupy.float64)
            _kernel("projection.cu", "project_chunks")(
                (plan.grid,), (BLOCK,),
                (_view(g), _view(b), plan.begin, plan.end, np.int64(plan.n_chunks),
                 np.int32(_aligned(g, b)), partial))
            _kernel("projection.cu", "combine_segments")(
                (min(plan.n_segments, 65535),), (COMBINE_BLOCK,),
                (partial, plan.seg_first, np.int64(plan.n_segments), _view(out)))

    def aggregate(self, bank: torch.Tensor, rows: torch.Tensor, coefs: torch.Tensor,
                  bounds: torch.Tensor) -> torch.Tensor:
        """Weighted sum of bank rows, segment by segment, as a new float32 vector."""
        out = torch.empty(bank.shape[1], dtype=torch.float32, device=bank.device)
        self.aggregate_into(bank, rows, coefs, bounds, out)
        return out

    def aggregate_into(self, bank: torch.Tensor, rows: torch.Tensor, coefs: torch.Tensor,
                       bounds: torch.Tensor, out: torch.Tensor) -> None:
        """Write delta[seg l] = sum_i coefs[i, l] * bank[rows[i], seg l] into ``out`` (float32,
        length d, on the bank's device); bank, rows and coefs are left unchanged."""
        _check_cuda(bank, "bank", (torch.float32, torch.bfloat16), 2)
        _check_cuda(out, "out", (torch.float32,), 1)
        d = bank.shape[1]
        if out.numel() != d or out.device != bank.device:
            raise ValueError(f"out must hold d={d} values on {bank.device}")
        plan = self._plan(bounds, d, bank.device)
        picked = self._check_rows(rows, coefs, bank.shape[0], plan.n_segments)
        # non_blocking: small pageable copies are staged at once and never wait for the stream
        weights = coefs.detach().to(device=bank.device, dtype=torch.float32,
                                    non_blocking=True).contiguous()
        if len(picked) == 0:
            out.zero_()
        elif self.prefer_cublas and self.uses_cublas(bank, picked, plan.n_segments):
            self._gemv(bank, int(picked[0]), weights[:, 0], out)
        else:
            self._aggregate_kernel(bank, picked, weights, plan, out)

    @staticmethod
    def uses_cublas(bank: torch.Tensor, picked: np.ndarray, n_segments: int) -> bool:
        """Whether aggregation goes to cuBLAS gemv: one segment, a float32 bank, the selected rows
        a run of consecutive rows in order (so they form one strided matrix), sizes in int32."""
        return (n_segments == 1 and bank.dtype == torch.float32 and len(picked) > 0
                and bool(np.all(np.diff(picked) == 1))
                and bank.shape[1] <= bank.stride(0) <= INT32_MAX)

    @staticmethod
    def _check_rows(rows: torch.Tensor, coefs: torch.Tensor, n_bank_rows: int,
                    n_segments: int) -> np.ndarray:
        picked = rows.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if len(picked) and (picked.min() < 0 or picked.max() >= n_bank_rows):
            raise ValueError(f"rows must lie in [0, {n_bank_rows}), got {picked.tolist()}")
        if tuple(coefs.shape) != (len(picked), n_segments):
            raise ValueError(f"coefs must be ({len(picked)}, {n_segments}) for {len(picked)} rows "
                             f"and {n_segments} segments, got {tuple(coefs.shape)}")
        return picked

    def _aggregate_kernel(self, bank, picked, weights, plan: Plan, out) -> None:
        name = "aggregate_f32" if bank.dtype == torch.float32 else "aggregate_bf16"
        per_load = 4 if bank.dtype == torch.float32 else 8  # elements in one 16-byte load
        vectorised = _aligned(bank, out) and bank.stride(0) % per_load == 0
        rows = torch.from_numpy(picked).to(bank.device, non_blocking=True)
        with _torch_stream(bank.device):
            _kernel("aggregate.cu", name)(
                (plan.grid,), (BLOCK,),
                (_view(bank), np.int64(bank.stride(0)), _view(rows),
                 np.int32(len(picked)), _view(weights), np.int32(plan.n_segments), plan.begin,
                 plan.end, plan.seg, np.int64(plan.n_chunks), np.int32(vectorised), _view(out)))

    @staticmethod
    def _gemv(bank, first_row: int, weights, out) -> None:
        """out = weights @ bank[first_row : first_row + n] with cuBLAS sgemv, reading the rows
        in place: row-major rows of stride s are a column-major (d x n) matrix with lda = s."""
        from cupy_backends.cuda.libs import cublas  # loads libcublas, so only when needed

        n, d = weights.numel(), bank.shape[1]
        one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
        with _torch_stream(bank.device) as cupy:
            handle = cupy.cuda.device.get_cublas_handle()
            cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
            cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
            matrix = _view(bank[first_row:first_row + n])
            cublas.sgemv(handle, cublas.CUBLAS_OP_N, d, n, one.ctypes.data, matrix.data.ptr,
                         bank.stride(0), _view(weights).data.ptr, 1, zero.ctypes.data,
                         _view(out).data.ptr, 1)
