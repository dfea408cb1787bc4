"""Compressors, one process: round trips, exact selections and honest payload sizes.

Inputs are random and non-zero, drawn in float64 and rounded once to float32 (the wire precision);
references are computed in float64 from those float32 values.
"""

import math

import pytest
import torch

from lbgm_mpi.compress import (AtomoCompressor, ErrorFeedback, PowerSGDCompressor,
                               RandomKCompressor, SignCompressor, TopKCompressor, make_compressor)
from lbgm_mpi.compress.packing import pack, unpack
from lbgm_mpi.config import COMPRESSORS
from lbgm_mpi.compress.sign import pack_bits, unpack_bits
from lbgm_mpi.compress.topk import keep_count
from lbgm_mpi.models.layout import Layout

# conv weight, its bias, an odd 7-wide layer with its bias, a scalar
SHAPES = [(5, 3, 3, 3), (5,), (7, 20), (7,), ()]
NAMES = list(COMPRESSORS[1:])  # every compressor the config offers


def make_layout(shapes) -> Layout:
    bounds = [0]
    for shape in shapes:
        bounds.append(bounds[-1] + math.prod(shape))
    return Layout(tuple(f"t{i}" for i in range(len(shapes))), tuple(shapes), tuple(bounds))


def random_update(d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(d, dtype=torch.float64, generator=gen)
    x += torch.sign(x) * 1e-3  # keep every entry away from zero
    return x.to(torch.float32)


def build(name: str, layout: Layout, error_feedback: bool = False):
    return make_compressor(name, layout, ratio=0.25, rank=2, seed=7,
                           error_feedback=error_feedback)


def segments(x: torch.Tensor, layout: Layout):
    return [x[lo:hi] for lo, hi in zip(layout.bounds[:-1], layout.bounds[1:])]


@pytest.mark.parametrize("error_feedback", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_payload_is_bytes_and_receiver_needs_only_it(name, error_feedback):
    layout = make_layout(SHAPES)
    x = random_update(layout.size)
    x_before = x.clone()
    sender, receiver = build(name, layout, error_feedback), build(name, layout, error_feedback)
    payload = sender.compress(x, {})
    assert payload.dtype == torch.uint8 and payload.dim() == 1
    assert payload.numel() == sender.payload_nbytes
    assert torch.equal(x, x_before)
    rebuilt = receiver.decompress(payload)
    assert rebuilt.dtype == torch.float32 and rebuilt.shape == (layout.size,)
    assert torch.equal(rebuilt, sender.decompress(payload))


@pytest.mark.parametrize("name", NAMES)
def test_error_feedback_keeps_what_was_dropped(name):
    layout = make_layout(SHAPES)
    ef, state = build(name, layout, error_feedback=True), {}
    x1, x2 = random_update(layout.size, 1), random_update(layout.size, 2)
    sent = ef.decompress(ef.compress(x1, state))
    torch.testing.assert_close(sent + state["ef_residual"], x1, rtol=0, atol=1e-6)
    carried = state["ef_residual"].clone()
    sent = ef.decompress(ef.compress(x2, state))
    torch.testing.assert_close(sent + state["ef_residual"], x2 + carried, rtol=0, atol=1e-6)


def test_topk_keeps_exactly_the_largest_per_layer():
    layout = make_layout(SHAPES)
    x = random_update(layout.size)
    comp = TopKCompressor(layout, ratio=0.25)
    payload = comp.compress(x, {})
    ks = [max(1, math.ceil(0.25 * math.prod(s))) for s in SHAPES]
    assert list(comp.k_per_layer) == ks
    assert payload.numel() == sum(8 * k for k in ks)
    for seg, out, k in zip(segments(x, layout), segments(comp.decompress(payload), layout), ks):
        largest = torch.argsort(seg.double().abs(), descending=True)[:k]
        expected = torch.zeros_like(seg)
        expected[largest] = seg[largest]
        assert torch.equal(out, expected)


def test_keep_count_rounds_up_without_float_noise():
    assert keep_count(0.1, 30) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point
    assert keep_count(0.1, 31) == 4
    assert keep_count(1e-6, 7) == 1
    assert keep_count(1.0, 7) == 7


def test_randomk_indices_distinct_in_range_and_keyed_by_call():
    layout = make_layout([(40, 30), (7,), (1001,)])
    x = random_update(layout.size)
    comp, state = RandomKCompressor(layout, ratio=0.1, seed=3), {}
    ks = [120, 1, 101]
    first = comp.compress(x, state)
    assert first.numel() == comp.payload_nbytes == sum(8 * k for k in ks)
    values, local = unpack(first, [(torch.float32, sum(ks)), (torch.int32, sum(ks))])
    for idx, val, seg, k in zip(local.split(ks), values.split(ks), segments(x, layout), ks):
        assert idx.unique().numel() == k
        assert 0 <= int(idx.min()) and int(idx.max()) < seg.numel()
        assert torch.equal(val, seg[idx.long()])
    assert int(state["randk_calls"]) == 1
    second = comp.compress(x, state)
    assert not torch.equal(first, second)
    assert torch.equal(first, RandomKCompressor(layout, ratio=0.1, seed=3).compress(x, {}))


@pytest.mark.parametrize("n", [1, 7, 9, 1001])
def test_sign_packing_round_trip_on_odd_lengths(n):
    bits = random_update(n, n) >= 0
    packed = pack_bits(bits)
    assert packed.numel() == math.ceil(n / 8)
    assert torch.equal(unpack_bits(packed, n), bits)


def test_sign_sends_scaled_signs_and_zero_counts_as_positive():
    sizes = [1, 7, 9, 1001]
    layout = make_layout([(n,) for n in sizes])
    x = random_update(layout.size)
    x[3] = 0.0
    comp = SignCompressor(layout)
    payload = comp.compress(x, {})
    assert payload.numel() == sum(math.ceil(n / 8) + 4 for n in sizes)
    out = SignCompressor(layout).decompress(payload)
    for seg, got in zip(segments(x, layout), segments(out, layout)):
        scale = seg.double().abs().mean()
        torch.testing.assert_close(got.double().abs(), scale.expand(seg.numel()), rtol=1e-6, atol=0)
        assert torch.equal(got > 0, seg >= 0)


def lowrank_bytes(shapes, rank, per_matrix) -> int:
    total = 0
    for shape in shapes:
        if len(shape) < 2:
            total += 4 * math.prod(shape)
        else:
            m, n = shape[0], math.prod(shape[1:])
            total += 4 * per_matrix(m, n, min(rank, m, n))
    return total


def test_atomo_full_rank_is_exact_and_size_matches():
    layout = make_layout(SHAPES)
    x = random_update(layout.size)
    full = AtomoCompressor(layout, rank=100)
    torch.testing.assert_close(full.decompress(full.compress(x, {})), x, rtol=0, atol=1e-5)
    for rank in (1, 2, 100):
        comp = AtomoCompressor(layout, rank=rank)
        expected = lowrank_bytes(SHAPES, rank, lambda m, n, r: r * (m + n + 1))
        assert comp.compress(x, {}).numel() == comp.payload_nbytes == expected


def test_atomo_gives_the_best_rank_r_approximation():
    layout = make_layout([(7, 20)])
    x = random_update(layout.size)
    u, s, vh = torch.linalg.svd(x.double().view(7, 20))
    best = (u[:, :2] * s[:2]) @ vh[:2]
    payload = AtomoCompressor(layout, rank=2).compress(x, {})
    out = AtomoCompressor(layout, rank=2).decompress(payload)
    torch.testing.assert_close(out.double(), best.reshape(-1), rtol=0, atol=1e-5)


def low_rank_update(layout: Layout, true_rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    parts = []
    for shape in layout.shapes:
        if len(shape) < 2:
            parts.append(torch.randn(math.prod(shape), dtype=torch.float64, generator=gen))
        else:
            m, n = shape[0], math.prod(shape[1:])
            a = torch.randn(m, true_rank, dtype=torch.float64, generator=gen)
            b = torch.randn(true_rank, n, dtype=torch.float64, generator=gen)
            parts.append((a @ b).view(-1))
    return torch.cat(parts).to(torch.float32)


def test_powersgd_warm_start_and_low_rank_recovery():
    shapes = [(9, 4, 3, 3), (9,), (7, 20), (7,)]
    layout = make_layout(shapes)
    x = low_rank_update(layout, true_rank=2)
    comp, state = PowerSGDCompressor(layout, rank=3, seed=11), {}
    first = comp.compress(x, state)
    assert sorted(state) == ["psgd_q0", "psgd_q2"]
    assert state["psgd_q0"].shape == (36, 3) and state["psgd_q2"].shape == (20, 3)
    # every client starts from the same Q; the stored Q is the one that was sent
    assert torch.equal(first, PowerSGDCompressor(layout, rank=3, seed=11).compress(x, {}))
    p_q = unpack(first, comp.wire)
    assert torch.equal(p_q[1], state["psgd_q0"].reshape(-1))
    second = comp.compress(x, state)
    out = PowerSGDCompressor(layout, rank=3, seed=11).decompress(second)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-4 * float(x.abs().max()))
    expected = lowrank_bytes(shapes, 3, lambda m, n, r: r * (m + n))
    assert second.numel() == comp.payload_nbytes == expected


def test_powersgd_reads_its_warm_start():
    layout = make_layout([(7, 20)])
    comp, state = PowerSGDCompressor(layout, rank=2, seed=11), {}
    comp.compress(random_update(layout.size, 1), state)
    y = random_update(layout.size, 2)
    assert not torch.equal(comp.compress(y, state), comp.compress(y, {}))


def test_pack_unpack_mixed_dtypes_at_odd_offsets():
    pieces = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([-5], dtype=torch.int32),
              torch.tensor([1.5, -2.25], dtype=torch.float64), torch.tensor([0.5])]
    payload = pack(pieces)
    assert payload.numel() == 3 + 4 + 16 + 4
    back = unpack(payload, [(p.dtype, p.numel()) for p in pieces])
    for got, want in zip(back, pieces):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_bad_input_is_a_clear_error():
    layout = make_layout(SHAPES)
    comp = TopKCompressor(layout, ratio=0.25)
    with pytest.raises(ValueError, match="bytes, its format needs"):
        comp.decompress(torch.zeros(comp.payload_nbytes + 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="flat float vector"):
        comp.compress(torch.zeros(layout.size + 1), {})
    with pytest.raises(ValueError, match="ratio"):
        TopKCompressor(layout, ratio=0.0)
    with pytest.raises(ValueError, match="rank"):
        AtomoCompressor(layout, rank=0)
    with pytest.raises(ValueError, match="unknown compressor"):
        make_compressor("gzip", layout, ratio=0.1, rank=1, seed=0, error_feedback=False)
    with pytest.raises(ValueError, match="error_feedback needs a compressor"):
        make_compressor("none", layout, ratio=0.1, rank=1, seed=0, error_feedback=True)


def test_make_compressor_builds_and_wraps():
    layout = make_layout(SHAPES)
    assert make_compressor("none", layout, ratio=0.1, rank=1, seed=0, error_feedback=False) is None
    wrapped = build("sign", layout, error_feedback=True)
    assert isinstance(wrapped, ErrorFeedback) and isinstance(wrapped.inner, SignCompressor)
    assert wrapped.name == "ef-sign"
