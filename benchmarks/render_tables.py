"""The measured tables of the documentation, rendered from benchmarks/results/*.json.

    python benchmarks/render_tables.py            # print every table, with its name
    python benchmarks/render_tables.py --write    # rewrite the marked regions of the docs in place
    python benchmarks/render_tables.py --check    # exit 1, naming each table that differs

A table lives in README.md, docs/*.md or benchmarks/README.md between two HTML comments:

    <!-- table: NAME -->
    | ... |
    <!-- /table -->

NAME is a key of TABLES below, which says which JSON file(s) the table is rendered from. Hand-written
tables (the config keys, the compressors' wire formats, results kept only as text) carry no
markers. tests/test_docs.py runs the check. The script needs only the standard library.
"""

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MARKER = re.compile(r"<!-- table: ([A-Za-z0-9_.-]+) -->\n(.*?)<!-- /table -->", re.S)
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def doc_files(root: Path = REPO) -> list[Path]:
    """The markdown files whose tables and links are checked."""
    return ([root / "README.md"] + sorted((root / "docs").glob("*.md"))
            + [root / "benchmarks" / "README.md"])


# --------------------------------------------------------------------------- formatting helpers


def human_bytes(n: float) -> str:
    """Byte count with three significant digits and a decimal unit, e.g. "1.23 MB" (the same
    rule as lbgm_mpi.analysis.report.human_bytes, which the printed reports use)."""
    value, unit = float(n), 0
    while abs(float(f"{value:.3g}")) >= 1000 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{value:.3g} {_UNITS[unit]}"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def sig(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, trailing zeros kept (1.50, 0.035)."""
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    if "e" in text:
        return text
    shown = len(text.replace("-", "").replace(".", "").lstrip("0"))
    if shown < digits:
        text += ("" if "." in text else ".") + "0" * (digits - shown)
    return text


def seconds(x: float) -> str:
    """A short duration: 3 decimals below 0.01 s, else 2."""
    return f"{x:.3f}" if x < 0.01 else f"{x:.2f}"


def pm(spread: dict, fmt: str = "{:.1f}") -> str:
    """Mean ± sample standard deviation over seeds."""
    return f"{fmt.format(spread['mean'])} ± {fmt.format(spread['std'])}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load(name: str) -> dict | list:
    return json.loads((RESULTS / name).read_text())


# --------------------------------------------------------------------------- the tables


def rounds() -> str:
    """benchmarks/bench_rounds.py: the default job at 1, 2 and 4 ranks."""
    res = load("rounds.json")["results"]
    fed = {r["ranks"]: r for r in res if r["method"] == "fedavg"}
    rows = []
    for r in res:
        f = fed[r["ranks"]]
        rows.append([r["ranks"], r["method"], f"{100 * r['best_acc']:.2f}%",
                     f"{r['uplink_bytes'] / 1e6:.3f}", f"{r['mpi_bytes'] / 1e6:.3f}",
                     f"{r['mpi_bytes'] / f['mpi_bytes']:.3f}",
                     f"{1000 * r['median_round_s']:.1f}",
                     f"{r['median_round_s'] / f['median_round_s']:.2f}"])
    return table(["ranks", "method", "best acc", "uplink MB", "MPI MB", "MPI vs FedAvg",
                  "round ms", "round vs FedAvg"], rows)


def _compare(name: str, decimals: int) -> str:
    rows = []
    for r in load(name)["rows"]:
        saved = "-" if r["label"] == "fedavg" else f"{r['mpi_savings_pct']:.1f}%"
        rows.append([r["label"], f"{r['best_acc_pct']:.{decimals}f}",
                     f"{r['final_acc_pct']:.{decimals}f}", human_bytes(r["uplink_bytes"]),
                     human_bytes(r["mpi_bytes"]), saved])
    return table(["method", "best acc (%)", "final acc (%)", "uplink", "MPI bytes",
                  "MPI saved vs FedAvg"], rows)


def compare_digits() -> str:
    """lbgm-mpi compare, every compressor alone and under LBGM, on the default job."""
    return _compare("compare-digits.json", 2)


def compare_mnist1d() -> str:
    """The same on non-IID MNIST-1D (1,000 test signals: accuracies in steps of 0.1)."""
    return _compare("compare-mnist1d.json", 1)


FRONTIER_SETTINGS = {"mnist1d-10": "MNIST-1D, 10 clients", "mnist1d-4": "MNIST-1D, 4 clients",
                     "digits-10": "digits, 10 clients", "digits-4": "digits, 4 clients"}


def _param(param: str) -> str:
    return f" ({param.replace('=', ' ')})" if param else ""


def frontier() -> str:
    """Per method and setting, the best uplink saving within 3 points of FedAvg's last-5
    accuracy (the largest in each column in bold; "-": not run in that setting)."""
    settings = load("frontier.json")["settings"]
    cols = [s for s in FRONTIER_SETTINGS if s in settings]
    head = ["FedAvg last-5 acc (%)"]
    for s in cols:
        fed = next(p for p in settings[s]["points"] if p["label"] == "fedavg")
        head.append(pm(fed["last_acc_pct"]))
    best = {s: max((f["point"]["uplink_savings_pct"]["mean"] for f in settings[s]["frontier"]
                    if f["point"]), default=None) for s in cols}
    labels = list(dict.fromkeys(f["label"] for s in cols for f in settings[s]["frontier"]))
    rows = [head]
    for label in labels:
        row = [label]
        for s in cols:
            entry = next((f for f in settings[s]["frontier"] if f["label"] == label), None)
            if entry is None:  # not run in this setting
                row.append("-")
                continue
            point = entry["point"]
            if point is None:
                row.append("none")
                continue
            saved = pm(point["uplink_savings_pct"])
            if point["uplink_savings_pct"]["mean"] == best[s]:
                saved = f"**{saved}**"
            row.append(saved + _param(point["param"]))
        rows.append(row)
    return table(["method"] + [FRONTIER_SETTINGS[s] for s in cols], rows)


# the points of the equal-bytes comparison: MNIST-1D with 10 clients, near 35% saved
EQUAL_BYTES = [("lbgm", "t=0.2"), ("lbgm-m3", "t=0.1"), ("lbgm-m3-decay", "t=0.2")]


def frontier_equal_bytes() -> str:
    points = load("frontier.json")["settings"]["mnist1d-10"]["points"]
    rows = []
    for label, param in EQUAL_BYTES:
        p = next(p for p in points if p["label"] == label and p["param"] == param)
        rows.append([f"{label}, {param.replace('=', ' ')}", pm(p["uplink_savings_pct"]),
                     pm(p["best_acc_pct"]), pm(p["last_acc_pct"])])
    return table(["method", "uplink saved (%)", "best acc (%)", "last-5 acc (%)"], rows)


def frontier_bytes_over_time() -> str:
    """Each fifth of a 50-round run's uplink as a share of FedAvg's (%), at threshold 0.2."""
    settings = load("frontier.json")["settings"]
    rows = []
    for s in ("mnist1d-10", "digits-10"):
        for i, r in enumerate(settings[s]["uplink_share_by_fifth"]):
            rows.append([FRONTIER_SETTINGS[s] if i == 0 else "", r["label"]]
                        + [pm(x) for x in r["shares"]])
    return table(["setting", "method", "rounds 1-10", "11-20", "21-30", "31-40", "41-50"], rows)


RATES = {"10mbit": "10 Mbit/s", "20mbit": "20 Mbit/s", "100mbit": "100 Mbit/s", "1gbit": "1 Gbit/s",
         "10gbit": "10 Gbit/s"}


def _links(name: str) -> tuple[dict, dict]:
    data = load(name)
    fed = next(r for r in data["results"] if r["method"] == "fedavg")
    return data, fed


def _faster(r: dict, fed: dict) -> str:
    s = r["visible_s_to_target"]
    return f"{fed['visible_s_to_target'] / s:.2f}" if s else "n/a"


def _opt(x, fmt) -> str:
    return "n/a" if x is None else fmt(x)


def links_100mbit() -> str:
    """benchmarks/bench_links.py at 100 Mbit/s, 4 ranks."""
    data, fed = _links("links-100mbit.json")
    rows = [[r["method"], _opt(r["rounds_to_target"], str),
             _opt(r["s_to_target"], lambda x: f"{x:.1f}"),
             _opt(r["visible_s_to_target"], lambda x: f"{x:.1f}"), _faster(r, fed),
             f"{r['total_s']:.1f}", f"{r['comm_s']:.1f}", human_bytes(r["mpi_bytes"]),
             f"{100 * r['best_acc']:.2f}%", f"{100 * r['final_acc']:.2f}%"]
            for r in data["results"]]
    return table(["method", "rounds to target", "s to target", "visible s to target",
                  "x faster", "total s", "comm s", "MPI", "best acc", "final acc"], rows)


def links_other_rates() -> str:
    rows = []
    for name in ("links-1gbit.json", "links-10mbit.json"):
        data, fed = _links(name)
        for r in data["results"]:
            rows.append([RATES[data["rate"]], r["rounds"], r["method"],
                         _opt(r["rounds_to_target"], str),
                         _opt(r["visible_s_to_target"], lambda x: f"{x:.1f}"), _faster(r, fed),
                         f"{r['comm_s']:.1f}", human_bytes(r["mpi_bytes"]),
                         f"{100 * r['best_acc']:.2f}%"])
    return table(["rate", "rounds", "method", "rounds to target", "visible s to target",
                  "x faster", "comm s", "MPI", "best acc"], rows)


def links_costmodel() -> str:
    """The cost model's fitted parameters in the 100 Mbit/s run."""
    params = load("links-100mbit.json")["model"]["params"]
    names = {"allreduce": "Allreduce", "allgatherv": "Allgatherv"}
    rows = [[names[op], f"{1000 * p['alpha']:.2f} ms per step", f"{1e9 * p['b0']:.2g} ns/B",
             f"{8 / p['c']:.2f}"] for op, p in params.items()]
    return table(["collective", "alpha", "b0", "link efficiency (8/c)"], rows)


def links_predictions() -> str:
    """The cost model's seconds to the target at more ranks: a MODEL, not a measurement."""
    preds = load("links-100mbit.json")["model"]["predictions"]
    rates = ["100mbit", "1gbit", "10gbit"]
    rows = [[p["method"], p["ranks"]] + [f"{p[r]:.0f}" for r in rates] for p in preds]
    return table(["method", "ranks"] + [RATES[r] for r in rates], rows)


# --------------------------------------------------------------------------- the global scope

SKETCH_KINDS = {"gaussian": "random, Gaussian", "student-t3": "random, Student-t (3)",
                "digits-4": "real: digits, 4 clients", "digits-10": "real: digits, 10 clients",
                "mnist1d-10": "real: MNIST-1D, 10 clients",
                "digits-wide": "real: digits, 4 clients, 150k MLP"}


def sketch_errors() -> str:
    """benchmarks/bench_sketch.py: RMS relative error of |r|^2 per width, and sqrt(2/w)."""
    data = load("sketch.json")
    rows = [[SKETCH_KINDS.get(k, k), f"{v['d']:,}"] + [f"{e['rms']:.3f}" for e in v["errors"]]
            for k, v in data["sources"].items()]
    rows.append(["bound sqrt(2/w)", ""] + [f"{(2 / w) ** 0.5:.3f}" for w in data["widths"]])
    return table(["residuals", "d"] + [f"w = {w}" for w in data["widths"]], rows)


def sketch_decisions() -> str:
    """Wrong decisions (%) near the threshold, worst over the residual kinds."""
    data = load("sketch.json")
    rows = []
    for t in data["thresholds"]:
        key = f"{t:g}"
        per = [src["wrong"][key] for src in data["sources"].values()]
        n = len(data["widths"])
        uniform = [max(f[i]["outside_band"] for f in per) for i in range(n)]
        edges = [max(max(f[i]["edge_below"], f[i]["edge_above"]) for f in per) for i in range(n)]
        nat = [src["natural"][key] for src in data["sources"].values() if "natural" in src]
        pairs = sum(x[0]["pairs"] for x in nat)
        real = []
        for i in range(n):
            bad = sum((x[i]["wrong_outside_band"] or 0) * x[i]["decisions_outside_band"]
                      for x in nat)
            real.append(bad / sum(x[i]["decisions_outside_band"] for x in nat))
        rows += [[f"t = {key}", "s uniform outside the band"] + [f"{100 * x:.2f}" for x in uniform],
                 ["", "s at the band's edges"] + [f"{100 * x:.2f}" for x in edges],
                 ["", f"real pairs ({pairs})"] + [f"{100 * x:.2f}" for x in real]]
    return table(["threshold", "true sin^2"] + [f"w = {w}" for w in data["widths"]], rows)


def sketch_cost() -> str:
    """A scalar round against a dense one (m = 3), bytes and modelled seconds at 16 ranks."""
    rows = []
    for r in load("sketch.json")["cost"]:
        if r["sketch"] not in (256, 1024, 4096):
            continue
        rows.append([f"{r['d']:,}", str(r["sketch"]), str(r["buckets"]),
                     human_bytes(r["record_bytes"]), f"{100 * r['bytes_ratio']:.2f}%"]
                    + [f"{100 * r[rate]['scalar_vs_dense']:.1f}% "
                       f"({100 * r[rate]['scalar_vs_dense_rd']:.1f}%)"
                       for rate in ("100mbit", "1gbit")])
    return table(["d", "algo.sketch", "buckets", "record", "record / dense bytes",
                  "scalar / dense round, 100 Mbit/s", "1 Gbit/s"], rows)


GLOBAL_METHODS = ("lbgm-global-m1", "lbgm-global-m3", "lbgm-global-m10")


def frontier_global() -> str:
    """bench_frontier's global-scope rows: rounds with no dense collective, last-5 accuracy
    against FedAvg's, uplink saved (mean ± std over 3 seeds)."""
    settings = load("frontier.json")["settings"]
    rows = []
    for s in ("digits-10", "mnist1d-10", "digits-4", "mnist1d-4"):
        points = settings.get(s, {}).get("points", [])
        mine = [p for p in points if p["label"] in GLOBAL_METHODS]
        if not mine:
            continue
        fed = settings[s]["global"]["fedavg_last_acc_pct"]  # the FedAvg of the same launch
        mine.sort(key=lambda p: (GLOBAL_METHODS.index(p["label"]), float(p["param"][2:])))
        for i, p in enumerate(mine):
            rows.append([f"{FRONTIER_SETTINGS[s]} (FedAvg {fed:.1f})" if i == 0 else "",
                         p["label"], p["param"].replace("=", " "), pm(p["scalar_rounds_pct"]),
                         pm(p["last_acc_pct"]), f"{p['last_acc_pct']['mean'] - fed:+.1f}",
                         pm(p["uplink_savings_pct"])])
    return table(["setting (FedAvg last-5 %)", "method", "threshold", "scalar rounds (%)",
                  "last-5 acc (%)", "vs FedAvg (pt)", "uplink saved (%)"], rows)


LINKS_GLOBAL = ("links-global-100mbit.json", "links-global-1gbit.json",
                "links-global-10mbit.json")
# the 100 Mbit/s run again, on a quiet machine and after the global scope's CPU work was cut
LINKS_GLOBAL_QUIET = "links-global-100mbit-quiet.json"


def links_global(names=LINKS_GLOBAL) -> str:
    """bench_links with the global scope: time to 0.95 and 0.99 x FedAvg's best (visible s)."""
    rows = []
    for name in names:
        data, fed = _links(name)
        for r in data["results"]:
            cells = [RATES[data["rate"]], r["method"], str(r["rounds"]), str(r["dense_rounds"])]
            for k, t in enumerate(r["targets"]):
                ref = fed["targets"][k]["visible_s"]
                cells += [_opt(t["rounds"], str), _opt(t["visible_s"], lambda x: f"{x:.1f}"),
                          f"{ref / t['visible_s']:.2f}" if t["visible_s"] else "n/a"]
            cells += [f"{r['comm_s']:.1f}", human_bytes(r["link_bytes"]),
                      f"{100 * r['best_acc']:.2f}%"]
            rows.append(cells)
    return table(["rate", "method", "rounds", "dense rounds", "rounds to 0.95", "visible s",
                  "x faster", "rounds to 0.99", "visible s", "x faster", "comm s",
                  "link bytes", "best acc"], rows)


def links_global_checks(names=LINKS_GLOBAL) -> str:
    """The global scope's targets, each as measured."""
    rows = []
    for name in names:
        data = load(name)
        for c in data["checks"]:
            rows.append([RATES[data["rate"]], c["method"], c["check"],
                         "n/a" if c["value"] is None else f"{c['value']:.2f}",
                         "yes" if c["ok"] else "**no**"])
    return table(["rate", "method", "target", "measured", "met"], rows)


def links_global_per_round() -> str:
    """The cost model's seconds per round in the collectives: a MODEL, not a measurement."""
    data = load("links-global-model.json")
    cell = {(p["method"], p["ranks"], p["rate"]): p["comm_s"] for p in data["per_round"]}
    methods = list(dict.fromkeys(p["method"] for p in data["per_round"]))
    fmt = lambda x: f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" \
        if x >= 1 else f"{x:.3f}"
    rows = [[m, str(n)] + [fmt(cell[m, n, r]) for r in data["rates"]]
            for m in methods for n in data["ranks"]]
    return table(["method", "ranks"] + [RATES[r] for r in data["rates"]], rows)


def links_global_break_even() -> str:
    """Per-client LBGM's break-even refresh fraction (MODEL) against the measured one."""
    data = load("links-global-model.json")
    even = [b for b in data["break_even"] if b["method"] == "lbgm-model"]
    cell = {(b["ranks"], b["rate"]): b["break_even"] for b in even}
    rows = [[str(n)] + [f"{cell[n, r]:.3f}" for r in data["rates"]] for n in data["ranks"]]
    measured = even[0]["measured"] if even else None
    return table(["ranks"] + [RATES[r] for r in data["rates"]], rows) + (
        f"\n\nmeasured refresh fraction of lbgm-model: {measured:.3f}" if measured is not None
        else "")


def links_global_vs_baseline() -> str:
    """The global scope's collectives per round against its dense-only baseline (MODEL)."""
    data = load("links-global-model.json")
    rows = [[c["method"], c["baseline"], RATES[c["rate"]], str(c["ranks"]), f"{c['dense']:.2f}",
             f"{c['ring_s'] / c['baseline_s']:.2f}", f"{c['rd_s'] / c['baseline_s']:.2f}",
             f"{(c['local_s'] + c['ring_s']) / (c['baseline_local_s'] + c['baseline_s']):.2f}"]
            for c in data["global_check"]]
    return table(["method", "dense rounds run", "rate", "ranks", "dense fraction",
                  "collectives x baseline (ring record)", "(rec. doubling record)",
                  "whole round x baseline (ring record)"], rows)


# --------------------------------------------------------------------------- the star

LINKS_STAR = ("links-star.json", "links-star-devices.json", "links-star-devices-lr01.json")


def links_star() -> str:
    """bench_links --topology star: time to 0.95 and 0.99 x the reference's best (visible s),
    x as fast as the reference (FedAvg in the star), and each rank's link bytes."""
    rows = []
    for name in LINKS_STAR:
        data = load(name)
        ref = next(r for r in data["results"] if r["method"] == data["reference"])
        links = data["links"]
        rate = lambda key: RATES.get(links[key], links[key]).replace(" Mbit/s", "M") \
            .replace(" Gbit/s", "G")
        setting = (f"{data['ranks']} ranks ({data['server'] or 'shared'}), {rate('up')} up / "
                   f"{rate('down')} down, server {rate('server')}; "
                   + " ".join([Path(data["config"]).name, *data["overrides"]]))
        for r in data["results"]:
            cells = [setting, r["method"], str(r["clients"])]
            for k, t in enumerate(r["targets"]):
                base = ref["targets"][k]["visible_s"]
                cells += [_opt(t["rounds"], str), _opt(t["visible_s"], lambda x: f"{x:.1f}"),
                          f"{base / t['visible_s']:.2f}" if t["visible_s"] else "n/a"]
            up, down = r["link_up_by_rank"], r["link_down_by_rank"]
            cells += [human_bytes(max(up[1:])), human_bytes(down[0]),
                      f"{100 * r['best_acc']:.2f}%"]
            rows.append(cells)
    return table(["links", "method", "clients", "rounds to 0.95", "visible s", "x as fast",
                  "rounds to 0.99", "visible s", "x as fast", "busiest client rank up",
                  "rank 0 down", "best acc"], rows)


def scale_memory_star() -> str:
    """bench_scale.py --preset memory --banks replicated,star: peak and bank per rank."""
    rows = [[r["ranks"], r["bank"], ", ".join(mib(b) for b in r["bank_bytes_by_rank"]),
             ", ".join(mib(b) for b in r["peak_host_bytes_by_rank"]),
             mib(r["bank_bytes_per_node"])]
            for r in load("scale-memory-star.json")["rows"]]
    return table(["ranks", "topology", "bank per rank", "peak per rank", "banks per node"],
                 rows)


def checkpoint() -> str:
    """benchmarks/bench_checkpoint.py: medians of 3, one process, local disk."""
    rows = [[r["case"], f"{r['num_params']:,}", human_bytes(r["file_bytes"]),
             f"{seconds(r['write_s_median'])} s", f"{seconds(r['read_verify_s_median'])} s",
             f"{r['background_held_s_median']:.3f} s (max {r['background_held_s_max']:.3f})"]
            for r in load("checkpoint.json")["results"]]
    return table(["case", "parameters", "file", "write (foreground)", "read + verify",
                  "loop held (background)"], rows)


def scale_memory() -> str:
    """bench_scale.py --preset memory: bank and peak memory against ranks, storage, dtype."""
    rows = [[r["ranks"], r["bank"], r["dtype"], mib(r["bank_bytes_per_node"]),
             mib(r["peak_host_bytes"]),
             mib(r["shared_touched_bytes"]) if r["bank"] == "shared" else "-"]
            for r in load("scale-memory.json")["rows"]]
    return table(["ranks per node", "bank", "dtype", "bank per node", "peak per rank",
                  "shared pages touched per rank"], rows)


def _phase(r: dict, key: str, fmt: str) -> str:
    value = r["phases_s"][key]
    return "-" if r["method"] == "fedavg" and key in ("decide_s", "bank_s") else fmt.format(value)


def scale_cpu() -> str:
    """bench_scale.py --preset cpu: rounds per second and phases against K and d."""
    rows = []
    for r in load("scale-cpu.json")["rows"]:
        own = r["lbgm_own_s"]
        rows.append([r["method"], r["clients"], f"{r['num_params']:,}", sig(r["rounds_per_s"]),
                     _phase(r, "train_s", "{:.3f}"), _phase(r, "decide_s", "{:.4f}"),
                     _phase(r, "comm_s", "{:.3f}"), _phase(r, "bank_s", "{:.4f}"),
                     _phase(r, "aggregate_s", "{:.4f}"),
                     "-" if own is None else f"{own:.4f}",
                     "-" if own is None else f"{100 * r['own_over_train']:.1f}%",
                     mib(r["peak_host_bytes"])])
    return table(["method", "K", "d", "rounds/s", "train s", "decide s", "comm s", "bank s",
                  "aggregate s", "LBGM own s", "own / train", "peak per rank"], rows)


def scale_twin() -> str:
    """bench_scale.py --preset twin: the paper's ResNet-18 job on 4 CPU ranks, 2 rounds."""
    rows = []
    for r in load("scale-twin.json")["rows"]:
        own = r["lbgm_own_s"]
        rows.append([r["method"], sig(r["rounds_per_s"], 2), _phase(r, "train_s", "{:.1f}"),
                     _phase(r, "decide_s", "{:.2f}"), _phase(r, "comm_s", "{:.2f}"),
                     _phase(r, "bank_s", "{:.2f}"), _phase(r, "aggregate_s", "{:.2f}"),
                     "-" if own is None else f"{own:.2f}",
                     "-" if own is None else f"{100 * r['own_over_train']:.1f}%",
                     human_bytes(r["mpi_bytes"]), human_bytes(r["max_round_mpi_bytes"]),
                     gib(r["peak_host_bytes"]),
                     gib(r["bank_bytes_per_node"]) if r["bank_bytes_per_node"] else "-"])
    return table(["method", "rounds/s", "train s", "decide s", "comm s", "bank s",
                  "aggregate s", "LBGM own s", "own / train", "MPI", "largest round",
                  "peak per rank", "bank per node"], rows)


# the scaled non-IID experiments: result file -> what the first column calls it
PAPER_RUNS = {"paper-digits-noniid.json": "digits, 200 rounds",
              "paper-mnist1d-noniid.json": "MNIST-1D, 300 rounds"}


def paper_noniid() -> str:
    rows = []
    for name, experiment in PAPER_RUNS.items():
        for r in load(name):
            saved = "-" if r["algo"] == "fedavg" else f"{r['uplink_savings_pct']:.1f}%"
            rows.append([experiment, r["label"], f"{r['best_acc_pct']:.2f}",
                         f"{r['final_acc_pct']:.2f}", human_bytes(r["uplink_bytes"]), saved,
                         human_bytes(r["mpi_bytes"])])
    return table(["experiment", "method", "best acc (%)", "final acc (%)", "uplink",
                  "uplink saved", "MPI bytes"], rows)


def paper_sweep() -> str:
    """jobs/sweep.sh configs/digits-noniid.toml: LBGM against FedAvg per threshold."""
    runs = [r for r in load("paper-digits-sweep.json") if r["algo"] != "fedavg"]

    def drop(x: float) -> str:
        return "0.0" if round(x, 1) == 0 else f"{x:+.1f}"

    return table(["threshold"] + [f"{r['threshold']:g}" for r in runs],
                 [["uplink saved"] + [f"{r['uplink_savings_pct']:.1f}%" for r in runs],
                  ["best-accuracy drop (pt)"] + [drop(r["drop_pt"]) for r in runs]])


def _subspace(name: str) -> str:
    sub = load(name)["subspace"]
    at = {e: i for i, e in enumerate(sub["epochs"])}
    shown = [e for e in (10, 20, 30, 40, 50) if e in at]
    return table(["epochs"] + [str(e) for e in shown],
                 [["N95, whole model"] + [str(sub["model"]["n95"][at[e]]) for e in shown],
                  ["N99, whole model"] + [str(sub["model"]["n99"][at[e]]) for e in shown],
                  ["N99, mean over layers"]
                  + [f"{sub['layer_stats']['n99']['mean'][at[e]]:.1f}" for e in shown]])


def subspace_mnist1d() -> str:
    """lbgm-mpi analyze configs/mnist1d-noniid.toml --epochs 50."""
    return _subspace("subspace-mnist1d-cnn.json")


def subspace_digits() -> str:
    """lbgm-mpi analyze configs/digits-noniid.toml --epochs 50."""
    return _subspace("subspace-digits-cnn.json")


# name -> (the JSON files it is rendered from, the renderer)
TABLES = {
    "rounds": (["rounds.json"], rounds),
    "compare-digits": (["compare-digits.json"], compare_digits),
    "compare-mnist1d": (["compare-mnist1d.json"], compare_mnist1d),
    "frontier": (["frontier.json"], frontier),
    "frontier-equal-bytes": (["frontier.json"], frontier_equal_bytes),
    "frontier-bytes-over-time": (["frontier.json"], frontier_bytes_over_time),
    "links-100mbit": (["links-100mbit.json"], links_100mbit),
    "links-other-rates": (["links-1gbit.json", "links-10mbit.json"], links_other_rates),
    "links-costmodel": (["links-100mbit.json"], links_costmodel),
    "links-predictions": (["links-100mbit.json"], links_predictions),
    "sketch-errors": (["sketch.json"], sketch_errors),
    "sketch-decisions": (["sketch.json"], sketch_decisions),
    "sketch-cost": (["sketch.json"], sketch_cost),
    "frontier-global": (["frontier.json"], frontier_global),
    "links-global": (list(LINKS_GLOBAL), links_global),
    "links-global-checks": (list(LINKS_GLOBAL), links_global_checks),
    "links-global-quiet": ([LINKS_GLOBAL_QUIET], lambda: links_global([LINKS_GLOBAL_QUIET])),
    "links-global-quiet-checks": ([LINKS_GLOBAL_QUIET],
                                  lambda: links_global_checks([LINKS_GLOBAL_QUIET])),
    "links-global-per-round": (["links-global-model.json"], links_global_per_round),
    "links-global-break-even": (["links-global-model.json"], links_global_break_even),
    "links-global-vs-baseline": (["links-global-model.json"], links_global_vs_baseline),
    "links-star": (list(LINKS_STAR), links_star),
    "scale-memory-star": (["scale-memory-star.json"], scale_memory_star),
    "checkpoint": (["checkpoint.json"], checkpoint),
    "scale-memory": (["scale-memory.json"], scale_memory),
    "scale-cpu": (["scale-cpu.json"], scale_cpu),
    "scale-twin": (["scale-twin.json"], scale_twin),
    "paper-noniid": (list(PAPER_RUNS), paper_noniid),
    "paper-sweep": (["paper-digits-sweep.json"], paper_sweep),
    "subspace-mnist1d": (["subspace-mnist1d-cnn.json"], subspace_mnist1d),
    "subspace-digits": (["subspace-digits-cnn.json"], subspace_digits),
}


# --------------------------------------------------------------------------- the marked regions


def render(name: str) -> str:
    return TABLES[name][1]()


def regions(text: str) -> list[tuple[str, str]]:
    """(name, content) of each marked table region of a markdown text, in order."""
    return [(m.group(1), m.group(2)) for m in MARKER.finditer(text)]


def rewrite(text: str) -> str:
    """``text`` with every marked region holding its freshly rendered table."""
    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in TABLES:
            return m.group(0)
        return f"<!-- table: {name} -->\n{render(name)}\n<!-- /table -->"
    return MARKER.sub(fill, text)


def problems(root: Path = REPO) -> list[str]:
    """One line per marked region that is unknown or differs from what its JSON renders."""
    out = []
    for path in doc_files(root):
        if not path.exists():
            continue
        rel = path.relative_to(root)
        for name, content in regions(path.read_text()):
            if name not in TABLES:
                out.append(f"{rel}: table {name!r} is not one render_tables.py knows "
                           f"(known: {', '.join(TABLES)})")
            elif content.strip() != render(name).strip():
                out.append(f"{rel}: table {name!r} differs from what "
                           f"{', '.join(TABLES[name][0])} renders")
    return out


def placed(root: Path = REPO) -> set[str]:
    return {name for path in doc_files(root) if path.exists()
            for name, _ in regions(path.read_text())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the marked regions in place")
    mode.add_argument("--check", action="store_true",
                      help="exit 1 naming every marked table that differs from its JSON")
    args = p.parse_args()
    if args.check:
        found = problems()
        for line in found:
            print(line, file=sys.stderr)
        missing = sorted(set(TABLES) - placed())
        if missing:
            print(f"note: tables placed nowhere: {', '.join(missing)}", file=sys.stderr)
        print("tables differ" if found else "tables match their JSON",
              file=sys.stderr if found else sys.stdout)
        return 1 if found else 0
    if args.write:
        for path in doc_files():
            if path.exists():
                text = path.read_text()
                new = rewrite(text)
                if new != text:
                    path.write_text(new)
                    print(f"rewrote {path.relative_to(REPO)}")
        return 0
    for name in TABLES:
        print(f"<!-- table: {name} -->\n{render(name)}\n<!-- /table -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
