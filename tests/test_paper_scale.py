"""The failure that stopped the paper's own configuration, at full size on the CPU.

First its reproduction: 48 clients of
a 16.8M-parameter MLP on 3 ranks, every client refreshing in round 1. Each rank gathers 16
updates of 67 MB, so rank 2's payload starts past 2^31 bytes and the round moves 3.2 GB: before
the comm module moved payloads in steps, mpi4py raised MPI_ERR_ARG here after minutes of work.
The look-back bank (3.2 GB per rank, replicated as by default) takes the job to about 14 GB,
more than half of a CI machine's memory; the test also checks that the bytes in the ledger are
the payload's, however many steps moved it.

Then the configuration itself, configs/paper/cifar10-resnet18-noniid.toml as it is (ResNet-18,
100 clients, FedSGD, a scalar per tensor) on 4 ranks sharing one look-back bank on the node, from
CIFAR-10-format files of 3 images per client: its first round gathers 100 refreshes of 44.7 MB,
the 4.47 GB that crashed it on a GPU node."""

import numpy as np
import pytest

from conftest import lbgm, read_metrics, read_summary
from test_paper_configs import _write_cifar10

HIDDEN = 224_000  # digits: 64 inputs, 10 classes -> 75 * 224000 + 10 = 16.8M parameters


@pytest.mark.mpi
@pytest.mark.bigmem
def test_a_round_past_two_gib_per_rank_runs_to_the_end(tmp_path):
    lbgm(3, "train", "configs/default.toml", "--set", "clients.count=48", "--set",
         f"model.hidden={HIDDEN}", "--set", "run.rounds=1", "--set", "algo.threshold=0.1",
         "--set", "clients.local_epochs=1", "--set", "run.check_every=0",
         "--out", str(tmp_path), "--quiet", timeout=900)
    summary, (row,) = read_summary(tmp_path), read_metrics(tmp_path)
    d = summary["num_params"]
    assert d == 75 * HIDDEN + 10
    assert row["refreshes"] == 48 and row["scalars"] == 0
    payload = 48 * 4 * d
    assert payload > 3 * 2**30
    assert row["mpi_bytes"] == payload + 48 * (4 + 4 + 8 + 1 + 4)  # refreshes + records
    assert summary["bank_bytes_per_node"] == 3 * 48 * 4 * d
    assert max(summary["peak_host_bytes_by_rank"]) < 48 * 4 * d + 2 * 4 * d * 16 + 2**29


@pytest.mark.mpi
@pytest.mark.bigmem
def test_the_paper_resnet18_config_runs_its_first_round_on_a_shared_bank(tmp_path):
    root = tmp_path / "cifar10"
    root.mkdir()
    _write_cifar10(root, np.random.default_rng(0), 300, 30)
    lbgm(4, "train", "configs/paper/cifar10-resnet18-noniid.toml", "--set", f"data.root={root}",
         "--set", "run.rounds=1", "--set", "system.device=cpu", "--set", "system.bank=shared",
         "--set", "run.check_every=0", "--out", str(tmp_path / "run"), "--quiet", timeout=900)
    summary, (row,) = read_summary(tmp_path / "run"), read_metrics(tmp_path / "run")
    d, tensors = summary["num_params"], row["refreshes"] // 100
    assert d == 11_183_562 and row["refreshes"] == 100 * tensors and row["scalars"] == 0
    payload = 100 * 4 * d
    assert payload > 4 * 10**9
    assert row["mpi_bytes"] == payload + 100 * (16 + 5 * tensors)  # refreshes + records
    assert summary["bank"] == "shared" and summary["bank_bytes_per_node"] == payload
    # per rank: the node's bank (the root reads all of it for the checkpoint), two updates per
    # local client (25) and the fixed allowance
    assert max(summary["peak_host_bytes_by_rank"]) < payload + 2 * 4 * d * 25 + 2**29
