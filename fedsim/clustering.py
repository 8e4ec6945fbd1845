"""Pure functions of clustered FL on numpy arrays: embeddings, clustering, matching, stability.

They hold the algorithmic core of CLoVE (paper 002, Algorithms 1 and 2) and
IFCA (Ghosh et al., 2020) and know nothing of Flower; the strategies in
``strategies/`` call them on the loss matrix of a round (rows = participating
clients in partition order, columns = models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

EMBEDDINGS = ("loss", "sqrt-loss")
CLUSTERINGS = ("kmeans", "agglomerative")


def embed(losses: np.ndarray, kind: str = "loss") -> np.ndarray:
    """Loss-vector embedding of each client: the raw losses (LV) or their square roots (SLV).

    The paper's experiments cluster raw losses; its theory uses square-root
    losses (Remark A.12); the ablation (Table 17) finds no difference.
    """
    losses = np.asarray(losses, dtype=float)
    if kind == "loss":
        return losses
    if kind == "sqrt-loss":
        return np.sqrt(np.maximum(losses, 0.0))
    raise ValueError(f"unknown embedding '{kind}'; known: {', '.join(EMBEDDINGS)}")


def cluster(x: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the rows of ``x`` into ``k`` groups.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Embeddings.
    k : int
        Number of clusters (at most ``n``).
    method : {"kmeans", "agglomerative"}
        scikit-learn ``KMeans`` (k-means++, ``n_init=10``), or Ward
        ``AgglomerativeClustering``.
    seed : int
        ``random_state`` of k-means.

    Returns
    -------
    labels : ndarray of shape (n,)
    centroids : ndarray of shape (k, d)
        Mean embedding of each cluster.
    """
    x = np.asarray(x, dtype=float)
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot make {k} clusters of {len(x)} points")
    if k == 1:
        labels = np.zeros(len(x), dtype=int)
    elif method == "kmeans":
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    elif method == "agglomerative":
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
    else:
        raise ValueError(f"unknown clustering '{method}'; known: {', '.join(CLUSTERINGS)}")
    centroids = np.stack([x[labels == c].mean(0) if np.any(labels == c) else np.full(x.shape[1], np.inf)
                          for c in range(k)])
    return labels, centroids


def select_k(x: np.ndarray, k_max: int) -> int:
    """CLoVE's Algorithm 2 (selectBestK): the K in 2..k_max of best silhouette.

    Each candidate clustering is Ward agglomerative, as the paper suggests; the
    range is capped at ``n - 1`` (the silhouette needs fewer clusters than
    points). K = 1 is never returned (the silhouette is undefined for it).
    """
    x = np.asarray(x, dtype=float)
    upper = min(k_max, len(x) - 1)
    if upper < 2:
        return min(2, len(x))
    best_k, best_score = 2, -np.inf
    for k in range(2, upper + 1):
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
        if len(np.unique(labels)) < 2:
            continue
        score = silhouette_score(x, labels)
        if score > best_score:
            best_k, best_score = k, score
    return best_k


def match_clusters_to_models(losses: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """Min-cost matching of client clusters to models (CLoVE, Alg. 1 line 12).

    The cost of giving cluster ``a`` model ``j`` is the sum over the cluster's
    clients of their loss on model ``j``. The matching is computed by scipy's
    ``linear_sum_assignment`` (rectangular when there are fewer clusters than
    models: every cluster gets a distinct model).

    Returns
    -------
    ndarray of shape (num_clusters,)
        Model index of each cluster.
    """
    losses = np.asarray(losses, dtype=float)
    cost = np.stack([losses[labels == a].sum(0) for a in range(num_clusters)])
    rows, cols = linear_sum_assignment(cost)
    model_of = np.empty(num_clusters, dtype=int)
    model_of[rows] = cols
    return model_of


@dataclass(frozen=True)
class CloveAssignment:
    """Result of one CLoVE clustering step.

    Attributes
    ----------
    models : ndarray of shape (n,)
        Model index of each client.
    num_clusters : int
        Number of client clusters used (K^(t+1)).
    centroids : ndarray of shape (num_models, d)
        Centroid (in embedding space) of the clients assigned to each model;
        ``inf`` rows for models no cluster was matched to.
    """

    models: np.ndarray
    num_clusters: int
    centroids: np.ndarray


def clove_assign(losses: np.ndarray, num_clusters: int | None, *, embedding: str = "loss",
                 method: str = "kmeans", seed: int = 0) -> CloveAssignment:
    """One CLoVE clustering step: embed, (choose K,) cluster, match clusters to models.

    Parameters
    ----------
    losses : ndarray of shape (n, num_models)
        Loss of each participating client on each model.
    num_clusters : int or None
        Known K; ``None`` chooses it with :func:`select_k` over 2..num_models.
    embedding, method, seed
        See :func:`embed` and :func:`cluster`.
    """
    losses = np.asarray(losses, dtype=float)
    n, num_models = losses.shape
    x = embed(losses, embedding)
    k = select_k(x, num_models) if num_clusters is None else num_clusters
    k = min(k, n)
    labels, centroids = cluster(x, k, method, seed)
    model_of = match_clusters_to_models(losses, labels, k)
    by_model = np.full((num_models, x.shape[1]), np.inf)
    by_model[model_of] = centroids
    return CloveAssignment(models=model_of[labels], num_clusters=k, centroids=by_model)


def ifca_assign(losses: np.ndarray) -> np.ndarray:
    """IFCA's assignment: each client takes its lowest-loss model (ties -> lowest index)."""
    return np.argmin(np.asarray(losses, dtype=float), axis=1)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest (Euclidean) centroid of each row; ``inf`` centroids are never chosen."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    centroids = np.asarray(centroids, dtype=float)
    usable = np.all(np.isfinite(centroids), axis=1)
    if not usable.any():
        raise ValueError("no finite centroid")
    d = np.linalg.norm(x[:, None, :] - centroids[None, :, :], axis=-1)
    d[:, ~usable] = np.inf
    return np.argmin(d, axis=1)


def is_stable(history: list[int] | np.ndarray, window: int) -> bool:
    """True when the last ``window`` assignments exist and are all equal."""
    history = list(history)
    return len(history) >= window and len(set(history[-window:])) == 1


def ari(true_clusters: np.ndarray, assigned: np.ndarray) -> float | None:
    """Adjusted Rand index of an assignment, or None without ground truth (any label ``< 0``)."""
    true_clusters = np.asarray(true_clusters)
    if len(true_clusters) == 0 or np.any(true_clusters < 0):
        return None
    return float(adjusted_rand_score(true_clusters, assigned))
