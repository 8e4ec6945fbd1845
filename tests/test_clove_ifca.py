"""CLoVE and IFCA end to end on the loopback grid."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedsim import protocol
from fedsim.client_app import app as client_app
from fedsim.clustering import nearest_centroid
from fedsim.config import RunConfig
from fedsim.data.federation import load_client_data
from fedsim.registry import strategies, tasks
from fedsim.runner import initial_arrays, run_rounds
from fedsim.testing import LoopbackGrid
from strategies.clustered import split_models


def _aris(result):
    return [r.get("ari") for r in result["rounds"]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clove_recovers_rotation_clusters_quickly(loopback, seed):
    result, _ = loopback(num_nodes=12, num_server_rounds=5, seed=seed, stability_window=0)
    aris = _aris(result)
    assert aris[-1] == 1.0
    assert min(i for i, a in enumerate(aris, 1) if a == 1.0) <= 4
    assert all(r["clusters-in-use"] == 4 for r in result["rounds"][3:])


def test_clove_beats_fedavg_on_rotations(loopback):
    clove, _ = loopback(num_nodes=12, num_server_rounds=10)
    fedavg, _ = loopback(num_nodes=12, num_server_rounds=10, strategy="fedavg")
    assert clove["rounds"][-1]["eval-accuracy"] > fedavg["rounds"][-1]["eval-accuracy"] + 0.1


def test_clove_and_ifca_start_from_identical_models():
    config = RunConfig.from_mapping({})
    task = tasks.get("classification")(config)
    a = initial_arrays(strategies.get("clove")(config), config)
    b = initial_arrays(strategies.get("ifca")(RunConfig.from_mapping({"strategy": "ifca"})), config)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a.keys())
    models = split_models(a)
    assert len(models) == 4 and not np.array_equal(models[0]["net.1.weight"].numpy(),
                                                    models[1]["net.1.weight"].numpy())
    same = split_models(initial_arrays(strategies.get("clove")(RunConfig.from_mapping({"init": "same"})), config))
    assert all(np.array_equal(m["net.1.weight"].numpy(), same[0]["net.1.weight"].numpy()) for m in same)
    assert task is not None


def test_ifca_with_identical_models_puts_everyone_on_model_zero(loopback):
    result, _ = loopback(num_nodes=8, num_server_rounds=3, strategy="ifca", init="same")
    assert [r["clusters-in-use"] for r in result["rounds"]] == [1, 1, 1]


def test_clove_with_identical_models_still_separates(loopback):
    result, _ = loopback(num_nodes=12, num_server_rounds=6, init="same", stability_window=0)
    assert result["rounds"][-1]["clusters-in-use"] == 4 and _aris(result)[-1] == 1.0


def test_random_first_assignment_is_reproducible(loopback):
    a, _ = loopback(num_nodes=8, num_server_rounds=1, first_assignment="random", node_seed=1)
    b, _ = loopback(num_nodes=8, num_server_rounds=1, first_assignment="random", node_seed=2)
    c, _ = loopback(num_nodes=8, num_server_rounds=1)
    assert a["rounds"][0]["ari"] == b["rounds"][0]["ari"]
    assert a["rounds"][0]["bytes-down"] < c["rounds"][0]["bytes-down"]  # no loss query in round 1


def test_stability_stops_clustering_and_rounds_cost_what_fedavg_costs(loopback):
    result, grid = loopback(num_nodes=12, num_server_rounds=9, stability_window=3)
    rounds = result["rounds"]
    stable_from = next(r["round"] for r in rounds if r.get("stable") == 1)
    assert 3 <= stable_from <= 8
    fedavg, _ = loopback(num_nodes=12, num_server_rounds=2, strategy="fedavg")
    after = rounds[stable_from]  # the first round without a loss query
    # one model per client, as FedAvg; only the cluster-id and update config entries are extra
    assert after["messages-down"] == fedavg["rounds"][1]["messages-down"]
    assert 0 <= after["bytes-down"] - fedavg["rounds"][1]["bytes-down"] <= 24 * 16
    assert rounds[stable_from - 1]["bytes-down"] > after["bytes-down"]
    histories = [ctx.state[protocol.ASSIGNMENTS]["history"] for ctx in grid.contexts.values()]
    for history in histories:
        assert len(set(history[-(9 - stable_from + 3):])) == 1


def test_client_reports_stable_only_after_the_window(loopback, monkeypatch):
    from clients.local_train import LocalTrainRole

    seen = []
    original = LocalTrainRole.losses

    def spy(self, msg, context):
        history = list(self.assignment_history(context))
        reply = original(self, msg, context)
        seen.append((int(msg.content["config"]["server-round"]), history, reply.content["metrics"].get("stable")))
        return reply

    monkeypatch.setattr(LocalTrainRole, "losses", spy)
    loopback(num_nodes=4, num_server_rounds=5, stability_window=3, data_clusters=2, num_clusters=2)
    assert {stable for rnd, _, stable in seen if rnd < 4} == {0}  # nobody has three past assignments yet
    for _, history, stable in seen:
        assert stable == int(len(history) >= 3 and history[-1] == history[-2] == history[-3])
    assert any(stable for _, _, stable in seen)


def test_new_client_after_stability_takes_the_nearest_saved_centroid():
    config = RunConfig.from_mapping({"num-server-rounds": 6})
    grid = LoopbackGrid(client_app, 13, config.to_dict(), node_seed=3)
    late = next(n for n, c in grid.contexts.items() if c.node_config["partition-id"] == 12)
    grid.down.add(late)
    strategy = strategies.get("clove")(config)
    result = run_rounds(grid, config, strategy=strategy)
    assert strategy.stable_round is not None
    grid.down.clear()
    strategy.configure_train(7, result["arrays"], ConfigRecord(), grid)
    assigned = strategy.assignment[late]
    # independent check: the late client's losses on the snapshot models, nearest saved centroid
    task = tasks.get("classification")(config)
    data = load_client_data(config, 12, 13)
    losses = task.mean_losses(task.build_model(), [m.to_torch_state_dict() for m in strategy.snapshot],
                              data.x_train, data.y_train)
    assert assigned == int(nearest_centroid(np.array([losses]), strategy.centroids)[0])
    peer = next(n for n, c in grid.contexts.items() if c.node_config["partition-id"] == 0)
    assert assigned == strategy.latest_model[peer]  # partition 12 shares partition 0's rotation


def test_one_model_clove_is_fedavg(loopback):
    clove, _ = loopback(num_nodes=6, num_server_rounds=3, num_clusters=1, data_clusters=2)
    fedavg, _ = loopback(num_nodes=6, num_server_rounds=3, strategy="fedavg", data_clusters=2)
    for a, b in zip(clove["arrays"].to_numpy_ndarrays(), fedavg["arrays"].to_numpy_ndarrays()):
        assert np.array_equal(a, b)
    assert clove["rounds"][-1]["train-loss"] == pytest.approx(fedavg["rounds"][-1]["train-loss"])


def _full_gradient(config, arrays, partition, num_partitions):
    task = tasks.get(config.task)(config)
    model = task.build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    data = load_client_data(config, partition, num_partitions)
    loss = task.example_losses(model, data.x_train, data.y_train).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return [g.numpy() for g in grads], data.num_train


@pytest.mark.parametrize("strategy", ["clove", "ifca"])
def test_gradient_averaging_is_one_server_step(loopback, strategy):
    keys = {"strategy": strategy, "num-clusters": 1, "data-clusters": 1, "aggregation": "gradient",
            "server-lr": 0.5, "num-server-rounds": 1, "samples-per-client": 60}
    config = RunConfig.from_mapping(keys)
    start = split_models(initial_arrays(strategies.get(strategy)(config), config))[0]
    result, _ = loopback(num_nodes=3, **{k.replace("-", "_"): v for k, v in keys.items()})
    grads, sizes = zip(*[_full_gradient(config, start, p, 3) for p in range(3)])
    weights = np.array(sizes, float) / sum(sizes) if strategy == "clove" else np.full(3, 1 / 3)
    new = split_models(result["arrays"])[0].to_numpy_ndarrays()
    for j, theta in enumerate(start.to_numpy_ndarrays()):
        expected = theta - 0.5 * sum(w * g[j] for w, g in zip(weights, grads))
        np.testing.assert_allclose(new[j], expected, rtol=1e-5, atol=1e-7)


def test_nan_loss_client_is_dropped_from_the_query_and_round_goes_on(loopback, monkeypatch):
    from clients.local_train import LocalTrainRole

    original = LocalTrainRole.losses

    def broken(self, msg, context):
        reply = original(self, msg, context)
        if protocol.partition_of(context)[0] == 1:
            reply.content["metrics"]["losses"] = [float("nan")] * 4
        return reply

    monkeypatch.setattr(LocalTrainRole, "losses", broken)
    result, _ = loopback(num_nodes=8, num_server_rounds=2)
    for record in result["rounds"]:
        assert record["assigned-clients"] == 7
        assert [(e["stage"], e["partition-id"]) for e in record["events"]] == [("losses", 1)]
        assert "not finite" in record["events"][0]["reason"]


def test_unsupervised_one_class_clusters(loopback):
    result, _ = loopback(num_nodes=8, num_server_rounds=6, task="reconstruction", model="autoencoder",
                         partitioning="one-class", data_clusters=4, hidden_size=16, stability_window=0)
    assert _aris(result)[-1] == 1.0 and "eval-loss" in result["rounds"][-1]


def test_mixed_linear_regression_is_recovered_in_one_shot(loopback):
    result, _ = loopback(num_nodes=10, num_server_rounds=2, task="regression", model="linear",
                         dataset="mixed-linear", partitioning="mixed-linear", data_clusters=5, num_clusters=5,
                         samples_per_client=500, stability_window=0)
    assert _aris(result) == [1.0, 1.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_estimated_k_finds_the_true_number_of_clusters_in_one_shot(loopback, seed):
    """With K-hat = d random models and n >> d the loss vectors separate at once (Thm 4.1)."""
    result, _ = loopback(num_nodes=24, num_server_rounds=2, task="regression", model="linear", seed=seed,
                         dataset="mixed-linear", partitioning="mixed-linear", data_clusters=3, num_clusters=20,
                         linear_dim=20, samples_per_client=1000, estimate_k=True, stability_window=0)
    assert [r["num-clusters"] for r in result["rounds"]] == [3, 3]
    assert _aris(result) == [1.0, 1.0]
