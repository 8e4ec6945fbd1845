"""The federated path-loss map (paper 004, digest Sec. 8) on the loopback grid, and one real `flwr run`."""

import warnings
from pathlib import Path

import numpy as np
import pytest

import clients.pathloss as role_module
from clients.pathloss import ClientData, Links, PathLossRole
from fedsim import protocol
from fedsim.client_app import app as client_app
from fedsim.config import ConfigError, RunConfig
from fedsim.data.madrid import madrid_grid
from fedsim.pathloss import OnlinePathLossLearner, largest_eigenvalue, solve_elastic_net
from fedsim.runner import run_rounds
from fedsim.testing import LoopbackGrid
from strategies.pathloss import build

ROOT = Path(__file__).resolve().parents[1]
P = madrid_grid().num_pixels
SMALL = {"strategy": "pathloss", "client-role": "pathloss", "task": "pathloss", "dataset": "a2a-madrid",
         "partitioning": "vehicles", "model": "slf", "num-server-rounds": 2, "min-available-nodes": 3,
         "pl-steps-per-round": 2, "pl-links-per-step": 20, "pl-heldout-links": 200, "pl-r": 0.1,
         "pl-mismatch-r": 0.1}


def _run(num_nodes=3, **keys):
    config = RunConfig.from_mapping({**SMALL, **keys})
    strategy = build(config)
    grid = LoopbackGrid(client_app, num_nodes, config.to_dict(), node_seed=1)
    return run_rounds(grid, config, strategy=strategy), strategy, grid, config


def _central_statistics(config, num_nodes, rounds):
    """A centralised baseline learner fed the union of the clients' batches, round by round, in partition order."""
    learner = OnlinePathLossLearner(madrid_grid().centres, learn_window=False, blas_threads=1)
    per_round = []
    for server_round in range(1, rounds + 1):
        for pid in range(num_nodes):
            data = ClientData(config, pid, num_nodes)
            for step in range((server_round - 1) * config.pl_steps_per_round + 1,
                              server_round * config.pl_steps_per_round + 1):
                links = data.batch(step)
                learner.partial_fit(links.tx_xy, links.rx_xy, links.measured)
        per_round.append(learner.stats())
    return per_round


def test_fedstats_equals_the_centralised_solve_when_the_windows_are_the_models():
    result, strategy, grid, config = _run(**{"pl-window": "baseline"})
    stats = _central_statistics(config, 3, 2)
    np.testing.assert_allclose(strategy.A_bar_, stats[-1]["A_bar"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(strategy.b_, stats[-1]["b"], rtol=0, atol=1e-12)
    assert strategy.n_ == pytest.approx(stats[-1]["n"]) == 2 * 3 * 2 * 20 / 120
    f = np.zeros(P)
    for s in stats:  # the server's warm-started solve, round after round, on the centralised statistics
        lipschitz = largest_eigenvalue(s["A_bar"]) / s["n"] + config.pl_lambda2
        f = solve_elastic_net(s["A_bar"], s["b"], s["n"], config.pl_lambda1, config.pl_lambda2, f0=f,
                              iterations=config.pl_inner_iterations * config.pl_steps_per_round, lipschitz=lipschitz)
    np.testing.assert_allclose(result["arrays"]["slf"].numpy(), f, rtol=0, atol=1e-8)
    assert np.abs(f).max() > 0.1  # a real solution, not zeros
    for context in grid.contexts.values():  # the node state carries the stream position across rounds
        assert context.state[role_module.LEARNER_COUNTERS]["time-step"] == 4


@pytest.mark.parametrize("aggregation, max_bytes_per_client", [("coverage", 2 * P * 8 + 200),
                                                                ("fedavg", P * 8 + 200)])
def test_coverage_and_fedavg_runs_learn_and_send_only_the_slf(aggregation, max_bytes_per_client):
    result, _, _, _ = _run(**{"pl-aggregation": aggregation, "num-server-rounds": 3})
    rounds = result["rounds"]
    assert rounds[-1]["eval-nmse-f"] < rounds[0]["eval-nmse-f"] < 1.0
    assert rounds[-1]["eval-loss"] < rounds[0]["eval-loss"]
    assert all(r["bytes-up"] <= 3 * max_bytes_per_client + 3 * 400 for r in rounds[1:])
    assert not any(r["events"] for r in rounds)


def test_a_reply_with_a_nan_statistic_is_dropped_with_a_warning_and_the_round_goes_on(monkeypatch):
    original = PathLossRole.train

    def corrupt(self, msg, context):
        reply = original(self, msg, context)
        if protocol.partition_of(context)[0] == 1:
            arrays = reply.content[protocol.ARRAYS]
            bad = arrays["b"].numpy()
            bad[7] = np.nan
            from flwr.app import Array

            arrays["b"] = Array(bad)
        return reply

    monkeypatch.setattr(PathLossRole, "train", corrupt)
    result, strategy, _, _ = _run()
    for record in result["rounds"]:
        (event,) = record["events"]
        assert event["partition-id"] == 1 and "NaN or inf" in event["reason"]
        assert np.isfinite(record["eval-loss"])
    assert strategy.n_ == pytest.approx(2 * 2 * 2 * 20 / 120)  # two clients, two rounds
    assert np.isfinite(result["arrays"]["slf"].numpy()).all()


def test_kernel_coefficients_never_leave_the_client(monkeypatch):
    seen = []
    original = PathLossRole.train

    def spy(self, msg, context):
        reply = original(self, msg, context)
        seen.append({k: a.shape for k, a in reply.content[protocol.ARRAYS].items()})
        return reply

    monkeypatch.setattr(PathLossRole, "train", spy)
    _run(**{"pl-r": 1.0, "num-server-rounds": 1})
    assert len(seen) == 3
    for arrays in seen:
        assert arrays == {"A-upper": (P * (P + 1) // 2,), "b": (P,), "n": (1,), "c": (1,)}


def test_bad_links_are_skipped_with_a_warning_and_nothing_else_is_lost(monkeypatch):
    clean, clean_strategy, _, _ = _run(**{"num-server-rounds": 1, "pl-window": "baseline"})
    original = ClientData.batch

    def with_bad_links(self, step):
        links = original(self, step)
        if self.client != 0:
            return links
        same_pixel = links.tx_xy[:1]
        measured = np.concatenate([links.measured, [1.0, np.nan]])
        return Links(np.concatenate([links.tx_xy, same_pixel, links.tx_xy[:1]]),
                     np.concatenate([links.rx_xy, same_pixel, links.rx_xy[:1]]), measured)

    monkeypatch.setattr(ClientData, "batch", with_bad_links)
    with pytest.warns(UserWarning, match="skipping 2 of 22 links: 1 with a non-finite measurement, 1 with"):
        dirty, strategy, _, _ = _run(**{"num-server-rounds": 1, "pl-window": "baseline"})
    # the same links: equal up to the rounding of matrix products of another batch shape
    np.testing.assert_allclose(strategy.A_bar_, clean_strategy.A_bar_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(strategy.b_, clean_strategy.b_, rtol=0, atol=1e-12)
    assert strategy.n_ == clean_strategy.n_
    assert dirty["rounds"][0]["skipped-links"] == pytest.approx(4 / 3)  # 2 links x 2 steps, mean of 3 clients
    np.testing.assert_allclose(dirty["arrays"]["slf"].numpy(), clean["arrays"]["slf"].numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("keys, message", [
    ({"strategy": "fedavg"}, "needs strategy = 'pathloss'"),
    ({"pl-fit-log-distance": True}, "pl-fit-log-distance needs path losses"),
    ({"pl-r": -0.1}, "pl-r"),
    ({"client-role": "local-train"}, "client-role = 'pathloss'"),
])
def test_bad_configurations_are_refused_before_round_one(keys, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping({**SMALL, **keys})


def test_the_log_distance_fit_is_federated_exactly_on_the_physics_data():
    result, strategy, _, config = _run(**{"dataset": "a2a-physics", "pl-fit-log-distance": True,
                                          "num-server-rounds": 1})
    from fedsim.pathloss import log_distance_stats, solve_log_distance

    links = [ClientData(config, pid, 3).batch(step) for pid in range(3) for step in (1, 2)]
    d = np.concatenate([link.distance for link in links])
    pl = np.concatenate([link.measured for link in links])
    pl0, delta = solve_log_distance(log_distance_stats(d, pl))
    assert result["rounds"][0]["pl0"] == pytest.approx(pl0, rel=1e-10)
    assert result["rounds"][0]["delta"] == pytest.approx(delta, rel=1e-10)
    assert result["arrays"]["pl0"].numpy()[0] == pytest.approx(pl0, rel=1e-10)


def test_the_sionna_data_is_split_by_transmitter():
    config = RunConfig.from_mapping({**SMALL, "dataset": "a2a-sionna"})
    transmitters = [np.unique(ClientData(config, pid, 3).batch(1).tx_xy, axis=0) for pid in range(3)]
    as_sets = [{tuple(t) for t in tx} for tx in transmitters]
    assert not (as_sets[0] & as_sets[1]) and not (as_sets[1] & as_sets[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        held = ClientData(config, 0, 3).heldout()
    assert len(held.measured) == 200 and np.isfinite(held.measured).all()


# -- a real `flwr run` (Ray backend): about 40-60 s on 2 cores, so marked slow like tests/test_flwr_run.py ------


@pytest.mark.slow
def test_flwr_run_of_fedstats_matches_the_loopback_run(flwr_run, tmp_path):
    keys = {**SMALL, "num-server-rounds": 2, "pl-steps-per-round": 1, "pl-links-per-step": 10,
            "pl-heldout-links": 100, "min-available-nodes": 2}
    rounds = flwr_run(keys, 2, tmp_path, "pathloss")
    config = RunConfig.from_mapping(keys)
    reference = run_rounds(LoopbackGrid(client_app, 2, config.to_dict()), config)
    for real, local in zip(rounds, reference["rounds"], strict=True):
        assert real["bytes-up"] == local["bytes-up"]
        for key in ("eval-loss", "eval-nmse-f", "objective"):  # the ServerApp's BLAS may sum in another order
            assert real[key] == pytest.approx(local[key], rel=1e-9, abs=1e-12), key
