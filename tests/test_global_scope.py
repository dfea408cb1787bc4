"""The global scope's math in one process (float64 references): the orthonormal bank, the count
sketch and its stated error bound, linearity across ranks, the decision, PowerSGD's Allreduce
form, and the config rules."""

import numpy as np
import pytest
import torch

from lbgm_mpi.algorithm.global_lookback import (CountSketch, GlobalBank, decide_global,
                                                sketch_bound, sketch_widths)
from lbgm_mpi.compress.allreduce_powersgd import AllreducePowerSGD
from lbgm_mpi.config import load_config
from lbgm_mpi.errors import ConfigError
from lbgm_mpi.models.layout import Layout


def _segment_rows(bank, s):
    lo, hi = bank.bounds[s], bank.bounds[s + 1]
    return bank.rows[:bank.count[s], lo:hi].double()


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_bank_is_orthonormal_and_spans_the_last_m_aggregates(m):
    gen = torch.Generator().manual_seed(m)
    bounds = [0, 3000, 3001, 7000]
    bank, history = GlobalBank(bounds, m), {s: [] for s in range(3)}
    for _ in range(2 * m + 3):
        for s in range(3):
            a = torch.randn(bounds[s + 1] - bounds[s], generator=gen)
            history[s].append(a.double())
            bank.add(s, a)
            q = _segment_rows(bank, s)
            assert torch.allclose(q @ q.T, torch.eye(len(q), dtype=torch.float64), atol=1e-6)
            for k, kept in enumerate(history[s][-m:]):
                rebuilt = torch.from_numpy(bank.coords[s][k, :bank.count[s]]) @ q
                assert torch.allclose(rebuilt, kept, atol=2e-5 * kept.abs().max()), (s, k)
    assert bank.count == [m, 1, m]  # a one-value segment has one direction


def test_an_aggregate_in_the_span_adds_no_direction():
    bank = GlobalBank([0, 500], 3)
    a = torch.randn(500)
    bank.add(0, a)
    bank.add(0, 2.5 * a)
    assert bank.count == [1] and len(bank.coords[0]) == 2
    assert bank.coords[0][1, 0] == pytest.approx(2.5 * bank.coords[0][0, 0], rel=1e-6)


def test_coefficients_and_sketch_are_linear_across_ranks():
    """What the ranks send sums to what the aggregate itself would give: the Allreduce of the
    record is exact (up to float rounding)."""
    gen = torch.Generator().manual_seed(1)
    bounds, m = [0, 4000, 4010, 9000], 3
    bank = GlobalBank(bounds, m)
    for _ in range(m):
        for s in range(3):
            bank.add(s, torch.randn(bounds[s + 1] - bounds[s], generator=gen))
    sizes = [4000, 10, 5000]
    sketch = CountSketch(sizes, sketch_widths(sizes, 256), seed=7)
    parts = [torch.randn(9000, generator=gen) for _ in range(4)]

    def record(x):
        coefs = bank.coefficients(x)
        z = torch.zeros(sketch.size, dtype=torch.float64)
        bank.residual(x, coefs, sketch, z)
        return coefs, z

    summed = [sum(t) for t in zip(*map(record, parts))]
    whole = record(sum(parts))
    # float32 products of blocks: equal to float32 rounding of |x| |q| (~60 here)
    assert torch.allclose(summed[0], whole[0], rtol=1e-6, atol=1e-4)
    assert torch.allclose(summed[1], whole[1], rtol=1e-6, atol=1e-3)
    # the middle segment (10 values) is sent exactly: its sketch is the residual itself
    assert sketch.exact(1) and not sketch.exact(0)
    a = sum(parts).double()
    for s in range(3):
        lo, hi = bounds[s], bounds[s + 1]
        r = a[lo:hi] - whole[0][s] @ bank.rows[:, lo:hi].double()
        if sketch.exact(s):
            est = sketch.norms2(whole[1])[s]
            assert float(est) == pytest.approx(float(r @ r), rel=1e-6)


@pytest.mark.parametrize("width", [64, 256, 1024])
@pytest.mark.parametrize("kind", ["gaussian", "sparse", "heavy"])
def test_sketch_error_stays_within_its_stated_bound(width, kind):
    """Over 400 seeds, the relative error of |S r|^2 has mean ~0 and standard deviation at most
    sqrt(2 / w) (plus sampling slack), for dense, sparse and heavy-tailed residuals."""
    gen = torch.Generator().manual_seed(width)
    d = 20_000
    r = torch.randn(d, generator=gen, dtype=torch.float64)
    if kind == "sparse":
        r[torch.randperm(d, generator=gen)[200:]] = 0.0
    elif kind == "heavy":
        r = r ** 3
    truth = float(r @ r)
    errors = []
    for seed in range(400):
        sk = CountSketch([d], [width], seed)
        z = torch.zeros(width, dtype=torch.float64)
        sk.add(z, 0, 0, r)
        errors.append(float(sk.norms2(z)[0]) / truth - 1.0)
    errors = np.array(errors)
    bound = sketch_bound(width)
    assert abs(errors.mean()) <= 4 * bound / np.sqrt(len(errors))  # unbiased
    assert errors.std() <= 1.15 * bound, (errors.std(), bound)


def test_sketch_is_the_same_for_any_split_of_a_segment():
    """Ranks sketch blocks of a segment at any offset: bucket and sign depend on the position
    alone."""
    x = torch.randn(10_000, dtype=torch.float64)
    sk = CountSketch([10_000], [128], 3)
    whole, parts = torch.zeros(128, dtype=torch.float64), torch.zeros(128, dtype=torch.float64)
    sk.add(whole, 0, 0, x)
    for lo in range(0, 10_000, 3_333):
        sk.add(parts, 0, lo, x[lo:lo + 3_333])
    assert torch.allclose(whole, parts, rtol=1e-12, atol=1e-12)


def test_sketch_widths_keep_the_record_a_small_share_of_the_model():
    assert sketch_widths([11_000_000], 1024) == [1024]
    small = sketch_widths([4810], 1024)
    assert small[0] <= 4810 // 16
    layer = sketch_widths([10, 4800, 100], 1024)
    assert layer[0] == 10 and sum(layer) <= 4910 // 16 + 16  # tiny tensors go exactly


def test_decision():
    coefs = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    sketch = torch.tensor([25.0 / 4, 1.0, 0.0], dtype=torch.float64)  # sin^2 = 0.2, 0.5, 0/0
    usable = torch.tensor([True, True, True])
    refresh, sin2 = decide_global(coefs, sketch, usable, 0.2)
    assert sin2.tolist() == pytest.approx([0.2, 0.5, 0.0])
    assert refresh.tolist() == [False, True, False]
    assert decide_global(coefs, sketch, usable, 0.0)[0].all(), "threshold 0 is FedAvg"
    assert decide_global(coefs, sketch, ~usable, 0.9)[0].all(), "no direction: refresh"


def _layout():
    shapes = ((12, 3, 2, 2), (12,), (5, 12), (5,))
    bounds, at = [0], 0
    for s in shapes:
        at += int(np.prod(s))
        bounds.append(at)
    return Layout(tuple(f"t{i}" for i in range(4)), shapes, tuple(bounds), 4)


def test_allreduce_powersgd_is_its_authors_algorithm_and_linear():
    """Against the definition with explicit ranks: P = orth(sum M_p Q), Q' = sum M_p^T P,
    aggregate P Q'^T, rank p's residual M_p - P (M_p^T P)^T; vectors summed exactly."""
    layout, gen = _layout(), torch.Generator().manual_seed(0)
    xs = [torch.randn(layout.size, generator=gen) for _ in range(3)]
    psgd = AllreducePowerSGD(layout, 2, seed=5)
    assert set(psgd.plan) == {0, 2} and psgd.dense == [1, 3]
    q0 = {l: q.clone() for l, q in psgd.q.items()}
    # emulate three ranks: each call of allreduce returns the sum of what the ranks hand in
    calls = []

    def allreduce(t):
        calls.append(t)
        return t * 0 + sum_so_far[len(calls) - 1]

    first = [torch.cat([(x[:144].view(12, 12) @ q0[0]).reshape(-1),
                        x[156:216].view(5, 12).__matmul__(q0[2]).reshape(-1),
                        x[144:156], x[216:221], torch.tensor([1.0])]) for x in xs]
    p = {0: torch.linalg.qr(sum(f[:24] for f in first).view(12, 2)).Q,
         2: torch.linalg.qr(sum(f[24:34] for f in first).view(5, 2)).Q}
    second = [torch.cat([(x[:144].view(12, 12).T @ p[0]).reshape(-1),
                         (x[156:216].view(5, 12).T @ p[2]).reshape(-1)]) for x in xs]
    sum_so_far = [sum(first), sum(second)]
    out, residual, loss = psgd.exchange(xs[0], 1.0, allreduce)
    m = sum(xs)
    assert loss == pytest.approx(3.0)
    assert torch.allclose(out[:144].view(12, 12), p[0] @ p[0].T @ m[:144].view(12, 12),
                          atol=1e-4)
    assert torch.allclose(out[144:156], m[144:156]) and torch.allclose(out[216:], m[216:])
    mine = xs[0][:144].view(12, 12)
    assert torch.allclose(residual[:144].view(12, 12), mine - p[0] @ (mine.T @ p[0]).T,
                          atol=1e-5)
    assert residual[144:156].abs().max() == 0.0
    assert psgd.values_sent() == (24 + 10 + 12 + 5, 24 + 24)


@pytest.mark.parametrize("overrides, key", [
    (["algo.scope=global", "algo.compressor=topk"], "algo.compressor"),
    (["algo.scope=global", "algo.name=fedluar"], "algo.scope"),
    (["algo.scope=everywhere"], "algo.scope"),
    (["algo.scope=global", "algo.sketch=0"], "algo.sketch"),
    (["algo.error_feedback=true"], "algo.error_feedback"),
    (["algo.scope=global", "algo.compressor=powersgd", "algo.granularity=layer"],
     "algo.granularity"),
])
def test_config_rules_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, overrides)


def test_error_feedback_without_compressor_is_allowed_in_the_global_scope():
    spec = load_config(None, ["algo.scope=global", "algo.error_feedback=true"])
    assert spec.algo.error_feedback and spec.algo.compressor == "none"
