"""Size the global scope's count sketch (algo.sketch) from measurements.

    python benchmarks/bench_sketch.py [--widths 64,128,256,512,1024,2048,4096] [--seeds 16]
        [--settings digits-4,digits-10,mnist1d-10,digits-wide] [--out benchmarks/results/sketch]

The global scope (algo.scope = "global") decides a round from sin^2 = |z|^2 / (|z|^2 + |c|^2),
where |c|^2 is exact and |z|^2 = |S r|^2 is a count sketch's estimate of the residual's |r|^2
(lbgm_mpi.algorithm.global_lookback). Everything here uses that module's hash (bucket and sign of
value i from splitmix64 of (seed, segment, i); checked against CountSketch.add), at every width
of --widths and --seeds sketch seeds (run.seed picks the sketch), model granularity (the methods'
one segment). It measures:

1. the relative error e = |S r|^2 / |r|^2 - 1 of the estimate: its RMS and 99th percentile of
   |e|, against sketch_bound(w) = sqrt(2 / w), on
   - random residuals: Gaussian and Student-t (3 degrees of freedom: heavy tails), d = 100,000;
   - REAL residuals: the aggregates of a short FedAvg run of the trainer (an in-process Trainer,
     its exchange's output each round), projected off the global look-back bank of the math
     module (GlobalBank) with m = 1, 3, 10 look-back aggregates, the bank refreshed where the
     true sin^2 exceeds t = 0.2 or 0.4 (an ideal run's bank, decided on the exact value);
2. wrong decisions near a threshold t (0.2, 0.4): with |c|^2 exact, a residual whose estimate is
   off by e gives the estimate s (1 + e) / (s (1 + e) + 1 - s) of a true sin^2 s. Over the
   measured e and s on a uniform grid of [0.5 t, 1.5 t] less the band |s - t| <= 0.1 t, the
   fraction of decisions on the wrong side of t ("outside the band"); the same at the band's
   edges (s = 0.9 t and 1.1 t, the hardest cases outside it); and on the real pairs (r, c) whose
   true sin^2 fell in [0.5 t, 1.5 t] in the bank runs above, as they came;
3. what a scalar round costs against a dense one at 5k, 100k, 1M and 11M parameters: the record
   (1 + m + sketch_widths values of float64; m = 3) against FedAvg's d + 1 float32, in bytes and
   in modelled seconds of a ring Allreduce at 16 ranks (benchmarks/links/costmodel.py with the
   parameters fitted in benchmarks/results/links-100mbit.json) at 100 Mbit/s and 1 Gbit/s.
Writes OUT.json and OUT.txt.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "links"))
sys.path.insert(0, str(REPO / "src"))

import costmodel  # noqa: E402
from netns import rate_bits  # noqa: E402
from lbgm_mpi.algorithm.global_lookback import (  # noqa: E402
    CountSketch, GlobalBank, _hash, sketch_bound, sketch_widths)
from lbgm_mpi.kernels import select_kernels  # noqa: E402
from record import write_record, machine  # noqa: E402  (benchmarks/, beside this script)

WIDTHS = "64,128,256,512,1024,2048,4096"
THRESHOLDS = (0.2, 0.4)
LOOKBACKS = (1, 3, 10)
BAND = 0.1            # decisions within +-10% of the threshold are not counted
GOAL = 0.01           # the wrong-decision fraction outside the band a width must stay under
GRID = 401            # true sin^2 values on [0.5 t, 1.5 t]
RANDOM_D, RANDOM_N = 100_000, 64
MODEL_SIZES = (5_000, 100_000, 1_000_000, 11_000_000)
COST_M, COST_RANKS, COST_RATES = 3, 16, ("100mbit", "1gbit")
# real runs: config overrides on configs/default.toml (the frontier's settings, 30 rounds) and a
# wider MLP on digits for a model of 150k parameters
SETTINGS = {
    "digits-4": ["clients.count=4"],
    "digits-10": ["clients.count=10"],
    "mnist1d-10": ["data.name=mnist1d", "model.name=cnn", "server.momentum=0.9",
                   "clients.count=10"],
    "digits-wide": ["clients.count=4", "model.hidden=2000"],
}
REAL_ROUNDS = 30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default=WIDTHS, help="count-sketch buckets to measure")
    p.add_argument("--seeds", type=int, default=16, help="sketch seeds per residual")
    p.add_argument("--settings", default=",".join(SETTINGS), help="real runs to sketch")
    p.add_argument("--rounds", type=int, default=REAL_ROUNDS, help="rounds of each real run")
    p.add_argument("--out", default="benchmarks/results/sketch", help="prefix of OUT.json/.txt")
    return p.parse_args(argv)


# ---- the sketch ------------------------------------------------------------------------------

class Sketcher:
    """The global scope's count sketch of one segment of d values at every width, one hash per
    sketch seed (bucket and sign of a value do not depend on the width but through a modulo)."""

    def __init__(self, d: int, widths: list[int], seeds: int):
        self.d, self.widths = d, widths
        self.hashes = []
        for seed in range(seeds):
            key = CountSketch([d], [1], seed).keys[0]
            z = _hash(key, 0, d)
            self.hashes.append((z >> np.uint64(1), 1.0 - 2.0 * (z & np.uint64(1)).astype(float)))

    def norms2(self, r: np.ndarray) -> np.ndarray:
        """|S r|^2 per (width, seed) of a float64 residual r: a len(widths) x seeds array."""
        out = np.empty((len(self.widths), len(self.hashes)))
        for j, (z, sign) in enumerate(self.hashes):
            signed = r * sign
            for i, w in enumerate(self.widths):
                if w >= self.d:  # the identity sketch: exact
                    out[i, j] = r @ r
                    continue
                b = np.bincount((z % np.uint64(w)).astype(np.int64), weights=signed, minlength=w)
                out[i, j] = b @ b
        return out

    def check(self) -> None:
        """The hash is the trainer's: the sketch of a random vector equals CountSketch.add's."""
        r = np.random.default_rng(0).standard_normal(self.d)
        for i, w in enumerate(self.widths):
            if w >= self.d:
                continue
            ref = CountSketch([self.d], [w], 0)
            out = torch.zeros(w, dtype=torch.float64)
            ref.add(out, 0, 0, torch.from_numpy(r))
            mine = self.norms2(r)[i, 0]
            assert abs(float(out @ out) - mine) <= 1e-9 * mine, (w, float(out @ out), mine)


# ---- residuals -------------------------------------------------------------------------------

def random_residuals(kind: str, rng) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((RANDOM_N, RANDOM_D))
    return rng.standard_t(3, size=(RANDOM_N, RANDOM_D))


def real_aggregates(setting: str, rounds: int, work: Path) -> tuple[list[torch.Tensor], dict]:
    """The aggregate of every round of a FedAvg run of ``setting`` (the exchange's output, before
    the server optimizer), and what the run is."""
    from lbgm_mpi.comm.mpi import Comm
    from lbgm_mpi.config import load_config
    from lbgm_mpi.training.loop import Trainer
    overrides = [*SETTINGS[setting], f"run.rounds={rounds}", "algo.name=fedavg",
                 "algo.compressor=none", "run.check_every=0"]
    spec = load_config(REPO / "configs/default.toml", overrides)
    trainer = Trainer(spec, Comm(), work / setting, quiet=True)
    aggregates = []
    exchange = trainer.exchange

    def recording(*args, **kwargs):
        delta, traffic = exchange(*args, **kwargs)
        aggregates.append(delta.detach().clone())
        return delta, traffic

    trainer.exchange = recording
    accs = [trainer.step()["test_acc"] for _ in range(rounds)]
    return aggregates, {"setting": setting, "overrides": overrides, "d": trainer.num_params,
                        "rounds": rounds, "final_acc": accs[-1]}


def bank_residuals(aggregates: list[torch.Tensor], m: int, t: float) -> list[dict]:
    """Run the global bank (m look-back aggregates, one segment) over the aggregates, deciding
    each round on the exact sin^2 at threshold t; return each round's residual (float64 numpy),
    |c|^2 and true sin^2, for the rounds where the bank had a direction."""
    d = len(aggregates[0])
    bank, project = GlobalBank([0, d], m), select_kernels("torch").project
    out = []
    for a in aggregates:
        if bank.usable()[0]:
            coefs = bank.coefficients(project, a)
            span = torch.zeros(d, dtype=torch.float32)
            bank.combine(coefs, span, [0])
            r = a.to(torch.float64) - span.to(torch.float64)
            r2, c2 = float(r @ r), float((coefs * coefs).sum())
            sin2 = r2 / (r2 + c2) if r2 + c2 > 0 else 0.0
            out.append({"r": r.numpy(), "c2": c2, "sin2": sin2})
            if sin2 <= t:
                continue
        bank.add(0, a)
    return out


# ---- statistics ------------------------------------------------------------------------------

def error_stats(e: np.ndarray, width: int) -> dict:
    """RMS and 99th percentile of |e| (e: relative errors of |r|^2), and the bound sqrt(2/w)."""
    return {"width": width, "samples": int(e.size), "rms": float(np.sqrt(np.mean(e * e))),
            "p99_abs": float(np.quantile(np.abs(e), 0.99)), "bound": sketch_bound(width)}


def wrong_fractions(e: np.ndarray, t: float) -> dict:
    """Fractions of decisions on the wrong side of t for true sin^2 s, over the relative errors
    ``e``: s on a grid of [0.5 t, 1.5 t] outside the band, and at the band's edges."""
    s = np.linspace(0.5 * t, 1.5 * t, GRID)
    s = s[np.abs(s - t) > BAND * t + 1e-12]

    def wrong(svals):
        est = svals[:, None] * (1 + e[None]) / (svals[:, None] * (1 + e[None]) + 1 - svals[:, None])
        return (est <= t) != (svals[:, None] <= t)

    edges = wrong(np.array([(1 - BAND) * t, (1 + BAND) * t]))
    return {"outside_band": float(wrong(s).mean()), "edge_below": float(edges[0].mean()),
            "edge_above": float(edges[1].mean())}


def natural_wrong(pairs: list[dict], norms: list[np.ndarray], t: float, widths) -> list[dict]:
    """On the real pairs whose true sin^2 fell in [0.5 t, 1.5 t]: per width, the fraction of
    (pair, seed) decisions on the wrong side of t, outside the band and in all."""
    near = [(p, z) for p, z in zip(pairs, norms) if 0.5 * t <= p["sin2"] <= 1.5 * t]
    out = []
    for i, w in enumerate(widths):
        wrong_out = wrong_all = n_out = n_all = 0
        for p, z in near:
            est = z[i] / (z[i] + p["c2"])
            bad = (est <= t) != (p["sin2"] <= t)
            n_all += bad.size
            wrong_all += int(bad.sum())
            if abs(p["sin2"] - t) > BAND * t:
                n_out += bad.size
                wrong_out += int(bad.sum())
        out.append({"width": w, "pairs": len(near), "decisions_outside_band": n_out,
                    "wrong_outside_band": wrong_out / n_out if n_out else None,
                    "decisions": n_all, "wrong": wrong_all / n_all if n_all else None})
    return out


def cost_rows(widths: list[int], params: dict) -> list[dict]:
    """A scalar round (the record alone) against a dense one (record + FedAvg's Allreduce) at
    each model size and algo.sketch: bytes, and modelled ring Allreduce seconds."""
    rows = []
    for d in MODEL_SIZES:
        dense = 4 * (d + 1)
        for w in widths:
            values = 1 + COST_M + sum(sketch_widths([d], w))
            record = 8 * values
            row = {"d": d, "sketch": w, "buckets": values - 1 - COST_M, "record_bytes": record,
                   "dense_bytes": dense, "bytes_ratio": record / dense}
            for rate in COST_RATES:
                bits = rate_bits(rate)
                s_rec = costmodel.seconds(params, "allreduce", COST_RANKS, [record], bits)
                s_rd = costmodel.seconds(params, "allreduce-rd", COST_RANKS, [record], bits)
                s_dense = costmodel.seconds(params, "allreduce", COST_RANKS, [dense], bits)
                row[rate] = {"record_s": s_rec, "record_rd_s": s_rd, "dense_s": s_dense,
                             "scalar_vs_dense": s_rec / (s_rec + s_dense),
                             "scalar_vs_dense_rd": s_rd / (s_rd + s_dense)}
            rows.append(row)
    return rows


# ---- text ------------------------------------------------------------------------------------

def table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header] + rows
    widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
    lines = ["  ".join(t.ljust(w) if c == 0 else t.rjust(w) for c, (t, w) in
                       enumerate(zip(r, widths))).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def report_text(record: dict) -> str:
    parts = [f"command: {record['command']}"]
    parts.append("relative error of |r|^2 (e = |Sr|^2/|r|^2 - 1): RMS and 99th percentile of "
                 "|e| per width; bound = sqrt(2/w)")
    header = ["residuals", "samples"] + [f"w={w}" for w in record["widths"]]
    rows = []
    for name, src in record["sources"].items():
        rows.append([f"{name} RMS", str(src["errors"][0]["samples"])]
                    + [f"{x['rms']:.4f}" for x in src["errors"]])
        rows.append([f"{name} p99 |e|", ""] + [f"{x['p99_abs']:.4f}" for x in src["errors"]])
    rows.append(["bound sqrt(2/w)", ""] + [f"{sketch_bound(w):.4f}" for w in record["widths"]])
    parts.append(table(header, rows))
    for t in THRESHOLDS:
        key = f"{t:g}"
        parts.append(f"wrong decisions (%) at threshold {t:g}: true sin^2 uniform on "
                     f"[{0.5 * t:g}, {1.5 * t:g}] outside +-{100 * BAND:.0f}% of t ('out'), and "
                     f"at the band's edges s = {(1 - BAND) * t:.3g} / {(1 + BAND) * t:.3g} "
                     "('edges')")
        rows = []
        for name, src in record["sources"].items():
            fr = src["wrong"][key]
            rows.append([f"{name} out"] + [_pct(x["outside_band"]) for x in fr])
            rows.append([f"{name} edges"] + [f"{_pct(x['edge_below'])}/{_pct(x['edge_above'])}"
                                               for x in fr])
        parts.append(table(["residuals"] + [f"w={w}" for w in record["widths"]], rows))
        rows = []
        for name, src in record["sources"].items():
            nat = src.get("natural", {}).get(key)
            if not nat:
                continue
            rows.append([f"{name} ({nat[0]['pairs']} pairs)"]
                        + [f"{_pct(x['wrong_outside_band'])} ({_pct(x['wrong'])})" for x in nat])
        if rows:
            parts.append(f"real pairs with true sin^2 in [{0.5 * t:g}, {1.5 * t:g}] (bank runs "
                         "at this threshold, m = 1, 3, 10), wrong decisions (%) outside the "
                         "band (and in all), over pairs x sketch seeds")
            parts.append(table(["run"] + [f"w={w}" for w in record["widths"]], rows))
    rec = record["recommendation"]
    parts.append(f"smallest width whose wrong decisions stay below {100 * GOAL:g}% for every "
                 "residual kind: over s uniform outside the band: "
                 + ", ".join(f"t={t}: {w}" for t, w in rec["uniform"].items())
                 + "; at the band's edges (the hardest s outside it): "
                 + ", ".join(f"t={t}: {w}" for t, w in rec["edges"].items())
                 + "\nworst edge (%) per width: " + "; ".join(
                     f"t={t}: " + " ".join(f"{100 * x:.2f}" for x in xs)
                     for t, xs in rec["worst_edge"].items()))
    rows = []
    for r in record["cost"]:
        rows.append([f"{r['d']:,}", str(r["sketch"]), str(r["buckets"]),
                     f"{r['record_bytes']:,}", f"{r['dense_bytes']:,}",
                     f"{100 * r['bytes_ratio']:.2f}"]
                    + [f"{1e3 * r[rate]['record_s']:.1f} / {1e3 * r[rate]['dense_s']:.1f}: "
                       f"{100 * r[rate]['scalar_vs_dense']:.1f}% "
                       f"({100 * r[rate]['scalar_vs_dense_rd']:.1f}%)" for rate in COST_RATES])
    parts.append(f"a scalar round against a dense one (m = {COST_M}; dense = record + FedAvg's "
                 f"Allreduce): modelled ring Allreduce ms of the record and of FedAvg's d + 1 "
                 f"float32 at {COST_RANKS} ranks (fit of {record['cost_params_from']}), and a "
                 "scalar round's seconds as % of a dense round's (in brackets: the record by "
                 "recursive doubling, ceil(log2 P) steps, instead of the pinned ring's 2 (P - 1))")
    parts.append(table(["d", "algo.sketch", "buckets", "record B", "dense B", "record/dense %"]
                       + [f"{r}: record / FedAvg ms: scalar/dense round" for r in COST_RATES],
                       rows))
    return "\n\n".join(parts)


def recommend(sources: dict, widths: list[int]) -> dict:
    """Per threshold, the smallest width whose wrong-decision fraction stays below GOAL for every
    residual kind: over s uniform outside the band ("uniform"), and at both of the band's edges,
    the hardest s outside it ("edges"); None where no width does."""
    out = {"goal": GOAL, "band": BAND, "uniform": {}, "edges": {}}
    for t in THRESHOLDS:
        key = f"{t:g}"
        fr = [src["wrong"][key] for src in sources.values()]
        uniform = [w for i, w in enumerate(widths) if all(f[i]["outside_band"] < GOAL for f in fr)]
        edges = [w for i, w in enumerate(widths)
                 if all(max(f[i]["edge_below"], f[i]["edge_above"]) < GOAL for f in fr)]
        out["uniform"][key] = min(uniform, default=None)
        out["edges"][key] = min(edges, default=None)
    out["worst_edge"] = {f"{t:g}": [max(max(src["wrong"][f"{t:g}"][i]["edge_below"],
                                            src["wrong"][f"{t:g}"][i]["edge_above"])
                                        for src in sources.values()) for i in range(len(widths))]
                         for t in THRESHOLDS}
    return out


def main() -> None:
    args = parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    torch.set_num_threads(1)
    start = time.perf_counter()
    rng = np.random.default_rng(1)
    sources = {}
    for kind in ("gaussian", "student-t3"):
        sk = Sketcher(RANDOM_D, widths, args.seeds)
        sk.check()
        res = random_residuals(kind, rng)
        e = np.stack([sk.norms2(r) / (r @ r) - 1 for r in res], axis=-1)  # W x seeds x n
        sources[kind] = {"d": RANDOM_D, "n": RANDOM_N, "e": e}
        print(f"{kind}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-sketch-") as tmp:
        for setting in args.settings.split(","):
            aggregates, info = real_aggregates(setting, args.rounds, Path(tmp))
            d = info["d"]
            sk = Sketcher(d, widths, args.seeds)
            es, natural = [], {}
            for t in THRESHOLDS:
                pairs = [p for m in LOOKBACKS for p in bank_residuals(aggregates, m, t)]
                norms = [sk.norms2(p["r"]) for p in pairs]
                es += [z / (p["r"] @ p["r"]) - 1 for p, z in zip(pairs, norms)
                       if p["r"] @ p["r"] > 0]
                natural[f"{t:g}"] = natural_wrong(pairs, norms, t, widths)
                info[f"sin2_t{t:g}"] = [p["sin2"] for p in pairs]
            sources[setting] = {"d": d, "n": len(es), "e": np.stack(es, axis=-1),
                                "natural": natural, "run": {k: v for k, v in info.items()
                                                            if not k.startswith("sin2")},
                                "sin2_quantiles": {
                                    k[6:]: np.quantile(v, [0.1, 0.5, 0.9]).tolist()
                                    for k, v in info.items() if k.startswith("sin2")}}
            runs.append(info["setting"])
            print(f"{setting} (d = {d:,}): {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for src in sources.values():
        e = src.pop("e")
        src["errors"] = [error_stats(e[i].ravel(), w) for i, w in enumerate(widths)]
        src["wrong"] = {f"{t:g}": [wrong_fractions(e[i].ravel(), t) for i in range(len(widths))]
                        for t in THRESHOLDS}
    fit = json.loads((REPO / "benchmarks/results/links-100mbit.json").read_text())["model"]
    record = {"command": f"python {' '.join(sys.argv)}", "widths": widths, "seeds": args.seeds,
              "thresholds": list(THRESHOLDS), "lookbacks": list(LOOKBACKS), "band": BAND,
              "machine": machine(), "sources": sources, "recommendation": recommend(sources, widths),
              "cost_params_from": "benchmarks/results/links-100mbit.json",
              "cost": cost_rows(widths, fit["params"]), "seconds": time.perf_counter() - start}
    text = report_text(record)
    print(text)
    out = write_record(Path(args.out).with_suffix(".json"), record, text=text)
    print(f"wrote {out.with_suffix('.txt')}, .json", file=sys.stderr)


if __name__ == "__main__":
    main()
