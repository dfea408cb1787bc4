"""Threshold 0 is FedAvg: the global parameters agree to float32 rounding after every round
(one process; the multi-rank versions of this invariant are in test_mpi_invariants.py)."""

import torch

from lbgm_mpi.comm.mpi import Comm
from lbgm_mpi.config import load_config
from lbgm_mpi.training.loop import Trainer


def _trainer(tmp_path, name, *extra):
    spec = load_config("configs/default.toml",
                       ["run.rounds=10", "data.name=synthetic", f"algo.name={name}", *extra])
    return Trainer(spec, Comm(), tmp_path / name, quiet=True)


def test_parameters_match_fedavg_every_round(tmp_path, monkeypatch):
    monkeypatch.chdir(__import__("conftest").REPO)
    zero = _trainer(tmp_path, "lbgm", "algo.threshold=0", "server.momentum=0.9")
    fed = _trainer(tmp_path, "fedavg", "server.momentum=0.9")
    assert torch.equal(fed.theta, zero.theta)
    for _ in range(10):
        fed.step()
        zero.step()
        scale = fed.theta.abs().max().item()
        assert torch.allclose(zero.theta, fed.theta, rtol=1e-5, atol=1e-6 * scale)
    assert not torch.equal(fed.theta, _trainer(tmp_path, "fedavg").theta), "nothing trained"
