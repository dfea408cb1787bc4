"""Bad input and failing ranks end the job with one clear line: no traceback flood, no hang."""

import pytest

from conftest import FAST, REPO, lbgm, run_mpi

CASES = {
    "unknown key": (["--set", "algo.frobnicate=1"], "algo.frobnicate"),
    "threshold out of range": (["--set", "algo.threshold=1.5"], "algo.threshold"),
    "unknown data set": (["--set", "data.name=imagenet"], "data.name"),
    "override without =": (["--set", "algo.threshold"], "expected section.key=value"),
}


def _assert_clean_failure(result, needle):
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("lbgm-mpi: error")]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_line_at_two_ranks(case, tmp_path):
    args, needle = CASES[case]
    result = lbgm(2, "train", "configs/default.toml", *args, "--out", str(tmp_path),
                  timeout=60, check=False)
    _assert_clean_failure(result, needle)
    assert not (tmp_path / "metrics.jsonl").exists(), "training started despite the error"


@pytest.mark.mpi
def test_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[algo\nthreshold = 0.2\n")
    result = lbgm(2, "train", str(bad), timeout=60, check=False)
    _assert_clean_failure(result, "not valid TOML")


@pytest.mark.mpi
def test_more_ranks_than_clients(tmp_path):
    result = lbgm(4, "train", "configs/default.toml", *FAST, "--set", "clients.count=3",
                  "--out", str(tmp_path), timeout=60, check=False)
    _assert_clean_failure(result, "clients.count")


@pytest.mark.mpi
def test_exception_on_one_rank_aborts_the_job():
    result = run_mpi(4, [str(REPO / "tests/mpi/raise_on_one_rank.py")], timeout=60, check=False)
    assert result.returncode != 0
    assert "error on rank 2: deliberate failure on one rank" in result.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("algo", ["lbgm", "fedavg"])
def test_diverging_client_names_itself_and_aborts(tmp_path, algo):
    result = lbgm(2, "train", "configs/default.toml", *FAST, "--set", "clients.lr=1e30",
                  "--set", f"algo.name={algo}", "--out", str(tmp_path), "--quiet",
                  timeout=90, check=False)
    assert result.returncode != 0
    assert "non-finite update" in result.stderr and "client" in result.stderr
