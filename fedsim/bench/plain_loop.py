"""The reference for framework overhead: fedsim's computation in a plain PyTorch loop.

:func:`run_plain` does what fedsim's clients (:class:`clients.local_train.LocalTrainRole`) and
strategies (:mod:`strategies.fedavg`, :mod:`strategies.ifca`, :mod:`strategies.clove`) compute
in a run with full participation, but in one process, sequentially, with no Flower, no Ray, no
messages, no serialisation and one torch thread. The difference between its round time and a
fedsim round is what the framework costs.

Deliberately the same as fedsim, so that the numbers agree with a fedsim run to float rounding:

- every client's data is loaded (``load_client_data``) before round 1 and cached, as a ClientApp
  process caches it after its first message; this set-up is timed apart (``setup-time``), and so is
  torch's one-off warm-up (lazy imports on the first optimiser), which a fedsim run pays in round 1;
- one model object is reused for all clients and all K models (a client role reuses one per process);
- local training is ``LocalTrainRole.fit`` itself: a fresh Adam per client per round and shuffling
  seeded by ``(seed, partition, round)``;
- the initial models are fedsim's (``model_seed``), replies are averaged in partition order with
  Flower's float32 weighted average, and metrics are aggregated as the strategies do (train loss
  weighted by ``num-examples``; clustered evaluation unweighted over clients, FedAvg's weighted by
  test size, which is Flower's default);
- IFCA takes each client's argmin-loss model; CLoVE clusters the loss vectors with the same seed,
  keeps each client's assignment history and stops querying exactly when fedsim does.

Only ``first-assignment = "evaluate"``, ``aggregation = "model"`` and full participation
(``fraction-train = fraction-evaluate = 1``) are reproduced.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from clients.local_train import LocalTrainRole
from fedsim import protocol
from fedsim.arrays import average
from fedsim.clustering import ari, clove_assign, ifca_assign, is_stable
from fedsim.config import RunConfig
from fedsim.data.federation import load_client_data
from fedsim.registry import tasks
from fedsim.seeding import derive_seed, model_seed

STRATEGIES = ("fedavg", "ifca", "clove")

StateDict = dict[str, torch.Tensor]


def run_plain(config: RunConfig, num_clients: int, num_rounds: int,
              on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run fedsim's FedAvg, IFCA or CLoVE as a plain sequential PyTorch loop and time it.

    Parameters
    ----------
    config : RunConfig
        The run configuration; ``config.strategy`` must be ``fedavg``, ``ifca`` or ``clove``.
        ``num-server-rounds`` is ignored (``num_rounds`` is used).
    num_clients : int
        Number of clients (partitions ``0..num_clients-1``), all taking part in every round.
    num_rounds : int
        Number of rounds.
    on_round : callable, optional
        Called with each round's record as soon as the round ends.

    Returns
    -------
    dict
        ``{"setup-time": s, "rounds": [record, ...], "peak-rss-mb": MB}``. A round record has
        ``round``, ``round-time`` (wall time of the whole round), ``query-time`` (loss matrix),
        ``assign-time`` (IFCA/CLoVE assignment), ``train-time``, ``aggregate-time``,
        ``evaluate-time``, ``eval-accuracy`` (classification), ``eval-loss``, ``train-loss``;
        IFCA/CLoVE add ``ari`` (when the data has true clusters) and CLoVE ``stable``
        (1 in rounds run without a loss query, i.e. after clustering stopped).

    Raises
    ------
    ValueError
        For another strategy, ``first-assignment = "random"``, ``aggregation = "gradient"`` or
        partial participation.
    ConfigError
        If there are fewer clients than clusters (as fedsim's runner checks before round 1).
    """
    if config.strategy not in STRATEGIES:
        raise ValueError(f"run_plain: strategy '{config.strategy}' is not reproduced; "
                         f"known: {', '.join(STRATEGIES)}")
    if config.fraction_train != 1.0 or config.fraction_evaluate != 1.0:
        raise ValueError("run_plain reproduces full participation only (fraction-train = fraction-evaluate = 1)")
    if config.strategy != "fedavg":
        if config.first_assignment != "evaluate":
            raise ValueError(f"run_plain: first-assignment = '{config.first_assignment}' is not reproduced "
                             "(only 'evaluate')")
        if config.aggregation != "model":
            raise ValueError(f"run_plain: aggregation = '{config.aggregation}' is not reproduced (only 'model')")
    config.check_population(num_clients)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(config, num_clients, num_rounds, on_round)
    finally:
        torch.set_num_threads(threads)


def _run(config: RunConfig, num_clients: int, num_rounds: int, on_round) -> dict[str, Any]:
    t0 = time.perf_counter()
    task = tasks.get(config.task)(config)
    role = LocalTrainRole(config)
    data = [load_client_data(config, i, num_clients) for i in range(num_clients)]
    model = task.build_model()
    _warm_up(model, task, data[0])
    if config.strategy == "fedavg":
        models = [_copy(task.init_model(model_seed(config.seed)).state_dict())]
    else:
        seeds = [model_seed(config.seed, j) for j in range(config.num_clusters)]
        if config.init == "same":
            seeds = [seeds[0]] * config.num_clusters
        models = [_copy(task.init_model(s).state_dict()) for s in seeds]
    setup_time = time.perf_counter() - t0

    truth = np.array([d.cluster for d in data])
    latest = [0] * num_clients  # each client's latest model index
    # CLoVE: the assignment history each client keeps in its node state
    history: list[list[int]] = [[] for _ in range(num_clients)] if config.strategy == "clove" else []
    stable_round: int | None = None
    rounds = []
    for server_round in range(1, num_rounds + 1):
        start = time.perf_counter()
        record: dict[str, Any] = {"round": server_round}
        # -- assignment (IFCA, CLoVE) ------------------------------------------------
        query_time = assign_time = 0.0
        if config.strategy != "fedavg":
            queried = config.strategy == "ifca" or stable_round is None
            if queried:
                t = time.perf_counter()
                losses = np.array([task.mean_losses(model, models, d.x_train, d.y_train) for d in data], dtype=float)
                # each client says whether its assignments of the previous S rounds agree
                reported_stable = [is_stable(h, config.stability_window) for h in history] if history else []
                query_time = time.perf_counter() - t
            t = time.perf_counter()
            if config.strategy == "ifca":
                latest = ifca_assign(losses).tolist()
            elif queried:
                result = clove_assign(losses, None if config.estimate_k else config.num_clusters,
                                      embedding=config.embedding, method=config.clustering,
                                      seed=derive_seed(config.seed, server_round, 23))
                latest = result.models.tolist()
                if config.stability_window > 0 and np.mean(reported_stable) >= config.stable_fraction:
                    stable_round = server_round  # this round still used the query; the next ones do not
            score = ari(truth, np.array(latest))
            assign_time = time.perf_counter() - t
            if score is not None:
                record["ari"] = score
            if config.strategy == "clove":
                record["stable"] = int(not queried)
                for h, j in zip(history, latest):  # the train message's cluster-id, remembered by the client
                    h.append(j)
                    del h[:-protocol.HISTORY_LENGTH]
        # -- local training ------------------------------------------------------------
        t = time.perf_counter()
        trained, train_losses = [], []
        for i, d in enumerate(data):
            model.load_state_dict(models[latest[i]])
            train_losses.append(role.fit(model, d, server_round, i))
            trained.append(_copy(model.state_dict()))
        train_time = time.perf_counter() - t
        # -- aggregation -----------------------------------------------------------------
        t = time.perf_counter()
        weights = [d.num_train for d in data]
        for j in range(len(models)):
            members = [i for i in range(num_clients) if latest[i] == j]
            if members:
                models[j] = _weighted_average([trained[i] for i in members], [weights[i] for i in members])
        record["train-loss"] = _weighted_mean(train_losses, weights)
        aggregate_time = time.perf_counter() - t
        # -- evaluation ----------------------------------------------------------------
        t = time.perf_counter()
        scores = []
        for i, d in enumerate(data):
            model.load_state_dict(models[latest[i]])
            scores.append(task.evaluate(model, d.x_test, d.y_test))
        for key in scores[0]:
            values = [s[key] for s in scores]
            record[f"eval-{key}"] = (_weighted_mean(values, [len(d.x_test) for d in data])
                                     if config.strategy == "fedavg" else float(np.mean(values)))
        evaluate_time = time.perf_counter() - t
        record.update({"round-time": time.perf_counter() - start, "query-time": query_time,
                       "assign-time": assign_time, "train-time": train_time,
                       "aggregate-time": aggregate_time, "evaluate-time": evaluate_time})
        rounds.append(record)
        if on_round is not None:
            on_round(record)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"setup-time": setup_time, "rounds": rounds, "peak-rss-mb": peak}


def _warm_up(model: torch.nn.Module, task, data) -> None:
    """Pay torch's one-off lazy costs in set-up, not in round 1 (the first optimiser built in a process
    imports ``torch._dynamo``, about 1 s). Touches no weights and no random state."""
    torch.optim.Adam(model.parameters())
    task.example_losses(model, data.x_train[:1], data.y_train[:1]).mean().backward()
    model.zero_grad(set_to_none=True)


def _copy(state_dict: StateDict) -> StateDict:
    """A detached copy (``model.state_dict()`` aliases the parameters the next client overwrites)."""
    return {k: v.detach().clone() for k, v in state_dict.items()}


def _weighted_average(state_dicts: list[StateDict], weights: list[float]) -> StateDict:
    """Flower's ``aggregate_arrayrecords`` arithmetic (:func:`fedsim.arrays.average`) on state dicts."""
    averaged = average([{k: v.numpy() for k, v in sd.items()} for sd in state_dicts], weights)
    return {k: torch.from_numpy(v) for k, v in averaged.items()}


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    """Flower's ``aggregate_metricrecords`` for one metric: ``sum_i v_i * (w_i / sum w)``."""
    total = sum(weights)
    return float(sum(v * (w / total) for v, w in zip(values, weights)))
