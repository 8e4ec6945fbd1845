"""A fix for Flower's in-memory simulation state, applied when a simulated fedsim run starts.

In Flower 1.41 the Simulation Runtime hands messages to its ClientApp actors
through a thread that, every 0.1 s, asks the in-memory ``LinkState`` for the
next message of **every** node, and ``InMemoryLinkState.get_message_ins``
answers by scanning **all** stored messages (and re-validating each one) until
it finds one for that node. A stage of N messages therefore costs O(N^2)
validations per sweep under the state's lock, which also blocks replies from
being stored and pulled: at 1,000 clients a FedAvg round took 23 s for 2.4 s of
training (profiled with py-spy; see ``experiments/bench/README.md``).

:func:`index_message_ins` replaces that scan with a per-node index of message
ids, kept beside the store: same messages, same order, same validation of each
returned message, same delivery marking. It is applied in the simulation
process only (from the ServerApp, see :func:`apply`), only for Flower versions
whose state code it was checked against, and can be switched off with the
environment variable ``FEDSIM_FLOWER_FIXES=0``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from logging import INFO, WARNING

import flwr
from flwr.app import Message
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore import log
from flwr.supercore.date import now

CHECKED_VERSIONS = ("1.41.0",)
"""Flower versions whose ``InMemoryLinkState`` this module was written against."""

_ORIGINAL = {"get": InMemoryLinkState.get_message_ins, "store": InMemoryLinkState.store_message_ins}


def _index(state: InMemoryLinkState) -> dict[int, list[str]]:
    """The state's node id -> message ids index, built from the store on first use (insertion order)."""
    index = getattr(state, "_fedsim_ins_by_node", None)
    if index is None:
        with state.lock:
            index = defaultdict(list)
            for msg_id, message in state.message_ins_store.items():
                index[message.metadata.dst_node_id].append(msg_id)
            state._fedsim_ins_by_node = index
    return index


def _store_message_ins(self: InMemoryLinkState, message: Message) -> str | None:
    index = _index(self)
    with self.lock:
        message_id = _ORIGINAL["store"](self, message)
        ids = index[message.metadata.dst_node_id]
        if message_id and message_id not in ids:
            ids.append(message_id)
    return message_id


def _get_message_ins(self: InMemoryLinkState, node_id: int, limit: int | None, *,
                     run_id: int | None = None) -> list[Message]:
    """``InMemoryLinkState.get_message_ins`` looking only at ``node_id``'s messages."""
    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    index = _index(self)
    found: list[Message] = []
    with self.lock:
        ids = index.get(node_id, [])
        for msg_id in list(ids):
            message = self.message_ins_store.get(msg_id)
            if message is not None and message.metadata.delivered_at != "":
                continue  # delivered, awaiting its reply: never returned again (checked when the reply is pulled)
            self._check_stored_messages({msg_id})
            message = self.message_ins_store.get(msg_id)
            if message is None:  # deleted (replied and pulled, expired, or invalid): forget it
                ids.remove(msg_id)
                continue
            if run_id is None or message.metadata.run_id == run_id:
                found.append(message)
            if limit and len(found) == limit:
                break
        if not ids:
            index.pop(node_id, None)
    delivered_at = now().isoformat()
    for message in found:
        message.metadata.delivered_at = delivered_at
    return found


def index_message_ins() -> None:
    """Make ``InMemoryLinkState`` look messages up by destination node (idempotent)."""
    InMemoryLinkState.get_message_ins = _get_message_ins
    InMemoryLinkState.store_message_ins = _store_message_ins


def restore() -> None:
    """Undo :func:`index_message_ins` (tests)."""
    InMemoryLinkState.get_message_ins = _ORIGINAL["get"]
    InMemoryLinkState.store_message_ins = _ORIGINAL["store"]


def apply(grid) -> bool:
    """Apply the fix if ``grid`` is Flower's in-memory simulation grid; return whether it was applied."""
    from flwr.superlink.grid import InMemoryGrid

    if not isinstance(grid, InMemoryGrid) or os.environ.get("FEDSIM_FLOWER_FIXES", "1") == "0":
        return False
    if flwr.__version__ not in CHECKED_VERSIONS:
        log(WARNING, "[fedsim] Flower %s: the in-memory state fix was checked against %s only; not applied",
            flwr.__version__, ", ".join(CHECKED_VERSIONS))
        return False
    index_message_ins()
    log(INFO, "[fedsim] in-memory simulation state: messages indexed by node")
    return True
