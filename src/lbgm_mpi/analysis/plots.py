"""Figures for run folders and for the gradient-subspace report (PNG files, no screen needed).

Every run gets its own colour and its own marker (13 methods of a compare stay apart), is named as
the comparison table names it (report.display_labels), and the legends sit outside the axes, so
that they never hide a curve. Byte axes use the table's decimal units (human_bytes) on every tick,
and label more than one tick per decade where the data span a decade or less. The dashed "bytes
handed to MPI" line of a run has larger, hollow markers, placed between those of its uplink line,
so that it stays visible where the two coincide (FedAvg hands MPI its uplink and little else).
"""

import math

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator, NullFormatter  # noqa: E402

from lbgm_mpi.analysis.report import (Run, check_baseline, display_labels,  # noqa: E402
                                      fedavg_reference, human_bytes, load_run)

_DPI = 150
# tab20's dark shades first, then its light ones: 20 colours, the first 10 of distinct hues
_COLOURS = [plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8")


def styles(n: int) -> list[dict]:
    """Line styles for ``n`` runs: colour and marker each distinct up to 20 and 15 runs, the pair
    distinct up to 60."""
    return [{"color": _COLOURS[i % len(_COLOURS)], "marker": _MARKERS[i % len(_MARKERS)],
             "markersize": 4} for i in range(n)]


def _legend_outside(ax, **kw):
    """A legend to the right of the axes, where it cannot cover a curve."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     fontsize="small", **kw)


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI, bbox_inches="tight")  # "tight" keeps the outside legends
    plt.close(fig)
    return out


# the mantissas of the major ticks of a log-scale byte axis, tried in turn until one gives
# MIN_TICKS ticks in view: decades, then 1-2-5, then every integer mantissa
_MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), tuple(float(m) for m in range(1, 10)))
MIN_TICKS = 3


def byte_ticks(lo: float, hi: float) -> list[float]:
    """Major tick positions for a log-scale byte axis showing [lo, hi]: decades where the axis
    spans enough of them for MIN_TICKS ticks, else 1-2-5 or every integer mantissa per decade,
    else (a span too short for any of those) evenly spaced round numbers."""
    lo, hi = sorted((lo, hi))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= 0:
        return []
    lo = max(lo, hi * 1e-12)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in _MANTISSAS:
        ticks = [m * 10.0 ** e for e in decades for m in mantissas if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= MIN_TICKS:
            return ticks
    linear = MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    return [float(v) for v in linear if lo <= v <= hi]


class _ByteLocator(Locator):
    """byte_ticks() for the axis's current view."""

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin, vmax):
        return byte_ticks(vmin, vmax)


def _bytes_axis(axis) -> None:
    """Decimal byte units (human_bytes) on the major ticks of a log-scale axis (byte_ticks: more
    than one per decade where the view spans a decade or less), none on minor ones (matplotlib
    would write those as powers of ten)."""
    axis.set_major_locator(_ByteLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    axis.set_minor_formatter(NullFormatter())


def _percent(values: list[float]) -> list[float]:
    return [100.0 * v for v in values]


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Drop points a log axis cannot show (nothing sent yet)."""
    kept = [(x, y) for x, y in zip(xs, ys) if x > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def _mpi_style(style: dict) -> dict:
    """The dashed MPI-bytes line of a run: its colour and marker, hollow and larger, so that a
    ring shows around the uplink line's marker where the two lines coincide."""
    return {**style, "linestyle": "--", "alpha": 0.8, "markerfacecolor": "none",
            "markersize": 2 * style["markersize"], "zorder": 3}


def accuracy_vs_bytes_figure(runs: list[Run]):
    """The figure of test accuracy against cumulative uplink and MPI bytes (log scale)."""
    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    for run, name, style in zip(runs, display_labels(runs), styles(len(runs))):
        x, acc = _positive(*run.evaluated("uplink_bytes"))
        ax.plot(x, _percent(acc), label=name, markevery=_every(x), **style)
        x, acc = _positive(*run.evaluated("mpi_bytes"))
        ax.plot(x, _percent(acc), markevery=_every(x, shifted=True), **_mpi_style(style))
    ax.set_xscale("log")
    _bytes_axis(ax.xaxis)
    ax.set_xlabel("cumulative bytes sent (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy vs communication")
    ax.grid(True, which="major", alpha=0.3)
    marked = {"color": "gray", "marker": "o", "markersize": 4}
    kinds = [Line2D([], [], label="uplink (clients' updates)", **marked),
             Line2D([], [], label="all bytes handed to MPI (hollow markers)",
                    **_mpi_style(marked))]
    ax.add_artist(_legend_outside(ax, title="run"))
    ax.legend(handles=kinds, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              fontsize="small")
    return fig


def _accuracy_vs_bytes(runs: list[Run], out_png: Path) -> Path:
    return _save(accuracy_vs_bytes_figure(runs), out_png)


def _every(x: list, shifted: bool = False):
    """Mark about 12 points of a curve, so that markers tell runs apart without hiding it;
    ``shifted``, the points half-way between those (where there are such points)."""
    every = max(1, len(x) // 12)
    return (every // 2, every) if shifted and every > 1 else every


def _accuracy_vs_round(runs: list[Run], out_png: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    for run, name, style in zip(runs, display_labels(runs), styles(len(runs))):
        rounds = [r["round"] for r in run.rounds if r["test_acc"] is not None]
        acc = [r["test_acc"] for r in run.rounds if r["test_acc"] is not None]
        ax.plot(rounds, _percent(acc), label=name, markevery=_every(rounds), **style)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy vs round")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax, title="run")
    return _save(fig, out_png)


def plot_runs(run_dirs: list[str | Path], out_png_prefix: str | Path) -> list[Path]:
    """Write <prefix>_acc_vs_bytes.png and <prefix>_acc_vs_round.png, one line per run folder.

    Rounds that were not evaluated (test_acc null) are skipped. Returns the paths written.
    """
    runs = [load_run(d) for d in run_dirs]
    prefix = str(out_png_prefix)
    return [_accuracy_vs_bytes(runs, Path(f"{prefix}_acc_vs_bytes.png")),
            _accuracy_vs_round(runs, Path(f"{prefix}_acc_vs_round.png"))]


def plot_seed_spread(groups: dict[str, dict[int, Run]], out_png: str | Path) -> Path:
    """Test accuracy against round over seeds: per method (``groups`` as
    analysis.seeds.group_by_method returns them) the mean over its seeds, in a band of one sample
    standard deviation, at the rounds every seed evaluated."""
    from lbgm_mpi.analysis.seeds import spread
    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    for (label, by_seed), style in zip(groups.items(), styles(len(groups))):
        curves = [{r["round"]: r["test_acc"] for r in run.rounds if r["test_acc"] is not None}
                  for run in by_seed.values()]
        rounds = sorted(set.intersection(*(set(c) for c in curves)))
        stats = [spread([100.0 * c[r] for c in curves]) for r in rounds]
        mean = [s.mean for s in stats]
        ax.plot(rounds, mean, label=f"{label} ({len(curves)} seeds)", markevery=_every(rounds),
                **style)
        ax.fill_between(rounds, [m - s.std for m, s in zip(mean, stats)],
                        [m + s.std for m, s in zip(mean, stats)], color=style["color"],
                        alpha=0.2, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy vs round: mean over seeds, band one standard deviation")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax, title="method")
    return _save(fig, out_png)


def _sweep_point(run: Run, ref: Run) -> tuple[float, float]:
    """(uplink savings %, accuracy drop in points) of ``run`` against the FedAvg run ``ref``."""
    saving = 100.0 * (1.0 - run.summary["total_uplink_bytes"] / ref.summary["total_uplink_bytes"])
    drop = 100.0 * (ref.summary["best_acc"] - run.summary["best_acc"])
    return saving, drop


def _sweep_series(ax, series: list[Run], ref: Run, style: dict) -> None:
    """One compressor's runs as a line through their sweep points, each labelled by threshold."""
    points = [_sweep_point(r, ref) for r in series]
    ax.plot(*zip(*points), label=f"LBGM, compressor: {series[0].summary['compressor']}",
            **style)
    for run, (x, y) in zip(series, points):
        threshold = run.summary["threshold"]
        text = f"δ={threshold:g}" if threshold is not None else run.label
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize="small")


def plot_sweep(run_dirs: list[str | Path], out_png: str | Path, warn=None) -> Path:
    """Threshold sweep: accuracy drop against uplink savings, both vs the FedAvg run among them.

    One connected series per compressor, points in threshold order, each annotated with its
    threshold. Raises ValueError naming the folders if none of them is a FedAvg run, or if it
    cannot be compared with the others (report.check_baseline, which tells ``warn`` of lesser
    differences).
    """
    runs = [load_run(d) for d in run_dirs]
    ref = fedavg_reference(runs)
    if ref is None:
        names = ", ".join(str(r.path) for r in runs)
        raise ValueError(f"no FedAvg run (summary algo == 'fedavg') among: {names}")
    check_baseline(ref, runs, warn)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.plot([0], [0], marker="*", markersize=14, linestyle="none", color="black",
            label=f"FedAvg ({ref.label})")
    others = sorted((r for r in runs if r is not ref), key=lambda r: r.summary["threshold"] or 0.0)
    compressors = list(dict.fromkeys(r.summary["compressor"] for r in others))
    for compressor, style in zip(compressors, styles(len(compressors))):
        _sweep_series(ax, [r for r in others if r.summary["compressor"] == compressor], ref,
                      style)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("uplink savings vs FedAvg (%)")
    ax.set_ylabel("accuracy drop vs FedAvg (points, best test accuracy)")
    ax.set_title("LBGM threshold sweep: communication saved vs accuracy lost")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return _save(fig, out_png)


def _none_to_nan(values: list) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def plot_subspace(report_dict: dict, out_png: str | Path) -> Path:
    """N95 and N99 against the number of epochs stacked, from ``SubspaceTracker.report()``.

    Each panel shows the whole model, the mean over layers and the band from the layers' minimum to
    their maximum, with the most components i epochs can have (i - 1) as a dotted reference.
    """
    epochs = report_dict["epochs"]
    levels = report_dict["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(5.2 * len(levels), 4.2), sharey=True,
                             squeeze=False)
    axes = axes[0]
    for ax, level in zip(axes, levels):
        key = f"n{round(level * 100)}"
        stats = report_dict["layer_stats"][key]
        ax.fill_between(epochs, _none_to_nan(stats["min"]), _none_to_nan(stats["max"]),
                        alpha=0.25, color="tab:blue", label="layers: min to max")
        ax.plot(epochs, _none_to_nan(stats["mean"]), color="tab:blue", label="layers: mean")
        ax.plot(epochs, report_dict["model"][key], color="tab:red", label="whole model")
        ax.plot(epochs, [e - 1 for e in epochs], color="gray", linestyle=":",
                label="most possible (epochs - 1)")
        ax.set_title(f"N{round(level * 100)}: components explaining {level:.0%} of variance")
        ax.set_xlabel("epochs of gradients stacked")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("number of principal components")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_outside(axes[-1])
    fig.suptitle("Rank of the gradient space during training")
    return _save(fig, out_png)
