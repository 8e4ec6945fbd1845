"""ClientApp: one epoch of Adam on the node's partition of rotated digits, and evaluation on its test split."""

from functools import cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.nn import functional as F

from fedsim.config import RunConfig
from fedsim.data.federation import ClientData, load_client_data
from fedsim.models import MLP
from fedsim.seeding import derive_seed

torch.set_num_threads(1)  # one thread per simulated client, as fedsim does

app = ClientApp()


@cache
def _data(samples_per_client: int, seed: int, partition_id: int, num_partitions: int) -> ClientData:
    config = RunConfig.from_mapping({"dataset": "digits", "partitioning": "rotation", "data-clusters": 4,
                                     "samples-per-client": samples_per_client, "test-fraction": 0.2, "seed": seed})
    return load_client_data(config, partition_id, num_partitions)


def load_data(context: Context) -> ClientData:
    """This node's partition (cached per process, as fedsim caches it)."""
    cfg = context.run_config
    return _data(int(cfg["samples-per-client"]), int(cfg["seed"]), int(context.node_config["partition-id"]),
                 int(context.node_config["num-partitions"]))


def load_model(msg: Message, context: Context) -> torch.nn.Module:
    """A new model holding the message's weights."""
    model = MLP((1, 8, 8), int(context.run_config["hidden-size"]), 10)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of Adam, shuffled with a generator seeded by (seed, partition, round)."""
    model, data = load_model(msg, context), load_data(context)
    batch_size, server_round = int(context.run_config["batch-size"]), int(msg.content["config"]["server-round"])
    seed = derive_seed(int(context.run_config["seed"]), int(context.node_config["partition-id"]), server_round)
    order = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(msg.content["config"]["lr"]))
    model.train()
    total = 0.0
    for start in range(0, data.num_train, batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    metrics = MetricRecord({"train_loss": total / data.num_train, "num-examples": data.num_train})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received model on the local test split."""
    model, data = load_model(msg, context), load_data(context)
    model.eval()
    with torch.no_grad():
        logits = model(data.x_test)
        loss = float(F.cross_entropy(logits, data.y_test))
        accuracy = float((logits.argmax(-1) == data.y_test).float().mean())
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(data.y_test)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
