"""A Ray-free, in-process Grid for tests and fast sweeps.

``LoopbackGrid`` calls the ClientApp directly, one message after another, with
one persistent ``Context`` (and so one ``context.state``) per simulated node.
As in Flower's simulation engine, a ClientApp exception becomes an error reply
and the failed call's changes to the node state are discarded.
Node ids are drawn at random from ``node_seed``, as Flower draws them, so tests
can check that results do not depend on them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LoopbackGrid(Grid):
    """Grid whose nodes are in-process calls of a ClientApp.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    num_nodes : int
        Number of simulated nodes (partition ids ``0..num_nodes-1``).
    run_config : dict
        The run configuration every node sees.
    node_seed : int
        Seed of the random node ids.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict[str, Any], node_seed: int = 0) -> None:
        # Message() outside a real run needs a task identity.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        rng = random.Random(node_seed)
        ids = rng.sample(range(1, 2**63), num_nodes)
        self.client_app = client_app
        self.contexts = {
            node_id: Context(run_id=1, node_id=node_id,
                             node_config={"partition-id": pid, "num-partitions": num_nodes},
                             state=RecordDict(), run_config=dict(run_config))
            for pid, node_id in enumerate(ids)
        }
        self.down: set[int] = set()
        """Node ids that are gone: not listed, not answering (a node that left)."""
        self.silent: set[int] = set()
        """Node ids that are listed but never answer (a crashed or hung ClientApp: the round times out)."""

    def set_run(self, run) -> None:  # noqa: D102 - nothing to set in-process
        pass

    @property
    def run(self):  # noqa: D102
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        """Build a message as a real Grid would."""
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """All node ids except those marked down."""
        return [n for n in self.contexts if n not in self.down]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError("LoopbackGrid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError("LoopbackGrid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver every message to its node's ClientApp call and collect the replies."""
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in self.down or node in self.silent:
                continue
            context = self.contexts[node]
            saved_state = copy.deepcopy(context.state)
            try:
                reply = self.client_app(message, context)
            except Exception as ex:  # noqa: BLE001 - reported as an error reply, as Flower does
                context.state = saved_state  # Flower discards the state changes of a failed call
                reason = str(type(ex)) + ":<'" + str(ex) + "'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
            replies.append(reply)
        return replies
