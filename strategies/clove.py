"""CLoVE: Clustering of Loss Vector Embeddings (paper 002, Algorithms 1 and 2).

Each round, before clustering has stabilised, every sampled client scores all
K-hat models on its local training data; its vector of losses (or their square
roots) is its embedding. The server clusters the embeddings (k-means, or Ward
agglomerative), choosing the number of clusters by the silhouette over
2..K-hat when K is unknown (Alg. 2), and matches client clusters to models by a
min-cost assignment whose cost is the clusters' summed losses (so model
identities persist across rounds). Each client then trains only its model and
the server averages per model (Option I) or steps along the averaged gradient
(Option II).

Stability (App. D.1.5): each client keeps its assignment history in its own
node state and reports itself stable once its last S assignments were equal.
When at least ``stable_fraction`` of a round's participants are stable, the
server stops clustering and keeps that round's models and centroids (in loss
space, per model). From then on a known client gets its model with no query
(the round costs what a FedAvg round costs), and a never-seen client scores the
saved snapshot models and takes the model of the nearest saved centroid.

Choices where the paper is silent (from the digest, Sec. 8): k-means++ with
``n_init=10`` and a per-round seed, clustering redone from scratch each round,
raw-loss embeddings by default, no normalisation, unmatched models unchanged.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.supercore import log

from fedsim import protocol
from fedsim.clustering import clove_assign, embed, nearest_centroid
from fedsim.config import RunConfig
from fedsim.seeding import derive_seed
from strategies.clustered import ClusteredStrategy
from strategies.ifca import clustered_kwargs


class CLoVE(ClusteredStrategy):
    """CLoVE clustered FL.

    Parameters
    ----------
    num_models : int
        K (or K-hat when ``estimate_k``).
    estimate_k : bool
        Choose the number of clusters each round by silhouette (Alg. 2).
    embedding : {"loss", "sqrt-loss"}
        Raw losses (the paper's experiments) or square roots (its theory).
    clustering : {"kmeans", "agglomerative"}
        Clustering of the embeddings.
    stability_window : int
        S, rounds of unchanged assignment after which a client is stable;
        0 never stops clustering (the paper's main tables).
    stable_fraction : float
        Share of a round's participants that must be stable to stop clustering.
    **kwargs
        See :class:`strategies.clustered.ClusteredStrategy`.
    """

    def __init__(self, num_models: int, *, estimate_k: bool = False, embedding: str = "loss",
                 clustering: str = "kmeans", stability_window: int = 3, stable_fraction: float = 1.0,
                 **kwargs) -> None:
        super().__init__(num_models, **kwargs)
        self.estimate_k = estimate_k
        self.embedding = embedding
        self.clustering = clustering
        self.stability_window = stability_window
        self.stable_fraction = stable_fraction
        self.stable_round: int | None = None
        """The round in which clustering stopped (None while it goes on)."""
        self.snapshot: list[ArrayRecord] = []
        self.centroids: np.ndarray | None = None

    @property
    def uses_losses(self) -> bool:  # type: ignore[override]
        """Before stability every round needs the loss matrix; after it the server decides alone."""
        return self.stable_round is None

    def query_config(self, server_round: int) -> ConfigRecord:
        config = super().query_config(server_round)
        if self.stability_window > 0:
            config[protocol.STABILITY_WINDOW] = self.stability_window
        return config

    def assign(self, server_round, nodes, losses, replies, grid):
        """Cluster and match while not stable; afterwards, reuse assignments and saved centroids."""
        if self.stable_round is not None:
            return self._assign_after_stability(nodes, grid)
        result = clove_assign(losses, None if self.estimate_k else self.num_models, embedding=self.embedding,
                              method=self.clustering, seed=derive_seed(self.seed, server_round, 23))
        self.round_metrics["num-clusters"] = result.num_clusters
        assignment = dict(zip(nodes, result.models.tolist()))
        if self.stability_window > 0:
            stable = [bool(r.content[protocol.METRICS].get(protocol.STABLE, 0)) for r in replies]
            self.round_metrics["stable-clients"] = int(sum(stable))
            if stable and np.mean(stable) >= self.stable_fraction:
                self.stable_round = server_round
                self.snapshot = list(self.models)
                self.centroids = result.centroids
                log(INFO, "CLoVE: clustering stable in round %s; from now on no loss queries", server_round)
        self.round_metrics["stable"] = int(self.stable_round is not None)
        return assignment

    def _assign_after_stability(self, nodes, grid):
        self.round_metrics["stable"] = 1
        assignment = {n: self.latest_model[n] for n in nodes if n in self.latest_model}
        new = [n for n in nodes if n not in self.latest_model]
        if new:
            answered, losses, _ = self.query_losses(grid, new, self.snapshot, super().query_config(0))
            if answered:
                chosen = nearest_centroid(embed(losses, self.embedding), self.centroids)
                assignment.update(zip(answered, chosen.tolist()))
            self.round_metrics["new-clients"] = len(answered)
        return assignment

    def summary(self) -> None:
        super().summary()
        log(INFO, "\tCLoVE: embedding=%s clustering=%s estimate_k=%s stability window=%s (%.0f%%)", self.embedding,
            self.clustering, self.estimate_k, self.stability_window, 100 * self.stable_fraction)


def build(config: RunConfig) -> CLoVE:
    """Build CLoVE from a run configuration."""
    return CLoVE(config.num_clusters, estimate_k=config.estimate_k, embedding=config.embedding,
                 clustering=config.clustering, stability_window=config.stability_window,
                 stable_fraction=config.stable_fraction, **clustered_kwargs(config))
