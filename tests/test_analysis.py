"""Gradient-subspace math (float64 identities), the run-comparison table and the plots."""

import json
import math
import re
import subprocess
import sys

import matplotlib.legend
import numpy as np
import pytest
import torch

from conftest import write_run
from lbgm_mpi.analysis import plots
from lbgm_mpi.analysis.report import (
    compare_table,
    display_labels,
    format_phase_table,
    format_table,
    human_bytes,
    load_run,
    phase_table,
)
from lbgm_mpi.analysis.subspace import (
    SubspaceTracker,
    explained_variance,
    n_components,
    overlap,
    principal_directions,
)
from lbgm_mpi.models.layout import Layout


def _orthonormal(p: int, r: int, seed: int) -> torch.Tensor:
    """r orthonormal rows of length p."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, r, generator=g, dtype=torch.float64))
    return q.T.contiguous()


def _low_rank_stack(i: int, p: int, r: int, seed: int = 0):
    """i rows = the same offset vector + random combinations of r orthonormal generators.

    The offset is orthogonal to the generators, so only centring keeps it out of the count.
    """
    basis = _orthonormal(p, r + 1, seed)
    gens, offset = basis[:r], basis[r]
    g = torch.Generator().manual_seed(seed + 1)
    scales = torch.linspace(1.0, 0.6, r, dtype=torch.float64)
    coefs = torch.randn(i, r, generator=g, dtype=torch.float64) * scales
    return coefs @ gens + 5.0 * offset, gens


# --- explained_variance, n_components --------------------------------------------------------

def test_rank_r_stack_needs_exactly_r_components():
    stack, _ = _low_rank_stack(i=20, p=50_000, r=3)
    ratios = explained_variance(stack)
    assert ratios.shape == (20,)
    assert ratios.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert n_components(ratios, 0.99) == 3
    assert ratios[3:].abs().max().item() < 1e-12


def test_matches_numpy_svd_pca():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 30)) + 3.0
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    expected = s ** 2 / np.sum(s ** 2)
    got = explained_variance(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_degenerate_stacks():
    assert explained_variance(torch.randn(1, 100)).tolist() == [1.0]
    for flat in (torch.zeros(5, 100), torch.full((7, 13), 0.1)):  # zero; no change over epochs
        ratios = explained_variance(flat)
        assert not torch.isnan(ratios).any() and ratios.abs().max().item() == 0.0
        assert n_components(ratios, 0.95) == 0
        assert principal_directions(flat, 2).shape == (0, flat.shape[1])


def test_n_components_edges():
    assert n_components([0.5, 0.3, 0.2], 0.5) == 1
    assert n_components([0.5, 0.3, 0.2], 0.51) == 2
    assert n_components([0.5, 0.3, 0.2], 1.0) == 3
    assert n_components([0.1] * 10, 1.0) == 10  # the sum rounds to 0.9999999999999999
    assert n_components(torch.zeros(4), 0.99) == 0
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="level"):
            n_components([1.0], bad)


# --- principal_directions, overlap -----------------------------------------------------------

def test_principal_directions_are_orthonormal_and_span_the_generators():
    stack, gens = _low_rank_stack(i=20, p=5_000, r=3)
    v = principal_directions(stack, k=10)
    assert v.shape == (3, 5_000) and v.dtype == torch.float64  # only non-zero variance
    torch.testing.assert_close(v @ v.T, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)
    _, inside = overlap(gens, v)
    torch.testing.assert_close(inside, torch.ones(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_overlap_cosines_and_span_fraction():
    basis = _orthonormal(200, 3, seed=3)
    directions = torch.stack([2.0 * basis[0], basis[1]])  # need not be unit length
    vectors = torch.stack([3.0 * (basis[0] + basis[2]), basis[1], torch.zeros(200)])
    cos, inside = overlap(vectors, directions)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[s, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(cos, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(inside, torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64),
                               atol=1e-12, rtol=0)


# --- SubspaceTracker ---------------------------------------------------------------------------

def _tracker_with_epochs(n_epochs: int) -> SubspaceTracker:
    """Layers "w" (rank-2 changes), "b" (random) and "frozen" (never changes)."""
    layout = Layout(("w", "b", "frozen"), ((40, 50), (50,), (10,)), (0, 2000, 2050, 2060))
    w, _ = _low_rank_stack(i=n_epochs, p=2000, r=2, seed=11)
    b = torch.randn(n_epochs, 50, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    tracker = SubspaceTracker(layout)
    for e in range(n_epochs):
        tracker.add(torch.cat([w[e], b[e], torch.zeros(10, dtype=torch.float64)]).float())
    return tracker


def test_tracker_levels_per_layer_and_model():
    tracker = _tracker_with_epochs(6)
    report = json.loads(json.dumps(tracker.report()))  # JSON-able
    assert report["epochs"] == [2, 3, 4, 5, 6]
    for name in ("w", "b"):
        layer = report["layers"][name]
        for e, n95, n99 in zip(report["epochs"], layer["n95"], layer["n99"]):
            assert 1 <= n95 <= n99 <= e
    assert max(report["layers"]["w"]["n99"]) == 2
    assert report["layers"]["frozen"]["n99"] == [0] * 5
    assert min(report["layer_stats"]["n95"]["min"]) >= 1  # the frozen layer is left out
    for e, n99 in zip(report["epochs"], report["model"]["n99"]):
        assert n99 == n_components(explained_variance(tracker.stack[:e]), 0.99)


# --- run folders: table and plots --------------------------------------------------------------

@pytest.fixture
def runs(tmp_path):
    return [
        write_run(tmp_path, "fedavg", "fedavg", [0.5, None, 0.8], [100, 100, 100],
                   [200, 200, 200], round_s=[1.0, 2.0, 3.0]),
        write_run(tmp_path, "lbgm-0.2", "lbgm", [0.6, 0.78, 0.7], [100, 10, 10],
                   [150, 20, 30], threshold=0.2),
        write_run(tmp_path, "lbgm-0.9", "lbgm", [0.1, 0.2, 0.3], [100, 1, 1], [100, 2, 2],
                   threshold=0.9),
    ]


def test_compare_table_numbers(runs):
    fedavg, lbgm, weak = compare_table(runs)
    assert fedavg["target_acc"] == pytest.approx(0.76)  # 0.95 x 0.8
    assert fedavg["bytes_to_target"] == 300  # round 2 was not evaluated
    assert fedavg["mean_round_s"] == pytest.approx(2.0)
    assert fedavg["uplink_savings_pct"] == 0.0 and fedavg["drop_pt"] == 0.0
    assert lbgm["drop_pt"] == pytest.approx(2.0)
    assert lbgm["uplink_savings_pct"] == pytest.approx(60.0)  # 1 - 120 / 300
    assert lbgm["mpi_savings_pct"] == pytest.approx(100 * (1 - 200 / 600))
    assert lbgm["bytes_to_target"] == 110
    assert lbgm["best_acc_pct"] == pytest.approx(78.0)
    assert lbgm["final_acc_pct"] == pytest.approx(70.0)
    assert weak["bytes_to_target"] is None
    text = format_table([fedavg, lbgm, weak])
    assert "76.00%" in text.splitlines()[0]
    assert "n/a" in text.splitlines()[-1]
    assert "110 B" in text and "60.0" in text


def test_compare_table_without_fedavg_leaves_comparisons_blank(runs):
    rows = compare_table(runs[1:])
    assert all(r["drop_pt"] is None and r["uplink_savings_pct"] is None for r in rows)
    assert all(r["bytes_to_target"] is None for r in rows)
    assert "n/a" not in format_table(rows)
    given = compare_table(runs[1:], target_acc=0.25)
    assert [r["bytes_to_target"] for r in given] == [100, 102]


def test_phase_table_means_leave_out_the_first_round_and_charge_lbgm_its_own_phases(tmp_path):
    folder = write_run(tmp_path, "lbgm", "lbgm", [0.5, 0.6, 0.7], [1, 1, 1], [1, 1, 1],
                        threshold=0.2, round_s=[9.0, 2.0, 4.0])
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    phases = [dict(train_s=5.0, decide_s=1.0, bank_s=1.0, aggregate_s=0.5, eval_s=0.1,
                   checkpoint_s=0.0),
              dict(train_s=1.0, decide_s=0.05, bank_s=0.05, aggregate_s=0.2, eval_s=0.1,
                   checkpoint_s=0.0),
              dict(train_s=3.0, decide_s=0.15, bank_s=0.05, aggregate_s=0.2, eval_s=0.1,
                   checkpoint_s=0.2)]
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({**r, **p}) + "\n" for r, p in zip(rows, phases)))
    old = write_run(tmp_path, "old", "fedavg", [0.5, 0.6], [1, 1], [1, 1])  # no phase keys
    lbgm, fedavg = phase_table([folder, old])
    assert lbgm["rounds"] == 2  # round 1 (warm-up) left out
    assert lbgm["train_s"] == pytest.approx(2.0) and lbgm["round_s"] == pytest.approx(3.0)
    assert lbgm["decide_s"] == pytest.approx(0.1) and lbgm["bank_s"] == pytest.approx(0.05)
    assert lbgm["own_pct"] == pytest.approx(100 * 0.15 / 2.0)
    known = 2.0 + 0.1 + 0.1 + 0.05 + 0.2 + 0.1 + 0.1  # comm_s is 0.1 in every round
    assert lbgm["other_s"] == pytest.approx(3.0 - known)
    assert fedavg["train_s"] is None and fedavg["own_pct"] is None
    assert fedavg["comm_s"] == pytest.approx(0.1)
    text = format_phase_table([lbgm, fedavg])
    assert "own/train (%)" in text and "7.5" in text
    cli = subprocess.run([sys.executable, "-m", "lbgm_mpi", "report", "--phases", str(folder),
                          str(old), "--json", str(tmp_path / "phases.json")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "7.5" in cli.stdout
    assert json.loads((tmp_path / "phases.json").read_text())[0]["own_pct"] == \
        pytest.approx(7.5)


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1234567) == "1.23 MB"
    assert human_bytes(999_999) == "1 MB"
    assert human_bytes(2.5e9) == "2.5 GB"


def test_plots_are_written(runs, tmp_path):
    written = plots.plot_runs(runs, tmp_path / "out" / "cmp")
    written.append(plots.plot_sweep(runs, tmp_path / "out" / "sweep.png"))
    written.append(plots.plot_subspace(_tracker_with_epochs(8).report(),
                                       tmp_path / "out" / "subspace.png"))
    for path in written:
        assert path.exists() and path.stat().st_size > 10_000, path


def test_sweep_needs_a_fedavg_run(runs):
    with pytest.raises(ValueError, match="lbgm-0.2"):
        plots.plot_sweep(runs[1:], "unused.png")


# --- plots that can be read: names, colours, markers, legends, byte units ---------------------

@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection (drawn, not closed)."""
    kept = []

    def keep(fig, out_png):
        fig.canvas.draw()
        kept.append(fig)
        return out_png

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _thirteen_runs(root):
    from lbgm_mpi.runs.methods import METHODS
    assert len(METHODS) >= 13
    return [write_run(root, name, "fedavg" if name == "fedavg" else "lbgm",
                       [0.1 * (i % 5) + 0.1 * t for t in range(1, 4)], [10 ** (i % 4 + 2)] * 3,
                       [10 ** (i % 4 + 2) + 5] * 3)
            for i, name in enumerate(list(METHODS)[:13])]


def test_thirteen_methods_each_get_a_colour_and_a_marker(tmp_path, figures):
    runs = _thirteen_runs(tmp_path)
    plots.plot_runs(runs, tmp_path / "cmp")
    for fig in figures:
        ax = fig.axes[0]
        named = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert len(named) == 13
        assert len({line.get_color() for line in named}) == 13
        assert len({line.get_marker() for line in named}) == 13


def test_legends_sit_outside_the_axes(tmp_path, figures):
    plots.plot_runs(_thirteen_runs(tmp_path), tmp_path / "cmp")
    for fig in figures:
        ax = fig.axes[0]
        box = ax.get_window_extent()
        legends = [a for a in ax.get_children() if isinstance(a, matplotlib.legend.Legend)]
        assert len(legends) >= 1
        for legend in legends:
            assert not legend.get_window_extent().overlaps(box), legend


def test_runs_with_one_label_are_told_apart_by_folder(tmp_path, figures):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_run(tmp_path / "a", "lbgm", "lbgm", [0.5, 0.6], [10, 10], [10, 10])
    b = write_run(tmp_path / "b", "lbgm", "lbgm", [0.4, 0.7], [10, 10], [10, 10])
    assert display_labels([load_run(a), load_run(b)]) == ["lbgm [a/lbgm]", "lbgm [b/lbgm]"]
    plots.plot_runs([a, b], tmp_path / "cmp")
    names = {t.get_text() for legend in figures[0].axes[0].get_children()
             if isinstance(legend, matplotlib.legend.Legend) for t in legend.get_texts()}
    assert {"lbgm [a/lbgm]", "lbgm [b/lbgm]"} <= names
    rows = compare_table([a, b])
    assert [r["name"] for r in rows] == ["lbgm [a/lbgm]", "lbgm [b/lbgm]"]
    assert "lbgm [a/lbgm]" in format_table(rows)


def test_byte_axes_use_decimal_units_on_every_tick(tmp_path, figures):
    runs = [write_run(tmp_path, "fedavg", "fedavg", [0.1, 0.2, 0.3], [300, 400, 500],
                       [300, 400, 500])]  # less than a decade: matplotlib labels minor ticks
    plots.plot_runs(runs, tmp_path / "cmp")
    axis = figures[0].axes[0].xaxis
    labels = [t.get_text() for t in axis.get_ticklabels(which="both") if t.get_text()]
    assert labels and all(re.fullmatch(r"[\d.]+ (B|KB|MB|GB)", text) for text in labels), labels
