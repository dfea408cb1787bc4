"""How device buffers reach MPI: directly where the MPI library is CUDA-aware, else staged
through reused (pinned) host buffers; and the stream synchronisation before MPI reads a device
buffer. Part of the comm package, the one place that talks to MPI: only
``cuda_aware_mpi("auto")`` asks the already-initialised MPI library what it supports.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import numpy as np
import torch

MPIX_GPU_SUPPORT_CUDA = 0  # MPICH's mpi.h: the CUDA kind for MPIX_GPU_query_support


def sync_for_mpi(tensor: torch.Tensor) -> None:
    """Wait for the work queued on ``tensor``'s current CUDA stream; no-op for CPU tensors.

    Call before handing a device buffer to MPI: MPI knows nothing of CUDA streams.
    """
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()


def cuda_aware_mpi(pref: str) -> bool:
    """Whether device buffers may go to MPI directly, from ``system.cuda_aware_mpi`` (yes|no|auto).

    auto asks the MPI library (MPI must be initialised); any failure or unknown library reads as
    False, so buffers are staged through host memory: slower, never wrong.
    """
    if pref not in ("yes", "no", "auto"):
        raise ValueError(f"system.cuda_aware_mpi must be 'yes', 'no' or 'auto', got {pref!r}")
    if pref != "auto":
        return pref == "yes"
    try:
        return _library_reports_cuda()
    except Exception:  # detection is best effort: a broken probe must not stop the run
        return False


def _library_reports_cuda() -> bool:
    from mpi4py import MPI

    version = MPI.Get_library_version()
    library = _loaded_libmpi()
    if "Open MPI" in version:
        query = getattr(library, "MPIX_Query_cuda_support", None)
        if query is not None:
            query.restype = ctypes.c_int
            return bool(query())
        return _ompi_info_reports_cuda()
    query = getattr(library, "MPIX_GPU_query_support", None)  # MPICH 4 and its derivatives
    if query is not None:
        supported = ctypes.c_int(0)
        query(ctypes.c_int(MPIX_GPU_SUPPORT_CUDA), ctypes.byref(supported))
        return bool(supported.value)
    return False


def _loaded_libmpi():
    """The MPI library this process already loaded (through mpi4py), or None."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/libmpi" in line}
    for path in sorted(paths):
        if os.path.basename(path).startswith(("libmpi.so", "libmpich.so")):
            return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    return None


def _ompi_info_reports_cuda() -> bool:
    """Open MPI's build-time answer, for libraries without MPIX_Query_cuda_support."""
    if shutil.which("ompi_info") is None:
        return False
    listing = subprocess.run(["ompi_info", "--parsable", "--all"], capture_output=True,
                             text=True, timeout=30).stdout
    return "mpi_built_with_cuda_support:value:true" in listing


def _host_empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    if torch.cuda.is_available():
        try:
            return torch.empty(numel, dtype=dtype, pin_memory=True)
        except RuntimeError:  # pinning can fail (locked-memory limit): ordinary memory still works
            pass
    return torch.empty(numel, dtype=dtype)


def _as_numpy(host: torch.Tensor) -> np.ndarray:
    """A NumPy view of a host tensor; bfloat16, which NumPy lacks, as its raw 16-bit patterns."""
    return (host.view(torch.int16) if host.dtype == torch.bfloat16 else host).numpy()


class HostStaging:
    """Host buffers, one per name, for moving device tensors through an MPI that is not
    CUDA-aware. Pinned where CUDA is present (ordinary memory on CPU-only PyTorch).

    A buffer is allocated the first time its name is used and reused after that; it is replaced
    only when a larger size or another dtype is asked for.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}
        self._in_flight: dict[str, torch.cuda.Event] = {}

    def buffer(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """The first ``numel`` elements of buffer ``name`` (a flat host tensor), once no copy
        started by ``to_device`` still reads it. MPI may receive into it directly."""
        event = self._in_flight.pop(name, None)
        if event is not None:
            event.synchronize()
        stage = self._buffers.get(name)
        if stage is None or stage.dtype != dtype or stage.numel() < numel:
            stage = self._buffers[name] = _host_empty(numel, dtype)
        return stage[:numel]

    def to_host(self, name: str, tensor: torch.Tensor) -> np.ndarray:
        """Copy ``tensor`` (left unchanged) into buffer ``name``; returns a NumPy view of the
        buffer once the copy is complete, valid until the next use of ``name`` (bfloat16 comes
        back as its raw 16-bit patterns, dtype int16)."""
        stage = self.buffer(name, tensor.numel(), tensor.dtype)
        stage.copy_(tensor.reshape(-1), non_blocking=True)
        sync_for_mpi(tensor)  # the copy was queued on the tensor's stream
        return _as_numpy(stage)

    def to_device(self, name: str, host_array: np.ndarray, out: torch.Tensor) -> None:
        """Copy ``host_array`` (left unchanged) into the contiguous tensor ``out`` through
        buffer ``name``. Returns at once; the copy runs on ``out``'s current stream."""
        stage = self.buffer(name, out.numel(), out.dtype)
        staged = _as_numpy(stage)
        if not np.may_share_memory(staged, host_array):  # MPI may have received into it already
            np.copyto(staged, host_array.reshape(-1))
        out.view(-1).copy_(stage, non_blocking=True)
        if out.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(out.device))
            self._in_flight[name] = event
