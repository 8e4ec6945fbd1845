"""Names and helpers shared by the ServerApp side and the ClientApp side.

Record keys (``RecordDict`` entries), config keys and metric keys live here so
that strategies and client roles agree on them in one place.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, RecordDict

# RecordDict entries
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
INFO = "info"
MODEL_PREFIX = "model-"

# ConfigRecord keys sent to clients
SERVER_ROUND = "server-round"
PERSONAL = "personal"
"""True: train/evaluate the model kept in the node's state (Local-only)."""
CLUSTER_ID = "cluster-id"
"""Index of the model a clustered strategy assigned to the client this round."""
UPDATE = "update"
"""What a train reply carries: ``"model"`` (new weights, default) or ``"gradient"`` (full-batch gradient)."""
DEPLOY_EPISODE = "deploy-episode"
"""Deployment rounds (``fedavg-deploy``): the 1-based index of the on-device episode this round runs."""
STABILITY_WINDOW = "stability-window"
"""Rounds of unchanged assignment after which a client reports itself stable (CLoVE)."""
CHECKPOINT_DIR = "checkpoint-dir"
"""The run folder: clients keep their node state under it after each message (see :mod:`fedsim.checkpoint`)."""
RESUME_ROUND = "resume-round"
"""The checkpointed round a resumed run continues from (0 in a fresh run): clients restore that node state."""

# MetricRecord keys returned by clients
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
LOSSES = "losses"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
TRUE_CLUSTER = "true-cluster"
STABLE = "stable"

# message types
QUERY_LOSSES = "query.losses"

# node state entries
PERSONAL_MODEL = "personal-model"
ASSIGNMENTS = "assignments"
"""MetricRecord with the node's assignment ``history`` (its model index in each round it trained)."""
HISTORY_LENGTH = 64


def partition_of(context: Context) -> tuple[int, int]:
    """Return ``(partition_id, num_partitions)`` from a node's configuration.

    Raises
    ------
    KeyError
        If the node was started without them (a SuperNode needs
        ``--node-config "partition-id=I num-partitions=N"``).
    """
    try:
        return int(context.node_config[PARTITION_ID]), int(context.node_config[NUM_PARTITIONS])
    except KeyError as err:
        raise KeyError(
            "this node has no partition-id/num-partitions: start the SuperNode with "
            '--node-config "partition-id=I num-partitions=N"'
        ) from err


def pack_models(models: list[ArrayRecord]) -> RecordDict:
    """Put several models in one message as ``model-0``, ``model-1``, ..."""
    return RecordDict({f"{MODEL_PREFIX}{j}": m for j, m in enumerate(models)})


def unpack_models(content: RecordDict) -> list[ArrayRecord]:
    """Return the models packed by :func:`pack_models`, in order."""
    found = {k: v for k, v in content.array_records.items() if k.startswith(MODEL_PREFIX)}
    return [found[f"{MODEL_PREFIX}{j}"] for j in range(len(found))]
