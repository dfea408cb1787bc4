"""Tables over seeds (analysis/seeds.py): grouping runs by method and seed, mean and spread,
last-5 accuracy and accuracy at equal bytes, on run folders written here."""

import json
import statistics

import pytest

from lbgm_mpi.analysis.report import load_run
from lbgm_mpi.analysis.seeds import (accuracy_at, equal_bytes, format_seed_table, last_mean,
                                     rows_to_json, seed_table, spread)


def _write_run(folder, label, seed, accs, uplink_per_round, algo="lbgm"):
    """A run folder as the trainer writes it: metrics.jsonl, summary.json, config.toml."""
    folder.mkdir(parents=True)
    rows = [{"round": r + 1, "test_acc": a, "uplink_bytes": uplink_per_round}
            for r, a in enumerate(accs)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluated = [a for a in accs if a is not None]
    (folder / "summary.json").write_text(json.dumps({
        "label": label, "algo": algo, "compressor": "none", "threshold": None,
        "rounds": len(accs),
        "best_acc": max(evaluated), "final_acc": evaluated[-1],
        "total_uplink_bytes": uplink_per_round * len(accs)}))
    (folder / "config.toml").write_text(f"[run]\nseed = {seed}\n")
    return folder


def test_spread_is_mean_and_sample_standard_deviation():
    values = [1.0, 2.0, 6.0]
    s = spread(values)
    assert s.mean == pytest.approx(3.0) and s.std == pytest.approx(statistics.stdev(values))
    assert s.n == 3 and spread([4.0]).std == 0.0
    assert spread([1.0, None]) is None and spread([]) is None


def test_last_mean_and_accuracy_at_a_budget(tmp_path):
    run = load_run(_write_run(tmp_path / "a", "lbgm", 0,
                              [0.1, None, 0.3, 0.4, 0.5, 0.6, None, 0.8], 10))
    assert last_mean(run) == pytest.approx((0.3 + 0.4 + 0.5 + 0.6 + 0.8) / 5)
    assert last_mean(run, count=2) == pytest.approx(0.7)
    assert accuracy_at(run, 9) is None                 # the first round sent 10 bytes
    assert accuracy_at(run, 10) == 0.1
    assert accuracy_at(run, 29) == 0.1                 # round 2 is not evaluated
    assert accuracy_at(run, 60) == 0.6 and accuracy_at(run, 1e9) == 0.8


def test_equal_bytes_uses_the_cheaper_runs_total(tmp_path):
    cheap = load_run(_write_run(tmp_path / "c", "lbgm", 0, [0.2, 0.5, 0.7], 10))
    dense = load_run(_write_run(tmp_path / "d", "fedavg", 0, [0.3, 0.6, 0.9], 15, "fedavg"))
    # budget 30 bytes: all of the cheap run, the dense run's first two rounds
    assert equal_bytes(cheap, dense) == (0.7, 0.6)
    assert equal_bytes(dense, cheap) == (0.6, 0.7)


def _three_seeds(tmp_path):
    folders = []
    for seed, shift in ((0, 0.0), (1, 0.02), (2, -0.04)):
        base = tmp_path / f"seed-{seed}"
        folders.append(_write_run(base / "fedavg", "fedavg", seed,
                                  [0.5 + shift, 0.7 + shift, 0.8 + shift], 100, "fedavg"))
        folders.append(_write_run(base / "lbgm", "lbgm", seed,
                                  [0.4 + shift, 0.6 + shift, 0.65 + shift], 40 + 10 * seed))
    return folders


def test_seed_table_rows(tmp_path):
    rows = seed_table([load_run(f) for f in _three_seeds(tmp_path)])
    assert [r["label"] for r in rows] == ["fedavg", "lbgm"]
    fed, lb = rows
    assert fed["seeds"] == lb["seeds"] == [0, 1, 2]
    assert fed["uplink_savings_pct"].mean == 0.0 and fed["uplink_bytes"].std == 0.0
    savings = [100 * (1 - (40 + 10 * s) / 100) for s in range(3)]
    assert lb["uplink_savings_pct"].mean == pytest.approx(statistics.mean(savings))
    assert lb["uplink_savings_pct"].std == pytest.approx(statistics.stdev(savings))
    best = [100 * (0.65 + s) for s in (0.0, 0.02, -0.04)]
    assert lb["best_acc_pct"].mean == pytest.approx(statistics.mean(best))
    assert lb["best_acc_pct"].std == pytest.approx(statistics.stdev(best))
    last = [100 * (0.4 + 0.6 + 0.65 + 3 * s) / 3 for s in (0.0, 0.02, -0.04)]
    assert lb["last_acc_pct"].mean == pytest.approx(statistics.mean(last))
    # lbgm sends 120, 150, 180 bytes in all; FedAvg 100 per round: its round 1 fits
    assert lb["acc_at_equal_bytes_pct"].mean == pytest.approx(statistics.mean(best))
    fedavg_then = [100 * (0.5 + s) for s in (0.0, 0.02, -0.04)]
    assert lb["fedavg_at_equal_bytes_pct"].mean == pytest.approx(statistics.mean(fedavg_then))
    text = format_seed_table(rows)
    assert "±" in text and "lbgm" in text and "0,1,2" in text
    assert json.loads(json.dumps(rows_to_json(rows)))[1]["best_acc_pct"]["n"] == 3


def test_seed_selection_and_errors(tmp_path):
    runs = [load_run(f) for f in _three_seeds(tmp_path)]
    rows = seed_table(runs, seeds=[0, 2])
    assert all(r["seeds"] == [0, 2] for r in rows)
    with pytest.raises(ValueError, match="'fedavg' has no run with seed 3"):
        seed_table(runs, seeds=[0, 3])
    twice = load_run(_write_run(tmp_path / "again", "lbgm", 1, [0.1], 1))
    with pytest.raises(ValueError, match="two runs of 'lbgm' with seed 1"):
        seed_table(runs + [twice])
    no_ref = seed_table([r for r in runs if r.label == "lbgm"])
    assert no_ref[0]["uplink_savings_pct"] is None and no_ref[0]["best_acc_pct"] is not None


# ---- compare --seeds and report --seeds -------------------------------------------------------

@pytest.mark.mpi
def test_compare_and_report_over_seeds(tmp_path):
    """Each seed's runs equal a plain compare at that seed; the table is over both seeds, and
    report --seeds prints the same table from the run folders."""
    from conftest import FAST, PLOTS, lbgm, lbgm_batch, read_metrics, without_timing
    common = ["configs/default.toml", *FAST, "--set", "run.rounds=4", "--methods", "fedavg,lbgm",
              "--quiet"]
    # one job: the compare over seeds (whose table is read from the output, printed first), then
    # the plain compare at seed 1
    out = lbgm_batch(2, ["compare", *common, *PLOTS, "--seeds", "3,1",
                         "--out", str(tmp_path / "cmp")],
                     ["compare", *common, "--set", "run.seed=1",
                      "--out", str(tmp_path / "one")]).stdout
    for method in ("fedavg", "lbgm"):
        assert without_timing(read_metrics(tmp_path / "cmp" / "seed-1" / method)) == \
            without_timing(read_metrics(tmp_path / "one" / method))
    table = out[out.index("mean ± sample"):out.index("run folders")].strip()
    assert [line.split()[:2] for line in table.splitlines()[3:]] == [["fedavg", "1,3"],
                                                                     ["lbgm(t=0.2)", "1,3"]]
    assert (tmp_path / "cmp" / "compare_seeds.png").stat().st_size > 0
    assert (tmp_path / "cmp" / "seed-3" / "compare_acc_vs_bytes.png").stat().st_size > 0
    assert not list((tmp_path / "one").rglob("*.png")), "run.plots = false drew plots"
    folders = sorted(str(p) for p in (tmp_path / "cmp").glob("seed-*/*") if p.is_dir())
    report = lbgm(1, "report", "--seeds", "1,3", *folders, timeout=60).stdout
    assert report.strip() == table
    missing = lbgm(1, "report", "--seeds", "1,2", *folders, timeout=60, check=False)
    assert missing.returncode != 0 and "has no run with seed 2" in missing.stderr
