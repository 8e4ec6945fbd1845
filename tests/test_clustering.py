"""The pure clustering functions against independent computations."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from fedsim.clustering import (
    ari,
    clove_assign,
    cluster,
    embed,
    ifca_assign,
    is_stable,
    match_clusters_to_models,
    nearest_centroid,
    select_k,
)


def brute_force_matching(losses, labels, k):
    """Cheapest injective map cluster -> model by enumerating every permutation."""
    num_models = losses.shape[1]
    best, best_cost = None, np.inf
    for models in itertools.permutations(range(num_models), k):
        cost = sum(losses[labels == a, models[a]].sum() for a in range(k))
        if cost < best_cost - 1e-12:
            best, best_cost = np.array(models), cost
    return best, best_cost


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("k,num_models", [(3, 3), (2, 4), (4, 5)])
def test_matching_equals_brute_force(seed, k, num_models):
    rng = np.random.default_rng(seed)
    losses = rng.random((12, num_models))
    labels = np.concatenate([np.arange(k), rng.integers(0, k, 12 - k)])
    got = match_clusters_to_models(losses, labels, k)
    _, best_cost = brute_force_matching(losses, labels, k)
    assert len(set(got)) == k
    assert sum(losses[labels == a, got[a]].sum() for a in range(k)) == pytest.approx(best_cost)


def test_fig1_toy_ifca_collapses_clove_separates():
    """CLoVE paper Fig. 1: both groups prefer model 0, yet they are different clusters."""
    m = 5
    losses = np.array([[1.0, 5.1]] * m + [[2.1, 3.5]] * m)
    assert list(ifca_assign(losses)) == [0] * (2 * m)
    result = clove_assign(losses, 2, seed=0)
    assert list(result.models) == [0] * m + [1] * m  # cost m*4.5 beats m*7.2


def test_matching_is_invariant_to_cluster_label_permutation_and_follows_model_permutation():
    rng = np.random.default_rng(1)
    losses = rng.random((9, 3))
    labels = np.repeat([0, 1, 2], 3)
    base = match_clusters_to_models(losses, labels, 3)
    relabel = np.array([2, 0, 1])
    relabelled = match_clusters_to_models(losses, relabel[labels], 3)
    assert np.array_equal(relabelled[relabel[labels]], base[labels])
    perm = np.array([1, 2, 0])
    permuted = match_clusters_to_models(losses[:, perm], labels, 3)
    assert np.array_equal(perm[permuted], base)


def test_rectangular_matching_gives_distinct_models():
    losses = np.array([[0.1, 0.2, 0.9], [0.1, 0.25, 0.8], [0.15, 0.2, 0.95]])
    got = match_clusters_to_models(losses, np.array([0, 1, 1]), 2)
    assert len(set(got)) == 2


def _blobs(k, per, dim, seed, spread=0.05):
    rng = np.random.default_rng(seed)
    centers = rng.random((k, dim)) * 5
    x = np.concatenate([c + spread * rng.standard_normal((per, dim)) for c in centers])
    return x, np.repeat(np.arange(k), per)


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_cluster_recovers_separable_data_with_mean_centroids(method):
    x, truth = _blobs(4, 6, 3, seed=2)
    labels, centroids = cluster(x, 4, method, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    for c in range(4):
        np.testing.assert_allclose(centroids[c], x[labels == c].mean(0))


def test_select_k_finds_three_blobs_and_never_one():
    x, _ = _blobs(3, 8, 6, seed=3)
    assert select_k(x, 6) == 3
    assert select_k(np.zeros((5, 2)) + np.arange(5)[:, None] * 1e-9, 4) >= 2


def test_clove_assign_with_unknown_k():
    x, truth = _blobs(3, 8, 6, seed=4)
    result = clove_assign(x, None, seed=0)
    assert result.num_clusters == 3 and adjusted_rand_score(truth, result.models) == 1.0


def test_clove_assign_caps_clusters_at_clients_and_keeps_centroids_per_model():
    losses = np.array([[0.1, 1.0, 2.0], [1.0, 0.1, 2.0]])
    result = clove_assign(losses, 3, seed=0)
    assert result.num_clusters == 2 and list(result.models) == [0, 1]
    assert np.isinf(result.centroids[2]).all()
    np.testing.assert_allclose(result.centroids[0], losses[0])


def test_embeddings():
    losses = np.array([[4.0, 9.0]])
    assert np.array_equal(embed(losses, "loss"), losses)
    np.testing.assert_allclose(embed(losses, "sqrt-loss"), [[2.0, 3.0]])
    with pytest.raises(ValueError):
        embed(losses, "log")


def test_nearest_centroid_against_loop_and_ignores_unmatched_models():
    rng = np.random.default_rng(5)
    x, centroids = rng.random((20, 3)), rng.random((4, 3))
    centroids[2] = np.inf
    got = nearest_centroid(x, centroids)
    for i, row in enumerate(x):
        d = [np.inf if np.isinf(c).any() else np.sum((row - c) ** 2) for c in centroids]
        assert got[i] == int(np.argmin(d))


def test_ifca_ties_go_to_lowest_index():
    assert list(ifca_assign(np.array([[1.0, 1.0, 2.0], [3.0, 0.5, 0.5]]))) == [0, 1]


@pytest.mark.parametrize("history, window, expected", [
    ([], 3, False), ([1, 1], 3, False), ([1, 1, 1], 3, True), ([0, 1, 1, 1], 3, True),
    ([1, 1, 0], 3, False), ([2], 1, True),
])
def test_stability_rule(history, window, expected):
    assert is_stable(history, window) is expected


def test_ari_needs_ground_truth():
    assert ari(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == 1.0
    assert ari(np.array([0, -1]), np.array([0, 1])) is None
