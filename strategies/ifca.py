"""IFCA: Iterative Federated Clustering Algorithm (Ghosh et al., NeurIPS 2020).

Every sampled client receives all K models, takes the one with the lowest loss
on its local training data (ties -> lowest index, as ``np.argmin`` in the
authors' code), and trains it; each model is averaged over the clients that
took it. Model averaging weights clients by ``num-examples`` (the authors'
code weighs equally; with equal data sizes the two agree). Gradient averaging
follows the paper exactly: ``theta_j <- theta_j - (gamma / |M|) sum_{i picked j} g_i``,
dividing by the number of all sampled clients ``|M|``, not by the model's own.
Initial models and round-1 options are those of :class:`ClusteredStrategy`, so
IFCA and CLoVE start from identical models for a seed.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedsim.clustering import ifca_assign
from fedsim.config import RunConfig
from strategies.base import arrays_of
from strategies.clustered import ClusteredStrategy


class IFCA(ClusteredStrategy):
    """IFCA: each client picks its argmin-loss model."""

    def assign(self, server_round, nodes, losses, replies, grid):
        """Argmin of each client's loss vector."""
        return dict(zip(nodes, ifca_assign(losses).tolist()))

    def gradient_step(self, model: ArrayRecord, group: list[RecordDict], num_participants: int) -> ArrayRecord:
        """IFCA's gradient averaging: the sum of the model's gradients divided by all participants."""
        grads = [arrays_of(c) for c in group]
        return self._step(model, grads, np.full(len(grads), 1.0 / num_participants))


def build(config: RunConfig) -> IFCA:
    """Build IFCA from a run configuration."""
    return IFCA(config.num_clusters, **clustered_kwargs(config))


def clustered_kwargs(config: RunConfig) -> dict:
    """The arguments of :class:`ClusteredStrategy` from the run configuration."""
    return {
        "seed": config.seed,
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_available_nodes": config.min_available_nodes,
        "aggregation": config.aggregation,
        "server_lr": config.server_lr,
        "init": config.init,
        "first_assignment": config.first_assignment,
    }
