"""The references of `fedsim bench`: the plain PyTorch loop and the stock-Flower FedAvg app.

The plain loop must compute what fedsim computes (same metrics per round, and for CLoVE the
same rounds without a loss query); the Flower app's ClientApp must answer train and evaluate.
No timing is asserted here.
"""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedsim.bench.plain_loop import run_plain
from fedsim.config import RunConfig
from fedsim.testing import LoopbackGrid

APP_DIR = Path(__file__).resolve().parents[1] / "experiments" / "bench" / "flower_fedavg"
KEYS = ("eval-accuracy", "eval-loss", "train-loss")


@pytest.mark.parametrize("strategy", ["fedavg", "ifca", "clove"])
def test_plain_loop_computes_what_fedsim_computes(loopback, monkeypatch, strategy):
    from clients.local_train import LocalTrainRole

    queried = set()
    original = LocalTrainRole.losses

    def spy(self, msg, context):
        queried.add(int(msg.content["config"]["server-round"]))
        return original(self, msg, context)

    monkeypatch.setattr(LocalTrainRole, "losses", spy)
    keys = {"strategy": strategy, "stability-window": 2}
    fedsim_run, _ = loopback(num_nodes=8, num_server_rounds=5, **{k.replace("-", "_"): v for k, v in keys.items()})
    plain = run_plain(RunConfig.from_mapping(keys), num_clients=8, num_rounds=5)

    assert [r["round"] for r in plain["rounds"]] == [1, 2, 3, 4, 5]
    for ours, theirs in zip(plain["rounds"], fedsim_run["rounds"]):
        for key in KEYS:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), (strategy, ours["round"], key)
        if strategy != "fedavg":
            assert ours["ari"] == pytest.approx(theirs["ari"])
    if strategy == "clove":
        no_query = [r["round"] for r in plain["rounds"] if r["stable"]]
        assert no_query == [r for r in range(1, 6) if r not in queried]
        assert no_query, "clustering should stop within 5 rounds with stability-window 2"
        # fedsim flags the round that stopped clustering (still with a query) and every later one
        flagged = [r["round"] for r in fedsim_run["rounds"] if r.get("stable") == 1]
        assert flagged == [no_query[0] - 1, *no_query]
    else:
        assert queried == (set(range(1, 6)) if strategy == "ifca" else set())
    assert plain["setup-time"] > 0 and plain["peak-rss-mb"] > 0
    assert all(r["round-time"] >= r["train-time"] + r["evaluate-time"] for r in plain["rounds"])


def test_plain_loop_reports_each_round_and_restores_threads():
    import torch

    threads = torch.get_num_threads()
    seen = []
    result = run_plain(RunConfig.from_mapping({"strategy": "fedavg"}), num_clients=4, num_rounds=2,
                       on_round=seen.append)
    assert seen == result["rounds"] and torch.get_num_threads() == threads


@pytest.mark.parametrize("keys, match", [
    ({"strategy": "local-only"}, "local-only"),
    ({"strategy": "clove", "first-assignment": "random"}, "random"),
    ({"strategy": "ifca", "aggregation": "gradient"}, "gradient"),
])
def test_plain_loop_rejects_what_it_does_not_reproduce(keys, match):
    with pytest.raises(ValueError, match=match):
        run_plain(RunConfig.from_mapping(keys), num_clients=4, num_rounds=1)


@pytest.fixture
def flower_app(monkeypatch):
    monkeypatch.syspath_prepend(str(APP_DIR))
    yield importlib.import_module("flower_fedavg_app.client_app"), importlib.import_module(
        "flower_fedavg_app.server_app")
    for name in [m for m in sys.modules if m.startswith("flower_fedavg_app")]:
        del sys.modules[name]


def _app_run_config() -> dict:
    from fedsim.cli import app_defaults

    return app_defaults(APP_DIR)


def test_flower_baseline_client_trains_and_evaluates(flower_app):
    client_module, server_module = flower_app
    import torch

    from fedsim.models import MLP

    assert callable(server_module.main)
    grid = LoopbackGrid(client_module.app, 4, _app_run_config())
    node, context = next(iter(grid.contexts.items()))
    assert isinstance(context, Context)
    torch.manual_seed(0)
    start = ArrayRecord(MLP((1, 8, 8), 64, 10).state_dict())
    config = ConfigRecord({"lr": 0.01, "server-round": 1})
    [reply] = grid.send_and_receive([Message(RecordDict({"arrays": start, "config": config}), dst_node_id=node,
                                             message_type=MessageType.TRAIN)])
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 80 and np.isfinite(metrics["train_loss"])
    new = reply.content["arrays"]
    assert list(new.keys()) == list(start.keys())
    assert any(not np.array_equal(new[k].numpy(), start[k].numpy()) for k in start.keys())
    [again] = grid.send_and_receive([Message(RecordDict({"arrays": start, "config": config}), dst_node_id=node,
                                             message_type=MessageType.TRAIN)])
    assert all(np.array_equal(again.content["arrays"][k].numpy(), new[k].numpy()) for k in new.keys())

    [scored] = grid.send_and_receive([Message(RecordDict({"arrays": new, "config": ConfigRecord({"server-round": 1})}),
                                              dst_node_id=node, message_type=MessageType.EVALUATE)])
    assert not scored.has_error(), scored.error.reason if scored.has_error() else ""
    scores = scored.content["metrics"]
    assert scores["num-examples"] == 20 and 0.0 <= scores["eval_acc"] <= 1.0 and scores["eval_loss"] > 0
