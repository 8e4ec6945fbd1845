"""The Flower ``ClientApp``: dispatches every message to the configured client role.

Nothing algorithm-specific lives here. The role is built once per process and
run configuration (its data and models are cached with it), and each message
type is forwarded to the role's method of the same name:

=================  ==========================  =================================
message type       role method                 used by
=================  ==========================  =================================
``train``          ``role.train``              every strategy
``evaluate``       ``role.evaluate``           every strategy
``query``          ``role.describe`` (whoami)  node -> partition map, true clusters
``query.losses``   ``role.losses``             CLoVE, IFCA
=================  ==========================  =================================

A role that lacks a method answers that message with an error reply, which the
strategy drops with a warning.
"""

from __future__ import annotations

import os
from functools import lru_cache, wraps

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from threadpoolctl import threadpool_limits

from fedsim import protocol
from fedsim.checkpoint import load_node_state, save_node_state
from fedsim.config import RunConfig
from fedsim.registry import client_roles

# One intra-op thread per client process: on a few cores several simulated
# clients run side by side, and two threads each made small models 3-10x slower.
# The same for numpy's BLAS (the link-adaptation simulator: 1.6x less CPU per period).
torch.set_num_threads(int(os.environ.get("FEDSIM_TORCH_THREADS", "1")))
threadpool_limits(int(os.environ.get("FEDSIM_BLAS_THREADS", "1")))

app = ClientApp()


@lru_cache(maxsize=8)
def _role(frozen_config: tuple):
    config = RunConfig.from_mapping(dict(frozen_config))
    return client_roles.get(config.client_role)(config)


_last: list = [None, None]
"""The last (run config, role) pair: every message carries a fresh copy of the run config, and comparing it
with the last one (2 us) is ten times cheaper than sorting it into a cache key."""


def role_for(context: Context):
    """The client role for this node's run configuration (cached per process)."""
    if context.run_config != _last[0]:
        _last[:] = [dict(context.run_config), _role(tuple(sorted(context.run_config.items())))]
    return _last[1]


def with_node_state_checkpoints(handler):
    """Restore a resumed run's node state before ``handler``, and keep the node state after it.

    Active when the message config carries ``checkpoint-dir`` (the server checkpoints the run): on the first
    message of a resumed run (``resume-round`` k > 0, empty node state) the client loads its state after
    round k; after a message that changed the state it writes the state for the message's round
    (:mod:`fedsim.checkpoint`). Roles replace records (``context.state[key] = ...``), never change them in
    place, so a changed entry is a new object.
    """

    @wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        config = msg.content.config_records.get(protocol.CONFIG, {})
        folder = config.get(protocol.CHECKPOINT_DIR)
        if not folder:
            return handler(msg, context)
        partition_id, _ = protocol.partition_of(context)
        resume_round = int(config.get(protocol.RESUME_ROUND, 0))
        if resume_round and not context.state:
            saved = load_node_state(folder, partition_id, resume_round)
            if saved is not None:
                for key, record in saved.items():
                    context.state[key] = record
        before = {key: id(record) for key, record in context.state.items()}
        reply = handler(msg, context)
        if {key: id(record) for key, record in context.state.items()} != before:
            save_node_state(folder, partition_id, int(config.get(protocol.SERVER_ROUND, 0)), context.state)
        return reply

    return wrapped


@app.train()
@with_node_state_checkpoints
def train(msg: Message, context: Context) -> Message:
    """Local training."""
    return role_for(context).train(msg, context)


@app.evaluate()
@with_node_state_checkpoints
def evaluate(msg: Message, context: Context) -> Message:
    """Local evaluation."""
    return role_for(context).evaluate(msg, context)


@app.query()
def whoami(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition, and what the role adds (e.g. the true cluster)."""
    partition_id, num_partitions = protocol.partition_of(context)
    info = {protocol.PARTITION_ID: partition_id, protocol.NUM_PARTITIONS: num_partitions}
    role = role_for(context)
    if hasattr(role, "describe"):
        info.update(role.describe(context))
    return Message(RecordDict({protocol.INFO: MetricRecord(info)}), reply_to=msg)


@app.query("losses")
@with_node_state_checkpoints
def losses(msg: Message, context: Context) -> Message:
    """Loss of every model in the message on the local training data."""
    return role_for(context).losses(msg, context)
