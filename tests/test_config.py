import tomllib
from pathlib import Path

import pytest

from fedsim.cli import UsageError, parse_overrides, read_preset, resolve_run_config
from fedsim.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_defaults_equal_schema_defaults():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        table = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    assert table == RunConfig().to_dict()


def test_defaults_validate():
    assert RunConfig.from_mapping({}) == RunConfig()


@pytest.mark.parametrize(
    "mapping, fragment",
    [
        ({"lrr": 0.1}, "unknown run-config key 'lrr' (did you mean 'lr'?)"),
        ({"strategy": "fedavgg"}, "strategy = 'fedavgg' is unknown (did you mean 'fedavg'?)"),
        ({"client-role": "nope"}, "client-role = 'nope' is unknown"),
        ({"task": "segmentation"}, "task = 'segmentation' is unknown"),
        ({"lr": -0.1}, "lr = -0.1 is not allowed: must be positive"),
        ({"lr": "abc"}, "lr = 'abc' has the wrong type: expected float"),
        ({"num-server-rounds": 2.5}, "num-server-rounds = 2.5 has the wrong type: expected int"),
        ({"num-server-rounds": True}, "has the wrong type"),
        ({"fraction-train": 0.0}, "fraction-train = 0.0 is not allowed"),
        ({"model": "autoencoder"}, "model = 'autoencoder' does not fit task = 'classification'"),
        ({"dataset": "mnist"}, "set data-dir"),
        ({"dataset": "mixed-linear", "task": "regression", "model": "linear"},
         "goes with partitioning = 'mixed-linear'"),
        ({"task": "regression", "model": "linear"}, "task = 'regression' needs dataset = 'mixed-linear'"),
    ],
)
def test_bad_values_name_the_key(mapping, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(mapping)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_int_accepted_for_float_key():
    assert RunConfig.from_mapping({"lr": 1}).lr == 1.0


def test_population_checks():
    config = RunConfig.from_mapping({"num-clusters": 5, "data-clusters": 4})
    config.check_population(5)
    with pytest.raises(ConfigError, match="num-clusters = 5 is more than the 4 clients"):
        config.check_population(4)
    with pytest.raises(ConfigError, match="data-clusters = 4 is more than the 3 clients"):
        RunConfig.from_mapping({"num-clusters": 2}).check_population(3)


def test_overrides_parse_like_flower_and_accept_bare_words():
    assert parse_overrides("strategy='local-only' lr=0.05 num-server-rounds=3") == {
        "strategy": "local-only", "lr": 0.05, "num-server-rounds": 3}
    assert parse_overrides("strategy=fedavg") == {"strategy": "fedavg"}
    with pytest.raises(UsageError):
        parse_overrides("strategy")


def test_malformed_preset_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('strategy = "fedavg\n')
    with pytest.raises(UsageError, match="not valid TOML"):
        read_preset(bad)
    with pytest.raises(UsageError, match="does not exist"):
        read_preset(tmp_path / "missing.toml")
    listed = tmp_path / "list.toml"
    listed.write_text("lr = [0.1, 0.2]\n")
    with pytest.raises(UsageError, match="list.toml': The value for key lr"):
        read_preset(listed)


def test_every_shipped_preset_validates():
    presets = sorted((ROOT / "experiments" / "presets").glob("*.toml"))
    assert presets, "experiments/ ships presets"
    for preset in presets:
        resolve_run_config(ROOT, [preset], [])


def test_warning_when_models_and_true_clusters_differ():
    assert RunConfig.from_mapping({"data-clusters": 5}).warnings() == [
        "num-clusters = 4 models for data with data-clusters = 5 true clusters"]
    assert RunConfig.from_mapping({"data-clusters": 5, "strategy": "fedavg"}).warnings() == []
    assert RunConfig.from_mapping({"data-clusters": 5, "estimate-k": True}).warnings() == []
    assert RunConfig().warnings() == []
