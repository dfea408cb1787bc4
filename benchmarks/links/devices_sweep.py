"""Summarise unshaped `lbgm-mpi compare` folders of one-client-per-device settings (docs/links.md,
"One client per device"): per method, rounds to 0.95 and 0.99 x FedAvg's best, best accuracy, the
rounds in which no client refreshed (all-scalar), the fraction of client updates sent in full, and
an ARITHMETIC estimate (not a measurement) of the seconds to each target in a star of one client
per client rank on 20 Mbit/s up / 100 Mbit/s down client links: a round costs the largest client
upload at 20 Mbit/s (a whole dense update if anyone refreshed; at layer granularity at most the
round's whole payload) plus the dense aggregate down at 100 Mbit/s; local work is left out.

    python benchmarks/links/devices_sweep.py COMPARE_DIR [--ref FEDAVG_RUN_DIR]

--ref takes FedAvg from another folder of the same data, model and rates (a folder without a
fedavg run)."""
import argparse
import json
from pathlib import Path

UP, DOWN = 20e6 / 8, 100e6 / 8  # bytes per second
FRACTIONS = (0.95, 0.99)


def rows_of(run: Path) -> list[dict]:
    metrics = next(run.rglob("metrics.jsonl"))
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if "round" in r]


def seconds(rows: list[dict]) -> list[float]:
    """The estimate's clock at the end of each round."""
    total, out = 0.0, []
    for r in rows:
        dense = r["dense_uplink_bytes"] / r["participants"]
        up = min(dense, r["uplink_bytes"]) if r["refreshes"] else r["uplink_bytes"] / r["participants"]
        total += up / UP + dense / DOWN
        out.append(total)
    return out


def first(rows: list[dict], target: float) -> int | None:
    return next((i for i, r in enumerate(rows) if r["test_acc"] is not None
                 and r["test_acc"] >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--ref", default=None)
    args = p.parse_args()
    runs = {d.name: rows_of(d) for d in sorted(Path(args.folder).iterdir())
            if d.is_dir() and any(d.rglob("metrics.jsonl"))}
    ref = rows_of(Path(args.ref)) if args.ref else runs["fedavg"]
    runs.setdefault("fedavg", ref)
    best = max(r["test_acc"] for r in ref if r["test_acc"] is not None)
    targets = [f * best for f in FRACTIONS]
    ref_s = [seconds(ref)[i] if i is not None else None for i in (first(ref, t) for t in targets)]
    print(f"fedavg best {best:.2%}; targets {targets[0]:.2%} (0.95), {targets[1]:.2%} (0.99)")
    print("method      rounds  R0.95  R0.99  best acc  gap pt  all-scalar rounds (to 0.95)  "
          "full updates (to 0.95)  est s 0.95 (x)  est s 0.99 (x)")
    for name, rows in runs.items():
        hits = [first(rows, t) for t in targets]
        clock = seconds(rows)
        upto = rows[:hits[0] + 1] if hits[0] is not None else rows
        scalar = sum(r["refreshes"] == 0 for r in rows)
        scalar95 = sum(r["refreshes"] == 0 for r in upto)
        full = sum(r["refreshes"] for r in rows) / sum(r["participants"] for r in rows)
        full95 = sum(r["refreshes"] for r in upto) / sum(r["participants"] for r in upto)
        est = []
        for h, rs in zip(hits, ref_s):
            est.append("missed" if h is None else
                       f"{clock[h]:.1f} ({rs / clock[h]:.2f}x)" if rs else f"{clock[h]:.1f}")
        b = max(r["test_acc"] for r in rows if r["test_acc"] is not None)
        rounds = [str(h + 1) if h is not None else "-" for h in hits]
        print(f"{name:10s}  {len(rows):6d}  {rounds[0]:>5}  {rounds[1]:>5}  {b:8.2%}  "
              f"{(best - b) * 100:6.2f}  {scalar:>8d} ({scalar95}/{len(upto)}){'':12s}"
              f"{full:.2f} ({full95:.2f}){'':11s}{est[0]:>14}  {est[1]:>14}")


if __name__ == "__main__":
    main()
