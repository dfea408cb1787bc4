"""Device placement, bank storage and device buffers through MPI.

On a machine without a GPU these check the CPU side of the GPU path (errors, the bfloat16 bank,
tensor collectives); the tests marked `gpu` run the same LBGM job on CUDA and on the CPU and
compare them (benchmarks/gpu_check.sh runs them on a GPU machine)."""

import pytest
import torch

from conftest import FAST, lbgm, lbgm_batch, read_metrics, read_summary, without_timing
from lbgm_mpi.comm.mpi import Comm

RUN = ["configs/default.toml", *FAST, "--set", "algo.threshold=0.3", "--quiet"]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="PyTorch sees no CUDA device")


def test_tensor_collectives_count_bytes_at_size_one():
    comm = Comm()
    before = comm.bytes_sent
    t = torch.arange(5, dtype=torch.float32)
    assert torch.equal(comm.allreduce_tensor(t), t)
    got = []
    comm.allgatherv_stream([t.view(torch.uint8)], [20], lambda r, at, data: got.append(
        data.clone()))
    assert torch.equal(torch.cat(got).view(torch.float32), t)
    assert comm.bytes_sent - before == 40


@pytest.mark.mpi
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_one_line(tmp_path):
    result = lbgm(2, "train", *RUN, "--set", "system.device=cuda", "--out", str(tmp_path),
                  check=False, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("lbgm-mpi: error")]
    assert len(errors) == 1 and "system.device" in errors[0] and "no CUDA device" in errors[0]


@pytest.mark.mpi
def test_bfloat16_bank_is_rank_invariant_and_close_to_float32(tmp_path):
    bf16 = ["--set", "system.bank_dtype=bfloat16"]
    lbgm_batch(1, ["train", *RUN, *bf16, "--out", str(tmp_path / "bf1")],
               ["train", *RUN, "--out", str(tmp_path / "f32")])
    lbgm(2, "train", *RUN, *bf16, "--out", str(tmp_path / "bf2"))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("mpi_bytes", "downlink_bytes")}
                          for r in without_timing(rows)]
    assert strip(read_metrics(tmp_path / "bf1")) == strip(read_metrics(tmp_path / "bf2"))
    best = lambda run: read_summary(tmp_path / run)["best_acc"]
    assert abs(best("bf1") - best("f32")) <= 0.05


@pytest.mark.gpu
@pytest.mark.mpi
@needs_gpu
@pytest.mark.parametrize("kernels", ["torch", "cupy"])
def test_gpu_run_matches_the_cpu_run(tmp_path, kernels):
    """Two ranks on the GPU (sharing it) make the same refresh decisions as the CPU path and
    reach the same accuracy to 1e-4."""
    if kernels == "cupy":
        pytest.importorskip("cupy")
    gpu = ["--set", "system.device=cuda", "--set", "system.allow_gpu_sharing=true",
           "--set", f"system.kernels={kernels}"]
    lbgm(2, "train", *RUN, "--out", str(tmp_path / "cpu"))
    lbgm(2, "train", *RUN, *gpu, "--out", str(tmp_path / "gpu"))
    cpu, dev = read_metrics(tmp_path / "cpu"), read_metrics(tmp_path / "gpu")
    assert [r["refreshes"] for r in dev] == [r["refreshes"] for r in cpu]
    for a, b in zip(cpu, dev):
        assert abs(a["test_acc"] - b["test_acc"]) <= 1e-4
