"""Generic PyTorch client role: local training, evaluation and the loss-vector query.

Messages it answers (see :mod:`fedsim.protocol` for the keys):

- ``train``: load the model in ``arrays`` (or, for a personal model, the one kept
  in the node's state), run ``local-epochs`` of mini-batch training, reply with
  the new weights (unless personal) and ``train-loss`` / ``num-examples``.
- ``evaluate``: score the model on the local test split: ``eval-loss`` (and
  ``eval-accuracy`` for classification), ``num-examples``.
- ``query.losses``: the mean training loss of each of several models
  (CLoVE's loss-vector embedding, IFCA's assignment).

Each round uses a fresh optimiser (the CLoVE digest's recommendation; the paper
is silent) and a shuffling order seeded by ``(seed, partition, round)``, so a
run is reproducible whatever process serves the client.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.arrays import to_state_dict
from fedsim.clustering import is_stable
from fedsim.config import RunConfig
from fedsim.data.federation import ClientData, load_client_data
from fedsim.registry import tasks
from fedsim.seeding import derive_seed


class LocalTrainRole:
    """Client role that trains the received model on local data.

    Parameters
    ----------
    config : RunConfig
        The run configuration (shared by all clients of a run).
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.task = tasks.get(config.task)(config)
        self._model = None

    # -- helpers ---------------------------------------------------------------
    def data(self, context: Context) -> ClientData:
        """This node's local data."""
        return load_client_data(self.config, *protocol.partition_of(context))

    @staticmethod
    def arrays_for(msg: Message, context: Context) -> ArrayRecord:
        """The model a message asks for: the node's personal model if ``personal`` and kept, else the message's."""
        config = msg.content[protocol.CONFIG]
        arrays = msg.content.array_records.get(protocol.ARRAYS)
        if bool(config.get(protocol.PERSONAL, False)) and protocol.PERSONAL_MODEL in context.state:
            arrays = context.state[protocol.PERSONAL_MODEL]
        if arrays is None:
            raise ValueError(f"{msg.metadata.message_type} message carries no model and this node keeps no "
                             "personal model")
        return arrays

    def model_from(self, arrays: ArrayRecord) -> torch.nn.Module:
        """A model (reused across messages in this process) holding ``arrays``."""
        if self._model is None:
            self._model = self.task.build_model()
        self._model.load_state_dict(to_state_dict(arrays), strict=True)
        return self._model

    def fit(self, model: torch.nn.Module, data: ClientData, server_round: int, partition_id: int) -> float:
        """Run the configured local epochs; return the mean training loss."""
        model.train()
        optimiser = torch.optim.Adam if self.config.optimizer == "adam" else torch.optim.SGD
        return self.run_epochs(model.parameters(), optimiser, data.num_train, server_round, partition_id,
                               lambda idx: self.task.example_losses(model, data.x_train[idx], data.y_train[idx]))

    def run_epochs(self, parameters, optimiser_class, num_examples: int, server_round: int, partition_id: int,
                   batch_losses) -> float:
        """``local-epochs`` of shuffled mini-batches; return the mean training loss.

        ``batch_losses(idx)`` gives the per-example losses of the examples ``idx``;
        the shuffling is seeded by ``(seed, partition, round)``, and so is the global
        torch generator during the epochs (dropout and other random layers draw from
        it), so the result does not depend on what the process ran before.
        """
        cfg = self.config
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, partition_id, server_round))
        optimiser = optimiser_class(parameters, lr=cfg.lr)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues a CUDA seed with a formatted stack trace
            # on CUDA-less machines: a tenth of a digits client's message time
            torch.default_generator.manual_seed(derive_seed(cfg.seed, partition_id, server_round, 1))
            return self._epochs(optimiser, gen, num_examples, batch_losses)

    def _epochs(self, optimiser, gen: torch.Generator, num_examples: int, batch_losses) -> float:
        cfg = self.config
        total, count = 0.0, 0
        for _ in range(cfg.local_epochs):
            order = torch.randperm(num_examples, generator=gen)
            for start in range(0, num_examples, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = batch_losses(idx).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item() * len(idx)
                count += len(idx)
        return total / max(count, 1)

    def gradient(self, model: torch.nn.Module, data: ClientData) -> tuple[float, ArrayRecord]:
        """Full-batch gradient of the mean training loss (CLoVE Option II, IFCA gradient averaging).

        The reply's arrays hold the gradient under the parameter names; buffers
        (if any) are sent as zeros so the record keeps the model's layout.
        """
        model.train()
        model.zero_grad(set_to_none=True)
        loss = self.task.example_losses(model, data.x_train, data.y_train).mean()
        loss.backward()
        grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach()
                 for name, p in model.named_parameters()}
        layout = {name: grads.get(name, torch.zeros_like(t)) for name, t in model.state_dict().items()}
        return loss.item(), ArrayRecord(layout)

    @staticmethod
    def remember_assignment(context: Context, model_index: int) -> None:
        """Append this round's model index to the node's assignment history (kept in its state)."""
        history = list(context.state[protocol.ASSIGNMENTS]["history"]) if protocol.ASSIGNMENTS in context.state else []
        history = (history + [model_index])[-protocol.HISTORY_LENGTH :]
        context.state[protocol.ASSIGNMENTS] = MetricRecord({"history": history})

    @staticmethod
    def assignment_history(context: Context) -> list[int]:
        """The node's past model indices, oldest first."""
        if protocol.ASSIGNMENTS not in context.state:
            return []
        return [int(v) for v in context.state[protocol.ASSIGNMENTS]["history"]]

    # -- message handlers --------------------------------------------------------
    def describe(self, context: Context) -> dict[str, int]:
        """What the server may know of this node: true cluster (for ARI only) and data size."""
        data = self.data(context)
        return {protocol.TRUE_CLUSTER: data.cluster, protocol.NUM_EXAMPLES: data.num_train}

    def train(self, msg: Message, context: Context) -> Message:
        """Handle a ``train`` message."""
        config = msg.content[protocol.CONFIG]
        personal = bool(config.get(protocol.PERSONAL, False))
        model = self.model_from(self.arrays_for(msg, context))
        data = self.data(context)
        partition_id, _ = protocol.partition_of(context)
        if protocol.CLUSTER_ID in config:
            self.remember_assignment(context, int(config[protocol.CLUSTER_ID]))
        if config.get(protocol.UPDATE, "model") == "gradient":
            loss, new_arrays = self.gradient(model, data)
        else:
            loss = self.fit(model, data, int(config[protocol.SERVER_ROUND]), partition_id)
            new_arrays = ArrayRecord(model.state_dict())
        metrics = MetricRecord({protocol.TRAIN_LOSS: loss, protocol.NUM_EXAMPLES: data.num_train})
        if personal:
            context.state[protocol.PERSONAL_MODEL] = new_arrays
            return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)
        return Message(RecordDict({protocol.ARRAYS: new_arrays, protocol.METRICS: metrics}), reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Handle an ``evaluate`` message."""
        data = self.data(context)
        scores = self.task.evaluate(self.model_from(self.arrays_for(msg, context)), data.x_test, data.y_test)
        metrics = {f"eval-{k}": v for k, v in scores.items()}
        metrics[protocol.NUM_EXAMPLES] = len(data.x_test)
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)

    @torch.no_grad()
    def losses(self, msg: Message, context: Context) -> Message:
        """Handle ``query.losses``: mean training loss of every model ``model-<j>`` in the message.

        With ``stability-window`` S in the message's config, the reply also says
        whether this client's last S assignments were all the same (CLoVE's
        client-side stability rule; the history never leaves the client).
        """
        data = self.data(context)
        if self._model is None:
            self._model = self.task.build_model()
        state_dicts = [to_state_dict(arrays) for arrays in protocol.unpack_models(msg.content)]
        values = self.task.mean_losses(self._model, state_dicts, data.x_train, data.y_train)
        metrics = {protocol.LOSSES: values, protocol.NUM_EXAMPLES: data.num_train}
        config = msg.content.config_records.get(protocol.CONFIG, {})
        if protocol.STABILITY_WINDOW in config:
            window = int(config[protocol.STABILITY_WINDOW])
            metrics[protocol.STABLE] = int(is_stable(self.assignment_history(context), window))
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)
