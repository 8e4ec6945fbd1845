"""Checkpoint / resume and fault tolerance of the round loop, on the loopback grid."""

import json
import pickle
import types

import numpy as np
import pytest

import fedsim.checkpoint as checkpoint_module
from fedsim.checkpoint import CheckpointError, load_node_state, load_server_checkpoint, save_node_state
from fedsim.client_app import app as client_app
from fedsim.config import ConfigError, RunConfig
from fedsim.results import RunRecorder, resumed_run_dir
from fedsim.runner import run_rounds
from fedsim.testing import LoopbackGrid

TIMING = ("round-time", "elapsed")
TRAFFIC = ("bytes-up", "bytes-down", "messages-up", "messages-down")

CLOVE = {"strategy": "clove", "num-server-rounds": 5, "min-available-nodes": 4, "samples-per-client": 40,
         "stability-window": 2, "data-clusters": 2, "num-clusters": 2}
CASES = {
    "clove": (CLOVE, 4, 2),
    "ifca": ({**CLOVE, "strategy": "ifca", "num-server-rounds": 3}, 4, 1),
    "fedavg": ({**CLOVE, "strategy": "fedavg", "num-server-rounds": 3}, 4, 1),
    "local-only": ({**CLOVE, "strategy": "local-only", "num-server-rounds": 3}, 4, 1),
    "spg-mibo": ({"strategy": "spg-mibo", "client-role": "spg-mibo", "task": "mibo", "dataset": "csi-synthetic",
                  "partitioning": "rooms", "model": "mibo-mlp", "num-server-rounds": 4, "min-available-nodes": 3,
                  "csi-samples-per-room": 100, "lr": 0.001, "batch-size": 40, "mibo-rho-delay": 4,
                  "mibo-epsilon": 1e-7}, 3, 2),
}


def _run(tmp_path, keys, name, nodes, node_seed=0):
    config = RunConfig.from_mapping({**keys, "results-dir": str(tmp_path), "run-name": name})
    folder = resumed_run_dir(config) if config.resume else tmp_path / name
    folder.mkdir(exist_ok=True)
    return run_rounds(LoopbackGrid(client_app, nodes, config.to_dict(), node_seed=node_seed), config,
                      recorder=RunRecorder(folder, config))


def _comparable(record):
    return {k: v for k, v in record.items() if k not in TIMING + TRAFFIC}


@pytest.mark.parametrize("name", list(CASES))
def test_a_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(tmp_path, name):
    keys, nodes, stop_after = CASES[name]
    full = _run(tmp_path, keys, "full", nodes)  # names of one length: the run folder travels in every message
    _run(tmp_path, {**keys, "num-server-rounds": stop_after}, "stop", nodes)  # "killed" after round k
    resumed = _run(tmp_path, {**keys, "resume": str(tmp_path / "stop")}, "stop", nodes, node_seed=7)
    assert [r["round"] for r in resumed["rounds"]] == list(range(1, keys["num-server-rounds"] + 1))
    for a, b in zip(full["rounds"], resumed["rounds"], strict=True):
        assert _comparable(a) == _comparable(b), a["round"]
    # the traffic of later rounds matches too; the first resumed round also re-discovers the (new) node ids
    for a, b in zip(full["rounds"][stop_after + 1:], resumed["rounds"][stop_after + 1:]):
        assert {k: a[k] for k in TRAFFIC} == {k: b[k] for k in TRAFFIC}
    for key, array in full["arrays"].items():
        np.testing.assert_array_equal(array.numpy(), resumed["arrays"][key].numpy())
    lines = (tmp_path / "stop" / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == list(range(1, keys["num-server-rounds"] + 1))


def test_clients_keep_their_node_state_per_round_and_only_the_two_latest(tmp_path):
    _run(tmp_path, {**CLOVE, "num-server-rounds": 4}, "run", 4)
    folders = sorted((tmp_path / "run" / "checkpoint" / "node-state").iterdir())
    assert [f.name for f in folders] == [f"partition-{p}" for p in range(4)]
    assert sorted(p.name for p in folders[0].glob("*.pkl")) == ["round-3.pkl", "round-4.pkl"]
    state = load_node_state(tmp_path / "run", 0, 4)
    assert "assignments" in state  # CLoVE's client-side stability history
    checkpoint = load_server_checkpoint(tmp_path / "run")
    assert checkpoint.server_round == 4 and len(checkpoint.rounds) == 4


def test_checkpoint_every_and_off(tmp_path):
    _run(tmp_path, {**CLOVE, "num-server-rounds": 3, "checkpoint-every": 2}, "every2", 4)
    assert load_server_checkpoint(tmp_path / "every2").server_round == 3  # round 2, then the last round
    _run(tmp_path, {**CLOVE, "num-server-rounds": 1, "checkpoint-every": 0}, "off", 4)
    assert not (tmp_path / "off" / "checkpoint").exists()
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        _run(tmp_path, {**CLOVE, "resume": str(tmp_path / "off")}, "off", 4)


def test_node_state_lookup_takes_the_latest_round_not_after_the_checkpoint(tmp_path):
    from flwr.app import ConfigRecord, RecordDict

    for r in (1, 3, 5):
        save_node_state(tmp_path, 2, r, RecordDict({"x": ConfigRecord({"round": r})}))
    assert load_node_state(tmp_path, 2, 4)["x"]["round"] == 3  # a client not sampled in round 4
    assert load_node_state(tmp_path, 2, 5)["x"]["round"] == 5
    assert load_node_state(tmp_path, 7, 5) is None


def test_arrays_received_over_the_network_are_checkpointed(tmp_path):
    from flwr.app import Array, ArrayRecord

    from fedsim.checkpoint import save_server_checkpoint

    received = np.arange(6, dtype=np.float32)
    record = ArrayRecord({"w": Array(received)})
    record["w"].data = memoryview(record["w"].data)  # what a deployed ServerApp gets: views of the message buffer
    save_server_checkpoint(tmp_path, 1, record, types.SimpleNamespace(_sent=record), [])
    checkpoint = load_server_checkpoint(tmp_path)
    np.testing.assert_array_equal(checkpoint.arrays["w"].numpy(), received)
    np.testing.assert_array_equal(checkpoint.strategy_state["_sent"]["w"].numpy(), received)


def test_resume_refuses_a_changed_configuration_or_a_folder_that_is_no_run(tmp_path):
    _run(tmp_path, {**CLOVE, "num-server-rounds": 1}, "run", 4)
    with pytest.raises(ConfigError, match="lr = 0.5 differs from the checkpointed run's 0.01"):
        resumed_run_dir(RunConfig.from_mapping({**CLOVE, "lr": 0.5, "resume": str(tmp_path / "run")}))
    with pytest.raises(ConfigError, match="is not a run folder"):
        resumed_run_dir(RunConfig.from_mapping({**CLOVE, "resume": str(tmp_path / "nothing")}))
    resumed_run_dir(RunConfig.from_mapping({**CLOVE, "num-server-rounds": 9, "resume": str(tmp_path / "run")}))


def test_a_torn_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    _run(tmp_path, {**CLOVE, "num-server-rounds": 1}, "run", 4)
    before = (tmp_path / "run" / "checkpoint" / "server.pkl").read_bytes()

    def broken_dump(*args, **kwargs):
        raise pickle.PicklingError("disk full")

    monkeypatch.setattr(checkpoint_module._Pickler, "dump", broken_dump)
    from fedsim.checkpoint import save_server_checkpoint

    with pytest.raises(CheckpointError, match="disk full"):
        save_server_checkpoint(tmp_path / "run", 3, None, types.SimpleNamespace(), [])
    assert (tmp_path / "run" / "checkpoint" / "server.pkl").read_bytes() == before
    assert not list((tmp_path / "run" / "checkpoint").glob("*.tmp"))


# -- fault tolerance -----------------------------------------------------------------------------------------


def test_a_silent_client_is_left_out_and_recorded_as_missing(tmp_path):
    config = RunConfig.from_mapping({**CLOVE, "strategy": "fedavg", "num-server-rounds": 3, "round-timeout": 5.0})
    grid = LoopbackGrid(client_app, 4, config.to_dict())
    silent = sorted(grid.contexts)[3]
    partition = grid.contexts[silent].node_config["partition-id"]
    reference = run_rounds(LoopbackGrid(client_app, 4, config.to_dict()), config)

    class KillAfterRoundOne:  # a recorder that makes one client crash (or hang) once round 1 is recorded
        run_dir = None

        def add_round(self, record):
            grid.silent.add(silent)

        def finish(self, *args):
            return {}

    result = run_rounds(grid, config, recorder=KillAfterRoundOne())
    assert not [e for e in result["rounds"][0]["events"] if e["event"] == "missing"]
    for record in result["rounds"][1:]:
        missing = [e for e in record["events"] if e["event"] == "missing"]
        assert {(e["stage"], e["partition-id"]) for e in missing} == {("train", partition), ("evaluate", partition)}
        assert "round-timeout = 5.0 s" in missing[0]["reason"]
        assert "eval-accuracy" in record  # the round completed with the other three
    assert result["rounds"][0] == {**reference["rounds"][0], **{k: result["rounds"][0][k] for k in TIMING}}
    assert result["rounds"][-1]["eval-accuracy"] != reference["rounds"][-1]["eval-accuracy"]


def test_too_few_replies_leave_the_model_unchanged_and_the_run_goes_on(tmp_path):
    config = RunConfig.from_mapping({**CLOVE, "strategy": "fedavg", "num-server-rounds": 2, "min-replies": 4})
    grid = LoopbackGrid(client_app, 4, config.to_dict())
    grid.silent.add(sorted(grid.contexts)[0])
    result = run_rounds(grid, config)
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert all(any(e["event"] == "too-few-replies" for e in r["events"]) for r in result["rounds"])
    assert "train-loss" not in result["rounds"][0]
    first_eval = result["rounds"][0]["eval-accuracy"]
    assert result["rounds"][1]["eval-accuracy"] == first_eval  # the initial model both times


# -- the same through real `flwr run` (Ray backend): a stopped run resumed by a second `flwr run` ---------------


@pytest.mark.slow
def test_flwr_run_resumes_a_stopped_run(flwr_run, tmp_path):
    keys = {**CLOVE, "num-server-rounds": 3}
    flwr_run(keys, 4, tmp_path, "stop", "num-server-rounds=2")
    rounds = flwr_run(keys, 4, tmp_path, "stop", f"resume='{tmp_path / 'stop'}'")
    reference = _run(tmp_path, keys, "full", 4)  # uninterrupted, on the loopback grid
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for real, local in zip(rounds, reference["rounds"], strict=True):
        for key in ("eval-accuracy", "eval-loss", "train-loss", "ari"):
            assert real[key] == pytest.approx(local[key], rel=1e-6, abs=1e-9), (real["round"], key)
