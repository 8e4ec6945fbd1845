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
from functools import lru_cache

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from threadpoolctl import threadpool_limits

from fedsim import protocol
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


def role_for(context: Context):
    """The client role for this node's run configuration (cached per process)."""
    return _role(tuple(sorted(context.run_config.items())))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training."""
    return role_for(context).train(msg, context)


@app.evaluate()
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
def losses(msg: Message, context: Context) -> Message:
    """Loss of every model in the message on the local training data."""
    return role_for(context).losses(msg, context)
