"""The star topology (system.topology = "star": rank 0 is the server) against the replicated one.

- the same math: every algorithm and compressor gives the same decisions and model in both
  topologies, at 1, 2 and 4 ranks (LBGM bit for bit: the server aggregates as a replica does;
  FedAvg to float32 summation order), and with a dedicated server;
- the byte ledger per rank: a client rank's uplink carries its own clients' records and
  payloads, its downlink one aggregate per round; the server's downlink carries all uplinks, its
  uplink the aggregate once per client rank; bytes reported equal bytes handed to MPI;
- memory: a client rank holds only its own clients' look-back rows, the server all of them;
- a checkpoint resumes in either topology, bit for bit;
- the configurations a star cannot run name their key.
"""

import numpy as np
import pytest
import torch

from conftest import REPO, lbgm, lbgm_batch, read_metrics, read_summary
from lbgm_mpi.comm.mpi import Comm
from lbgm_mpi.config import load_config
from lbgm_mpi.errors import ConfigError
from lbgm_mpi.exchange.records import record_dtype
from lbgm_mpi.topology import make_topology
from lbgm_mpi.training.loop import Trainer

CLIENTS = 8
BASE = ["--set", "data.name=synthetic", "--set", "model.name=mlp", "--set", "model.hidden=16",
        "--set", f"clients.count={CLIENTS}", "--set", "clients.per_round=6",
        "--set", "run.rounds=8", "--set", "clients.lr=0.1", "--set", "data.partition=shards",
        "--set", "data.classes_per_client=2", "--set", "algo.granularity=layer",
        "--set", "algo.threshold=0.3", "--set", "run.check_every=2",
        "--set", "system.max_message_bytes=4096"]  # payloads move in many steps
# every exchange: dense FedAvg, a compressor, LBGM per segment, its m = 3 variant, LBGM stacked
# on compressors (one with error feedback and compressor state), FedLUAR
METHODS = ["fedavg", "topk", "lbgm", "lbgm-m3", "topk+lbgm", "ef-powersgd+lbgm", "fedluar"]
EXACT = ("round", "participants", "refreshes", "scalars", "uplink_bytes", "dense_uplink_bytes",
         "test_acc", "test_loss", "train_loss")
DENSE = ("fedavg", "fedluar")  # summed over ranks: equal to float32 summation order
HEADER_BYTES = 6 * 8           # the traffic figures the server sends with the aggregate


RESUMED = ["--set", "algo.name=lbgm", "--set", "algo.compressor=powersgd",
           "--set", "algo.error_feedback=true", "--set", "algo.granularity=model"]
HUNDRED = [*BASE, "--set", "clients.count=100", "--set", "clients.per_round=10",
           "--set", "run.rounds=6", "--set", "data.partition=iid"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three jobs: every method in both topologies, in one compare at 2 and one at 4 ranks; the
    star with a dedicated server at 3 ranks (2 client ranks). Their other commands: 4 rounds of
    the stacked method in each topology at 2 ranks, resumed at 4 ranks in the other topology;
    100 clients replicated at 2 ranks and in a star of 4 ranks with a dedicated server."""
    both = ",".join(METHODS + [f"{m}@star" for m in METHODS])
    out = {np_: tmp_path_factory.mktemp(f"star{np_}") for np_ in (2, 4, "dedicated")}
    cut = {t: out[2] / f"cut-{t}" for t in ("star", "replicated")}
    hundred = {t: out[4] / f"hundred-{t}" for t in ("star", "replicated")}
    compare = lambda np_: ["compare", "configs/default.toml", *BASE, "--methods", both,
                           "--out", str(out[np_]), "--quiet"]
    train = lambda *a: ["train", "configs/default.toml", *a, "--quiet"]
    lbgm_batch(2, compare(2),
               *[train(*BASE, *RESUMED, "--set", "run.rounds=4", "--set",
                       f"system.topology={t}", "--out", str(cut[t])) for t in cut],
               train(*HUNDRED, "--out", str(hundred["replicated"])))
    # resumed in the other topology, at another rank count, in another job than the cut
    lbgm_batch(4, compare(4),
               *[train(*BASE, *RESUMED, "--set", f"system.topology={other}", "--out",
                       str(cut[t]), "--resume", "latest")
                 for t, other in (("star", "replicated"), ("replicated", "star"))],
               train(*HUNDRED, "--set", "system.topology=star", "--set",
                     "system.server=dedicated", "--out", str(hundred["star"])))
    # the base config in the star: every method runs there (folder names without "@star")
    lbgm_batch(3, ["compare", "configs/default.toml", *BASE, "--set", "system.topology=star",
                   "--set", "system.server=dedicated", "--methods", ",".join(METHODS),
                   "--out", str(out["dedicated"]), "--quiet"])
    return {**out, "cut": cut, "hundred": hundred}


def _star(runs, np_, method):
    """The folder of ``method`` run in the star (with a dedicated server: the base config's)."""
    return runs[np_] / (method if np_ == "dedicated" else f"{method}@star")


def _exact(rows):
    return [{k: r[k] for k in EXACT} for r in rows]


def _close(star, replicated):
    """Decisions equal, accuracy within one test example, losses within 1e-4."""
    assert [(r["refreshes"], r["scalars"], r["uplink_bytes"]) for r in star] == \
        [(r["refreshes"], r["scalars"], r["uplink_bytes"]) for r in replicated]
    for a, b in zip(star, replicated):
        assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 400 + 1e-12, (a, b)
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4, (a, b)


@pytest.mark.mpi
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("np_", [2, 4, "dedicated"])
def test_star_computes_what_the_replicas_compute(runs, np_, method):
    reference = read_metrics(runs[2] / method)  # replicated at 2 ranks
    star = read_metrics(_star(runs, np_, method))
    assert len(star) == 8
    if method in DENSE:
        _close(star, reference)
    else:
        assert _exact(star) == _exact(reference)
    if method in ("lbgm", "lbgm-m3", "topk+lbgm"):
        assert sum(r["scalars"] for r in star) > 0, "the run never sent a scalar"


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["fedavg", "lbgm", "topk+lbgm"])
def test_replicated_runs_agree_across_rank_counts_here_too(runs, method):
    """The comparison above is against a sound reference: 2 and 4 replicated ranks agree."""
    a, b = read_metrics(runs[2] / method), read_metrics(runs[4] / method)
    if method in DENSE:
        _close(a, b)
    else:
        assert _exact(a) == _exact(b)


def _itemsize(summary_dir, m: int) -> int:
    """Bytes of one participant's record in the run at ``summary_dir`` (per-segment records)."""
    spec = load_config(summary_dir / "config.toml")
    from lbgm_mpi.data.datasets import describe
    from lbgm_mpi.models import build_model
    from lbgm_mpi.models.layout import layout_of
    in_shape, classes, _ = describe(spec.data)
    segments = len(layout_of(build_model(spec.model, in_shape, classes, 0)).bounds) - 1
    return record_dtype(segments, m).itemsize


@pytest.mark.mpi
@pytest.mark.parametrize("method,m", [("lbgm", 1), ("lbgm-m3", 3)])
def test_a_client_rank_uplinks_its_own_clients_and_downlinks_one_aggregate(runs, method, m):
    """Dedicated server: all uplink bytes are clients' records and payloads (nothing else), the
    downlink of every client rank is one aggregate and the round's figures per round."""
    run = _star(runs, "dedicated", method)
    rows, summary = read_metrics(run), read_summary(run)
    up, down = summary["link_up_bytes_by_rank"], summary["link_down_bytes_by_rank"]
    d, ranks, rounds = summary["num_params"], len(up), len(rows)
    record = _itemsize(run, m)
    aggregate = 4 * d + HEADER_BYTES
    # what the clients sent: a record each, their refreshed segments, no coefficients apart
    clients_sent = sum(r["participants"] * record + r["uplink_bytes"] - 4 * m * r["scalars"]
                       for r in rows)
    assert sum(up[1:]) == clients_sent == down[0]
    assert down[1:] == [rounds * aggregate] * (ranks - 1)
    assert up[0] == (ranks - 1) * rounds * aggregate
    # bytes reported equal bytes handed to MPI: each rank hands MPI exactly what its link sends
    assert summary["mpi_bytes_by_rank"] == up
    for r in rows:
        assert r["mpi_bytes"] == (r["participants"] * record + r["uplink_bytes"]
                                  - 4 * m * r["scalars"] + (ranks - 1) * aggregate)
        assert r["downlink_bytes"] == aggregate
        # the server's link paces the round: all uplinks in, then the aggregates out
        assert r["link_bytes"] == r["mpi_bytes"]


@pytest.mark.mpi
def test_fedavg_star_moves_one_sum_per_client_rank_each_way(runs):
    run = _star(runs, "dedicated", "fedavg")
    rows, summary = read_metrics(run), read_summary(run)
    up, down = summary["link_up_bytes_by_rank"], summary["link_down_bytes_by_rank"]
    vector, rounds = 4 * (summary["num_params"] + 1), len(rows)
    assert down[1:] == [rounds * vector] * (len(up) - 1)
    assert up[0] == (len(up) - 1) * rounds * vector
    assert down[0] == sum(up[1:])
    assert all(u % vector == 0 and 0 < u <= rounds * vector for u in up[1:])


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [4, "dedicated"])
def test_only_the_server_holds_the_whole_bank(runs, np_):
    summary = read_summary(_star(runs, np_, "lbgm-m3"))
    replicated = read_summary(runs[4] / "lbgm-m3")
    per_client = 3 * 4 * summary["num_params"]
    banks = summary["bank_bytes_by_rank"]
    assert banks[0] == CLIENTS * per_client == replicated["bank_bytes_by_rank"][0]
    hosted = [CLIENTS // 2] * 2 if np_ == "dedicated" else [CLIENTS // 4] * 3
    assert banks[1:] == [n * per_client for n in hosted]
    assert replicated["bank_bytes_by_rank"] == [CLIENTS * per_client] * 4


@pytest.mark.mpi
@pytest.mark.parametrize("first,second", [("star", "replicated"), ("replicated", "star")])
def test_a_checkpoint_resumes_in_the_other_topology(runs, first, second):
    """4 rounds in one topology on 2 ranks, 4 more in the other on 4 ranks = 8 uninterrupted, bit
    for bit (LBGM with error feedback on a compressor: bank rows, cursors and client states all
    travel)."""
    name = "ef-powersgd+lbgm" + ("@star" if second == "star" else "")
    straight = read_metrics(runs[2] / name)
    resumed = read_metrics(runs["cut"][first])
    # mpi and link bytes of the first 4 rounds are those of the other topology
    assert _exact(resumed) == _exact(straight)
    assert sum(r["scalars"] for r in straight) > 0


def _trainer(tmp_path, topology, *extra):
    spec = load_config(REPO / "configs/default.toml",
                       ["run.rounds=6", "data.name=synthetic", "algo.threshold=0.3",
                        f"system.topology={topology}", *extra])
    return Trainer(spec, Comm(), tmp_path / topology, quiet=True)


@pytest.mark.parametrize("algo", ["fedavg", "lbgm"])
def test_one_rank_star_is_the_replicated_run(tmp_path, monkeypatch, algo):
    monkeypatch.chdir(REPO)
    star = _trainer(tmp_path, "star", f"algo.name={algo}")
    replicated = _trainer(tmp_path, "replicated", f"algo.name={algo}")
    for _ in range(6):
        a, b = star.step(), replicated.step()
        assert torch.equal(star.theta, replicated.theta)
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
    assert not torch.equal(star.theta, _trainer(tmp_path / "x", "star").theta), "nothing trained"


def test_threshold_zero_is_fedavg_in_the_star(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    zero = _trainer(tmp_path / "zero", "star", "algo.name=lbgm", "algo.threshold=0")
    fed = _trainer(tmp_path / "fed", "star", "algo.name=fedavg")
    for _ in range(6):
        zero.step(), fed.step()
        scale = fed.theta.abs().max().item()
        assert torch.allclose(zero.theta, fed.theta, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("overrides,key", [
    (["system.topology=star", "algo.scope=global"], "algo.scope"),
    (["system.topology=star", "system.bank=shared"], "system.bank"),
    (["system.server=dedicated"], "system.server"),
    (["system.topology=ring"], "system.topology"),
])
def test_what_a_star_cannot_run_names_its_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(REPO / "configs/default.toml", overrides)


def test_a_dedicated_server_places_clients_on_the_other_ranks():
    topo = make_topology(0, 3, 5, "cyclic", "star", "dedicated")
    assert topo.host == (1, 2, 1, 2, 1) and topo.local_clients == () and topo.aggregates
    assert make_topology(2, 3, 5, "block", "star", "dedicated").local_clients == (3, 4)
    assert not make_topology(1, 3, 5, "cyclic", "star").aggregates
    with pytest.raises(ConfigError, match="system.server"):
        make_topology(0, 1, 5, "cyclic", "star", "dedicated")
    with pytest.raises(ConfigError, match="clients.count"):
        make_topology(0, 4, 2, "cyclic", "star", "dedicated")


@pytest.mark.mpi
def test_a_dedicated_server_on_one_rank_is_one_line(tmp_path):
    done = lbgm(1, "train", "configs/default.toml", "--set", "data.name=synthetic",
                "--set", "system.topology=star", "--set", "system.server=dedicated",
                "--out", str(tmp_path / "x"), check=False)
    assert done.returncode == 2
    assert "system.server" in done.stderr and "at least 2 MPI ranks" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_record_sizes_in_the_ledger_test_are_the_wire_records():
    """The ledger test's record size is the exchange's record (no padding assumed)."""
    assert record_dtype(4, 1).itemsize == 4 + 4 + 8 + 4 + 4 * 4
    assert record_dtype(4, 3).itemsize == 4 + 4 + 8 + 4 + 4 * 4 * 3
    assert np.dtype(record_dtype(4, 3)).isbuiltin == 0


MB = 1 << 20
MEMORY_JOB = ["configs/default.toml", "--set", "data.name=synthetic", "--set", "data.partition=iid",
              "--set", "data.synthetic_samples=320", "--set", "data.synthetic_features=784",
              "--set", "model.name=mlp", "--set", "model.hidden=2535", "--set", "run.rounds=2",
              "--set", "algo.threshold=0", "--set", "clients.lr=0.01", "--set",
              "run.check_every=0", "--set", "clients.count=32",
              "--set", f"system.max_message_bytes={16 << 20}", "--quiet"]


@pytest.mark.mpi
@pytest.mark.bigmem
def test_a_client_ranks_peak_holds_its_own_rows_not_the_bank(tmp_path):
    """2 ranks, 32 clients, 2M parameters, every client refreshing: rank 1 hosts the same 16
    clients in both topologies; in the star it holds their rows only (128 MB less than the 256 MB
    bank), and its peak drops by at least three quarters of that; the server holds the bank."""
    summaries = {}
    for topology in ("replicated", "star"):
        lbgm(2, "train", *MEMORY_JOB, "--set", f"system.topology={topology}",
             "--out", str(tmp_path / topology), timeout=300)
        summaries[topology] = read_summary(tmp_path / topology)
    star, replicated = summaries["star"], summaries["replicated"]
    rows = 4 * star["num_params"]
    assert star["bank_bytes_by_rank"] == [32 * rows, 16 * rows]
    assert replicated["bank_bytes_by_rank"] == [32 * rows, 32 * rows]
    assert star["bank_bytes_per_node"] == 48 * rows
    saved = replicated["peak_host_bytes_by_rank"][1] - star["peak_host_bytes_by_rank"][1]
    assert saved >= 0.75 * 16 * rows, f"rank 1 saved {saved / MB:.0f} MB"
    # the server's peak: no higher than a replica's (it holds the same bank)
    assert star["peak_host_bytes_by_rank"][0] <= replicated["peak_host_bytes_by_rank"][0] + 32 * MB


@pytest.mark.mpi
def test_a_hundred_clients_in_a_star(runs):
    """The paper's client count: 100 clients on 3 client ranks and a dedicated server, 10 per
    round, LBGM per segment: the same decisions and model as the replicated topology, and the
    server's downlink is exactly every client's record and refresh."""
    star_dir = runs["hundred"]["star"]
    star, replicated = read_metrics(star_dir), read_metrics(runs["hundred"]["replicated"])
    assert _exact(star) == _exact(replicated)
    assert sum(r["scalars"] for r in star) > 0
    summary = read_summary(star_dir)
    record = _itemsize(star_dir, 1)
    assert summary["link_down_bytes_by_rank"][0] == sum(
        r["participants"] * record + r["uplink_bytes"] - 4 * r["scalars"] for r in star)
    per_client = 4 * summary["num_params"]
    assert summary["bank_bytes_by_rank"] == [100 * per_client] + [n * per_client
                                                                  for n in (34, 33, 33)]


def test_the_memory_check_counts_the_servers_bank_once_per_node():
    """Before a start: in a star of 4 ranks on a node (a dedicated server, 3 client ranks of 4 of
    12 clients each), the node needs the server's bank and each client rank's own rows, not 4
    banks."""
    from lbgm_mpi.runs.preflight import _needs
    bank_of = lambda needs: next(v for k, v in needs.items() if k.startswith("look-back bank"))
    sets = ["algo.name=lbgm", "clients.count=12", "algo.lookback=2"]
    replicated = load_config(REPO / "configs/default.toml", sets)
    star = load_config(REPO / "configs/default.toml",
                       [*sets, "system.topology=star", "system.server=dedicated"])
    params = 1000
    bank = 12 * 2 * params * 4
    assert bank_of(_needs(replicated, 4, 4, params, 0, 0)) == bank
    assert bank_of(_needs(star, 4, 4, params, 0, 0)) * 4 == bank + 3 * (bank // 3)


@pytest.mark.gpu
@pytest.mark.mpi
@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA device")
@pytest.mark.parametrize("method", ["fedavg", "lbgm", "topk+lbgm"])
def test_a_star_on_the_gpu_is_the_replicated_run_on_the_gpu(tmp_path, method):
    """3 ranks sharing one GPU (rank 0 also hosts clients): device tensors through the sends give
    the replicated topology's decisions and accuracy."""
    gpu = ["--set", "system.device=cuda", "--set", "system.allow_gpu_sharing=true"]
    lbgm(3, "compare", "configs/default.toml", *BASE, *gpu, "--methods", f"{method},{method}@star",
         "--out", str(tmp_path), "--quiet")
    replicated, star = read_metrics(tmp_path / method), read_metrics(tmp_path / f"{method}@star")
    if method in DENSE:
        _close(star, replicated)
    else:
        assert _exact(star) == _exact(replicated)
