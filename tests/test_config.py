"""Config loading: TOML + overrides into frozen dataclasses; errors name the key."""

import dataclasses

import pytest

from lbgm_mpi.config import RunSpec, load_config, parse_override, to_toml
from lbgm_mpi.errors import ConfigError


def test_defaults_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[algo]\nname = "fedavg"\n[clients]\ncount = 8\n')
    spec = load_config(path, ["clients.lr=0.3", "algo.threshold=0.4", "data.name=synthetic"])
    assert (spec.algo.name, spec.clients.count, spec.clients.lr) == ("fedavg", 8, 0.3)
    assert spec.data.name == "synthetic" and spec.algo.threshold == 0.4
    again = tmp_path / "resolved.toml"
    again.write_text(to_toml(spec))
    assert load_config(again) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.algo.threshold = 0.1


def test_int_is_accepted_where_float_is_expected():
    assert load_config(None, ["algo.threshold=1"]).algo.threshold == 1.0


@pytest.mark.parametrize("override, key", [
    (["algo.bogus=1"], "algo.bogus"),
    (["algo.threshold=1.5"], "algo.threshold"),
    (["algo.threshold=-0.1"], "algo.threshold"),
    (["nosuch.key=1"], "nosuch"),
    (["run.rounds=0"], "run.rounds"),
    (["run.rounds=2.5"], "run.rounds"),
    (["data.name=imagenet"], "data.name"),
    (["clients.per_round=9"], "clients.per_round"),
    (["data.name=mnist"], "data.root"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert str(err.value).startswith(key)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("algo.threshold")
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("threshold=0.1")
    assert parse_override("algo.name=fedavg") == ("algo", "name", "fedavg")
    assert parse_override('run.label="a b"') == ("run", "label", "a b")


def test_malformed_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[algo\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_replace_makes_a_checked_copy():
    spec = RunSpec()
    other = spec.replace(algo={"name": "fedavg"})
    assert other.algo.name == "fedavg" and spec.algo.name == "lbgm"
    with pytest.raises(ConfigError):
        spec.replace(algo={"threshold": 3.0})


def test_every_shipped_config_loads():
    from pathlib import Path
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.toml"))
    assert configs
    for path in configs:
        assert path.read_text().startswith("#"), f"{path} must begin with the command that runs it"
        try:
            load_config(path)
        except ConfigError as err:
            pytest.fail(f"{path}: {err}")
