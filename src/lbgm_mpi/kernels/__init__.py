"""Hot-path tensor operations behind one small interface, with interchangeable back ends.

A back end provides two operations on flat float32 vectors split into segments. ``bounds`` is a
1-D int64 tensor of L+1 increasing offsets (``bounds[0] == 0``, ``bounds[-1] == d``); segment l is
``x[bounds[l]:bounds[l+1]]``. Model granularity is the single segment ``[0, d]``.

- ``project(g, b, bounds) -> (dots, gnorms)``: per segment <g, b> and ||g||^2, accumulated in
  float64, returned as float64 tensors of length L on the host. Reads g and b once; changes nothing.
- ``aggregate(bank, rows, coefs, bounds) -> delta``: delta[seg l] = sum_i coefs[i, l] *
  bank[rows[i], seg l], a new float32 vector of length d on the bank's device. ``coefs`` is
  float64 (n_rows x L); the bank may be float32 or bfloat16. Changes nothing.

``torch_ops`` is the reference (CPU or CUDA through PyTorch); ``cupy_ops`` (GPU only) fuses them.
"""

from lbgm_mpi.kernels.torch_ops import TorchKernels


def select_kernels(name: str = "torch"):
    """Return the kernel back end named ``name`` ("torch", "cupy" or "auto")."""
    if name in ("torch", "auto"):
        if name == "auto":
            try:
                from lbgm_mpi.kernels.cupy_ops import CupyKernels, cupy_available
                if cupy_available():
                    return CupyKernels()
            except ImportError:
                pass
        return TorchKernels()
    if name == "cupy":
        from lbgm_mpi.kernels.cupy_ops import CupyKernels
        return CupyKernels()
    raise ValueError(f"unknown kernel back end {name!r} (choose torch, cupy or auto)")
