"""What a rank holds: peak host and device memory, read from the operating system and PyTorch."""

import resource

import torch


def _status(field: str) -> int | None:
    """A memory figure of /proc/self/status in bytes (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def host_peak_bytes() -> int:
    """Peak resident memory of this process in bytes (VmHWM: private memory plus the pages of
    shared memory it touched)."""
    peak = _status("VmHWM")
    return peak if peak is not None else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux counts in KiB


def host_shared_bytes() -> int:
    """Resident pages of node-shared memory this process has touched so far (RssShmem)."""
    return _status("RssShmem") or 0


def device_peak_bytes(device: torch.device) -> int:
    """Peak memory PyTorch allocated on ``device`` (0 on the CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def set_precision(precision: str) -> None:
    """Apply system.precision to this process's matrix products: TensorFloat-32 on GPUs only for
    "tf32" (off for "fp32", so fp32 means full float32; "bf16" autocasts in local training)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
