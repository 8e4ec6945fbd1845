"""FedAvg (McMahan et al., 2017) with reproducible sampling and safe aggregation.

Flower's own :class:`flwr.serverapp.strategy.FedAvg` with three changes:
clients are sampled over partition ids with a seeded generator (Flower samples
random node ids with the global ``random``), replies are aggregated in
partition order (float sums are order-dependent), and a bad reply is dropped
with a warning instead of failing the round.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim import protocol
from fedsim.arrays import weighted_average
from fedsim.config import RunConfig
from strategies.base import PartitionAwareMixin


class FedAvg(PartitionAwareMixin, FlowerFedAvg):
    """Federated averaging over a deterministic sample of clients.

    Parameters
    ----------
    seed : int
        Seed of the client sampling.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``,
        ``min_train_nodes``, ...).
    """

    def __init__(self, *, seed: int = 0, **kwargs) -> None:
        FlowerFedAvg.__init__(self, **kwargs)
        PartitionAwareMixin.__init__(self, seed=seed, weighted_by_key=self.weighted_by_key,
                                     min_available_nodes=self.min_available_nodes)
        self._sent: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the global model to a deterministic sample of clients."""
        if self.fraction_train == 0.0:
            return []
        nodes = self.sample_nodes(grid, server_round, self.fraction_train, self.min_train_nodes, "train")
        config[protocol.SERVER_ROUND] = server_round
        self._sent = arrays
        return self.build_messages(nodes, arrays, config, MessageType.TRAIN)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted average of the valid replies, in partition order."""
        valid = self.screen(replies, "train", expect_arrays=self._sent)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        return (weighted_average(contents, self.weighted_by_key),
                self.train_metrics_aggr_fn(contents, self.weighted_by_key))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send the global model to a deterministic sample of clients for evaluation."""
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self.sample_nodes(grid, server_round, self.fraction_evaluate, self.min_evaluate_nodes, "evaluate")
        config[protocol.SERVER_ROUND] = server_round
        return self.build_messages(nodes, arrays, config, MessageType.EVALUATE)

    def build_messages(self, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord,
                       message_type: str) -> list[Message]:
        """One message per node, all sharing one RecordDict with the model and the config."""
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, nodes, message_type))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted average of the valid evaluation metrics."""
        valid = self.screen(replies, "evaluate")
        if not valid:
            return None
        return self.evaluate_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)


def build(config: RunConfig) -> FedAvg:
    """Build FedAvg from a run configuration."""
    return FedAvg(seed=config.seed, **flower_sampling_kwargs(config))


def flower_sampling_kwargs(config: RunConfig) -> dict:
    """The sampling arguments of Flower's FedAvg, from the run configuration."""
    return {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if config.fraction_evaluate > 0 else 0,
        "min_available_nodes": config.min_available_nodes,
    }
