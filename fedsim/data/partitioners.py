"""Cluster-structured partitioners (flwr-datasets ``Partitioner`` subclasses).

Each partitioner splits an image Dataset (columns ``image``, ``label``) among
``num_partitions`` clients that fall into ``num_clusters`` ground-truth clusters,
and says which cluster each client belongs to (:meth:`cluster_of`) so that a
run can score its clustering with the adjusted Rand index.

Client ``i`` belongs to cluster ``i % num_clusters``, so clusters stay balanced
for any number of clients. Every client gets ``samples_per_partition`` examples.
Where a cluster's pool runs out, examples are reused: within a cluster they are
disjoint while the pool lasts, across clusters they may repeat (a rotated or
relabelled image is a different sample of a different distribution; this is
what IFCA's rotated-MNIST code does and what the small offline sets need).

All arguments are given in ``__init__``; all randomness comes from ``seed``.
"""

from __future__ import annotations

from abc import abstractmethod
from functools import cached_property

import numpy as np
from flwr_datasets.partitioner import Partitioner

from datasets import Dataset
from fedsim.data.sources import as_numpy, to_dataset


class ClusteredPartitioner(Partitioner):
    """Base class: clients grouped into ground-truth clusters.

    Parameters
    ----------
    num_partitions : int
        Number of clients.
    num_clusters : int
        Number of ground-truth clusters.
    samples_per_partition : int
        Examples per client.
    seed : int
        Seed of every random choice.
    """

    def __init__(self, num_partitions: int, num_clusters: int, samples_per_partition: int, seed: int = 0) -> None:
        super().__init__()
        if num_clusters < 1 or num_partitions < num_clusters:
            raise ValueError(f"need 1 <= num_clusters <= num_partitions, got {num_clusters} and {num_partitions}")
        if samples_per_partition < 1:
            raise ValueError(f"samples_per_partition must be positive, got {samples_per_partition}")
        self._num_partitions = num_partitions
        self.num_clusters = num_clusters
        self.samples_per_partition = samples_per_partition
        self.seed = seed

    @property
    def num_partitions(self) -> int:
        """Total number of partitions (clients)."""
        return self._num_partitions

    def cluster_of(self, partition_id: int) -> int:
        """Ground-truth cluster of a partition."""
        self._check_id(partition_id)
        return partition_id % self.num_clusters

    @property
    def partition_clusters(self) -> np.ndarray:
        """Ground-truth cluster of every partition, in partition order."""
        return np.arange(self.num_partitions) % self.num_clusters

    def load_partition(self, partition_id: int) -> Dataset:
        """Return the examples of one client, transformed for its cluster."""
        x, y = self.partition_arrays(partition_id)
        return to_dataset(x, y, num_classes=self._num_classes)

    def partition_arrays(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The examples of one client as ``(images, labels)`` arrays: what :meth:`load_partition` holds.

        A federation of 1,000 clients loads in 0.4 s this way instead of 12 s
        through a Dataset per client.
        """
        self._check_id(partition_id)
        images, labels = self._arrays
        idx = self._indices[partition_id]
        return self.transform(images[idx], labels[idx], self.cluster_of(partition_id))

    def transform(self, images: np.ndarray, labels: np.ndarray, cluster: int) -> tuple[np.ndarray, np.ndarray]:
        """Map a client's raw examples to its cluster's distribution (identity here)."""
        return images, labels

    @abstractmethod
    def _partition_indices(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Row indices of every partition, in partition order."""

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return as_numpy(self.dataset)

    @cached_property
    def _num_classes(self) -> int:
        return int(self.dataset.features["label"].num_classes)

    @cached_property
    def _indices(self) -> list[np.ndarray]:
        return self._partition_indices(self._arrays[1], np.random.default_rng(self.seed))

    def _check_id(self, partition_id: int) -> None:
        if not 0 <= partition_id < self.num_partitions:
            raise IndexError(f"partition_id {partition_id} out of range [0, {self.num_partitions})")

    def _members(self, cluster: int) -> list[int]:
        return list(range(cluster, self.num_partitions, self.num_clusters))


def draw_without_replacement(pool: np.ndarray, counts: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Give each consumer ``counts[j]`` items of ``pool``, disjoint while the pool lasts.

    The pool is shuffled once and read in order; when it runs out it is shuffled
    again and reading goes on, so items repeat only after all were used.
    """
    order = rng.permutation(pool)
    out, cursor = [], 0
    for n in counts:
        take = []
        while n > 0:
            if cursor == len(order):
                order, cursor = rng.permutation(pool), 0
            chunk = order[cursor : cursor + n]
            take.append(chunk)
            cursor += len(chunk)
            n -= len(chunk)
        out.append(np.concatenate(take) if take else np.empty(0, dtype=np.int64))
    return out


class _WholePoolPerCluster(ClusteredPartitioner):
    """Every cluster draws its clients' examples from the whole pool."""

    def _partition_indices(self, labels, rng):
        indices: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * self.num_partitions
        pool = np.arange(len(labels))
        for c in range(self.num_clusters):
            members = self._members(c)
            draws = draw_without_replacement(pool, [self.samples_per_partition] * len(members), rng)
            for pid, idx in zip(members, draws):
                indices[pid] = idx
        return indices


class RotationPartitioner(_WholePoolPerCluster):
    """Feature skew: cluster ``c`` sees every image rotated by ``c * 360 / num_clusters`` degrees.

    With 4 clusters these are the 0/90/180/270 degree rotations of the CLoVE and
    IFCA papers (exact, via ``np.rot90``); other angles use scipy's bilinear
    ``ndimage.rotate`` without reshaping.
    """

    def angle_of(self, cluster: int) -> float:
        """Rotation angle of a cluster, in degrees."""
        return 360.0 * cluster / self.num_clusters

    def transform(self, images, labels, cluster):
        angle = self.angle_of(cluster)
        if angle % 90 == 0:
            return np.rot90(images, k=int(angle // 90), axes=(2, 3)).copy(), labels
        from scipy.ndimage import rotate

        return rotate(images, angle, axes=(3, 2), reshape=False, order=1).astype(np.float32), labels


class LabelSwapPartitioner(_WholePoolPerCluster):
    """Concept shift: each cluster exchanges its own pairs of labels.

    Every cluster gets ``swaps_per_cluster`` disjoint label pairs (a <-> b), and
    no pair is used by two clusters (the CLoVE paper's "two unique label swaps").
    The pairs are drawn with the seed; see :attr:`swaps`.
    """

    def __init__(self, num_partitions, num_clusters, samples_per_partition, seed=0, swaps_per_cluster: int = 2):
        super().__init__(num_partitions, num_clusters, samples_per_partition, seed)
        self.swaps_per_cluster = swaps_per_cluster

    @cached_property
    def swaps(self) -> list[list[tuple[int, int]]]:
        """The label pairs exchanged in each cluster."""
        rng = np.random.default_rng([self.seed, 1])
        used: set[tuple[int, int]] = set()
        swaps = []
        n = self._num_classes
        if 2 * self.swaps_per_cluster > n or self.num_clusters * self.swaps_per_cluster > n * (n - 1) // 2:
            raise ValueError("not enough distinct label pairs for that many clusters and swaps")
        for _ in range(self.num_clusters):
            while True:
                labels = rng.choice(n, size=2 * self.swaps_per_cluster, replace=False)
                pairs = [tuple(sorted(map(int, labels[i : i + 2]))) for i in range(0, len(labels), 2)]
                if not used.intersection(pairs):
                    break
            used.update(pairs)
            swaps.append(pairs)
        return swaps

    def transform(self, images, labels, cluster):
        mapping = np.arange(self._num_classes)
        for a, b in self.swaps[cluster]:
            mapping[a], mapping[b] = b, a
        return images, mapping[labels]


class LabelSkewPartitioner(ClusteredPartitioner):
    """Label skew (CLoVE's "label skew 1"): each cluster owns its own classes.

    Cluster ``c`` owns classes ``c*m .. c*m+m-1`` (modulo the number of
    classes), ``m = classes_per_cluster``. As in the CLoVE paper (Sec. 5.1),
    the examples of a class are split among the clusters that own it with
    proportions drawn from ``Dirichlet(alpha)`` (a class owned by one cluster
    goes to it whole), and a cluster's examples are then dealt out at random to
    its clients, ``samples_per_partition`` each, disjoint while the cluster's
    pool lasts (digest, gap 17).
    """

    def __init__(self, num_partitions, num_clusters, samples_per_partition, seed=0,
                 classes_per_cluster: int = 2, alpha: float = 0.5):
        super().__init__(num_partitions, num_clusters, samples_per_partition, seed)
        self.classes_per_cluster = classes_per_cluster
        self.alpha = alpha

    def classes_of(self, cluster: int) -> list[int]:
        """Classes owned by a cluster."""
        m = self.classes_per_cluster
        return [(cluster * m + j) % self._num_classes for j in range(m)]

    def cluster_pools(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Row indices given to each cluster: every class split among its owners by Dirichlet(alpha)."""
        pools: list[list[np.ndarray]] = [[] for _ in range(self.num_clusters)]
        for k in range(self._num_classes):
            owners = [c for c in range(self.num_clusters) if k in self.classes_of(c)]
            if not owners:
                continue
            rows = rng.permutation(np.flatnonzero(labels == k))
            shares = rng.dirichlet([self.alpha] * len(owners)) if len(owners) > 1 else np.ones(1)
            cuts = np.round(np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for owner, part in zip(owners, np.split(rows, cuts)):
                pools[owner].append(part)
        return [np.concatenate(p) for p in pools]

    def _partition_indices(self, labels, rng):
        indices: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * self.num_partitions
        for c, pool in enumerate(self.cluster_pools(labels, rng)):
            members = self._members(c)
            draws = draw_without_replacement(pool, [self.samples_per_partition] * len(members), rng)
            for pid, idx in zip(members, draws):
                indices[pid] = idx
        return indices


class OneClassPartitioner(ClusteredPartitioner):
    """One class per cluster (unsupervised CLoVE): every client of cluster ``c`` holds class ``c``."""

    def _partition_indices(self, labels, rng):
        if self.num_clusters > self._num_classes:
            raise ValueError(f"one-class partitioning has at most {self._num_classes} clusters")
        indices: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * self.num_partitions
        for c in range(self.num_clusters):
            members = self._members(c)
            pool = np.flatnonzero(labels == c)
            draws = draw_without_replacement(pool, [self.samples_per_partition] * len(members), rng)
            for pid, idx in zip(members, draws):
                indices[pid] = idx
        return indices
