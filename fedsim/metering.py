"""A Grid wrapper that counts the payload bytes sent to and received from clients, and polls for replies
at a pace that fits the number still outstanding."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid
from flwr.superlink.grid.http_grid import HttpGrid

_SCALAR_BYTES = 8

POLL_SCHEDULES = {InMemoryGrid: (0.002, 1.0), HttpGrid: (0.2, 1.0)}
"""(shortest, longest) wait between two pulls for replies, by kind of grid; Flower's own grids wait a fixed
0.1 s (simulation) and 3 s (deployment)."""
POLL_SECONDS_PER_OUTSTANDING = 5e-4
"""Wait per reply still outstanding. A pull of the in-memory state holds its lock (and the interpreter) for about
30 us per outstanding message (profiled at 1,000 clients): waiting 0.5 ms per outstanding reply keeps pulling
under 6 % of the simulation process while many replies are due, and the last replies are seen within ms.
Measured at 1,000 clients (FedAvg, 4 actors): 9.3, 5.7 and 6.4 s per round at 0.25, 0.5 and 1 ms."""


def content_nbytes(content: RecordDict) -> int:
    """Payload size of a message: array bytes plus 8 bytes a number, the length of strings/bytes.

    Message metadata and protobuf framing are not counted.
    """
    total = 0
    for record in content.array_records.values():
        total += sum(len(array.data) for array in record.values())
    for record in list(content.metric_records.values()) + list(content.config_records.values()):
        for value in record.values():
            if isinstance(value, (str, bytes)):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) if isinstance(v, (str, bytes)) else _SCALAR_BYTES for v in value)
            else:
                total += _SCALAR_BYTES
    return total


class MeteredGrid(Grid):
    """Delegate to ``grid`` and add up the bytes of every message and reply.

    Parameters
    ----------
    grid : Grid
        The Grid of the running ServerApp.

    Attributes
    ----------
    bytes_down, bytes_up : int
        Payload bytes sent to clients and received from them since the last
        :meth:`take_counts`.
    messages_down, messages_up : int
        Number of messages sent and replies received likewise.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.poll_schedule = next((v for k, v in POLL_SCHEDULES.items() if isinstance(grid, k)), None)
        """(shortest, longest) wait between pulls, or None to use the grid's own ``send_and_receive``."""
        self.bytes_down = self.bytes_up = self.messages_down = self.messages_up = 0

    def take_counts(self) -> dict[str, int]:
        """Return the counters and reset them."""
        counts = {"bytes-down": self.bytes_down, "bytes-up": self.bytes_up,
                  "messages-down": self.messages_down, "messages-up": self.messages_up}
        self.bytes_down = self.bytes_up = self.messages_down = self.messages_up = 0
        return counts

    def _count_down(self, messages: list[Message]) -> None:
        sizes: dict[int, int] = {}
        for m in messages:
            # one RecordDict is often shared by many messages: size it once, count it per message
            key = id(m.content)
            if key not in sizes:
                sizes[key] = content_nbytes(m.content)
            self.bytes_down += sizes[key]
        self.messages_down += len(messages)

    def _count_up(self, replies: list[Message]) -> None:
        for r in replies:
            if not r.has_error():
                self.bytes_up += content_nbytes(r.content)
        self.messages_up += len(replies)

    # -- Grid interface -------------------------------------------------------------
    def set_run(self, run):
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._count_down(messages)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self._count_up(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and pull their replies until all came or ``timeout`` seconds passed.

        The same contract as :meth:`flwr.serverapp.Grid.send_and_receive`; for Flower's simulation and
        deployment grids the wait between pulls follows :data:`POLL_SCHEDULES` instead of a fixed interval.
        """
        messages = list(messages)
        if self.poll_schedule is None:
            self._count_down(messages)
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            self._count_up(replies)
            return replies
        shortest, longest = self.poll_schedule
        pending = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies = []
        while pending:
            got = list(self.pull_messages(pending))
            replies += got
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            remaining = None if end is None else end - time.monotonic()
            if not pending or (remaining is not None and remaining <= 0):
                break
            wait = min(max(shortest, POLL_SECONDS_PER_OUTSTANDING * len(pending)), longest)
            time.sleep(wait if remaining is None else min(wait, remaining))
        return replies
