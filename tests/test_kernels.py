"""Kernel back ends against float64 references, and the device helpers of lbgm_mpi.gpu.

Run: PYTHONPATH=src python -m pytest tests/test_kernels.py -q
The CuPy kernels run only where CuPy and a CUDA device are present (-m gpu selects them);
elsewhere they are skipped with the reason.
"""

import sys
import types

import numpy as np
import pytest
import torch

from lbgm_mpi import gpu
from lbgm_mpi.comm import device
from lbgm_mpi.kernels import TorchKernels
from lbgm_mpi.kernels import cupy_ops
from lbgm_mpi.kernels.cupy_ops import cupy_available

CHUNK = 1 << 24  # columns per step of the references, so they also serve vectors of 2**31 values


def _why_no_gpu() -> str:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x)"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return "CuPy sees no CUDA device"


HAVE_GPU = cupy_available()


def gpu_test(fn):
    """Mark ``fn`` as a GPU test, skipped with the reason where CuPy or CUDA is missing."""
    skip = pytest.mark.skipif(not HAVE_GPU, reason="" if HAVE_GPU else _why_no_gpu())
    return pytest.mark.gpu(skip(fn))


# ---------------------------------------------------------------------------------- inputs

# (d, number of segments): one segment (model granularity), length-1 segments, odd lengths,
# and 62 segments (per-layer granularity of the paper's models).
LAYOUTS = [(1, 1), (7, 1), (7, 3), (1000, 1), (1000, 62), (100003, 1), (100003, 2),
           (100003, 62)]
SELECTIONS = ["scattered", "run", "single"]  # bank rows picked: shuffled, consecutive, one
BANK_ROWS = 9


def make_bounds(d: int, n_segments: int, rng) -> torch.Tensor:
    """n_segments non-empty segments over [0, d); with two or more, the first has length 1, and
    with three or more the last too."""
    if n_segments == 1:
        return torch.tensor([0, d])
    if n_segments == 2:
        return torch.tensor([0, 1, d])
    inner = np.sort(rng.choice(d - 3, size=n_segments - 3, replace=False) + 2)
    return torch.tensor([0, 1, *inner.tolist(), d - 1, d])


def make_vectors(d: int, rng, device="cpu"):
    """Random g and b with a real correlation, so the dot products are far from zero."""
    b = rng.standard_normal(d).astype(np.float32)
    g = (0.6 * b + rng.standard_normal(d)).astype(np.float32)
    return torch.from_numpy(g).to(device), torch.from_numpy(b).to(device)


def pick_rows(selection: str, rng) -> torch.Tensor:
    if selection == "scattered":
        return torch.from_numpy(rng.permutation(BANK_ROWS)[:5].copy())
    if selection == "run":
        return torch.arange(2, 7)
    return torch.tensor([3])


def make_bank_inputs(d, n_segments, selection, bank_dtype, seed, device="cpu"):
    rng = np.random.default_rng(seed)
    bounds = make_bounds(d, n_segments, rng)
    bank32 = torch.from_numpy(rng.standard_normal((BANK_ROWS, d)).astype(np.float32))
    rows = pick_rows(selection, rng)
    coefs = torch.from_numpy(rng.standard_normal((len(rows), n_segments)))
    return bank32.to(device=device, dtype=bank_dtype), bank32, rows, coefs, bounds


# ------------------------------------------------------------------------------ references

def _column_steps(bounds: torch.Tensor):
    """(segment, start, end) steps of at most CHUNK columns that never cross a segment."""
    edges = bounds.tolist()
    for seg, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        for start in range(lo, hi, CHUNK):
            yield seg, start, min(start + CHUNK, hi)


def _f64(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 on its own device: the references of GPU inputs run on the GPU, so a
    vector of 2**31 values is checked in seconds, not minutes on the host."""
    return t.to(torch.float64)


def project_reference(g, b, bounds):
    """Per segment <g, b>, ||g||^2 and sum |g_i b_i| (the dot's error scale), in float64."""
    n = len(bounds) - 1
    dots, gnorms, scale = np.zeros(n), np.zeros(n), np.zeros(n)
    for seg, lo, hi in _column_steps(bounds):
        g64, b64 = _f64(g[lo:hi]), _f64(b[lo:hi])
        dots[seg] += float(g64 @ b64)
        gnorms[seg] += float(g64 @ g64)
        scale[seg] += float((g64 * b64).abs().sum())
    return dots, gnorms, scale


def aggregate_reference_steps(bank, rows, coefs, bounds):
    """Yields (start, end, delta, scale) over the columns, as float64 tensors on the bank's
    device: the weighted row sum and sum_i |coef_i * bank_ij|, its error scale."""
    picked = rows.to(bank.device)
    for seg, lo, hi in _column_steps(bounds):
        block = _f64(bank[:, lo:hi].index_select(0, picked))
        weights = coefs[:, seg].to(device=bank.device, dtype=torch.float64)
        yield lo, hi, weights @ block, weights.abs() @ block.abs()


def aggregate_error(out, bank, rows, coefs, bounds) -> float:
    """max_j |out_j - delta_j| / scale_j against the float64 reference; NaN anywhere gives inf."""
    worst = 0.0
    for lo, hi, delta, scale in aggregate_reference_steps(bank, rows, coefs, bounds):
        got = _f64(out[lo:hi])
        if not bool(torch.isfinite(got).all()):
            return float("inf")
        worst = max(worst, float(((got - delta).abs() / scale).max()))
    return worst


def assert_project_close(dots, gnorms, g, b, bounds, rtol=1e-6):
    ref_dots, ref_gnorms, scale = project_reference(g, b, bounds)
    dots, gnorms = dots.double().cpu().numpy(), gnorms.double().cpu().numpy()
    assert dots.shape == gnorms.shape == (len(bounds) - 1,)
    assert np.all(np.abs(dots - ref_dots) <= rtol * scale), (dots, ref_dots)
    assert np.all(np.abs(gnorms - ref_gnorms) <= rtol * ref_gnorms), (gnorms, ref_gnorms)


def assert_aggregate_close(out, bank, bank32, rows, coefs, bounds):
    """float32 accumulation: 1e-5 of sum |terms| against the stored values, and for a bfloat16
    bank a relative error under 1e-2 against the float32 values it was rounded from."""
    assert out.dtype == torch.float32 and out.shape == (bank.shape[1],)
    assert out.device == bank.device
    assert aggregate_error(out, bank, rows, coefs, bounds) < 1e-5
    if bank.dtype == torch.bfloat16:
        steps = list(aggregate_reference_steps(bank32.to(bank.device), rows, coefs, bounds))
        ref = torch.cat([delta for _, _, delta, _ in steps])
        assert float(torch.linalg.norm(_f64(out) - ref)) < 1e-2 * float(torch.linalg.norm(ref))


# ------------------------------------------------------------------- reference back end (CPU)

@pytest.mark.parametrize("d,n_segments", LAYOUTS)
def test_torch_project_matches_float64(d, n_segments):
    rng = np.random.default_rng(d + n_segments)
    g, b = make_vectors(d, rng)
    bounds = make_bounds(d, n_segments, rng)
    dots, gnorms = TorchKernels().project(g, b, bounds)
    assert dots.dtype == gnorms.dtype == torch.float64
    assert_project_close(dots, gnorms, g, b, bounds)


@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("d,n_segments", LAYOUTS)
def test_torch_aggregate_matches_float64(d, n_segments, selection, bank_dtype):
    bank, bank32, rows, coefs, bounds = make_bank_inputs(d, n_segments, selection, bank_dtype,
                                                         seed=d * 7 + n_segments)
    out = TorchKernels().aggregate(bank, rows, coefs, bounds)
    assert_aggregate_close(out, bank, bank32, rows, coefs, bounds)


@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,n_segments", [(7, 3), (100003, 2), (100003, 62), (300001, 5)])
def test_torch_aggregate_of_a_column_slice_is_the_same_bits(d, n_segments, bank_dtype):
    """What the node-shared bank relies on: each rank sums its own columns, and together the
    slices are bit for bit the sum over all columns, wherever the slices are cut."""
    bank, _, rows, coefs, bounds = make_bank_inputs(d, n_segments, "scattered", bank_dtype,
                                                    seed=d + n_segments)
    whole = TorchKernels().aggregate(bank, rows, coefs, bounds)
    for lo, hi in ((0, d // 3), (d // 3, d), (1, d - 1), (d // 2, d // 2 + 1)):
        part = TorchKernels().aggregate(bank[:, lo:hi], rows, coefs, bounds.clamp(lo, hi) - lo)
        assert torch.equal(part, whole[lo:hi]), (lo, hi)


@pytest.mark.parametrize("d,n_segments", LAYOUTS + [(10**9, 62)])
def test_chunk_layout_tiles_each_segment(d, n_segments):
    """The CuPy kernels' work split (pure NumPy): chunks cover [0, d) in order, once, and
    never cross a segment boundary; each segment's chunks are contiguous in the list."""
    bounds = make_bounds(d, n_segments, np.random.default_rng(d)).numpy()
    begin, end, seg, seg_first = cupy_ops._chunk_layout(bounds, n_sms=132)
    assert begin[0] == 0 and end[-1] == d and np.all(begin[1:] == end[:-1])
    assert np.all(end > begin) and np.all(end - begin <= max(cupy_ops.MIN_CHUNK, d // 132))
    assert np.all(bounds[seg] <= begin) and np.all(end <= bounds[seg + 1])
    assert seg_first[0] == 0 and seg_first[-1] == len(seg)
    assert np.all(seg[seg_first[:-1]] == np.arange(n_segments))


# ------------------------------------------------------------------------------ lbgm_mpi.gpu

def test_local_rank_from_env_order_and_absence():
    assert gpu.local_rank_from_env({}) is None
    assert gpu.local_rank_from_env({"PMI_LOCAL_RANK": "2"}) == 2
    assert gpu.local_rank_from_env({"SLURM_LOCALID": "3", "PMI_LOCAL_RANK": "2"}) == 3
    both = {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "SLURM_LOCALID": "3", "MPI_LOCALRANKID": "0"}
    assert gpu.local_rank_from_env(both) == 1
    assert gpu.local_rank_from_env({"MPI_LOCALRANKID": "5", "PMI_LOCAL_RANK": "2"}) == 5
    with pytest.raises(ValueError, match="SLURM_LOCALID"):
        gpu.local_rank_from_env({"SLURM_LOCALID": "first"})


@pytest.mark.parametrize("pref,local_rank,local_size,n_gpus,sharing,expected", [
    ("cpu", 0, 1, 4, False, "cpu"),
    ("auto", 1, 2, 0, False, "cpu"),
    ("auto", 3, 4, 4, False, "cuda:3"),
    ("cuda", 1, 2, 8, False, "cuda:1"),
    ("auto", 5, 8, 2, True, "cuda:1"),
    ("cuda", 2, 4, 3, True, "cuda:2"),
])
def test_pick_device_choices(pref, local_rank, local_size, n_gpus, sharing, expected):
    device = gpu.pick_device(pref, local_rank, local_size, n_gpus, sharing)
    assert device == torch.device(expected)


def test_pick_device_cuda_without_gpu_names_visible_devices():
    with pytest.raises(RuntimeError, match=r"system.device = 'cuda' but no CUDA device is "
                                           r"visible.*CUDA_VISIBLE_DEVICES=''"):
        gpu.pick_device("cuda", 0, 1, 0, False, cuda_visible_devices="")
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES=<unset>"):
        gpu.pick_device("cuda", 0, 1, 0, True)


def test_pick_device_refuses_sharing_unless_allowed():
    with pytest.raises(RuntimeError, match=r"4 ranks.*2 GPU.*system.allow_gpu_sharing"):
        gpu.pick_device("auto", 3, 4, 2, False)
    with pytest.raises(ValueError, match="system.device"):
        gpu.pick_device("gpu", 0, 1, 1, False)


def test_cuda_aware_mpi_settings_and_detection_never_raises(monkeypatch):
    assert device.cuda_aware_mpi("yes") is True
    assert device.cuda_aware_mpi("no") is False
    with pytest.raises(ValueError, match="system.cuda_aware_mpi"):
        device.cuda_aware_mpi("maybe")
    # a library that says nothing, then one whose probe fails: both read as "not CUDA-aware"
    fake = types.ModuleType("mpi4py")
    fake.MPI = types.SimpleNamespace(Get_library_version=lambda: "Open MPI v5.0.5")
    monkeypatch.setitem(sys.modules, "mpi4py", fake)
    monkeypatch.setattr(device, "_loaded_libmpi", lambda: None)
    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    assert device.cuda_aware_mpi("auto") is False
    fake.MPI = types.SimpleNamespace(Get_library_version=lambda: 1 / 0)
    assert device.cuda_aware_mpi("auto") is False


def test_host_staging_reuses_and_grows_buffers():
    staging = device.HostStaging()
    x = torch.arange(10, dtype=torch.float32)
    first = staging.to_host("up", x)
    second = staging.to_host("up", x * 2)
    assert first.ctypes.data == second.ctypes.data
    np.testing.assert_array_equal(second, (x * 2).numpy())
    grown = staging.to_host("up", torch.ones(25))
    assert grown.size == 25
    assert staging.to_host("up", x).ctypes.data == grown.ctypes.data  # smaller: no new buffer
    assert staging.to_host("down", x).ctypes.data != grown.ctypes.data  # names do not share


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_staging_round_trip(dtype):
    staging = device.HostStaging()
    src = torch.randn(33).to(dtype)
    host = staging.to_host("x", src).copy()
    out = torch.empty(33, dtype=dtype)
    staging.to_device("x", host, out)
    assert torch.equal(out, src)
    into = staging.buffer("x", 33, dtype)  # MPI receiving straight into the buffer
    into.copy_(src.flip(0))
    staging.to_device("x", device._as_numpy(into), out)
    assert torch.equal(out, src.flip(0))


# --------------------------------------------------------------------- fused kernels (GPU)

@pytest.fixture(scope="module")
def cupy_kernels():
    from lbgm_mpi.kernels.cupy_ops import CupyKernels
    return CupyKernels()


@gpu_test
@pytest.mark.parametrize("offset", [0, 1])  # 1: g and b not 16-byte aligned (scalar loads)
@pytest.mark.parametrize("d,n_segments", LAYOUTS + [(3_000_017, 62)])
def test_cupy_project_matches_float64(cupy_kernels, d, n_segments, offset):
    rng = np.random.default_rng(d + n_segments + offset)
    g, b = make_vectors(d + offset, rng, device="cuda")
    g, b = g[offset:], b[offset:]
    bounds = make_bounds(d, n_segments, rng)
    dots, gnorms = cupy_kernels.project(g, b, bounds)
    assert dots.device.type == "cpu" and dots.dtype == torch.float64
    assert_project_close(dots, gnorms, g, b, bounds)


@gpu_test
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("d,n_segments", LAYOUTS + [(3_000_017, 62), (2_000_000, 1)])
def test_cupy_aggregate_matches_float64(cupy_kernels, d, n_segments, selection, bank_dtype):
    bank, bank32, rows, coefs, bounds = make_bank_inputs(d, n_segments, selection, bank_dtype,
                                                         seed=d * 7 + n_segments, device="cuda")
    out = cupy_kernels.aggregate(bank, rows, coefs, bounds)
    assert_aggregate_close(out, bank, bank32, rows, coefs, bounds)


@gpu_test
@pytest.mark.parametrize("pad", [3, 8])  # 3: rows misaligned (scalar loads); 8: aligned rows
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
def test_cupy_aggregate_padded_bank(cupy_kernels, pad, bank_dtype):
    """A bank whose rows are padded (row stride > d) is read in place, by either path."""
    d = 50_000
    _, bank32, rows, coefs, bounds = make_bank_inputs(d, 1, "run", bank_dtype, seed=pad)
    storage = torch.full((BANK_ROWS, d + pad), float("nan"), dtype=bank_dtype, device="cuda")
    storage[:, :d] = bank32.to(device="cuda", dtype=bank_dtype)
    bank = storage[:, :d]
    for picked, weights in ((rows, coefs), (rows.flip(0), coefs.flip(0))):  # cuBLAS, kernel
        out = cupy_kernels.aggregate(bank, picked, weights, bounds)
        assert_aggregate_close(out, bank, bank32.to("cuda"), picked, weights, bounds)


@gpu_test
@pytest.mark.parametrize("d,n_segments", [(7, 3), (100003, 62), (3_000_017, 1)])
def test_cupy_writes_every_output(cupy_kernels, d, n_segments):
    rng = np.random.default_rng(d)
    g, b = make_vectors(d, rng, device="cuda")
    bounds = make_bounds(d, n_segments, rng)
    stats = torch.full((2, n_segments), float("nan"), dtype=torch.float64, device="cuda")
    cupy_kernels.project_into(g, b, bounds, stats)
    assert_project_close(stats[0], stats[1], g, b, bounds)
    for bank_dtype in (torch.float32, torch.bfloat16):
        for selection in SELECTIONS:
            bank, bank32, rows, coefs, _ = make_bank_inputs(d, n_segments, selection, bank_dtype,
                                                            seed=d, device="cuda")
            out = torch.full((d,), float("nan"), device="cuda")
            cupy_kernels.aggregate_into(bank, rows, coefs, bounds, out)
            assert_aggregate_close(out, bank, bank32, rows, coefs, bounds)


@gpu_test
def test_cupy_and_torch_agree_on_gpu(cupy_kernels):
    rng = np.random.default_rng(11)
    d = 1_000_003
    g, b = make_vectors(d, rng, device="cuda")
    bounds = make_bounds(d, 62, rng)
    torch_kernels = TorchKernels()
    for got, want in zip(cupy_kernels.project(g, b, bounds), torch_kernels.project(g, b, bounds)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)
    bank, _, rows, coefs, _ = make_bank_inputs(d, 62, "scattered", torch.bfloat16, seed=11,
                                               device="cuda")
    torch.testing.assert_close(cupy_kernels.aggregate(bank, rows, coefs, bounds),
                               torch_kernels.aggregate(bank, rows, coefs, bounds),
                               rtol=1e-5, atol=1e-5)


@gpu_test
def test_cupy_empty_selection_gives_zeros(cupy_kernels):
    bank = torch.randn(4, 1000, device="cuda")
    out = torch.full((1000,), float("nan"), device="cuda")
    bounds = torch.tensor([0, 1000])
    cupy_kernels.aggregate_into(bank, torch.zeros(0, dtype=torch.int64),
                                torch.zeros(0, 1, dtype=torch.float64), bounds, out)
    assert torch.count_nonzero(out) == 0


@gpu_test
def test_cupy_rejects_bad_inputs(cupy_kernels):
    g = torch.randn(10, device="cuda")
    with pytest.raises(ValueError, match="bounds"):
        cupy_kernels.project(g, g, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="g must be"):
        cupy_kernels.project(g.double(), g, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="rows must lie"):
        cupy_kernels.aggregate(g.view(2, 5), torch.tensor([2]), torch.ones(1, 1),
                               torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="coefs must be"):
        cupy_kernels.aggregate(g.view(2, 5), torch.tensor([1]), torch.ones(1, 2),
                               torch.tensor([0, 5]))


@gpu_test
def test_cupy_indices_past_two_to_the_31(cupy_kernels):
    """64-bit offsets: vectors longer than 2**31 and bank offsets past it (about 40 GB)."""
    d = 2**31 + 13
    if torch.cuda.mem_get_info()[0] < 40 * 2**30:
        pytest.skip("needs 40 GiB of free GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(5)
    bounds = torch.tensor([0, 1, 2**31 - 5, d])
    g = torch.randn(d, device="cuda", generator=gen)
    b = torch.randn(d, device="cuda", generator=gen)
    assert_project_close(*cupy_kernels.project(g, b, bounds), g, b, bounds)
    del g, b
    coefs = torch.tensor([[0.5, -1.5, 2.0], [1.25, 0.75, -0.5]], dtype=torch.float64)
    for bank_dtype, rows in ((torch.bfloat16, [1, 0]), (torch.float32, [0])):
        bank = torch.randn(len(rows), d, device="cuda", generator=gen).to(bank_dtype)
        picked, weights = torch.tensor(rows), coefs[:len(rows)]
        out = cupy_kernels.aggregate(bank, picked, weights, bounds)
        assert aggregate_error(out, bank, picked, weights, bounds) < 1e-5
        del bank, out


@gpu_test
def test_host_staging_with_device_tensors():
    staging = device.HostStaging()
    src = torch.randn(1000, device="cuda")
    host = staging.to_host("x", src * 3)
    np.testing.assert_array_equal(host, (src * 3).cpu().numpy())
    out = torch.empty_like(src)
    staging.to_device("x", host.copy(), out)
    device.sync_for_mpi(out)
    assert torch.equal(out, src * 3)
