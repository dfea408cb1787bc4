"""What a new user hit (issue 19): report and plot stopping at a shell glob's first non-run folder,
a FedAvg baseline of another setting compared without a word, failed starts leaving an empty
locked folder, the local launcher's second Ctrl-C, mpirun's banner after a clean stop or a
one-line error, its resume hint, non-MPI commands starting MPI, unreadable byte axes, hidden MPI
lines, labels that hide a run's settings, and help that disagreed with the code. Every launch runs
under a timeout, on the synthetic set, for a few rounds."""

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from conftest import (FAST, REPO, SLOW, WAIT_S, finish, launcher_env, lbgm, read_metrics,
                      start_session, wait_rows, write_run)
from test_errors_before_start import _nan_rows, _store

from lbgm_mpi.analysis import plots
from lbgm_mpi.cli.train import _compare_plan
from lbgm_mpi.config import ConfigError, load_config, to_toml
from lbgm_mpi.errors import UserError
from lbgm_mpi.runs import lock as runlock
from lbgm_mpi.runs.lock import RunLock
from lbgm_mpi.runs.methods import METHODS, method_overrides

LAUNCHER = REPO / "jobs" / "mpirun-local.sh"


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``lbgm-mpi ARGS`` as one process, no launcher."""
    return subprocess.run([sys.executable, "-m", "lbgm_mpi", *args], cwd=REPO,
                          env=launcher_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lbgm-mpi: error")]


def _one_error(result, *needles) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    [line] = _errors(result.stderr)
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def runs(fast_compare):
    """A finished compare (fedavg, lbgm) at one rank: its folder, with the PNGs it wrote
    (conftest.fast_compare, shared with test_cli_analysis; copied before any change)."""
    return fast_compare


def _copy_runs(runs: Path, to: Path) -> Path:
    shutil.copytree(runs, to)
    return to


def _edit_config(folder: Path, **sections) -> None:
    """Rewrite a run folder's config.toml with some sections' keys changed."""
    spec = load_config(folder / "config.toml")
    (folder / "config.toml").write_text(to_toml(spec.replace(**sections)))


# ---- 1. report and plot take what a shell's glob gives them ---------------------------------

def test_report_and_plot_leave_out_folders_that_are_not_runs(runs, tmp_path):
    """`report runs/*/*` lists run folders next to checkpoints folders, PNGs and empty folders:
    the runs are taken, the rest left out with a note each (it stopped at the first)."""
    root = tmp_path / "runs"
    _copy_runs(runs, root / "cmp")
    shutil.copytree(runs / "lbgm", root / "solo")  # a train run: root/solo/checkpoints is in */*
    (root / "cmp" / "stale").mkdir()  # an empty folder
    args = sorted(str(p) for p in root.glob("*/*"))
    assert str(root / "solo" / "checkpoints") in args
    report = _cli("report", *args)
    assert report.returncode == 0, report.stderr
    assert "fedavg" in report.stdout and "lbgm(t=0.2)" in report.stdout
    notes = report.stderr.splitlines()
    assert f"lbgm-mpi: left out {root / 'solo' / 'checkpoints'} (no metrics.jsonl: not a run " \
           "folder, or its run has not finished a round yet)" in notes, notes
    assert f"lbgm-mpi: left out {root / 'cmp' / 'stale'} (an empty folder)" in notes, notes
    assert any(n.startswith("lbgm-mpi: left out ") and "file(s), not run folders: " in n
               for n in notes), notes
    plot = _cli("plot", *args, "--out", str(tmp_path / "fig"))
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "fig_acc_vs_bytes.png").stat().st_size > 0


def test_report_takes_the_runs_of_a_seed_folder(runs, tmp_path):
    """`report OUT/*` after compare --seeds lists seed-S folders: their runs are taken."""
    out = tmp_path / "cmp"
    for method in ("fedavg", "lbgm"):
        shutil.copytree(runs / method, out / "seed-0" / method)
    (out / "compare_seeds.png").write_bytes(b"png")
    for args in ([str(p) for p in sorted(out.iterdir())], [str(out)]):
        report = _cli("report", *args)
        assert report.returncode == 0, report.stderr
        assert "fedavg" in report.stdout and "lbgm(t=0.2)" in report.stdout
        assert "run folder(s) in" in report.stderr and "fedavg, " in report.stderr


def test_no_run_folder_at_all_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_error(_cli("report", str(tmp_path / "empty")), "no run folder among the arguments",
               f"{tmp_path / 'empty'} (an empty folder)")


# ---- 2. a FedAvg baseline must be of the same setting ---------------------------------------

def test_report_refuses_a_fedavg_run_of_another_setting(runs, tmp_path):
    """It printed a drop of -73 points and savings of -2300% against FedAvg on another data set."""
    cmp = _copy_runs(runs, tmp_path / "cmp")
    _edit_config(cmp / "fedavg", data={"name": "digits"}, run={"rounds": 30})
    folders = [str(cmp / "fedavg"), str(cmp / "lbgm")]
    needles = [f"fedavg baseline {cmp / 'fedavg'} differs from {cmp / 'lbgm'} in",
               "data.name (digits vs synthetic)", "run.rounds (30 vs 8)"]
    _one_error(_cli("report", *folders), *needles)
    _one_error(_cli("plot", *folders, "--sweep", "--out", str(tmp_path / "fig")), *needles)


def test_report_warns_of_other_step_sizes_and_takes_another_seed(runs, tmp_path):
    cmp = _copy_runs(runs, tmp_path / "cmp")
    _edit_config(cmp / "fedavg", clients={"lr": 0.05}, run={"seed": 7})
    report = _cli("report", str(cmp / "fedavg"), str(cmp / "lbgm"))
    assert report.returncode == 0, report.stderr
    [warning] = [x for x in report.stderr.splitlines() if x.startswith("lbgm-mpi: warning")]
    assert "in clients.lr (0.05 vs 0.1)" in warning and "seed" not in warning, warning
    assert "lbgm(t=0.2)" in report.stdout


# ---- 3. a start that fails its checks leaves no folder --------------------------------------

def _failing_starts(tmp_path: Path) -> dict:
    """name -> (extra train arguments, what the one error line names)."""
    (tmp_path / "no-mnist").mkdir()
    nan_store = _store(tmp_path / "nan.h5", x_train=_nan_rows())
    hdf5 = ["--set", "data.name=hdf5", "--set", "model.name=mlp", "--set", "clients.count=2",
            "--set", "data.partition=iid"]
    cases = {
        "missing data files": (["--set", "data.name=mnist", "--set",
                                f"data.root={tmp_path / 'no-mnist'}", "--set", "model.name=fcn"],
                               "missing file"),
        "fewer clients than ranks": (["--set", "clients.count=1"], "cannot occupy 2 MPI ranks"),
        "a bad HDF5 root": ([*hdf5, "--set", f"data.root={tmp_path / 'none.h5'}"], "none.h5"),
        # passes the checks (its layout is sound) and fails as the Trainer reads the rows
        "NaN in an HDF5 store": ([*hdf5, "--set", f"data.root={nan_store}"], "holds NaN"),
        "--resume of a missing path": (["--resume", str(tmp_path / "nope.h5")], "nope.h5"),
    }
    if not torch.cuda.is_available():
        cases["cuda without a GPU"] = (["--set", "system.device=cuda"], "no CUDA device")
    return cases


@pytest.mark.mpi
def test_failed_starts_leave_no_folder_and_no_lock(tmp_path):
    for name, (args, needle) in _failing_starts(tmp_path).items():
        out = tmp_path / name.replace(" ", "-") / "new" / "run"
        result = lbgm(2, "train", "configs/default.toml", *FAST, *args, "--out", str(out),
                      timeout=90, check=False)
        _one_error(result, needle)
        assert not out.parent.parent.exists(), f"{name}: {list(out.parent.parent.rglob('*'))}"


@pytest.mark.mpi
def test_a_failed_start_in_a_folder_of_yours_leaves_it_as_it_was(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    _one_error(lbgm(2, "compare", "configs/default.toml", *FAST, "--set", "clients.count=1",
                    "--out", str(mine), timeout=90, check=False), "clients.count")
    assert mine.is_dir() and not any(mine.iterdir())


def test_a_lock_released_with_nothing_written_takes_its_folders_away(tmp_path):
    RunLock(tmp_path / "a" / "b").acquire().release()
    assert not (tmp_path / "a").exists()
    with RunLock(tmp_path / "c") as lock:
        lock.acquire()
        (tmp_path / "c" / "metrics.jsonl").write_text("")
    assert (tmp_path / "c" / ".lock").read_text() == ""  # a run's folder keeps its lock file


def _hold_with_empty_record(folder: Path) -> int:
    """A lock on FOLDER/.lock held by another open file, with no holder record yet: a run in
    the instant between taking the lock and writing who it is (or emptying it and letting go)."""
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_run_starting_at_the_same_instant_is_named_not_unreadable(tmp_path):
    """Two runs started together: the second meets the first's lock before its record; it waits
    for the record and names the holder."""
    fd = _hold_with_empty_record(tmp_path / "run")
    record = '{"host": "n1", "pid": 4242, "started": "2026-01-01 10:00:00", "command": "x"}'
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, record.encode(), 0))
    writer.start()
    with pytest.raises(UserError, match=r"in use by another run \(pid 4242 on host n1"):
        RunLock(tmp_path / "run").acquire()
    writer.join()
    os.close(fd)


def test_a_run_ending_at_the_same_instant_leaves_the_lock_to_the_next(tmp_path):
    fd = _hold_with_empty_record(tmp_path / "run")
    closer = threading.Timer(0.2, os.close, [fd])
    closer.start()
    lock = RunLock(tmp_path / "run").acquire()
    closer.join()
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_on_a_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """Another start removed its lock file between this one's open and flock: this one must not
    hold a lock on a file without a name (a third run could lock the new file too)."""
    calls, flock = [], fcntl.flock

    def flock_after_removal(fd, op):
        if not calls:
            os.unlink(tmp_path / "run" / ".lock")
        calls.append(op)
        return flock(fd, op)

    monkeypatch.setattr(runlock.fcntl, "flock", flock_after_removal)
    lock = RunLock(tmp_path / "run").acquire()
    assert len(calls) == 2
    assert os.fstat(lock.fd).st_ino == os.stat(tmp_path / "run" / ".lock").st_ino
    lock.release()


# ---- 4. the local launcher ------------------------------------------------------------------

def _start(*args: str) -> subprocess.Popen:
    """The launcher as a terminal starts a job: the leader of a new session."""
    return start_session(["bash", str(LAUNCHER), *args])


BANNER = "exited with non-zero status"


def test_a_mistyped_command_is_named_in_one_line():
    started = time.monotonic()
    proc = _start("2", "trian", "configs/default.toml")
    _, err = finish(proc, 30)
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "'trian' is neither a command (train or compare) nor a config file" in err
    assert time.monotonic() - started < 10, "mpirun was started"


@pytest.mark.mpi
def test_a_one_line_error_through_the_launcher_is_one_line(tmp_path):
    proc = _start("2", "train", "configs/default.toml", *FAST, "--set", "clients.count=1",
                  "--out", str(tmp_path / "run"))
    _, err = finish(proc)
    assert proc.returncode == 2, err
    assert len(_errors(err)) == 1 and BANNER not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.mpi
def test_a_stop_through_the_launcher_prints_the_launchers_command_and_no_banner(tmp_path):
    run = tmp_path / "run"
    proc = _start("2", "train", "configs/default.toml", *SLOW, "--set", "run.rounds=400",
                  "--out", str(run))
    wait_rows(proc, run, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = finish(proc)
    assert proc.returncode == 75, err
    assert BANNER not in err, err
    stopped = len(read_metrics(run))
    [hint] = [line for line in err.splitlines() if "exit 75. Continue it with: " in line]
    words = shlex.split(hint.split("Continue it with: ", 1)[1])
    assert words[:4] == ["bash", str(LAUNCHER), "2", "train"], words
    assert words[-4:] == ["--out", str(run), "--resume", "latest"], words
    done = subprocess.run([*words, "--set", f"run.rounds={stopped + 1}", "--quiet"], cwd=REPO,
                          env=launcher_env(), capture_output=True, text=True, timeout=WAIT_S,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert [r["round"] for r in read_metrics(run)] == list(range(1, stopped + 2))


@pytest.mark.mpi
def test_a_second_ctrl_c_through_the_launcher_quits_at_once(tmp_path):
    """Without the launcher a second Ctrl-C quits with 130; through it, it used to wait for the
    round and its checkpoint, and end with 75."""
    run = tmp_path / "run"
    proc = _start("2", "train", "configs/default.toml", *SLOW, "--set", "run.rounds=400",
                  "--out", str(run))
    wait_rows(proc, run, 2)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    _, err = finish(proc)
    assert proc.returncode == 130, err
    assert "quitting now, without a checkpoint of this round" in err
    assert time.monotonic() - sent < 10


# ---- 5. report, inspect and plot start no MPI -----------------------------------------------

@pytest.mark.parametrize("command", ["report", "plot", "inspect"])
def test_non_mpi_commands_neither_start_mpi_nor_name_a_rank(command, tmp_path):
    code = ("import sys; from lbgm_mpi.cli import main; status = main(sys.argv[1:]); "
            "print('mpi4py' in sys.modules, status)")
    done = subprocess.run([sys.executable, "-c", code, command, str(tmp_path / "missing")],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.stdout.split() == ["False", "2"], (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith("lbgm-mpi: error: ") and "rank" not in line, line


@pytest.mark.mpi
def test_report_under_mpirun_prints_once_and_names_no_rank(runs, tmp_path):
    table = lbgm(2, "report", str(runs / "fedavg"), str(runs / "lbgm"), timeout=60)
    assert table.stdout.count("best acc (%)") == 1, table.stdout
    failed = lbgm(2, "report", str(tmp_path / "missing"), timeout=60, check=False)
    assert _one_error(failed, str(tmp_path / "missing")) == \
        f"lbgm-mpi: error: run folder {tmp_path / 'missing'} does not exist"


# ---- 6. plots and labels --------------------------------------------------------------------

@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    kept = []

    def keep(fig, out_png):
        fig.canvas.draw()
        kept.append(fig)
        return out_png

    monkeypatch.setattr(plots, "_save", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def _visible_ticks(axis) -> list[str]:
    lo, hi = sorted(axis.get_view_interval())
    fmt = axis.get_major_formatter()
    return [fmt(v) for v in axis.get_majorticklocs() if lo <= v <= hi]


@pytest.mark.parametrize("lo, hi", [(1.2e6, 8e6), (3e4, 9e4), (2.0e9, 2.6e9), (50.0, 2e3)])
def test_a_byte_axis_labels_several_ticks_where_the_data_span_a_decade_or_less(lo, hi):
    fig, ax = plt.subplots()
    ax.plot([lo, hi], [0.0, 1.0])
    ax.set_xscale("log")
    plots._bytes_axis(ax.xaxis)
    fig.canvas.draw()
    labels = _visible_ticks(ax.xaxis)
    plt.close(fig)
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    assert all(label.endswith("B") for label in labels), labels


def test_the_mpi_line_stays_visible_where_it_meets_the_uplink_line(tmp_path, figures):
    """FedAvg hands MPI about its uplink: the dashed line lay under the solid one, its hollow
    markers under the filled ones, at the same points."""
    for n in (8, 40):
        folder = write_run(tmp_path, f"fedavg-{n}", "fedavg",
                            [0.5 + 0.01 * t for t in range(n)], [1000] * n, [1000] * n)
        plots.plot_runs([folder], tmp_path / f"fig{n}")
        ax = figures[-2].axes[0]
        solid, dashed = ax.get_lines()[:2]
        assert dashed.get_linestyle() == "--" and solid.get_linestyle() == "-"
        # a hollow ring around each filled marker, drawn over the solid line
        assert dashed.get_markerfacecolor() == "none"
        assert dashed.get_markersize() >= 1.5 * solid.get_markersize(), n
        assert dashed.get_zorder() > solid.get_zorder()


def _spec(*overrides: str):
    return load_config("configs/default.toml", list(overrides))


def test_labels_name_every_setting_that_sets_a_run_apart():
    assert _spec("algo.lookback=3", "algo.threshold_decay=0.9").label() == \
        "lbgm(t=0.2, m=3, decay=0.9)"
    assert _spec("algo.warmup_rounds=5", "algo.granularity=layer").label() == \
        "lbgm(t=0.2, warmup=5, layer)"
    assert _spec("algo.compressor=powersgd", "algo.error_feedback=true").label() == \
        "ef-powersgd(r=4)+lbgm(t=0.2)"
    assert _spec("algo.name=fedavg", "algo.compressor=topk", "algo.ratio=0.1").label() == \
        "topk(k=0.1)"
    assert _spec("algo.name=fedavg").label() == "fedavg"
    assert _spec("run.label=mine", "algo.lookback=3").label() == "mine"
    assert _spec("algo.scope=global", "algo.lookback=3").label() == "lbgm(t=0.2, m=3, global)"
    assert _spec("algo.scope=global", "algo.error_feedback=true").label() == \
        "lbgm(t=0.2, ef, global)"
    assert _spec("algo.name=fedavg", "algo.scope=global", "algo.compressor=powersgd",
                 "algo.error_feedback=true").label() == "ef-powersgd(r=4, global)"


def test_train_and_compare_label_a_run_alike():
    base = _spec("algo.threshold=0.05")
    for method in METHODS:
        [(_, variant)] = _compare_plan(base, Path("out"), [method], None)
        sections = {k: v for k, v in method_overrides(method).items() if k != "run"}
        assert variant.label() == base.replace(**sections).label(), method
    names = [v.label() for _, v in _compare_plan(base, Path("out"), list(METHODS), None)]
    assert len(set(names)) == len(names), names  # lbgm and lbgm-model are told apart


# ---- 7. help that agrees with the code ------------------------------------------------------

def test_train_help_names_every_algorithm():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algo.name=none-such"])
    names = str(err.value).split("is not one of ", 1)[1].split(", ")
    assert "fedluar" in names
    text = " ".join(_cli("train", "--help").stdout.split()).lower()
    assert all(name in text for name in names), (names, text)
    top = " ".join(_cli("--help").stdout.split()).lower()
    assert all(name in top for name in names), top


def test_analyze_help_names_the_keys_it_reads():
    text = " ".join(_cli("analyze", "--help").stdout.split())
    for key in ("clients.lr", "clients.batch_size", "system.device", "system.threads"):
        assert key in text, key
