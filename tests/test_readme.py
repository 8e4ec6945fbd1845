"""The README's plug-in strategy, installed as a separate distribution, works as documented."""

import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim import registry
from fedsim.client_app import app as client_app
from fedsim.config import RunConfig
from fedsim.testing import LoopbackGrid

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def median_plugin(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"```python\n(# my_strategies/median\.py\n.*?)```", text, re.S).group(1)
    entry = re.search(r'\[project\.entry-points\."fedsim\.strategies"\]\n(.*?)\n', text).group(1)
    (tmp_path / "my_strategies").mkdir()
    (tmp_path / "my_strategies" / "__init__.py").write_text("")
    (tmp_path / "my_strategies" / "median.py").write_text(code)
    dist = tmp_path / "my_strategies-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-strategies\nVersion: 0.1.0\n")
    name, value = next(iter(tomllib.loads(entry).items()))  # TOML in pyproject, INI in entry_points.txt
    (dist / "entry_points.txt").write_text(f"[fedsim.strategies]\n{name} = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry.strategies, "_plugins_loaded", False)
    monkeypatch.setattr(registry.strategies, "_targets", dict(registry.strategies._targets))
    yield
    sys.modules.pop("my_strategies.median", None)
    sys.modules.pop("my_strategies", None)


def test_readme_strategy_runs_and_takes_the_median(median_plugin, loopback):
    result, _ = loopback(num_nodes=5, num_server_rounds=2, strategy="median")
    assert result["rounds"][-1]["eval-accuracy"] > 0

    strategy = registry.strategies.get("median")(RunConfig.from_mapping({"strategy": "median"}))
    grid = LoopbackGrid(client_app, 5, RunConfig().to_dict())
    sent = ArrayRecord([np.zeros(4, np.float32)])
    messages = list(strategy.configure_train(1, sent, ConfigRecord(), grid))
    updates = [np.random.default_rng(i).standard_normal(4).astype(np.float32) for i in range(5)]
    replies = [Message(RecordDict({"arrays": ArrayRecord([u]), "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=m) for m, u in zip(messages, updates)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays.to_numpy_ndarrays()[0], np.median(np.stack(updates), axis=0))
