"""The failure that stopped the paper's own configuration, at full size on the CPU: 48 clients of
a 16.8M-parameter MLP on 3 ranks, every client refreshing in round 1. Each rank gathers 16
updates of 67 MB, so rank 2's payload starts past 2^31 bytes and the round moves 3.2 GB: before
the comm module moved payloads in steps, mpi4py raised MPI_ERR_ARG here after minutes of work.
The look-back bank (3.2 GB per rank, replicated as by default) takes the job to about 14 GB,
more than half of a CI machine's memory; the test also checks that the bytes in the ledger are
the payload's, however many steps moved it."""

import pytest

from conftest import lbgm, read_metrics, read_summary

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
