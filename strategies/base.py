"""What every fedsim strategy adds to a Flower strategy: stable node identities and safe replies.

Node ids are random in every Flower run. :class:`PartitionAwareMixin` asks each
node once for its partition id (a ``query`` message), samples clients over
sorted partition ids with a generator seeded by ``(seed, round, purpose)``, and
sorts replies by partition id before aggregating, so that two runs with the
same seed aggregate the same numbers in the same order (bitwise-identical
results, with full or partial participation).

:meth:`PartitionAwareMixin.screen` drops a bad reply (error reply, missing or
non-finite metrics, arrays whose names or shapes differ from what was sent)
with a warning naming the client and the reason, and the round goes on.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterable
from logging import DEBUG, WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedsim import protocol
from fedsim.arrays import to_numpy
from fedsim.seeding import derive_seed

_PURPOSE = {"train": 1, "evaluate": 2, "query": 3}


def metrics_of(content: RecordDict) -> MetricRecord:
    """The one MetricRecord of a screened reply's content."""
    return next(iter(content.metric_records.values()))


def arrays_of(content: RecordDict) -> ArrayRecord:
    """The one ArrayRecord of a screened reply's content."""
    return next(iter(content.array_records.values()))


def unweighted_means(messages: list[Message], skip: str) -> dict[str, float]:
    """Mean over the replies (one client, one vote) of every metric except ``skip``."""
    per_client = [dict(metrics_of(m.content)) for m in messages]
    keys = [k for k in per_client[0] if k != skip]
    return {k: float(np.mean([c[k] for c in per_client])) for k in keys}


def short_reason(reason: str, limit: int = 300) -> str:
    """One line from a client's error reason: its innermost ``SomeError: message``.

    Flower reports ``<class 'X'>:<'message'>``, and Ray wraps the message in a
    whole traceback; the last exception line with a message is what matters.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    errors = re.findall(r"^\s*([\w.]*(?:Error|Exception)\w*: \S.*)$", text, flags=re.M)
    if errors:
        picked = errors[-1].strip()
    else:
        simple = re.match(r"<class '([\w.]+)'>:<'(.*)'>\s*$", text.strip(), flags=re.S)
        picked = f"{simple.group(1).split('.')[-1]}: {simple.group(2)}" if simple else text.strip()
    picked = " ".join(picked.split())
    return picked if len(picked) <= limit else picked[: limit - 3] + "..."


class PartitionAwareMixin:
    """Deterministic sampling over partition ids and screening of client replies.

    Parameters
    ----------
    seed : int
        Seed of the client sampling.
    weighted_by_key : str
        Metric that must be present (and positive) in every reply.
    min_available_nodes : int
        Nodes to wait for before the first round.
    node_wait_timeout : float
        Seconds to wait for them.
    """

    def __init__(self, seed: int = 0, weighted_by_key: str = protocol.NUM_EXAMPLES,
                 min_available_nodes: int = 2, node_wait_timeout: float = 120.0) -> None:
        self.seed = seed
        self.weighted_by_key = weighted_by_key
        self.min_available_nodes = min_available_nodes
        self.node_wait_timeout = node_wait_timeout
        self.partition_of: dict[int, int] = {}
        self.node_info: dict[int, dict[str, float]] = {}
        self.events: list[dict] = []
        self.min_replies = 1
        """Valid training replies a round needs; with fewer, the round leaves the model unchanged."""
        self.train_messages_sent = 1
        """Training messages of the current round (set by the round loop; 0: a round without training)."""

    # -- node directory -------------------------------------------------------------
    def discover(self, grid: Grid) -> dict[int, int]:
        """Map every live node id to its partition id (asking only new nodes).

        The first call waits up to ``node_wait_timeout`` seconds for
        ``min_available_nodes`` nodes; later calls take the nodes that are there.
        """
        live = set(grid.get_node_ids())
        if not self.partition_of:  # only the first time: nodes may still be registering
            deadline = time.monotonic() + self.node_wait_timeout
            while len(live) < self.min_available_nodes and time.monotonic() < deadline:
                time.sleep(0.2)
                live = set(grid.get_node_ids())
        new = sorted(live - set(self.partition_of))
        if new:
            content = RecordDict()
            replies = grid.send_and_receive(
                [Message(content, dst_node_id=n, message_type=MessageType.QUERY) for n in new]
            )
            for reply in replies:
                node = reply.metadata.src_node_id
                if reply.has_error() or protocol.INFO not in reply.content:
                    reason = short_reason(reply.error.reason) if reply.has_error() else "no info record"
                    self._drop(node, "whoami", reason)
                    continue
                info = dict(reply.content[protocol.INFO])
                self.partition_of[node] = int(info[protocol.PARTITION_ID])
                self.node_info[node] = info
        return {n: p for n, p in self.partition_of.items() if n in live}

    def sample_nodes(self, grid: Grid, server_round: int, fraction: float, min_nodes: int,
                     purpose: str = "train") -> list[int]:
        """Sample ``max(fraction * N, min_nodes)`` live nodes, deterministically for a seed.

        Returns node ids sorted by partition id.
        """
        by_partition = {p: n for n, p in self.discover(grid).items()}
        for gone in sorted(set(self.partition_of.values()) - set(by_partition)):  # its node died or left
            log(WARNING, "%s round %s: partition %s has no live node", purpose, server_round, gone)
            self.events.append({"event": "missing", "stage": purpose, "node-id": None, "partition-id": gone,
                                "reason": "its node left the federation (no longer live)"})
        partitions = sorted(by_partition)
        size = min(len(partitions), max(int(len(partitions) * fraction), min_nodes))
        rng = random.Random(derive_seed(self.seed, server_round, _PURPOSE[purpose]))
        chosen = sorted(rng.sample(partitions, size)) if size < len(partitions) else partitions
        log(DEBUG, "%s round %s: sampled %s of %s nodes", purpose, server_round, len(chosen), len(partitions))
        return [by_partition[p] for p in chosen]

    def sort_by_partition(self, replies: Iterable[Message]) -> list[Message]:
        """Replies ordered by the partition id of their sender."""
        return sorted(replies, key=lambda m: self.partition_of.get(m.metadata.src_node_id, math.inf))

    def true_cluster(self, node_id: int) -> int:
        """Ground-truth cluster a node reported (``-1`` when its data has none)."""
        return int(self.node_info.get(node_id, {}).get(protocol.TRUE_CLUSTER, -1))

    # -- reply screening ------------------------------------------------------------
    def screen(self, replies: Iterable[Message], stage: str, expect_arrays: ArrayRecord | None = None,
               metric_keys: Iterable[str] = ()) -> list[Message]:
        """Return the usable replies sorted by partition id; drop the rest with a warning.

        Parameters
        ----------
        replies : Iterable[Message]
            Replies of one stage of one round.
        stage : str
            Name used in warnings ("train", "evaluate", "losses", ...).
        expect_arrays : ArrayRecord, optional
            If given, a reply must carry exactly one ArrayRecord with the same names,
            shapes and dtypes.
        metric_keys : Iterable[str]
            Metrics that must be present besides ``weighted_by_key``.
        """
        valid = []
        for reply in replies:
            reason = self._problem(reply, expect_arrays, (self.weighted_by_key, *metric_keys))
            if reason is None:
                valid.append(reply)
            else:
                self._drop(reply.metadata.src_node_id, stage, reason)
        if stage == "train" and self.train_messages_sent and len(valid) < self.min_replies:
            reason = f"{len(valid)} valid replies, fewer than min-replies = {self.min_replies}: model left unchanged"
            log(WARNING, "train round: %s", reason)
            self.events.append({"event": "too-few-replies", "stage": stage, "valid": len(valid),
                                "min-replies": self.min_replies, "reason": reason})
            return []
        return self.sort_by_partition(valid)

    def drain_events(self) -> list[dict]:
        """Return and forget the events (dropped replies) recorded since the last call."""
        events, self.events = self.events, []
        return events

    def _drop(self, node_id: int, stage: str, reason: str) -> None:
        partition = self.partition_of.get(node_id)
        who = f"partition {partition}" if partition is not None else f"node {node_id}"
        log(WARNING, "dropped %s reply from %s: %s", stage, who, reason)
        self.events.append({"event": "dropped", "stage": stage, "node-id": node_id,
                            "partition-id": partition, "reason": reason})

    @staticmethod
    def _problem(reply: Message, expect_arrays: ArrayRecord | None, metric_keys: tuple[str, ...]) -> str | None:
        if reply.has_error():
            return f"client error: {short_reason(reply.error.reason)}"
        content = reply.content
        metrics = content.metric_records
        if len(metrics) != 1:
            return f"expected one MetricRecord, got {len(metrics)}"
        record = next(iter(metrics.values()))
        for key in metric_keys:
            if key not in record:
                return f"metric '{key}' missing"
        for key, value in record.items():
            if not (math.isfinite(value) if isinstance(value, (int, float))
                    else np.all(np.isfinite(np.asarray(value, dtype=float)))):
                return f"metric '{key}' is not finite ({value})"
        if record[metric_keys[0]] <= 0:
            return f"'{metric_keys[0]}' must be positive, got {record[metric_keys[0]]}"
        if expect_arrays is not None:
            arrays = content.array_records
            if len(arrays) != 1:
                return f"expected one ArrayRecord, got {len(arrays)}"
            got = next(iter(arrays.values()))
            if list(got.keys()) != list(expect_arrays.keys()):
                return "array names differ from the model sent"
            for name, arr in got.items():
                ref = expect_arrays[name]
                if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != ref.dtype:
                    return (f"array '{name}' has shape {tuple(arr.shape)} {arr.dtype}, "
                            f"expected {tuple(ref.shape)} {ref.dtype}")
            if not all(np.isfinite(to_numpy(a)).all() for a in got.values()):
                return "update contains NaN or inf"
        return None
