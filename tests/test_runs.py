"""End-to-end runs on the loopback grid: reproducibility, baselines, results folder, report."""

import json

import numpy as np
import pytest

from fedsim.config import RunConfig
from fedsim.report import write_report
from fedsim.results import RunRecorder, new_run_dir


def _metrics(result):
    return [{k: v for k, v in r.items() if k not in ("round-time", "elapsed")} for r in result["rounds"]]


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_same_seed_gives_bitwise_identical_runs_whatever_the_node_ids(loopback, fraction):
    a, _ = loopback(num_nodes=8, node_seed=1, num_server_rounds=3, fraction_train=fraction, fraction_evaluate=fraction)
    b, _ = loopback(num_nodes=8, node_seed=2, num_server_rounds=3, fraction_train=fraction, fraction_evaluate=fraction)
    assert _metrics(a) == _metrics(b)
    for x, y in zip(a["arrays"].to_numpy_ndarrays(), b["arrays"].to_numpy_ndarrays()):
        assert np.array_equal(x, y)


def test_other_seed_gives_other_run(loopback):
    a, _ = loopback(num_nodes=4, num_server_rounds=2, seed=0)
    b, _ = loopback(num_nodes=4, num_server_rounds=2, seed=1)
    assert _metrics(a) != _metrics(b)


def test_fedavg_learns_on_iid_digits(loopback):
    result, _ = loopback(num_nodes=6, num_server_rounds=8, partitioning="iid", samples_per_client=200)
    accuracy = [r["eval-accuracy"] for r in result["rounds"]]
    assert accuracy[-1] > 0.8 > accuracy[0]


def test_local_only_keeps_personal_models_and_uploads_no_weights(loopback):
    result, grid = loopback(num_nodes=4, num_server_rounds=3, strategy="local-only")
    models = [ctx.state["personal-model"].to_numpy_ndarrays()[0] for ctx in grid.contexts.values()]
    assert not np.array_equal(models[0], models[1])
    first, later = result["rounds"][0], result["rounds"][1]
    model_bytes = sum(a.nbytes for a in models[0:1])
    assert first["bytes-down"] > 4 * model_bytes  # the initial model goes out once...
    assert later["bytes-down"] < model_bytes and later["bytes-up"] < model_bytes  # ...and then only metrics
    assert later["eval-accuracy"] > 0


def test_local_only_evaluates_the_personal_model(loopback):
    """Evaluation of a local-only client equals evaluating its stored model independently."""
    import torch

    from fedsim.data.federation import load_client_data
    from fedsim.tasks import ClassificationTask

    result, grid = loopback(num_nodes=3, num_server_rounds=2, strategy="local-only", data_clusters=3, num_clusters=3)
    config = RunConfig.from_mapping({"strategy": "local-only", "num-server-rounds": 2, "data-clusters": 3,
                                     "num-clusters": 3})
    task = ClassificationTask(config)
    accs, sizes = [], []
    for ctx in sorted(grid.contexts.values(), key=lambda c: c.node_config["partition-id"]):
        model = task.build_model()
        model.load_state_dict(ctx.state["personal-model"].to_torch_state_dict())
        data = load_client_data(config, ctx.node_config["partition-id"], 3)
        with torch.no_grad():
            accs.append(float((model(data.x_test).argmax(-1) == data.y_test).float().mean()))
        sizes.append(len(data.y_test))
    expected = sum(a * n for a, n in zip(accs, sizes)) / sum(sizes)
    assert result["rounds"][-1]["eval-accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "keys",
    [
        {"task": "reconstruction", "model": "autoencoder", "partitioning": "one-class", "data-clusters": 4},
        {"task": "regression", "model": "linear", "dataset": "mixed-linear", "partitioning": "mixed-linear",
         "samples-per-client": 200, "lr": 0.05, "data-clusters": 1},
        {"model": "cnn", "partitioning": "label-swap"},
        {"partitioning": "label-skew", "data-clusters": 2},
        {"partitioning": "pathological"},
    ],
)
def test_every_task_and_partitioning_runs_and_improves(loopback, keys):
    result, _ = loopback(num_nodes=4, num_server_rounds=4, **{k.replace("-", "_"): v for k, v in keys.items()})
    losses = [r["eval-loss"] for r in result["rounds"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_results_folder_and_report(tmp_path, loopback):
    run_dirs = []
    for strategy in ("fedavg", "local-only"):
        for seed in (0, 1):
            config = RunConfig.from_mapping({"strategy": strategy, "seed": seed, "num-server-rounds": 3,
                                             "results-dir": str(tmp_path)})
            run_dir = new_run_dir(config)
            loopback(num_nodes=4, recorder=RunRecorder(run_dir, config), strategy=strategy, seed=seed,
                     num_server_rounds=3)
            run_dirs.append(run_dir)
    first = run_dirs[0]
    assert json.loads((first / "config.json").read_text())["seed"] == 0
    lines = (first / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]
    summary = json.loads((first / "summary.json").read_text())
    assert summary["final-eval-accuracy"] == json.loads(lines[-1])["eval-accuracy"]
    assert (first / "curves.png").stat().st_size > 1000

    text = write_report(run_dirs, tmp_path / "report")
    finals = [json.loads((d / "summary.json").read_text())["final-eval-accuracy"] for d in run_dirs[:2]]
    expected = f"{np.mean(finals):.4g} ± {np.std(finals):.2g}"
    row = next(line for line in text.splitlines() if line.startswith("| strategy=fedavg"))
    assert "| 2 |" in row and expected in row
    assert (tmp_path / "report" / "comparison.png").stat().st_size > 1000


def test_per_client_metrics_are_recorded_on_request(loopback):
    result, _ = loopback(num_nodes=4, num_server_rounds=2, record_clients=True, strategy="fedavg")
    clients = result["rounds"][-1]["clients"]
    assert list(clients) == ["0", "1", "2", "3"]
    values = [c["eval-accuracy"] for c in clients.values()]
    sizes = [c["num-examples"] for c in clients.values()]
    weighted = sum(v * n for v, n in zip(values, sizes)) / sum(sizes)
    assert result["rounds"][-1]["eval-accuracy"] == pytest.approx(weighted)
    plain, _ = loopback(num_nodes=4, num_server_rounds=1, strategy="fedavg")
    assert "clients" not in plain["rounds"][0]
