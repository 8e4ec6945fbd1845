"""Mixed linear regression: the setting of CLoVE's theory (paper 002, Sec. 4 / App. D.1.1).

Cluster ``k`` has a unit-norm optimum ``theta_k``; a client of that cluster holds
``n`` pairs with ``x ~ N(0, I_d)`` and ``y = <theta_k, x> + eps``,
``eps ~ N(0, noise_std^2)``. The optima are drawn as in the digest's recipe
(Sec. 7.4): ``normalise(u + s * v_k)`` with random unit ``u, v_k`` and
``s = 1.5 * separation``, redrawn until every pairwise distance lies in
``[separation, 5 * separation]``. Client data is drawn once (fixed), not per
round; the paper's theory redraws it, the digest recommends fixed data.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from datasets import Array2D, Dataset, Features, Value


class MixedLinearRegression:
    """Generator of a federated mixed-linear-regression problem.

    Same interface as :class:`fedsim.data.partitioners.ClusteredPartitioner`
    (``num_partitions``, ``cluster_of``, ``partition_clusters``,
    ``load_partition``), but it needs no source dataset.

    Parameters
    ----------
    num_partitions : int
        Number of clients.
    num_clusters : int
        Number of clusters K.
    samples_per_partition : int
        Pairs ``(x, y)`` per client.
    dim : int
        Dimension d of ``x``.
    separation : float
        Minimum pairwise distance Delta of the optima, in (0, 2).
    noise_std : float
        Standard deviation of the label noise.
    seed : int
        Seed of every random draw.
    """

    def __init__(self, num_partitions: int, num_clusters: int, samples_per_partition: int,
                 dim: int = 20, separation: float = 1.0, noise_std: float = 1e-3, seed: int = 0) -> None:
        if not 0 < separation < 2:
            raise ValueError(f"separation must be in (0, 2) for unit-norm optima, got {separation}")
        self.num_partitions = num_partitions
        self.num_clusters = num_clusters
        self.samples_per_partition = samples_per_partition
        self.dim = dim
        self.separation = separation
        self.noise_std = noise_std
        self.seed = seed

    def cluster_of(self, partition_id: int) -> int:
        """Ground-truth cluster of a client."""
        return partition_id % self.num_clusters

    @property
    def partition_clusters(self) -> np.ndarray:
        """Ground-truth cluster of every client."""
        return np.arange(self.num_partitions) % self.num_clusters

    @cached_property
    def optima(self) -> np.ndarray:
        """The K unit-norm optima, shape (K, d)."""
        rng = np.random.default_rng([self.seed, 7])
        lo, hi = self.separation, 5 * self.separation
        for _ in range(10_000):
            u = _unit(rng.standard_normal(self.dim))
            v = _unit(rng.standard_normal((self.num_clusters, self.dim)))
            theta = _unit(u + 1.5 * self.separation * v)
            d = np.linalg.norm(theta[:, None] - theta[None], axis=-1)[np.triu_indices(self.num_clusters, 1)]
            if d.size == 0 or (d.min() >= lo and d.max() <= hi):
                return theta
        raise RuntimeError("could not draw optima with the requested separation; try another seed")

    def load_partition(self, partition_id: int) -> Dataset:
        """Return one client's pairs as a Dataset with columns ``x`` (1 x d) and ``y``."""
        rng = np.random.default_rng([self.seed, 11, partition_id])
        x = rng.standard_normal((self.samples_per_partition, self.dim)).astype(np.float32)
        y = x @ self.optima[self.cluster_of(partition_id)] + self.noise_std * rng.standard_normal(len(x))
        features = Features({"x": Array2D(shape=(1, self.dim), dtype="float32"), "y": Value("float32")})
        return Dataset.from_dict({"x": x[:, None, :], "y": y.astype(np.float32)}, features=features)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
