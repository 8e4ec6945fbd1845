"""Plug-ins: a separately installed distribution adds a strategy through an entry point."""

import sys
import textwrap

import pytest

from fedsim import registry
from fedsim.config import RunConfig
from fedsim.runner import build_strategy, initial_arrays

PLUGIN = '''
from flwr.app import ArrayRecord
from strategies.fedavg import FedAvg


class FreezeFirstLayer(FedAvg):
    """FedAvg that never changes the first array (a toy plug-in)."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            first = next(iter(self._sent.keys()))
            arrays[first] = self._sent[first]
        return arrays, metrics


def build(config):
    return FreezeFirstLayer(seed=config.seed, min_available_nodes=config.min_available_nodes)
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """Install a tiny distribution (package + dist-info with an entry point) on sys.path."""
    (tmp_path / "fedsim_toy_plugin").mkdir()
    (tmp_path / "fedsim_toy_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "fedsim_toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedsim-toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedsim.strategies]\nfreeze-first = fedsim_toy_plugin:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry.strategies, "_plugins_loaded", False)
    monkeypatch.setattr(registry.strategies, "_targets", dict(registry.strategies._targets))
    yield
    sys.modules.pop("fedsim_toy_plugin", None)


def test_unknown_plugin_name_is_refused_without_the_package():
    assert "freeze-first" not in registry.strategies.names()


def test_entry_point_strategy_is_found_validated_and_runs(installed_plugin, loopback):
    assert "freeze-first" in registry.strategies.names()
    RunConfig.from_mapping({"strategy": "freeze-first"})
    result, _ = loopback(num_nodes=4, num_server_rounds=2, strategy="freeze-first")
    config = RunConfig.from_mapping({"strategy": "freeze-first"})
    start = initial_arrays(build_strategy(config), config)
    first, second = list(start.keys())[:2]
    assert (result["arrays"][first].numpy() == start[first].numpy()).all()
    assert not (result["arrays"][second].numpy() == start[second].numpy()).all()


def test_register_in_process():
    reg = registry.Registry("thing", "fedsim.nothing", {})
    reg.register("a", 1)

    @reg.register("b")
    def b():
        return 2

    assert reg.names() == ["a", "b"] and reg.get("b") is b
    with pytest.raises(KeyError, match="unknown thing 'c'; known: a, b"):
        reg.get("c")
