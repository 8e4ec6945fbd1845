"""The clustered-FL base shared by CLoVE and IFCA: K models, a loss query, an assignment, per-model averaging.

One round of a :class:`ClusteredStrategy`:

1. sample clients (deterministically, over partition ids);
2. ask them for their loss on every model (``query.losses``; all K models go
   down in one message) unless the subclass can assign without it;
3. assign each client a model (:meth:`ClusteredStrategy.assign`, the part
   that differs between CLoVE and IFCA);
4. send each client only its model; the client trains it (Option I, model
   averaging) or returns its full-batch gradient (Option II);
5. average per model, weighted by ``num-examples``; a model no client was
   assigned to keeps its parameters.

The K models travel between rounds as one ArrayRecord with keys
``c<j>/<name>`` (:func:`join_models`), so the strategy also runs under
Flower's own ``Strategy.start``. Per-round metrics: ``ari`` of the assignment
against the clients' true clusters (when the data has them),
``clusters-in-use``, plus evaluation of every client's assigned model on its
own test split, averaged over clients (unweighted, as the CLoVE paper reports),
and per model (``model-<j>-eval-<metric>``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from fedsim import protocol
from fedsim.arrays import to_numpy, weighted_average
from fedsim.clustering import ari
from fedsim.seeding import derive_seed, model_seed
from strategies.base import PartitionAwareMixin, arrays_of, metrics_of, unweighted_means


def join_models(models: list[ArrayRecord]) -> ArrayRecord:
    """Pack K models into one ArrayRecord with keys ``c<j>/<name>``."""
    out = ArrayRecord()
    for j, model in enumerate(models):
        for name, array in model.items():
            out[f"c{j}/{name}"] = array
    return out


def split_models(packed: ArrayRecord) -> list[ArrayRecord]:
    """Inverse of :func:`join_models`."""
    models: dict[int, ArrayRecord] = {}
    for key, array in packed.items():
        prefix, name = key.split("/", 1)
        models.setdefault(int(prefix[1:]), ArrayRecord())[name] = array
    return [models[j] for j in range(len(models))]


class ClusteredStrategy(PartitionAwareMixin, Strategy):
    """Base class of strategies that train several models and assign clients to them.

    Parameters
    ----------
    num_models : int
        Number of models K (K-hat, the upper bound, when K is estimated).
    seed : int
        Seed of sampling, initial models, random first assignments and clustering.
    fraction_train, fraction_evaluate : float
        Share of clients sampled per round for training / evaluation.
    min_available_nodes : int
        Clients to wait for before round 1.
    aggregation : {"model", "gradient"}
        Option I (average the locally trained models) or Option II (one server
        step along the averaged full-batch gradients, step size ``server_lr``).
    server_lr : float
        Server step size of gradient averaging.
    init : {"different", "same"}
        Independently initialised models (init:d) or K copies of one (init:s).
    first_assignment : {"evaluate", "random"}
        Round 1 assigns by the strategy's rule on the initial models (first:e)
        or uniformly at random (first:r), as in CLoVE's Fig. 2.
    """

    uses_losses = True
    """Whether :meth:`assign` needs the loss matrix of the round."""

    def __init__(self, num_models: int, *, seed: int = 0, fraction_train: float = 1.0,
                 fraction_evaluate: float = 1.0, min_available_nodes: int = 2, aggregation: str = "model",
                 server_lr: float = 0.1, init: str = "different", first_assignment: str = "evaluate") -> None:
        PartitionAwareMixin.__init__(self, seed=seed, min_available_nodes=min_available_nodes)
        if aggregation not in ("model", "gradient"):
            raise ValueError(f"aggregation must be 'model' or 'gradient', not '{aggregation}'")
        if init not in ("different", "same"):
            raise ValueError(f"init must be 'different' or 'same', not '{init}'")
        if first_assignment not in ("evaluate", "random"):
            raise ValueError(f"first_assignment must be 'evaluate' or 'random', not '{first_assignment}'")
        self.num_models = num_models
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.aggregation = aggregation
        self.server_lr = server_lr
        self.init = init
        self.first_assignment = first_assignment
        self.models: list[ArrayRecord] = []
        self._message_config: dict = {}
        self.assignment: dict[int, int] = {}
        """Model index of each node trained this round."""
        self.latest_model: dict[int, int] = {}
        """Latest model index of every node ever assigned (used for evaluation)."""
        self._evaluated: dict[int, int] = {}
        self.round_metrics: dict[str, float] = {}

    # -- set-up -------------------------------------------------------------------------
    def initial_arrays(self, task) -> ArrayRecord:
        """K initial models, independently seeded (init:d) or identical (init:s)."""
        seeds = [model_seed(self.seed, j) for j in range(self.num_models)]
        if self.init == "same":
            seeds = [seeds[0]] * self.num_models
        return join_models([ArrayRecord(task.init_model(s).state_dict()) for s in seeds])

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t%s: %s models, aggregation=%s, init=%s, first assignment=%s", type(self).__name__,
            self.num_models, self.aggregation, self.init, self.first_assignment)

    # -- the assignment (what subclasses define) -------------------------------------
    def assign(self, server_round: int, nodes: list[int], losses: np.ndarray | None,
               replies: list[Message], grid: Grid) -> dict[int, int]:
        """Return the model index of each node; ``losses`` rows follow ``nodes``."""
        raise NotImplementedError

    def query_config(self, server_round: int) -> ConfigRecord:
        """Config sent with the loss query: the round's message config (e.g. checkpoint keys), the round number
        (subclasses add keys)."""
        return ConfigRecord({**self._message_config, protocol.SERVER_ROUND: server_round})

    # -- train --------------------------------------------------------------------------
    def query_losses(self, grid: Grid, nodes: list[int], models: list[ArrayRecord],
                     config: ConfigRecord) -> tuple[list[int], np.ndarray, list[Message]]:
        """Send all ``models`` to ``nodes``; return the answering nodes, their loss matrix and replies."""
        content = protocol.pack_models(models)
        content[protocol.CONFIG] = config
        replies = grid.send_and_receive(
            [Message(content, dst_node_id=n, message_type=protocol.QUERY_LOSSES) for n in nodes]
        )
        valid = [r for r in self.screen(replies, "losses", metric_keys=(protocol.LOSSES,))
                 if self._losses_ok(r, len(models))]
        answered = [r.metadata.src_node_id for r in valid]
        matrix = np.array([list(r.content[protocol.METRICS][protocol.LOSSES]) for r in valid], dtype=float)
        return answered, matrix.reshape(len(valid), len(models)), valid

    def _losses_ok(self, reply: Message, expected: int) -> bool:
        got = len(reply.content[protocol.METRICS][protocol.LOSSES])
        if got != expected:
            self._drop(reply.metadata.src_node_id, "losses", f"{got} losses for {expected} models")
            return False
        return True

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Query losses, assign every sampled client a model and send it only that model."""
        self._message_config = dict(config)
        self.models = split_models(arrays)
        self.round_metrics = {}
        nodes = self.sample_nodes(grid, server_round, self.fraction_train, 1, "train")
        if server_round == 1 and self.first_assignment == "random":
            rng = random.Random(derive_seed(self.seed, server_round, 17))
            self.assignment = {n: rng.randrange(self.num_models) for n in nodes}
        else:
            losses, replies = None, []
            if self.uses_losses:
                nodes, losses, replies = self.query_losses(grid, nodes, self.models, self.query_config(server_round))
            self.assignment = self.assign(server_round, nodes, losses, replies, grid) if nodes else {}
        self.latest_model.update(self.assignment)
        self._record_assignment_metrics()
        messages = []
        for node, model_index in self.assignment.items():
            cfg = ConfigRecord(dict(config))
            cfg.update({protocol.SERVER_ROUND: server_round, protocol.CLUSTER_ID: model_index,
                        protocol.UPDATE: self.aggregation})
            messages.append(Message(RecordDict({protocol.ARRAYS: self.models[model_index], protocol.CONFIG: cfg}),
                                    dst_node_id=node, message_type=MessageType.TRAIN))
        return messages

    def _record_assignment_metrics(self) -> None:
        nodes = sorted(self.assignment, key=lambda n: self.partition_of[n])
        assigned = np.array([self.assignment[n] for n in nodes])
        truth = np.array([self.true_cluster(n) for n in nodes])
        self.round_metrics["clusters-in-use"] = len(set(assigned.tolist()))
        self.round_metrics["assigned-clients"] = len(nodes)
        score = ari(truth, assigned)
        if score is not None:
            self.round_metrics["ari"] = score

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average per model (or step along the averaged gradient); untouched models stay."""
        valid = [m for m in self.screen(replies, "train", expect_arrays=self.models[0] if self.models else None)
                 if m.metadata.src_node_id in self.assignment]
        new_models = list(self.models)
        for j in range(self.num_models):
            group = [m.content for m in valid if self.assignment[m.metadata.src_node_id] == j]
            if not group:
                continue
            if self.aggregation == "model":
                new_models[j] = weighted_average(group, self.weighted_by_key)
            else:
                new_models[j] = self.gradient_step(self.models[j], group, num_participants=len(valid))
        metrics = dict(self.round_metrics)
        if valid:
            metrics.update(aggregate_metricrecords([m.content for m in valid], self.weighted_by_key))
        metrics.pop(self.weighted_by_key, None)
        return join_models(new_models), MetricRecord(metrics)

    def gradient_step(self, model: ArrayRecord, group: list[RecordDict], num_participants: int) -> ArrayRecord:
        """CLoVE Option II: ``theta - server_lr * sum(n_i g_i) / sum(n_i)`` over the model's clients."""
        weights = np.array([float(metrics_of(c)[self.weighted_by_key]) for c in group])
        grads = [arrays_of(c) for c in group]
        return self._step(model, grads, weights / weights.sum())

    def _step(self, model: ArrayRecord, grads: list[ArrayRecord], coefficients: np.ndarray) -> ArrayRecord:
        out = ArrayRecord()
        for name, array in model.items():
            theta = to_numpy(array)
            direction = sum(c * to_numpy(g[name]) for c, g in zip(coefficients, grads))
            out[name] = Array((theta - self.server_lr * direction).astype(theta.dtype))
        return out

    # -- evaluate -----------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send each sampled client (that has ever been assigned) its latest model."""
        if self.fraction_evaluate == 0.0:
            return []
        models = split_models(arrays)
        nodes = [n for n in self.sample_nodes(grid, server_round, self.fraction_evaluate, 1, "evaluate")
                 if n in self.latest_model]
        self._evaluated = {n: self.latest_model[n] for n in nodes}
        cfg = ConfigRecord(dict(config))
        cfg[protocol.SERVER_ROUND] = server_round
        return [Message(RecordDict({protocol.ARRAYS: models[self.latest_model[n]], protocol.CONFIG: cfg}),
                        dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Mean over clients of each metric, overall and per model."""
        valid = self.screen(replies, "evaluate")
        if not valid:
            return None
        out = unweighted_means(valid, self.weighted_by_key)
        model_of = [self._evaluated[m.metadata.src_node_id] for m in valid]
        for j in sorted(set(model_of)):
            members = [m for m, mj in zip(valid, model_of) if mj == j]
            out.update({f"model-{j}-{k}": v for k, v in unweighted_means(members, self.weighted_by_key).items()})
        return MetricRecord(out)
