"""From a run configuration to each client's train/test tensors and true cluster.

The partitioner of a configuration is built once per process and cached, and so
is each client's data: a simulated ClientApp actor that serves many clients
(and many messages per client) never regenerates or reloads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

from fedsim.config import RunConfig
from fedsim.data.partitioners import (
    LabelSkewPartitioner,
    LabelSwapPartitioner,
    OneClassPartitioner,
    RotationPartitioner,
)
from fedsim.data.sources import load_source
from fedsim.data.synthetic import MixedLinearRegression

NO_CLUSTER = -1
"""Ground-truth cluster of a client whose partitioning has no clusters (iid, dirichlet, ...)."""

DATA_KEYS = (
    "dataset", "data_dir", "partitioning", "data_clusters", "samples_per_client", "test_fraction",
    "dirichlet_alpha", "classes_per_client", "linear_dim", "linear_separation", "noise_std", "seed",
)
"""The configuration fields that determine the data; nothing else invalidates the cache."""


@dataclass(frozen=True)
class ClientData:
    """One client's local data.

    Attributes
    ----------
    x_train, y_train, x_test, y_test : torch.Tensor
        Inputs and targets of the local train and test splits.
    cluster : int
        Ground-truth cluster, or ``NO_CLUSTER``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    cluster: int

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(self.x_train)


def load_client_data(config: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """Return the local data of client ``partition_id`` of ``num_partitions`` (cached)."""
    key = tuple(getattr(config, k) for k in DATA_KEYS)
    return _client_data(key, partition_id, num_partitions)


@lru_cache(maxsize=8)
def _partitioner(key: tuple, num_partitions: int):
    cfg = dict(zip(DATA_KEYS, key))
    n, k, seed = cfg["samples_per_client"], cfg["data_clusters"], cfg["seed"]
    kind = cfg["partitioning"]
    if kind == "mixed-linear":
        return MixedLinearRegression(num_partitions, k, n, dim=cfg["linear_dim"], separation=cfg["linear_separation"],
                                     noise_std=cfg["noise_std"], seed=seed)
    clustered = {
        "rotation": lambda: RotationPartitioner(num_partitions, k, n, seed),
        "label-swap": lambda: LabelSwapPartitioner(num_partitions, k, n, seed),
        "label-skew": lambda: LabelSkewPartitioner(num_partitions, k, n, seed, cfg["classes_per_client"],
                                                   cfg["dirichlet_alpha"]),
        "one-class": lambda: OneClassPartitioner(num_partitions, k, n, seed),
        "iid": lambda: IidPartitioner(num_partitions),
        "dirichlet": lambda: DirichletPartitioner(num_partitions, partition_by="label", alpha=cfg["dirichlet_alpha"],
                                                  min_partition_size=2, self_balancing=True, seed=seed),
        "pathological": lambda: PathologicalPartitioner(num_partitions, partition_by="label",
                                                        num_classes_per_partition=cfg["classes_per_client"], seed=seed),
    }
    partitioner = clustered[kind]()
    partitioner.dataset = load_source(cfg["dataset"], cfg["data_dir"])
    return partitioner


@lru_cache(maxsize=4096)
def _client_data(key: tuple, partition_id: int, num_partitions: int) -> ClientData:
    cfg = dict(zip(DATA_KEYS, key))
    partitioner = _partitioner(key, num_partitions)
    if hasattr(partitioner, "partition_arrays"):  # fedsim's partitioners: no Dataset round trip
        x, y = partitioner.partition_arrays(partition_id)
        x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    else:
        table = partitioner.load_partition(partition_id).with_format("numpy")[:]
        if "x" in table:  # regression
            x, y = np.asarray(table["x"], np.float32)[:, 0, :], np.asarray(table["y"], np.float32)
        else:
            x, y = np.asarray(table["image"], np.float32), np.asarray(table["label"], np.int64)
            if len(x) > cfg["samples_per_client"]:  # flwr-datasets partitioners split the whole pool
                x, y = x[: cfg["samples_per_client"]], y[: cfg["samples_per_client"]]
    order = np.random.default_rng([cfg["seed"], 3, partition_id]).permutation(len(x))
    n_test = max(1, int(round(cfg["test_fraction"] * len(x))))
    test, train = order[:n_test], order[n_test:]
    cluster = int(partitioner.cluster_of(partition_id)) if hasattr(partitioner, "cluster_of") else NO_CLUSTER
    return ClientData(
        x_train=torch.from_numpy(x[train]), y_train=torch.from_numpy(y[train]),
        x_test=torch.from_numpy(x[test]), y_test=torch.from_numpy(y[test]), cluster=cluster,
    )
