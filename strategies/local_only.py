"""Local-only baseline: every client trains its own model and nothing is averaged.

Each client starts from the same initial model (sent once, the first time the
client is sampled), keeps its model in its node state (``context.state``) and
trains it on its own data every time it is sampled; evaluation scores that
personal model on the client's test split. Only metrics travel after the
first contact. This is the "Local-only" column of the CLoVE paper's tables.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.config import RunConfig
from strategies.fedavg import FedAvg, flower_sampling_kwargs


class LocalOnly(FedAvg):
    """Clients train personal models; the server only collects metrics."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._has_model: set[int] = set()

    def build_messages(self, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord,
                       message_type: str) -> list[Message]:
        """Ask for the personal model; only a client that has none yet also gets the initial model."""
        config[protocol.PERSONAL] = True
        bare = RecordDict({self.configrecord_key: config})
        full = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(bare if n in self._has_model else full, dst_node_id=n, message_type=message_type)
                for n in nodes]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Collect training metrics; the initial model stays the server's model."""
        valid = self.screen(replies, "train")
        self._has_model.update(m.metadata.src_node_id for m in valid)
        if not valid:
            return None, None
        return self._sent, self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)


def build(config: RunConfig) -> LocalOnly:
    """Build Local-only from a run configuration."""
    return LocalOnly(seed=config.seed, **flower_sampling_kwargs(config))
