"""float64 identities of the LBGM decision (lbgm_mpi.algorithm.lbgm) and the bank."""

import math

import pytest
import torch

from lbgm_mpi.algorithm.bank import LookbackBank
from lbgm_mpi.algorithm.lbgm import decide, decide_span, phase_error
from lbgm_mpi.kernels.torch_ops import TorchKernels

f64 = lambda *v: torch.tensor(v, dtype=torch.float64)


def _stats(g, b):
    return f64(float(g @ b)), f64(float(g @ g)), f64(float(b @ b))


def test_rho_and_sin2_match_geometry():
    gen = torch.Generator().manual_seed(1)
    b = torch.randn(1000, generator=gen, dtype=torch.float64)
    g = 0.7 * b + 0.2 * torch.randn(1000, generator=gen, dtype=torch.float64)
    rho, err = phase_error(*_stats(g, b))
    cos = float(g @ b) / (g.norm() * b.norm())
    assert rho.item() == pytest.approx(float(g @ b) / float(b @ b), rel=1e-14)
    assert err.item() == pytest.approx(1 - cos.item() ** 2, rel=1e-12)
    # the scalar reconstruction rho * b is the orthogonal projection of g on b
    residual = g - rho.item() * b
    assert abs(float(residual @ b)) < 1e-9 * float(b @ b)
    assert float(residual @ residual) == pytest.approx(err.item() * float(g @ g), rel=1e-10)


def test_parallel_and_orthogonal_vectors():
    b = torch.randn(50, dtype=torch.float64)
    rho, err = phase_error(*_stats(-3.0 * b, b))
    assert rho.item() == pytest.approx(-3.0) and err.item() == pytest.approx(0.0, abs=1e-14)
    e0 = torch.zeros(4, dtype=torch.float64); e0[0] = 1
    e1 = torch.zeros(4, dtype=torch.float64); e1[1] = 2
    rho, err = phase_error(*_stats(e1, e0))
    assert rho.item() == 0.0 and err.item() == 1.0


def test_decision_at_the_threshold():
    angle = math.radians(30)  # sin^2 = 0.25
    b = f64(1.0, 0.0)
    g = f64(math.cos(angle), math.sin(angle))
    dot, gn, bn = _stats(g, b)
    valid = torch.tensor([True])
    err = phase_error(dot, gn, bn)[1].item()
    assert err == pytest.approx(0.25, abs=1e-15)
    assert not decide(dot, gn, bn, valid, err).refresh.item()          # error == threshold: scalar
    assert decide(dot, gn, bn, valid, err - 1e-12).refresh.item()      # just below: refresh
    assert not decide(dot, gn, bn, valid, 1.0).refresh.item()


def test_threshold_zero_always_refreshes_even_when_parallel():
    b = f64(1.0, 2.0)
    dec = decide(*_stats(2 * b, b), torch.tensor([True]), 0.0)
    assert dec.refresh.item()


def test_no_lookback_or_zero_norm_lookback_forces_refresh():
    g, b = f64(1.0, 1.0), f64(1.0, 1.0)
    assert decide(*_stats(g, b), torch.tensor([False]), 0.9).refresh.item()
    zero = f64(0.0, 0.0)
    assert decide(*_stats(g, zero), torch.tensor([True]), 0.9).refresh.item()


def test_zero_update_is_a_zero_scalar():
    b = f64(1.0, -1.0)
    dec = decide(*_stats(f64(0.0, 0.0), b), torch.tensor([True]), 0.1)
    assert not dec.refresh.item() and dec.rho.item() == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_update_is_refused(bad):
    with pytest.raises(FloatingPointError):
        decide(f64(bad), f64(1.0), f64(1.0), torch.tensor([True]), 0.5)


def test_per_segment_decisions_are_independent():
    dot, gn, bn = f64(1.0, 0.0), f64(1.0, 1.0), f64(1.0, 1.0)   # parallel, orthogonal
    dec = decide(dot, gn, bn, torch.tensor([True, True]), 0.5)
    assert dec.refresh.tolist() == [False, True]


def _bank(clients=3, bounds=(0, 2, 5), lookback=1, local=(0, 1, 2), node=None):
    bounds = torch.tensor(bounds)
    rows = torch.zeros(clients * lookback, int(bounds[-1]), dtype=torch.float64)
    return LookbackBank(rows, clients, bounds, lookback, local, TorchKernels().project,
                        **({"node": node} if node else {}))


def test_bank_write_marks_zero_rows_invalid_and_caches_norms():
    bank = _bank()
    bank.begin_writes()
    bank.write(1, 0, torch.tensor([3.0, 4.0]))
    bank.write(1, 1, torch.zeros(3))
    bank.end_writes({1: [0, 1]})
    assert bank.norm2(1)[:, 0].tolist() == [25.0, 0.0]
    assert bank.valid(1)[:, 0].tolist() == [True, False]
    assert bank.rows[1].tolist() == [3.0, 4.0, 0.0, 0.0, 0.0]
    assert not bank.valid(0).any() and not bank.valid(2).any()


def test_bank_slots_fill_in_turn_and_keep_the_gram_matrix_of_what_is_stored():
    bank = _bank(clients=2, bounds=(0, 3), lookback=2, local=(1,))
    rng = torch.Generator().manual_seed(0)
    written = []
    for _ in range(3):  # slots 0, 1, then 0 again (the oldest)
        x = torch.randn(3, generator=rng, dtype=torch.float64)
        bank.begin_writes()
        bank.write(1, 0, x)
        bank.end_writes({1: [0]})
        written.append(x)
    assert torch.equal(bank.slot_row(1, 0), written[2]) and torch.equal(bank.slot_row(1, 1),
                                                                         written[1])
    b = torch.stack([written[2], written[1]])
    assert torch.allclose(bank.gram[1][0], b @ b.T, rtol=1e-15)
    assert bank.cursor[1, 0] == 1 and bank.cursor[0, 0] == 0
    kept = bank.gram[1].clone()
    bank.rebuild_gram()
    assert torch.equal(bank.gram[1], kept), "a restore must rebuild the same Gram matrices"


def test_a_node_rank_writes_only_its_columns():
    from lbgm_mpi.algorithm.bank import Node, column_slice
    d = 200
    assert column_slice(d, 0, 2) == (0, 128) and column_slice(d, 1, 2) == (128, 200)
    bank = _bank(clients=1, bounds=(0, 150, d), local=(), node=Node(rank=1, size=2))
    bank.write(0, 1, torch.arange(50, dtype=torch.float64) + 1.0)
    bank.write_at(0, 100, torch.full((60,), -1.0, dtype=torch.float64))  # straddles the slices
    assert bank.rows[0, :128].eq(0).all() and bank.rows[0, 128:160].eq(-1).all()
    bank.write(0, 1, torch.arange(50, dtype=torch.float64) + 1.0)
    assert bank.rows[0, :128].eq(0).all() and bank.rows[0, 150:].tolist() == list(range(1, 51))


def test_span_decision_with_one_slot_is_the_paper_rule():
    g, b = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    for target in (g + 0.1 * b, b + 0.5 * g, -3 * b):
        dot, gn, bn = f64(target @ b), f64(target @ target), f64(b @ b)
        one = decide(dot, gn, bn, torch.tensor([True]), 0.3)
        span = decide_span(dot[:, None], gn, bn[:, None, None], torch.tensor([[True]]), 0.3)
        assert span.refresh.tolist() == one.refresh.tolist()
        assert span.rho[:, 0].item() == pytest.approx(one.rho.item(), rel=1e-12)
        assert span.error.item() == pytest.approx(one.error.item(), rel=1e-9, abs=1e-12)


def test_span_decision_projects_on_every_slot_and_stays_bounded_when_they_are_parallel():
    gen = torch.Generator().manual_seed(1)
    basis = torch.randn(3, 400, generator=gen, dtype=torch.float64)
    g = 0.5 * basis[0] - 2.0 * basis[2]
    valid = torch.ones(1, 3, dtype=torch.bool)
    dec = decide_span((basis @ g)[None], (g @ g)[None], (basis @ basis.T)[None], valid, 1e-6)
    assert not dec.refresh.item() and dec.error.item() < 1e-12
    assert dec.rho[0].tolist() == pytest.approx([0.5, 0.0, -2.0], abs=1e-9)
    near = torch.stack([basis[0], basis[0] + 1e-10 * basis[1], basis[2]])
    dec = decide_span((near @ g)[None], (g @ g)[None], (near @ near.T)[None], valid, 0.5)
    assert dec.rho.abs().max() < 10, "nearly parallel slots must not blow the coefficients up"
    assert dec.error.item() < 1e-9
    only_first = torch.tensor([[True, False, False]])
    dec = decide_span((basis @ g)[None], (g @ g)[None], (basis @ basis.T)[None], only_first, 0.99)
    assert dec.rho[0, 1:].tolist() == [0.0, 0.0], "an invalid slot gets no coefficient"


def test_threshold_schedule():
    from lbgm_mpi.algorithm.lbgm import scheduled_threshold
    assert [scheduled_threshold(0.2, 0.5, 2, r) for r in (1, 2, 3, 4, 5)] == [0, 0, 0.2, 0.1,
                                                                             0.05]
    assert scheduled_threshold(0.3, 1.0, 0, 100) == 0.3


def test_server_momentum_leaves_buffers_as_plain_averages():
    from lbgm_mpi.algorithm.server import ServerOptimizer
    theta = torch.tensor([1.0, 1.0, 4.0])          # two parameters, then one buffer
    server = ServerOptimizer(3, lr=0.5, momentum=0.9, param_size=2)
    delta = torch.tensor([1.0, -1.0, 3.0])          # buffer: 4 - 3 = the clients' mean 1.0
    server.step(theta, delta)
    server.step(theta, torch.tensor([1.0, -1.0, 0.0]))
    assert theta[2].item() == 1.0                    # no momentum, no learning rate
    assert theta[:2].tolist() == pytest.approx([1 - 0.5 - 0.5 * 1.9, 1 + 0.5 + 0.5 * 1.9])
