"""Federated SPG-MIBO (digest 001 Sec. 10) on the loopback grid, its mask aggregation, and one real `flwr run`."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import clients.spg_mibo as role_module
from fedsim import protocol, registry
from fedsim.client_app import app as client_app
from fedsim.config import ConfigError, RunConfig
from fedsim.runner import run_rounds
from fedsim.spg_mibo import feasible_binary, integrality_gap, mask_budget, project_l1_band
from fedsim.testing import LoopbackGrid
from strategies.spg_mibo import SPGMIBOStrategy, build, g_weight

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"strategy": "spg-mibo", "client-role": "spg-mibo", "task": "mibo", "dataset": "csi-synthetic",
         "partitioning": "rooms", "model": "mibo-mlp", "num-server-rounds": 2, "min-available-nodes": 3,
         "csi-samples-per-room": 200, "lr": 0.001, "batch-size": 50, "mibo-rho-delay": 3}
D = 64  # 2 links x 32 subcarriers


def _run(num_nodes=3, strategy_obj=None, **keys):
    config = RunConfig.from_mapping({**SMALL, **keys})
    strategy = strategy_obj or registry.strategies.get(config.strategy)(config)
    grid = LoopbackGrid(client_app, num_nodes, config.to_dict(), node_seed=1)
    return run_rounds(grid, config, strategy=strategy), strategy, grid, config


def _mask(result, key="mask"):
    return result["arrays"][key].numpy().astype(np.float64)


class _Recording(SPGMIBOStrategy):
    """Keeps every valid train reply's arrays (what the clients send)."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen = [{k: a.numpy() for k, a in next(iter(m.content.array_records.values())).items()}
                     for m in replies if not m.has_error()]
        self.weights = [float(next(iter(m.content.metric_records.values()))["num-examples"]) for m in replies]
        self.steps = [int(next(iter(m.content.metric_records.values()))["step"]) for m in replies]
        self.sent_masks = [*getattr(self, "sent_masks", []), self._sent["mask"].numpy()]
        return super().aggregate_train(server_round, replies)


def _recording(config):
    strategy = build(config)
    recording = _Recording.__new__(_Recording)
    recording.__dict__.update(strategy.__dict__)
    return recording


def test_mean_aggregation_is_the_weighted_average_then_the_prox_then_the_budget_projection():
    config = RunConfig.from_mapping(SMALL)
    result, strategy, _, _ = _run(strategy_obj=_recording(config))
    weights = np.array(strategy.weights)
    mean = sum(w * r["mask"].astype(np.float64) for w, r in zip(weights, strategy.seen)) / weights.sum()
    step = max(strategy.steps)
    eta = config.mibo_eta_w / math.sqrt(step)
    rho = g_weight(step, config.mibo_rho, config.mibo_rho_delay, config.mibo_rho_warmup)
    assert rho == 1.0  # past the delay: the prox acts
    prox = (mean + 2 * eta * rho * (mean > 0.5)) / (1 + 2 * eta * rho)  # eq. 13, written out
    n_min, n_max = mask_budget(D)
    lo, hi = -1.0, 1.0  # the projection onto the band by bisection on the shift tau (independent of the code's)
    total = np.clip(prox, 0, 1).sum()
    target = min(max(total, n_min), n_max)
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if np.clip(prox - tau, 0, 1).sum() > target else (lo, tau)
    expected = np.clip(prox - (lo + hi) / 2, 0, 1)
    np.testing.assert_allclose(_mask(result), expected, atol=1e-5)
    assert n_min - 1e-4 <= _mask(result).sum() <= n_max + 1e-4
    assert ((_mask(result) >= 0) & (_mask(result) <= 1)).all()


def test_replies_carry_the_model_only_and_cuts_stay_in_the_node_state():
    config = RunConfig.from_mapping(SMALL)
    result, strategy, grid, _ = _run(strategy_obj=_recording(config))
    model_keys = set(role_module.SPGMIBORole(config).task.build_model().state_dict())
    assert all(set(reply) == model_keys for reply in strategy.seen)
    for state in (grid.contexts[n].state for n in grid.get_node_ids()):
        kept = state[role_module.STATE_KEY]
        assert int(kept["joint.t"].numpy()[0]) == 2 * math.ceil(160 / 50)  # two rounds of one epoch
        assert "joint.cuts.a" in kept  # the cut pool (possibly empty) survives the round
    assert result["rounds"][-1]["step"] == 2 * math.ceil(160 / 50)


def test_the_run_learns_and_reports_the_paper_metrics():
    result, *_ = _run(**{"num-server-rounds": 3})
    first, last = result["rounds"][0], result["rounds"][-1]
    for key in ("eval-loc-error-m", "eval-accuracy", "eval-ifg", "eval-precision", "eval-selected", "mask-ifg",
                "mask-ifg-mean", "J", "n-cuts", "A-w", "A-u", "A-v"):
        assert key in last, key
    assert last["eval-loss"] < first["eval-loss"]
    n_min, n_max = mask_budget(D)
    assert n_min <= last["eval-selected"] <= n_max
    assert last["eval-ifg"] == pytest.approx(integrality_gap(_mask(result), n_min, n_max))


def test_vote_aggregation_is_the_weighted_majority_of_the_binary_masks():
    keys = {"mibo-mask-aggregation": "vote"}
    result, strategy, _, _ = _run(strategy_obj=_recording(RunConfig.from_mapping({**SMALL, **keys})), **keys)
    n_min, n_max = mask_budget(D)
    weights = np.array(strategy.weights)
    binary = np.array([feasible_binary(r["mask"].astype(np.float64), n_min, n_max) for r in strategy.seen])
    share = (weights[:, None] * binary).sum(0) / weights.sum()
    k = int(np.clip((share > 0.5).sum(), n_min, n_max))
    chosen = _mask(result)
    assert set(np.unique(chosen)) <= {0.0, 1.0} and chosen.sum() == k
    assert share[chosen == 1].min() >= share[chosen == 0].max()  # the k largest shares


def test_local_masks_stay_on_the_clients_and_differ():
    keys = {"mibo-mask-aggregation": "local"}
    config = RunConfig.from_mapping({**SMALL, **keys})
    result, strategy, grid, _ = _run(strategy_obj=_recording(config), **keys)
    assert all("mask" not in reply for reply in strategy.seen)
    assert len(strategy.sent_masks) == 2  # the server's mask is the initial one in every round
    for sent in strategy.sent_masks:
        np.testing.assert_array_equal(_mask(result), sent.astype(np.float64))
    masks = [grid.contexts[n].state[role_module.PERSONAL_MASK_KEY]["mask"].numpy() for n in grid.get_node_ids()]
    assert not np.allclose(masks[0], masks[1])


def test_separate_training_keeps_two_masks_and_penalty_mibo_no_prox():
    result, *_ = _run(**{"mibo-method": "separate", "num-server-rounds": 1})
    assert "mask_sen" in result["arrays"] and not np.allclose(_mask(result), _mask(result, "mask_sen"))
    penalty = build(RunConfig.from_mapping({**SMALL, "mibo-method": "penalty"}))
    spg = build(RunConfig.from_mapping(SMALL))
    mean = np.linspace(0.05, 0.95, D)
    budget = mask_budget(D)
    np.testing.assert_allclose(penalty.server_step(mean, 1000, *budget), project_l1_band(mean, *budget))
    assert np.abs(spg.server_step(mean, 1000, *budget) - penalty.server_step(mean, 1000, *budget)).max() > 0.01


def test_local_only_keeps_the_whole_model_on_the_node():
    result, _, grid, _ = _run(**{"strategy": "local-only", "num-server-rounds": 2})
    first, last = result["rounds"]
    assert last["eval-loss"] < first["eval-loss"]
    assert last["bytes-up"] < 10_000  # metrics only: no model leaves a client
    models = [grid.contexts[n].state[protocol.PERSONAL_MODEL]["mask"].numpy() for n in grid.get_node_ids()]
    assert not np.allclose(models[0], models[1])


def test_a_nan_reply_is_dropped_and_the_round_goes_on():
    config = RunConfig.from_mapping(SMALL)
    strategy = build(config)
    model = role_module.SPGMIBORole(config).task.init_model(0)
    arrays = ArrayRecord(model.state_dict())
    strategy._sent = arrays
    good = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    bad = dict(good, mask=np.full(D, np.nan, dtype=np.float32))

    def reply(values, node):
        content = RecordDict({protocol.ARRAYS: ArrayRecord({k: Array(v) for k, v in values.items()}),
                              protocol.METRICS: MetricRecord({"num-examples": 10, "step": 200})})
        msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
        return Message(content, reply_to=msg)

    new, _ = strategy.aggregate_train(1, [reply(good, 1), reply(bad, 2)])
    assert new is not None and np.isfinite(new["mask"].numpy()).all()
    assert [e["node-id"] for e in strategy.drain_events()] == [2]


@pytest.mark.parametrize("keys, message", [
    ({"mibo-n-min": 40, "mibo-n-max": 30}, "mibo-n-min = 40 is larger than mibo-n-max = 30"),
    ({"mibo-n-max": 65}, "mibo-n-max = 65 is more than the 64 subcarriers"),
    ({"mibo-method": "gradient"}, "mibo-method = 'gradient' is unknown"),
    ({"partitioning": "iid"}, "partitioning = 'rooms' or 'zones' goes with dataset = 'csi-synthetic'"),
    ({"strategy": "fedavg"}, "task = 'mibo' needs strategy = 'spg-mibo'"),
    ({"mibo-eta-w": 0.0}, "mibo-eta-w = 0.0 is not allowed"),
])
def test_bad_configurations_are_refused_before_round_one(keys, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_mapping({**SMALL, **keys})


def test_csi_of_the_wrong_shape_or_with_nan_is_refused_before_training():
    config = RunConfig.from_mapping(SMALL)
    role = role_module.SPGMIBORole(config)
    model = role.task.init_model(0)
    trainer = role.trainers(model)["joint"]
    x = torch.zeros(8, 3, 2, 32, 16)
    pos, y = torch.zeros(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="CSI features must have shape"):
        trainer.fit(torch.zeros(8, 3, 2, 30, 16), pos, y)
    x[3, 0, 1, 5, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        trainer.fit(x, pos, y)
    assert trainer.t == 0  # nothing was trained


def test_rooms_are_split_over_the_clients_and_one_node_holds_them_all():
    config = RunConfig.from_mapping({**SMALL, "csi-rooms": 4})
    assert [role_module.client_rooms(config, k, 2) for k in range(2)] == [(0, 2), (1, 3)]
    assert role_module.client_rooms(config, 0, 1) == (0, 1, 2, 3)
    with pytest.raises(ConfigError, match="leaves client 4 of 5 without a room"):
        role_module.client_rooms(config, 4, 5)
    zones = RunConfig.from_mapping({**SMALL, "partitioning": "zones"})
    data = role_module.client_csi(zones, 1, 4)
    width, height = 4.0, 3.0
    assert ((data.pos_train[:, 0] * width >= width / 2).all() and (data.pos_train[:, 1] * height < height / 2).all())


# -- a real `flwr run` (Ray backend): tens of seconds on 2 cores, so marked slow like tests/test_flwr_run.py ----


@pytest.mark.slow
def test_flwr_run_matches_the_loopback_run(flwr_run, tmp_path):
    keys = {**SMALL, "min-available-nodes": 2, "csi-samples-per-room": 100}
    rounds = flwr_run(keys, 2, tmp_path, "mibo")
    config = RunConfig.from_mapping(keys)
    reference = run_rounds(LoopbackGrid(client_app, 2, config.to_dict()), config)
    assert len(rounds) == len(reference["rounds"]) == 2
    for real, local in zip(rounds, reference["rounds"], strict=True):
        assert real["bytes-up"] == local["bytes-up"]
        for key in ("eval-loss", "eval-accuracy", "mask-ifg"):
            assert real[key] == pytest.approx(local[key], rel=1e-6, abs=1e-9), key


def test_the_ray_traced_csi_runs_through_the_same_role():
    result, *_ = _run(**{"dataset": "csi-sionna", "num-server-rounds": 1, "csi-samples-per-room": 150})
    record = result["rounds"][0]
    assert 0 < record["eval-accuracy"] <= 1 and record["eval-loc-error-m"] > 0
    with pytest.raises(ConfigError, match="the ray-traced csi-sionna data has 32"):
        RunConfig.from_mapping({**SMALL, "dataset": "csi-sionna", "csi-subcarriers": 16})
