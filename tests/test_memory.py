"""Peak memory of an LBGM rank: the bank, two model-sized vectors per local client and a fixed
allowance, and nothing that grows with clients x parameters besides the bank itself (no receive
buffer for the gathered refreshes, no gathered copy of the rows in the aggregation). Measured on 2
ranks with a 2M-parameter model shaped like an MNIST MLP (784 inputs, 2,535 hidden units, so its
activations are small beside its parameters), every client refreshing every round (threshold 0).
A resume reads the bank from the checkpoint a block at a time, so it peaks no higher."""

import pytest

from conftest import lbgm, read_summary

MB = 1 << 20
ALLOWANCE = 512 * MB  # the target: bank + 2 d per local client + 0.5 GB
JOB = ["configs/default.toml", "--set", "data.name=synthetic", "--set", "data.partition=iid",
       "--set", "data.synthetic_samples=320", "--set", "data.synthetic_features=784",
       "--set", "model.name=mlp", "--set", "model.hidden=2535", "--set", "run.rounds=2",
       "--set", "algo.threshold=0", "--set", "clients.lr=0.01", "--set", "run.check_every=0",
       # the collectives' step buffers are a fixed cost of about 1.5 x system.max_message_bytes
       # (96 MB at the default 64 MiB, 12 of this model's updates): 16 MiB steps leave the
       # allowance to what the test is about
       "--set", f"system.max_message_bytes={16 << 20}", "--quiet"]


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    """summary.json of each (clients, bank dtype, bank storage) run, and of the 32-client float32
    replicated run resumed for a third round ("resumed")."""
    out = {}
    for clients, dtype, bank in [(8, "float32", "replicated"), (32, "float32", "replicated"),
                                 (32, "bfloat16", "replicated"), (32, "float32", "shared")]:
        folder = tmp_path_factory.mktemp(f"k{clients}-{dtype}-{bank}")
        lbgm(2, "train", *JOB, "--set", f"clients.count={clients}", "--set",
             f"system.bank_dtype={dtype}", "--set", f"system.bank={bank}", "--out", str(folder),
             timeout=300)
        out[clients, dtype, bank] = read_summary(folder)
        if (clients, dtype, bank) == (32, "float32", "replicated"):
            lbgm(2, "train", *JOB, "--set", f"clients.count={clients}", "--set", "run.rounds=3",
                 "--out", str(folder), "--resume", "latest", timeout=300)
            out["resumed"] = read_summary(folder)
    return out


def _budget(summary, clients: int, bank_bytes: int) -> int:
    d, local = summary["num_params"], clients // 2
    return bank_bytes + 2 * 4 * d * local + ALLOWANCE


@pytest.mark.mpi
@pytest.mark.bigmem
def test_peak_is_within_the_bank_plus_two_vectors_per_local_client(peaks):
    for key, s in peaks.items():
        (clients, dtype, bank) = (32, "float32", "replicated") if key == "resumed" else key
        per_rank_bank = s["bank_bytes_per_node"] // (1 if bank == "shared" else 2)
        for peak in s["peak_host_bytes_by_rank"]:
            assert peak <= _budget(s, clients, s["bank_bytes_per_node"] if bank == "shared"
                                   else per_rank_bank), \
                (key, f"peak {peak / MB:.0f} MB",
                 f"shared pages by rank {s['shared_host_bytes_by_rank']}")


@pytest.mark.mpi
@pytest.mark.bigmem
def test_more_clients_cost_their_bank_rows_and_updates_and_nothing_more(peaks):
    small, big = peaks[8, "float32", "replicated"], peaks[32, "float32", "replicated"]
    d = big["num_params"]
    bank_growth = (big["bank_bytes_per_node"] - small["bank_bytes_per_node"]) // 2
    allowed = bank_growth + 2 * 4 * d * (32 - 8) // 2 + 32 * MB
    for a, b in zip(small["peak_host_bytes_by_rank"], big["peak_host_bytes_by_rank"]):
        assert b - a <= allowed, f"peak grew {(b - a) / MB:.0f} MB, allowed {allowed / MB:.0f}"


@pytest.mark.mpi
@pytest.mark.bigmem
def test_bfloat16_bank_and_shared_bank_lower_the_peak_not_only_the_bank(peaks):
    f32 = peaks[32, "float32", "replicated"]
    bank = f32["bank_bytes_per_node"] // 2
    for peak, half in zip(f32["peak_host_bytes_by_rank"],
                          peaks[32, "bfloat16", "replicated"]["peak_host_bytes_by_rank"]):
        assert peak - half >= 0.5 * bank / 2, \
            f"bf16 must save most of half the bank at the peak: {peak / MB:.0f} MB against " \
            f"{half / MB:.0f} MB, bank {bank / MB:.0f} MB"
    shared = peaks[32, "float32", "shared"]
    assert shared["bank_bytes_per_node"] == f32["bank_bytes_per_node"] // 2
    # a rank maps the whole shared bank but touches only its half of the columns and the rows of
    # its own 16 clients (half of which lie in its columns): 3/4 of the bank, not all of it; the
    # root reads every row once more, to write the checkpoint
    root, other = shared["shared_host_bytes_by_rank"]
    assert 0.5 * bank <= other <= 0.75 * bank + 16 * MB, other / MB
    assert root <= bank + 16 * MB, root / MB


@pytest.mark.mpi
@pytest.mark.bigmem
def test_a_resume_peaks_no_higher_than_the_run_it_continues(peaks):
    # reading the 256 MB bank whole before copying it into place peaked 92 MB higher
    for ran, resumed in zip(peaks[32, "float32", "replicated"]["peak_host_bytes_by_rank"],
                            peaks["resumed"]["peak_host_bytes_by_rank"]):
        assert resumed <= ran + 32 * MB, (ran / MB, resumed / MB)


@pytest.mark.mpi
@pytest.mark.bigmem
def test_global_scope_costs_fedavg_plus_m_plus_2_vectors(tmp_path):
    """LBGM on the aggregate holds no K x d bank: at 32 clients its peak per rank stays within
    FedAvg's peak + (m + 2) x d x 4 bytes + 64 MB (m bank rows, the error-feedback residual, the
    aggregate; scratch in blocks). Threshold 0.9 with error feedback: round 1 is dense, later
    rounds send the record and are mostly scalar."""
    m, runs = 3, {}
    for name, algo in [("fedavg", ["--set", "algo.name=fedavg"]),
                       ("global", ["--set", "algo.scope=global", "--set", f"algo.lookback={m}",
                                   "--set", "algo.error_feedback=true",
                                   "--set", "algo.threshold=0.9"])]:
        lbgm(2, "train", *JOB, "--set", "clients.count=32", "--set", "run.rounds=3", *algo,
             "--out", str(tmp_path / name), timeout=300)
        runs[name] = read_summary(tmp_path / name)
    d = runs["global"]["num_params"]
    assert runs["global"]["bank_bytes_per_node"] == 0
    assert runs["global"]["total_scalars"] > 0, "the run never had a scalar round"
    for fed, glob in zip(runs["fedavg"]["peak_host_bytes_by_rank"],
                         runs["global"]["peak_host_bytes_by_rank"]):
        assert glob <= fed + (m + 2) * d * 4 + 64 * MB, \
            f"global peak {glob / MB:.0f} MB, FedAvg's {fed / MB:.0f} MB, d = {d}"
