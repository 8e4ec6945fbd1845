import gzip
import pickle
import struct

import numpy as np
import pytest
from flwr_datasets.partitioner import DirichletPartitioner

from fedsim.config import RunConfig
from fedsim.data.federation import NO_CLUSTER, load_client_data
from fedsim.data.partitioners import (
    LabelSkewPartitioner,
    LabelSwapPartitioner,
    OneClassPartitioner,
    RotationPartitioner,
    draw_without_replacement,
)
from fedsim.data.sources import DataSourceError, as_numpy, check_available, load_source, read_idx, to_dataset
from fedsim.data.synthetic import MixedLinearRegression


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def test_digits_source(digits):
    x, y = as_numpy(digits)
    assert x.shape == (1797, 1, 8, 8) and x.min() == 0 and x.max() == 1
    assert np.bincount(y).min() >= 170


def test_mnist_5k_source():
    x, y = as_numpy(load_source("mnist-5k"))
    assert x.shape == (5000, 1, 28, 28) and np.all(np.bincount(y) == 500)


def _find_rows(source_x, images):
    """Row index in source_x of every image (brute force)."""
    flat = source_x.reshape(len(source_x), -1)
    return [int(np.flatnonzero((flat == img.reshape(-1)).all(1))[0]) for img in images]


def test_rotation_partitioner_rotates_per_cluster_and_is_disjoint_within_cluster(digits):
    part = RotationPartitioner(num_partitions=8, num_clusters=4, samples_per_partition=50, seed=3)
    part.dataset = digits
    source_x, source_y = as_numpy(digits)
    assert list(part.partition_clusters) == [0, 1, 2, 3, 0, 1, 2, 3]
    seen = {c: set() for c in range(4)}
    for pid in range(8):
        x, y = as_numpy(part.load_partition(pid))
        c = part.cluster_of(pid)
        assert len(x) == 50
        unrotated = np.rot90(x, k=-c, axes=(2, 3))
        rows = _find_rows(source_x, unrotated)
        assert np.array_equal(source_y[rows], y)
        assert not seen[c].intersection(rows)
        seen[c].update(rows)


def test_rotation_partitioner_general_angle_uses_scipy(digits):
    part = RotationPartitioner(num_partitions=3, num_clusters=3, samples_per_partition=5, seed=0)
    part.dataset = digits
    assert part.angle_of(1) == 120.0
    x, _ = as_numpy(part.load_partition(1))
    assert x.shape == (5, 1, 8, 8) and np.isfinite(x).all()


def test_label_swap_partitioner(digits):
    part = LabelSwapPartitioner(num_partitions=8, num_clusters=4, samples_per_partition=60, seed=1)
    part.dataset = digits
    pairs = [p for cluster in part.swaps for p in cluster]
    assert len(pairs) == len(set(pairs)) == 8
    for cluster in part.swaps:
        flat = [v for p in cluster for v in p]
        assert len(set(flat)) == 4
    source_x, source_y = as_numpy(digits)
    for pid in range(8):
        x, y = as_numpy(part.load_partition(pid))
        expected = source_y[_find_rows(source_x, x)]
        for a, b in part.swaps[part.cluster_of(pid)]:
            expected = np.where(expected == a, -1, expected)
            expected = np.where(expected == b, a, expected)
            expected = np.where(expected == -1, b, expected)
        assert np.array_equal(y, expected)


def test_label_skew_partitioner(digits):
    part = LabelSkewPartitioner(num_partitions=10, num_clusters=5, samples_per_partition=40, seed=0,
                                classes_per_cluster=2, alpha=0.5)
    part.dataset = digits
    source_x, _ = as_numpy(digits)
    rows_of_cluster = {c: set() for c in range(5)}
    for pid in range(10):
        x, y = as_numpy(part.load_partition(pid))
        c = part.cluster_of(pid)
        assert len(y) == 40
        assert set(y) <= set(part.classes_of(c)) == {2 * c, 2 * c + 1}
        rows_of_cluster[c].update(_find_rows(source_x, x))
    for a in range(5):  # no overlap of classes: no image is shared by two clusters
        for b in range(a + 1, 5):
            assert not rows_of_cluster[a] & rows_of_cluster[b]


def test_label_skew_splits_shared_classes_by_dirichlet(digits):
    # 4 clusters x 3 classes over 10 classes: classes 0 and 1 are owned by clusters 0 and 3
    part = LabelSkewPartitioner(num_partitions=4, num_clusters=4, samples_per_partition=10, seed=3,
                                classes_per_cluster=3, alpha=0.5)
    part.dataset = digits
    _, labels = as_numpy(digits)
    pools = part.cluster_pools(labels, np.random.default_rng(3))
    for k in (0, 1):
        owned = [np.sum(labels[p] == k) for p in pools]
        assert owned[1] == owned[2] == 0 and owned[0] + owned[3] == np.sum(labels == k)
    for k in (3, 4, 5):  # owned by cluster 1 only
        assert np.sum(labels[pools[1]] == k) == np.sum(labels == k)


def test_one_class_partitioner(digits):
    part = OneClassPartitioner(num_partitions=20, num_clusters=10, samples_per_partition=30, seed=0)
    part.dataset = digits
    for pid in range(20):
        _, y = as_numpy(part.load_partition(pid))
        assert set(y) == {pid % 10}


def test_draw_without_replacement_repeats_only_after_pool_is_used():
    rng = np.random.default_rng(0)
    draws = draw_without_replacement(np.arange(10), [4, 4, 4], rng)
    first_ten = np.concatenate(draws)[:10]
    assert sorted(first_ten) == list(range(10))
    assert [len(d) for d in draws] == [4, 4, 4]


def test_partitioners_are_deterministic(digits):
    a = LabelSwapPartitioner(4, 2, 20, seed=9)
    b = LabelSwapPartitioner(4, 2, 20, seed=9)
    a.dataset, b.dataset = digits, digits
    assert np.array_equal(as_numpy(a.load_partition(3))[0], as_numpy(b.load_partition(3))[0])


def test_mixed_linear_regression():
    gen = MixedLinearRegression(num_partitions=6, num_clusters=3, samples_per_partition=200, dim=10,
                                separation=0.5, noise_std=0.01, seed=0)
    theta = gen.optima
    assert np.allclose(np.linalg.norm(theta, axis=1), 1)
    dist = [np.linalg.norm(theta[i] - theta[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(dist) >= 0.5 and max(dist) <= 2.5
    table = gen.load_partition(4).with_format("numpy")[:]
    x, y = table["x"][:, 0, :], table["y"]
    fit, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert np.linalg.norm(fit - theta[gen.cluster_of(4)]) < 0.01


def test_client_data_split_and_cluster():
    config = RunConfig.from_mapping({"samples-per-client": 50, "test-fraction": 0.2})
    data = load_client_data(config, 5, 8)
    assert data.num_train == 40 and len(data.x_test) == 10 and data.cluster == 1
    assert data.x_train.shape[1:] == (1, 8, 8)


def test_flwr_datasets_partitioners_have_no_cluster():
    config = RunConfig.from_mapping({"partitioning": "dirichlet", "samples-per-client": 60})
    data = load_client_data(config, 0, 6)
    assert data.cluster == NO_CLUSTER and data.num_train + len(data.x_test) <= 60


def test_dirichlet_wiring_matches_flwr_datasets(digits):
    config = RunConfig.from_mapping({"partitioning": "dirichlet", "samples-per-client": 2000, "seed": 4})
    data = load_client_data(config, 2, 5)
    reference = DirichletPartitioner(5, partition_by="label", alpha=0.5, min_partition_size=2,
                                     self_balancing=True, seed=4)
    reference.dataset = digits
    _, y = as_numpy(reference.load_partition(2))
    got = np.concatenate([data.y_train.numpy(), data.y_test.numpy()])
    assert np.array_equal(np.bincount(got, minlength=10), np.bincount(y, minlength=10))


def _write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype.type], array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())


def test_idx_reader_and_local_mnist_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images, gz=True)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    imgs = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert imgs.shape == (7, 28, 28) and imgs.dtype == np.uint8
    check_available("fashion-mnist", str(tmp_path))
    x, y = as_numpy(load_source("fashion-mnist", str(tmp_path)))
    assert x.shape == (10, 1, 28, 28)
    assert np.allclose(x[0, 0] * 255, imgs[0])


def test_local_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 2]}
        (folder / stem).write_bytes(pickle.dumps(batch))
    x, y = as_numpy(load_source("cifar10", str(tmp_path)))
    assert x.shape == (12, 3, 32, 32) and list(y[:2]) == [1, 2]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_local_folder_is_one_clear_line(tmp_path, name):
    with pytest.raises(DataSourceError) as err:
        check_available(name, str(tmp_path / "absent"))
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataSourceError, match="not found"):
        check_available(name, str(tmp_path))


def test_to_dataset_round_trip():
    x = np.random.default_rng(0).random((4, 1, 2, 2), dtype=np.float32)
    y = np.arange(4)
    x2, y2 = as_numpy(to_dataset(x, y, 10))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
