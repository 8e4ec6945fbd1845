import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.client_app import app as client_app
from fedsim.config import RunConfig
from fedsim.testing import LoopbackGrid
from strategies.fedavg import FedAvg


def _reply(request, arrays, metrics):
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content, reply_to=request)


@pytest.fixture
def fedavg_round():
    """A FedAvg with 4 discovered loopback nodes and the messages of its round 1."""
    config = RunConfig.from_mapping({})
    grid = LoopbackGrid(client_app, 4, config.to_dict(), node_seed=5)
    strategy = FedAvg(seed=0, min_available_nodes=4)
    sent = ArrayRecord([np.zeros((2, 3), np.float32), np.zeros(3, np.float32)])
    messages = list(strategy.configure_train(1, sent, ConfigRecord(), grid))
    return strategy, messages


def test_fedavg_weighted_average_matches_numpy(fedavg_round):
    strategy, messages = fedavg_round
    rng = np.random.default_rng(0)
    updates = [[rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
               for _ in messages]
    weights = [10, 20, 30, 40]
    replies = [_reply(m, u, {"num-examples": w, "train-loss": float(i)})
               for i, (m, u, w) in enumerate(zip(messages, updates, weights))]
    arrays, metrics = strategy.aggregate_train(1, replies[::-1])
    total = sum(weights)
    for j, got in enumerate(arrays.to_numpy_ndarrays()):
        expected = sum(w * u[j] for w, u in zip(weights, updates)) / total
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(sum(w * i for i, w in enumerate(weights)) / total)


def test_bad_replies_are_dropped_with_a_reason_and_the_round_goes_on(fedavg_round):
    strategy, messages = fedavg_round
    good = [np.ones((2, 3), np.float32), np.ones(3, np.float32)]
    replies = [
        _reply(messages[0], good, {"num-examples": 5}),
        _reply(messages[1], [np.ones((3, 2), np.float32), np.ones(3, np.float32)], {"num-examples": 5}),
        _reply(messages[2], [np.full((2, 3), np.nan, np.float32), np.ones(3, np.float32)], {"num-examples": 5}),
        _reply(messages[3], good, {"num-examples": 5, "train-loss": float("inf")}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays.to_numpy_ndarrays()[0], good[0])
    reasons = [e["reason"] for e in strategy.drain_events()]
    assert len(reasons) == 3
    assert "shape (3, 2)" in reasons[0]
    assert "NaN or inf" in reasons[1]
    assert "'train-loss' is not finite" in reasons[2]
    assert strategy.drain_events() == []


def test_all_replies_bad_keeps_the_model(fedavg_round):
    strategy, messages = fedavg_round
    replies = [_reply(m, None, {"num-examples": 5}) for m in messages]
    assert strategy.aggregate_train(1, replies) == (None, None)
    events = strategy.drain_events()
    assert all("expected one ArrayRecord" in e["reason"] for e in events if e["event"] == "dropped")
    assert [e["event"] for e in events].count("dropped") == len(messages)
    assert events[-1]["event"] == "too-few-replies" and events[-1]["valid"] == 0


def test_crashing_client_is_dropped_and_run_completes(loopback, monkeypatch):
    from clients import local_train

    original = local_train.LocalTrainRole.train

    def flaky(self, msg, context):
        if protocol.partition_of(context)[0] == 2:
            raise RuntimeError("simulated crash")
        return original(self, msg, context)

    monkeypatch.setattr(local_train.LocalTrainRole, "train", flaky)
    result, _ = loopback(num_nodes=4, num_server_rounds=2)
    for record in result["rounds"]:
        dropped = [e for e in record["events"] if e["event"] == "dropped"]
        assert [(e["partition-id"], e["stage"]) for e in dropped] == [(2, "train")]
        assert "simulated crash" in dropped[0]["reason"]
        assert "eval-accuracy" in record


def test_sampling_is_deterministic_and_independent_of_node_ids():
    config = RunConfig.from_mapping({})
    picks = []
    for node_seed in (1, 2):
        grid = LoopbackGrid(client_app, 10, config.to_dict(), node_seed=node_seed)
        strategy = FedAvg(seed=7, fraction_train=0.3, min_train_nodes=1, min_available_nodes=10)
        nodes = strategy.sample_nodes(grid, 3, 0.3, 1)
        picks.append([strategy.partition_of[n] for n in nodes])
    assert picks[0] == picks[1] and len(picks[0]) == 3 and picks[0] == sorted(picks[0])
    other = FedAvg(seed=7, min_available_nodes=10)
    grid = LoopbackGrid(client_app, 10, config.to_dict(), node_seed=1)
    assert [other.partition_of[n] for n in other.sample_nodes(grid, 4, 0.3, 1)] != picks[0]


def test_a_node_that_leaves_is_not_waited_for():
    import time

    config = RunConfig.from_mapping({})
    grid = LoopbackGrid(client_app, 6, config.to_dict())
    strategy = FedAvg(seed=0, min_available_nodes=6)
    assert len(strategy.sample_nodes(grid, 1, 1.0, 1)) == 6
    gone = next(iter(grid.contexts))
    grid.down.add(gone)
    start = time.monotonic()
    nodes = strategy.sample_nodes(grid, 2, 1.0, 1)
    assert time.monotonic() - start < 1.0 and gone not in nodes and len(nodes) == 5


def test_no_client_able_to_start_stops_the_run_with_the_reason(loopback, monkeypatch):
    from clients.local_train import LocalTrainRole

    def broken(self, context):
        raise FileNotFoundError("data-dir '/data/x' does not exist")

    monkeypatch.setattr(LocalTrainRole, "describe", broken)
    with pytest.raises(RuntimeError, match="no client could start: .*data-dir '/data/x' does not exist"):
        loopback(num_nodes=3, data_clusters=3, num_clusters=3)


def test_client_error_reasons_are_cut_to_one_line():
    from strategies.base import short_reason

    assert short_reason("<class 'ValueError'>:<'bad shape'>") == "ValueError: bad shape"
    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m\n"
           "  File \"x.py\", line 3, in f\n    raise FileNotFoundError(msg)\n"
           "FileNotFoundError: no CSV files in '/d'\n\nflwr.clientapp.client_app.ClientAppException:\n'>")
    assert short_reason(ray) == "FileNotFoundError: no CSV files in '/d'"
    assert len(short_reason("x" * 1000)) == 300
