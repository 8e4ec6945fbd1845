"""BCD-QoS end to end on the loopback grid, checked against the plain-numpy reference loop."""

import numpy as np
import pytest
import torch

from fedsim import bcd
from fedsim.client_app import app as client_app
from fedsim.config import RunConfig
from fedsim.data.qos import load_federation
from fedsim.models import QosMLP
from fedsim.registry import strategies
from fedsim.runner import run_rounds
from fedsim.testing import LoopbackGrid

SMALL = {"strategy": "bcd-qos", "client-role": "qos-cell", "task": "qos", "dataset": "vehicular-qos",
         "partitioning": "cells", "model": "qos-mlp", "num-clusters": 12, "qos-days": 2,
         "qos-samples-per-window": 6, "bcd-pretrain-rounds": 2, "lr": 0.001, "batch-size": 32}


def _run(**keys):
    config = RunConfig.from_mapping({**SMALL, **keys})
    grid = LoopbackGrid(client_app, 12, config.to_dict(), node_seed=1)
    strategy = strategies.get("bcd-qos")(config)
    return run_rounds(grid, config, strategy=strategy), strategy, config


def test_paper_mode_runs_and_sends_heads_not_models():
    result, strategy, _ = _run(**{"num-server-rounds": 5})
    rounds = result["rounds"]
    pre, bcd_rounds = rounds[:2], rounds[2:]
    assert all("objective" not in r for r in pre) and all("objective" in r for r in bcd_rounds)
    for r in bcd_rounds:
        assert sum(r["cluster-sizes"]) == 12 and r["num-clusters"] == len(r["cluster-sizes"])
        assert np.isfinite(r["nll-total"]) and "ari" in r
    total, head = bcd.param_count(27, 9)
    # uplink per BCD round: 12 heads (Block 1) + 12 rows of 12 numbers (Block 2) + metrics
    assert 12 * head * 4 < bcd_rounds[-1]["bytes-up"] < 12 * head * 4 * 1.2
    assert pre[-1]["bytes-up"] > 12 * total * 4
    assert strategy.a.shape == (12, 12) and np.allclose(strategy.a.sum(1), 1)


def test_theory_mode_objective_does_not_increase_and_matches_the_reference_loop():
    lam, beta, eta = 0.01, 0.02, 0.5
    result, strategy, config = _run(**{"num-server-rounds": 6, "bcd-mode": "theory", "bcd-lambda": lam,
                                       "bcd-beta": beta, "bcd-eta": eta})
    objective = [r["objective"] for r in result["rounds"][2:]]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(objective, objective[1:]))

    # independent recomputation: the frozen base's features, the same A0 and heads, numpy float64
    model = QosMLP()
    model.load_state_dict(strategy.base.to_torch_state_dict(), strict=False)
    model.eval()
    fed = load_federation(12, 2, 6, 0, False, 1.0, "")
    feats, targets = [], []
    with torch.no_grad():
        for cell in fed.cells:
            train = cell.split == "train"
            x, y = torch.as_tensor(cell.x[train], dtype=torch.float32), torch.as_tensor(cell.y[train],
                                                                                         dtype=torch.float32)
            phi = model.features(x).double().numpy()
            feats.append(np.column_stack([phi, np.ones(len(phi))]))
            targets.append(model.standardise_targets(y).double().numpy())
    head0 = np.vstack([strategy.global_head["head.weight"].numpy().T, strategy.global_head["head.bias"].numpy()])
    means = np.stack([fed.means[i] for i in range(12)])
    d = bcd.laplacian(bcd.bhattacharyya_kernel(means, fed.covs))
    ref = bcd.reference_bcd(feats, targets, d, np.repeat(head0[None], 12, axis=0),
                            bcd.initial_assignment(12, 12, 6, config.seed), lam, beta, eta, 4, mode="theory")
    np.testing.assert_allclose(objective, ref.objective, rtol=1e-4)
    np.testing.assert_allclose(strategy.a, ref.assignments[-1], atol=1e-4)


def test_a_cell_that_fails_is_dropped_and_keeps_its_row(monkeypatch):
    from clients import qos_cell
    from fedsim import protocol

    original = qos_cell.QosCellRole.losses

    def broken(self, msg, context):
        reply = original(self, msg, context)
        if protocol.partition_of(context)[0] == 3 and "z" in reply.content["metrics"]:
            reply.content["metrics"]["z"] = [float("nan")] * 12
        return reply

    monkeypatch.setattr(qos_cell.QosCellRole, "losses", broken)
    result, strategy, _ = _run(**{"num-server-rounds": 4})
    dropped = [e for r in result["rounds"] for e in r["events"]]
    assert dropped and all(e["partition-id"] == 3 and e["stage"] == "losses" for e in dropped)
    assert np.isfinite(strategy.a).all()


@pytest.mark.parametrize("mode", ["paper", "theory"])
def test_strategy_refuses_unknown_mode(mode):
    from strategies.bcd_qos import BcdQoS

    BcdQoS(12, pretrain_rounds=1, mode=mode)
    with pytest.raises(ValueError, match="mode must be"):
        BcdQoS(12, pretrain_rounds=1, mode="exact")


def test_online_clock_rows_and_frozen_assignment():
    keys = {"qos-days": 3, "qos-online": True, "qos-online-start-h": 40.0, "qos-history-h": 6.0,
            "bcd-offline-iterations": 2, "num-server-rounds": 8, "record-clients": True}
    online, _, _ = _run(**keys)
    times = [r.get("time-h") for r in online["rounds"]]
    assert times == [None, None, None, None, 40.0, 40.25, 40.5, 40.75]
    frozen, strategy, config = _run(**keys, **{"bcd-freeze-after": 2})
    labels = [r["cell-clusters"] for r in frozen["rounds"] if "cell-clusters" in r]
    assert all(lab == labels[1] for lab in labels[1:])  # fixed from the end of iteration 2 on

    from clients.qos_cell import QosCellRole
    from fedsim.data.qos import HORIZON_WINDOWS

    role = QosCellRole(config)
    context = next(iter(LoopbackGrid(client_app, 12, config.to_dict()).contexts.values()))
    train, test = role.rows(context, {"time-h": 40.0})
    cell = role.federation(12).cells[context.node_config["partition-id"]]
    start_h = (cell.target_window - HORIZON_WINDOWS) * 0.25
    assert np.all((cell.target_window[train] + 1) * 0.25 <= 40.0) and np.all(start_h[train] >= 34.0)
    assert np.all((start_h[test] >= 40.0) & (start_h[test] < 41.0)) and len(test) > 0
    with pytest.raises(ValueError, match="no test samples"):
        role.rows(context, {"time-h": 71.0})


def test_physical_units_follow_the_lognormal_moments():
    from clients.qos_cell import physical

    rng = np.random.default_rng(0)
    samples = np.exp(rng.normal(2.0, 0.5, 2_000_000))
    mean, sd = physical(np.array([2.0]), np.array([0.5]), "latency")
    assert mean[0] == pytest.approx(samples.mean(), rel=2e-3) and sd[0] == pytest.approx(samples.std(), rel=5e-3)
    assert physical(np.array([-90.0]), np.array([3.0]), "rsrp") == (-90.0, 3.0)


def test_a_cell_without_usable_data_sits_out_and_the_others_go_on(monkeypatch):
    from clients import qos_cell
    from fedsim import protocol

    original = qos_cell.QosCellRole.describe

    def empty_cell(self, context):
        if protocol.partition_of(context)[0] == 5:
            raise ValueError("cell 6 has no usable QoS samples in its training period; it sits this run out")
        return original(self, context)

    monkeypatch.setattr(qos_cell.QosCellRole, "describe", empty_cell)
    result, strategy, _ = _run(**{"num-server-rounds": 3})
    assert len(strategy.cells) == 11 and strategy.a.shape == (11, 12)
    reasons = [e["reason"] for e in result["rounds"][0]["events"]]
    assert any("cell 6 has no usable QoS samples" in r for r in reasons)


def test_runs_with_dropout_do_not_depend_on_the_process_history():
    """The QoS MLP has dropout: local training must seed it, or a run depends on what ran before."""
    first, _, _ = _run(**{"num-server-rounds": 2})
    torch.rand(1000)  # move the global generator, as any earlier work in the process would
    second, _, _ = _run(**{"num-server-rounds": 2})
    strip = [{k: v for k, v in r.items() if k not in ("round-time", "elapsed")} for r in first["rounds"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("round-time", "elapsed")} for r in second["rounds"]]
