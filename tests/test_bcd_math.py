"""BCD's pure functions against independent computations."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from fedsim.bcd import (
    bhattacharyya_kernel,
    block2,
    hard_clusters,
    initial_assignment,
    laplacian,
    nuclear_norm,
    objective,
    optimal_partition,
    param_count,
    project_rows_to_simplex,
    prox_nuclear_simplex,
    reference_bcd,
    svt,
)


def _random_covs(rng, n, d=3):
    a = rng.standard_normal((n, d, d))
    return a @ a.transpose(0, 2, 1) + 0.2 * np.eye(d)


def test_kernel_matches_the_one_dimensional_closed_form():
    mu, sd = np.array([[0.0], [1.0], [-0.5]]), np.array([0.5, 1.5, 1.0])
    k = bhattacharyya_kernel(mu, (sd**2)[:, None, None])
    for i, j in itertools.product(range(3), repeat=2):
        s2 = sd[i] ** 2 + sd[j] ** 2
        closed = np.sqrt(2 * sd[i] * sd[j] / s2) * np.exp(-((mu[i, 0] - mu[j, 0]) ** 2) / (4 * s2))
        assert k[i, j] == pytest.approx(closed, rel=1e-12)


def test_kernel_of_diagonal_gaussians_is_a_product_and_is_affine_invariant():
    rng = np.random.default_rng(1)
    mu, var = rng.standard_normal((4, 3)), rng.uniform(0.2, 2.0, (4, 3))
    k = bhattacharyya_kernel(mu, np.stack([np.diag(v) for v in var]))
    per_dim = [bhattacharyya_kernel(mu[:, [j]], var[:, [j], None]) for j in range(3)]
    np.testing.assert_allclose(k, np.prod(per_dim, axis=0), rtol=1e-10)
    covs = _random_covs(rng, 5)
    means = rng.standard_normal((5, 3))
    t, shift = rng.standard_normal((3, 3)) + 3 * np.eye(3), rng.standard_normal(3)
    k1 = bhattacharyya_kernel(means, covs)
    k2 = bhattacharyya_kernel(means @ t.T + shift, t @ covs @ t.T)
    np.testing.assert_allclose(k1, k2, rtol=1e-9)
    assert np.allclose(np.diag(k1), 1) and np.all((k1 > 0) & (k1 <= 1 + 1e-12)) and np.allclose(k1, k1.T)


def test_laplacian_is_psd_with_constant_null_vector():
    rng = np.random.default_rng(2)
    d = laplacian(bhattacharyya_kernel(rng.standard_normal((6, 3)), _random_covs(rng, 6)))
    np.testing.assert_allclose(d @ np.ones(6), 0, atol=1e-12)
    assert np.linalg.eigvalsh(d).min() > -1e-10


def test_non_positive_definite_covariance_is_named():
    covs = np.stack([np.eye(3), np.diag([1.0, -1.0, 1.0])])
    with pytest.raises(ValueError, match=r"cell\(s\) \[1\] is not positive definite"):
        bhattacharyya_kernel(np.zeros((2, 3)), covs)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.5, 100.0])
def test_svt_shrinks_singular_values_by_tau(tau):
    z = np.random.default_rng(3).standard_normal((7, 5))
    s = np.linalg.svd(z, compute_uv=False)
    got = np.linalg.svd(svt(z, tau), compute_uv=False)
    np.testing.assert_allclose(np.sort(got)[::-1], np.maximum(s - tau, 0), atol=1e-10)
    assert nuclear_norm(svt(z, tau)) <= nuclear_norm(z) + 1e-12
    if tau == 0:
        np.testing.assert_allclose(svt(z, tau), z, atol=1e-12)


def _brute_force_simplex(z):
    """Enumerate supports: on support S the projection is z_S - (sum z_S - 1)/|S|; keep the closest feasible."""
    best, best_d = None, np.inf
    k = len(z)
    for r in range(1, k + 1):
        for support in itertools.combinations(range(k), r):
            x = np.zeros(k)
            s = list(support)
            x[s] = z[s] - (z[s].sum() - 1) / r
            if np.all(x >= -1e-12) and np.sum((x - z) ** 2) < best_d:
                best, best_d = x, np.sum((x - z) ** 2)
    return best


def test_simplex_projection_equals_brute_force():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((40, 5)) * 2
    got = project_rows_to_simplex(z)
    for row, g in zip(z, got):
        np.testing.assert_allclose(g, _brute_force_simplex(row), atol=1e-10)
    np.testing.assert_allclose(got.sum(1), 1)
    np.testing.assert_allclose(project_rows_to_simplex(got), got, atol=1e-12)
    assert np.array_equal(np.argmax(got, 1), np.argmax(z, 1))


def test_exact_prox_is_optimal_against_feasible_perturbations():
    rng = np.random.default_rng(5)
    z, tau = rng.standard_normal((6, 4)), 0.4
    a = prox_nuclear_simplex(z, tau)
    np.testing.assert_allclose(a.sum(1), 1, atol=1e-9)
    assert a.min() > -1e-9

    def value(x):
        return 0.5 * np.sum((x - z) ** 2) + tau * nuclear_norm(x)

    for _ in range(300):
        step = rng.uniform(0.01, 0.3)
        other = project_rows_to_simplex(a + step * rng.standard_normal(a.shape))
        trial = (1 - step) * a + step * other  # feasible (convex combination)
        assert value(trial) >= value(a) - 1e-9
    np.testing.assert_allclose(prox_nuclear_simplex(z, 0.0), project_rows_to_simplex(z), atol=1e-9)


def test_objective_identities():
    rng = np.random.default_rng(6)
    k = bhattacharyya_kernel(rng.standard_normal((12, 3)), _random_covs(rng, 12))
    d = laplacian(k)
    a = project_rows_to_simplex(rng.standard_normal((12, 12)))
    g = objective(a, np.zeros_like(a), d, 1.0, 0.0)
    pairwise = 0.5 * sum(k[i, j] * np.sum((a[i] - a[j]) ** 2) for i in range(12) for j in range(12))
    assert g == pytest.approx(pairwise)
    labels = np.repeat([0, 1, 2, 3], [5, 4, 2, 1])
    onehot = np.eye(12)[labels]
    cut = sum(k[i, j] for i in range(12) for j in range(12) if labels[i] != labels[j])
    assert objective(onehot, np.zeros_like(onehot), d, 1.0, 0.0) == pytest.approx(cut)
    assert nuclear_norm(onehot) == pytest.approx(6.6503, abs=1e-4)  # sum of sqrt(sizes)


def test_uniform_rows_with_equal_heads_are_a_fixed_point():
    rng = np.random.default_rng(7)
    d = laplacian(bhattacharyya_kernel(rng.standard_normal((5, 3)), _random_covs(rng, 5)))
    a = np.full((5, 5), 0.2)
    losses = np.repeat(rng.random((5, 1)), 5, axis=1)  # every head equally good for a cell
    for mode in ("paper", "theory"):
        _, new = block2(a, losses, d, lam=0.3, beta=0.2, eta=0.5, mode=mode)
        np.testing.assert_allclose(new, a, atol=1e-9)


def _regime_problem(seed, cells=12, regimes=(5, 4, 2, 1), n=60, q=8, m=3, noise=0.05):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(regimes)), regimes)
    heads = rng.standard_normal((len(regimes), q, m))
    feats = [rng.standard_normal((n, q)) for _ in range(cells)]
    targets = [f @ heads[r] + noise * rng.standard_normal((n, m)) for f, r in zip(feats, truth)]
    means = np.stack([np.mean(t, 0) for t in targets])
    covs = np.stack([np.cov(t, rowvar=False) + 1e-3 * np.eye(m) for t in targets])
    return feats, targets, laplacian(bhattacharyya_kernel(means, covs)), truth


@pytest.mark.parametrize("lam,beta", [(0.0, 0.0), (0.05, 0.0), (0.0, 0.1), (0.05, 0.1)])
def test_theory_mode_objective_never_increases(lam, beta):
    feats, targets, d, _ = _regime_problem(0)
    eta = 1 / (2 * lam * np.linalg.eigvalsh(d)[-1]) if lam > 0 else 1.0
    heads0 = np.repeat(np.zeros((1, 8, 3)), 12, axis=0)
    heads0 += 0.01 * np.random.default_rng(1).standard_normal(heads0.shape)
    result = reference_bcd(feats, targets, d, heads0, initial_assignment(12, 12, 6, 0), lam, beta, eta, 40,
                           mode="theory")
    f = np.array(result.objective)
    assert np.all(np.diff(f) <= 1e-9 * np.abs(f[:-1]) + 1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_paper_mode_recovers_well_separated_regimes(seed):
    """From 6 random initial clusters, regimes (5, 4, 2, 1) are mostly recovered (the singleton may merge)."""
    feats, targets, d, truth = _regime_problem(seed)
    heads0 = 0.01 * np.random.default_rng(3).standard_normal((12, 8, 3))
    result = reference_bcd(feats, targets, d, heads0, initial_assignment(12, 12, 6, seed), lam=0.0, beta=0.0,
                           eta=50.0, iterations=60, mode="paper")
    labels = hard_clusters(result.assignments[-1])
    assert result.objective[-1] < 0.5 * result.objective[0]
    assert adjusted_rand_score(truth, labels) >= 0.8


def _set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        for i in range(len(partition)):
            yield partition[:i] + [[first] + partition[i]] + partition[i + 1:]
        yield [[first]] + partition


def test_optimal_partition_equals_enumeration_of_all_partitions():
    rng = np.random.default_rng(8)
    cost = rng.random(1 << 6) * 3 + np.array([bin(s).count("1") for s in range(1 << 6)]) ** 0.5

    def subset_cost(mask):
        return float(cost[mask])

    best, blocks = optimal_partition(subset_cost, 6)
    enumerated = min(sum(cost[sum(1 << i for i in b)] for b in p) for p in _set_partitions(list(range(6))))
    assert best == pytest.approx(enumerated)
    assert sorted(i for b in blocks for i in b) == list(range(6))
    assert sum(cost[sum(1 << i for i in b)] for b in blocks) == pytest.approx(best)


def test_parameter_counts_and_the_papers_communication_numbers():
    total, last = param_count(30, 12)
    assert (total, last) == (108_172, 1_548)
    assert 12 * total * 4 == 5_192_256 and 12 * last * 4 == 74_304 and 6 * last * 4 == 37_152
    assert param_count(27, 9) == (107_017, 1_161)
