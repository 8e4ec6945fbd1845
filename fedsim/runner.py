"""The round loop of a fedsim run, around any Flower Message-API strategy.

It is the loop of :meth:`flwr.serverapp.strategy.Strategy.start` (train,
aggregate, evaluate, aggregate, per round) plus what a researcher needs from a
run: a population check before round 1, payload bytes and wall time per round,
the strategy's events (dropped replies), one progress line and one JSON line per
round, and a summary with a plot at the end. Any Flower strategy works; fedsim
strategies add reproducible sampling and per-round clustering metrics.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedsim import protocol
from fedsim.checkpoint import (
    load_server_checkpoint,
    remap_node_ids,
    restore_strategy,
    save_server_checkpoint,
    set_rng_state,
)
from fedsim.config import ConfigError, RunConfig
from fedsim.metering import MeteredGrid
from fedsim.registry import strategies, tasks
from fedsim.results import RunRecorder, progress_line
from fedsim.seeding import model_seed


def build_strategy(config: RunConfig) -> Strategy:
    """Instantiate the configured strategy from the registry."""
    strategy = strategies.get(config.strategy)(config)
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy '{config.strategy}' built a {type(strategy).__name__}, not a Flower Strategy")
    return strategy


def initial_arrays(strategy: Strategy, config: RunConfig) -> ArrayRecord:
    """The strategy's own initial arrays if it defines them, else one model from :func:`model_seed`."""
    infos = getattr(strategy, "node_info", {})
    partition_of = getattr(strategy, "partition_of", {})
    ordered = [infos[n] for n in sorted(infos, key=lambda n: partition_of.get(n, 0))]
    task = tasks.get(config.task)(config, client_infos=ordered)
    if hasattr(strategy, "initial_arrays"):
        return strategy.initial_arrays(task)
    return ArrayRecord(task.init_model(model_seed(config.seed)).state_dict())


def wait_for_nodes(grid: Grid, config: RunConfig, timeout: float = 120.0) -> int:
    """Wait up to ``timeout`` seconds for ``min-available-nodes`` nodes; return how many joined."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < config.min_available_nodes and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(list(grid.get_node_ids()))


def run_rounds(grid: Grid, config: RunConfig, recorder: RunRecorder | None = None,
               strategy: Strategy | None = None) -> dict[str, Any]:
    """Run ``config.num_server_rounds`` rounds of the configured strategy.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid (or a loopback grid in tests).
    config : RunConfig
        The validated run configuration.
    recorder : RunRecorder, optional
        Where round records go; without one they are only logged (and nothing is checkpointed).
    strategy : Strategy, optional
        Use this strategy instead of building the configured one.

    Returns
    -------
    dict
        ``{"rounds": [...], "arrays": final ArrayRecord, "summary": {...}}``.

    Raises
    ------
    ConfigError
        Before round 1, if the federation is too small for the configuration.
    CheckpointError
        If ``resume`` names a folder without a readable checkpoint.
    """
    start = time.monotonic()
    strategy = strategy or build_strategy(config)
    if hasattr(strategy, "min_replies"):
        strategy.min_replies = config.min_replies
    metered = MeteredGrid(grid)
    num_nodes = wait_for_nodes(metered, config)
    if num_nodes < config.min_available_nodes:
        raise ConfigError(
            f"min-available-nodes = {config.min_available_nodes} but only {num_nodes} nodes joined the federation"
        )
    config.check_population(num_nodes)
    checkpoint = None
    if config.resume:
        checkpoint = load_server_checkpoint(recorder.run_dir if recorder is not None else Path(config.resume))
    known_before = {}
    if checkpoint is not None:
        restore_strategy(strategy, checkpoint.strategy_state)
        known_before = dict(getattr(strategy, "partition_of", {}))
    if hasattr(strategy, "discover") and not strategy.discover(metered):
        reasons = {e["reason"] for e in getattr(strategy, "events", [])}
        raise RuntimeError(f"no client could start: {'; '.join(sorted(reasons)) or 'no reply'}")
    if checkpoint is None:
        arrays, rounds, first_round, offset = initial_arrays(strategy, config), [], 1, 0.0
    else:
        follow_nodes(strategy, known_before)
        set_rng_state(checkpoint.rng_state)
        arrays, rounds, first_round = checkpoint.arrays, list(checkpoint.rounds), checkpoint.server_round + 1
        offset = rounds[-1]["elapsed"] if rounds else 0.0
        if recorder is not None:
            recorder.restart(rounds)
        log(INFO, "[fedsim] resumed from the checkpoint of round %s in %s", checkpoint.server_round, config.resume)
    run_dir = recorder.run_dir if recorder is not None and config.checkpoint_every else None
    message_config = {protocol.CHECKPOINT_DIR: str(run_dir),
                      protocol.RESUME_ROUND: checkpoint.server_round if checkpoint else 0} if run_dir else {}
    for server_round in range(first_round, config.num_server_rounds + 1):
        t0 = time.monotonic()
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(message_config), metered))
        replies = list(metered.send_and_receive(messages, timeout=config.round_timeout))
        absent = missing_replies(messages, replies, "train", strategy, config.round_timeout)
        if hasattr(strategy, "train_messages_sent"):
            strategy.train_messages_sent = len(messages)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(message_config), metered))
        replies = list(metered.send_and_receive(messages, timeout=config.round_timeout))
        absent += missing_replies(messages, replies, "evaluate", strategy, config.round_timeout)
        eval_metrics = strategy.aggregate_evaluate(server_round, replies)
        now = time.monotonic()
        record: dict[str, Any] = {"round": server_round}
        if config.record_clients:
            record["clients"] = per_client_metrics(replies, getattr(strategy, "partition_of", {}))
        record.update(_numbers(train_metrics))
        record.update(_numbers(eval_metrics))
        record.update(metered.take_counts())
        record.update({"round-time": now - t0, "elapsed": offset + now - start})
        events = strategy.drain_events() if hasattr(strategy, "drain_events") else []
        if events or absent or hasattr(strategy, "drain_events"):
            record["events"] = events + absent
        rounds.append(record)
        if recorder is not None:
            recorder.add_round(record)
        log(INFO, "[fedsim] %s", progress_line(record, config.num_server_rounds))
        if run_dir is not None and (server_round % config.checkpoint_every == 0
                                    or server_round == config.num_server_rounds):
            save_server_checkpoint(run_dir, server_round, arrays, strategy, rounds)
    summary = recorder.finish({"num-nodes": num_nodes}, arrays) if recorder is not None else {}
    return {"rounds": rounds, "arrays": arrays, "summary": summary}


def missing_replies(messages: list[Message], replies: list[Message], stage: str, strategy,
                    timeout: float) -> list[dict[str, Any]]:
    """One ``missing`` event per node that was sent a message and did not reply within the round timeout."""
    answered = {r.metadata.src_node_id for r in replies}
    partition_of = getattr(strategy, "partition_of", {})
    events = []
    for node in sorted({m.metadata.dst_node_id for m in messages} - answered):
        partition = partition_of.get(node)
        log(WARNING, "[fedsim] %s: no reply from %s within round-timeout = %s s", stage,
            f"partition {partition}" if partition is not None else f"node {node}", timeout)
        events.append({"event": "missing", "stage": stage, "node-id": node, "partition-id": partition,
                       "reason": f"no reply within round-timeout = {timeout} s"})
    return events


def follow_nodes(strategy, known_before: dict[int, int]) -> None:
    """After a resume, re-key the strategy's per-node state from the checkpoint's node ids to the live ones.

    A node is the same client when it serves the same partition; ids that are no longer live are forgotten.
    """
    partition_of = getattr(strategy, "partition_of", None)
    if partition_of is None:
        return
    live = {p: n for n, p in partition_of.items() if n not in known_before or known_before[n] != p}
    mapping = {old: live[p] for old, p in known_before.items() if p in live and live[p] != old}
    remap_node_ids(strategy, mapping)
    for old in mapping:
        partition_of.pop(old, None)
        getattr(strategy, "node_info", {}).pop(old, None)


def per_client_metrics(replies: list[Message], partition_of: dict[int, int]) -> dict[str, dict[str, Any]]:
    """Each answering client's own evaluation metrics, keyed by partition id (node id if unknown)."""
    out = {}
    for reply in replies:
        if reply.has_error():
            continue
        node = reply.metadata.src_node_id
        for record in reply.content.metric_records.values():
            out[str(partition_of.get(node, node))] = dict(record)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _numbers(metrics: MetricRecord | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    return {k: v for k, v in metrics.items() if k != protocol.NUM_EXAMPLES}
