"""LightTune end to end on the loopback grid: federated offline FF training, then on-device episodes."""

import numpy as np
import pytest
from flwr.app import ArrayRecord

from clients import lighttune
from clients.lighttune import LightTuner, TuneSettings, deployment_channel, ff_spec, offline_data, simulation
from fedsim import protocol
from fedsim.client_app import app as client_app
from fedsim.config import ConfigError, RunConfig
from fedsim.data.link_env import run_episode
from fedsim.registry import tasks
from fedsim.runner import run_rounds
from fedsim.seeding import derive_seed
from fedsim.testing import LoopbackGrid

SMALL = {"strategy": "fedavg-deploy", "client-role": "lighttune", "task": "bler", "dataset": "link-adaptation",
         "partitioning": "ues", "model": "ff-mlp", "num-server-rounds": 4, "deploy-after": 2, "lr": 0.03,
         "la-train-periods": 120, "la-periods": 12, "la-test-snr-db": "4,28", "record-clients": True,
         "la-ues": "TDL-A30@10,TDL-B100@50/medium", "min-available-nodes": 3, "la-bler-curves": "closed-form"}


def _run(**keys):
    config = RunConfig.from_mapping({**SMALL, **keys})
    grid = LoopbackGrid(client_app, 3, config.to_dict(), node_seed=2)
    return run_rounds(grid, config), grid, config


@pytest.fixture(scope="module")
def small_run():
    return _run()


def test_offline_rounds_train_and_deployment_rounds_only_evaluate(small_run):
    result, _, config = small_run
    offline, deployed = result["rounds"][:2], result["rounds"][2:]
    for record in offline:
        assert record["bytes-up"] > 0 and "train-loss" in record and "eval-majority-accuracy" in record
    for record in deployed:
        assert record["bytes-up"] < 2_000  # evaluation metrics only, no model comes back
        for metrics in record["clients"].values():
            assert {f"bler-error-{v}" for v in ("frozen", "one-step", "adam", "backprop")} <= set(metrics)
            assert {"tput-olla", "tput-cqi-tune", "tput-ri-cqi-tune"} <= set(metrics)
    assert [r["clients"]["0"]["snr-db"] for r in deployed] == [4.0, 28.0]


def test_the_frozen_arm_is_the_global_model_on_the_ues_own_channel(small_run):
    result, grid, config = small_run
    thetas, x_mean, x_std = lighttune.LightTuneRole(config).unpack(result["arrays"])
    spec = ff_spec(config, 12)
    for pid in (0, 1):
        frozen = LightTuner(spec, thetas, x_mean, x_std, TuneSettings("frozen"), np.random.default_rng(0))
        episode = run_episode(deployment_channel(config, pid), 28.0, 12, derive_seed(config.seed, pid, 2, 5),
                              method="explore", predictor=frozen, sim=simulation(config))
        reported = result["rounds"][3]["clients"][str(pid)]
        assert reported["bler-error-frozen"] == pytest.approx(np.abs(episode.predicted - episode.p_bler).mean())
        baseline = run_episode(deployment_channel(config, pid), 28.0, 12, derive_seed(config.seed, pid, 2, 5),
                               sim=simulation(config))
        assert reported["tput-olla"] == pytest.approx(baseline.mean_throughput / 1e6)


def test_features_are_standardised_with_the_pooled_offline_moments(small_run):
    result, _, config = small_run
    x = np.concatenate([offline_data(config, pid)[0][:96] for pid in range(3)])  # 80 % of 120 per UE
    _, x_mean, x_std = lighttune.LightTuneRole(config).unpack(result["arrays"])
    np.testing.assert_allclose(x_mean, x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(x_std, x.std(0) + 1e-6, rtol=1e-6)


def test_node_state_carries_the_adapted_model_across_episodes_when_never_reset():
    result, grid, config = _run(**{"lt-reset": "never", "lt-variants": "frozen,one-step",
                                   "la-link-policies": ""})
    for context in grid.contexts.values():
        counters = context.state[lighttune.TUNER_STATE + "one-step-counters"]
        assert counters["periods"] == 2 * config.la_periods
    # never reset: the second episode starts from the adapted model, so it differs from a fresh start
    again, _, _ = _run(**{"lt-variants": "frozen,one-step", "la-link-policies": ""})
    errors = [r["clients"]["1"]["bler-error-one-step"] for r in (result["rounds"][3], again["rounds"][3])]
    assert result["rounds"][2]["clients"]["1"] == again["rounds"][2]["clients"]["1"]
    assert errors[0] != errors[1]


def test_send_back_merges_the_adapted_models():
    result, _, _ = _run(**{"lt-send-back": True, "lt-variants": "one-step", "la-link-policies": ""})
    assert result["rounds"][3]["bytes-up"] > 10_000  # adapted models came back in the second deployment round


def test_a_ue_with_bad_data_is_left_out_and_the_others_go_on(monkeypatch):
    original = lighttune.offline_data

    def corrupted(config, partition_id):
        x, p = original(config, partition_id)
        if partition_id == 1:
            x = x.copy()
            x[5, 2] = np.nan
        return x, p

    monkeypatch.setattr(lighttune, "offline_data", corrupted)
    result, _, _ = _run(**{"num-server-rounds": 3})
    reasons = {e["reason"] for r in result["rounds"] for e in r["events"]}
    assert any("offline period 5 has a non-finite feature" in r for r in reasons)
    assert set(result["rounds"][-1]["clients"]) == {"0", "2"}


@pytest.mark.parametrize("key, value, message", [
    ("la-ues", "TDL-A30", "is not <TDL-name>@<doppler Hz>"),
    ("la-ues", "TDL-Q30@10", "TDL"),
    ("lt-variants", "frozen,onestep", "lt-variants entry 'onestep' is unknown"),
    ("la-test-snr-db", "4,high", "la-test-snr-db = '4,high'"),
    ("deploy-after", 4, "leaves no deployment round"),
    ("la-bler-curves", "ldpc", "la-bler-curves = 'ldpc' is unknown"),
])
def test_bad_config_stops_before_round_one(key, value, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping({**SMALL, key: value})


def test_a_model_that_does_not_fit_the_features_is_a_clear_error():
    config = RunConfig.from_mapping(SMALL)
    role = lighttune.LightTuneRole(config)
    other = RunConfig.from_mapping({**SMALL, "ff-hidden": "16,16"})
    arrays = ArrayRecord(tasks.get("bler")(other).init_model(0).state_dict())
    with pytest.raises(ValueError, match="do not fit 12 features"):
        role.unpack(arrays)
    assert protocol.DEPLOY_EPISODE == "deploy-episode"


def test_a_model_no_better_than_the_majority_class_is_flagged_before_deployment():
    from flwr.app import MetricRecord

    from fedsim.registry import strategies

    strategy = strategies.get("fedavg-deploy")(RunConfig.from_mapping(SMALL))
    strategy.check_gate(MetricRecord({"eval-bler-error": 0.20, "eval-majority-bler-error": 0.32}))
    assert strategy.drain_events() == []
    strategy.check_gate(MetricRecord({"eval-bler-error": 0.32, "eval-majority-bler-error": 0.32}))
    (event,) = strategy.drain_events()
    assert event["event"] == "gate" and "does not beat the majority-class predictor" in event["reason"]
