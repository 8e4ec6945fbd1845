"""The path-loss learner's pure parts (paper 004) against closed forms and independent solvers."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize

from fedsim.data.madrid import BUILDING, PARK, Grid, madrid_grid
from fedsim.data.slf_synthetic import MadridSLFProtocol
from fedsim.pathloss import (
    ETA,
    OnlinePathLossLearner,
    dense_rbf_kernel,
    elastic_net_objective,
    kernel_centres,
    link_geometry,
    log_distance_stats,
    model_window,
    project_rows_to_balls,
    rbf_kernel_matrix,
    select_alpha_step,
    soft_threshold,
    solve_elastic_net,
    solve_log_distance,
)


def _toy_grid() -> Grid:
    """A 12 x 9 map (P = 108) with two buildings and a park."""
    kinds = np.zeros((12, 9), dtype=int)
    kinds[1:5, 1:4] = BUILDING
    kinds[7:11, 5:8] = BUILDING
    kinds[7:11, 1:3] = PARK
    return Grid(kinds)


def _toy_protocol(r=0.0, mismatch="dense", seed=0, links=30) -> MadridSLFProtocol:
    return MadridSLFProtocol(r=r, mismatch=mismatch, links_per_step=links, random_state=seed, grid=_toy_grid())


def _fit(learner, protocol, steps):
    for batch in protocol.stream(steps):
        learner.partial_fit(batch.tx_xy, batch.rx_xy, batch.s_hat)
    return learner


def _stats_of(windows, measurements):
    A_bar = sum(w.T @ w for w in windows)
    b = sum(w.T @ s for w, s in zip(windows, measurements))
    return A_bar, b


# -- proximal pieces ------------------------------------------------------------------------------------------


def test_soft_threshold_matches_the_closed_form():
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.2, 1.0, 2.5])
    expected = np.array([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5])
    np.testing.assert_array_equal(soft_threshold(x, 1.0), expected)


def test_ball_projection_matches_the_closed_form_and_is_idempotent():
    rng = np.random.default_rng(0)
    x, centres = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    radius = 1.3
    projected = project_rows_to_balls(x, radius, centres)
    distance = np.linalg.norm(x - centres, axis=1, keepdims=True)
    expected = np.where(distance <= radius, x, centres + radius * (x - centres) / distance)
    np.testing.assert_allclose(projected, expected, atol=1e-14)
    assert (np.linalg.norm(projected - centres, axis=1) <= radius * (1 + 1e-12)).all()
    np.testing.assert_allclose(project_rows_to_balls(projected, radius, centres), projected, atol=1e-14)
    np.testing.assert_array_equal(project_rows_to_balls(x, 0.0, centres), centres)
    np.testing.assert_array_equal(project_rows_to_balls(centres, 1.0, centres), centres)


# -- the model window -----------------------------------------------------------------------------------------


def test_model_window_is_one_over_sqrt_length_inside_the_ellipse():
    centres = _toy_grid().centres
    tx, rx = np.array([[1.25, 1.25]]), np.array([[26.25, 1.25]])  # along the first pixel row
    w = model_window(tx, rx, centres)[0]
    inside = np.flatnonzero(w)
    np.testing.assert_allclose(w[inside], 1 / np.sqrt(25.0))
    assert set(inside) == {ix * 9 for ix in range(11)}  # the 11 pixels on the segment, p = ix * ny + iy
    phi1, phi2 = link_geometry(tx, rx, centres)
    assert (phi2[0, inside] <= phi1[0] + ETA / 2).all()


# -- kernel ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1e-4, 0.3, 2.0])
def test_sparse_kernel_product_equals_the_dense_kernel(sigma):
    grid = Grid(np.zeros((4, 3), dtype=int))
    tx = grid.centres[[0, 2, 11, 5]]
    rx = grid.centres[[11, 9, 0, 6]]  # links 0 and 2 are the same link reversed: ties across links
    phi1, phi2 = link_geometry(tx, rx, grid.centres)
    sparse, dense = rbf_kernel_matrix(phi1, phi2, sigma), dense_rbf_kernel(phi1, phi2, sigma)
    v = np.random.default_rng(1).standard_normal(dense.shape[0])
    np.testing.assert_allclose(sparse @ v, dense @ v, rtol=0, atol=1e-13)
    window = model_window(tx, rx, grid.centres)
    centres, norm = kernel_centres(sparse, window)
    assert norm == pytest.approx(np.linalg.eigvalsh(dense)[-1], rel=1e-10)
    if sigma == 1e-4:  # a 0/1 tie matrix: the model window is in its range
        np.testing.assert_allclose(dense @ centres.ravel(), window.ravel(), atol=1e-12)


def test_tiny_sigma_kernel_ties_symmetric_pixels_on_the_madrid_grid():
    grid = madrid_grid()
    protocol = MadridSLFProtocol(r=0.0, links_per_step=4, random_state=3)
    batch = protocol.batch(1)
    phi1, phi2 = link_geometry(batch.tx_xy, batch.rx_xy, grid.centres)
    kernel = rbf_kernel_matrix(phi1, phi2, 1e-4)
    off_diagonal = (kernel - sp.identity(kernel.shape[0])).tocsr()
    off_diagonal.eliminate_zeros()
    assert 0 < off_diagonal.nnz < kernel.shape[0]  # nearly diagonal, with a few ties
    exact_ties = np.abs(off_diagonal.data - 1) < 1e-9
    assert exact_ties.mean() > 0.5 and (off_diagonal.data < 1 + 1e-12).all()
    assert not exact_ties.all()  # near-ties (|dPhi| ~ sigma) get intermediate values, which a tie hash misses


# -- the f-step and FedStats ----------------------------------------------------------------------------------


def _toy_statistics(seed=0, steps=3):
    protocol = _toy_protocol(r=0.3, seed=seed)
    batches = list(protocol.stream(steps))
    A_bar, b = _stats_of([x.w_model for x in batches], [x.s_hat for x in batches])
    return A_bar, b, float(steps)


def _generic_elastic_net(A_bar, b, n, lambda1, lambda2):
    """The same problem with f = u - v, u, v >= 0 (smooth), by L-BFGS-B."""
    P = b.size

    def cost(z):
        f = z[:P] - z[P:]
        gradient = (A_bar @ f - b) / n + lambda2 * f
        value = (f @ A_bar @ f - 2 * b @ f) / (2 * n) + 0.5 * lambda2 * f @ f + lambda1 * z.sum()
        return value, np.concatenate([gradient + lambda1, -gradient + lambda1])

    result = minimize(cost, np.zeros(2 * P), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * P),
                      options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxcor": 50})
    return result.x[:P] - result.x[P:]


def test_f_step_matches_a_generic_convex_solver():
    A_bar, b, n = _toy_statistics()
    lambda1, lambda2 = 4e-3, 1e-2
    f = solve_elastic_net(A_bar, b, n, lambda1, lambda2, iterations=20000)
    reference = _generic_elastic_net(A_bar, b, n, lambda1, lambda2)
    np.testing.assert_allclose(f, reference, atol=1e-6)
    assert elastic_net_objective(f, A_bar, b, n, lambda1, lambda2) <= \
        elastic_net_objective(reference, A_bar, b, n, lambda1, lambda2) + 1e-12
    assert (f == 0).any()  # the l1 term does set pixels exactly to zero


def test_ista_objective_is_monotone():
    A_bar, b, n = _toy_statistics(seed=1)
    f, previous = np.zeros(b.size), np.inf
    for _ in range(200):
        f = solve_elastic_net(A_bar, b, n, 4e-4, 1e-5, f0=f, iterations=1)
        value = elastic_net_objective(f, A_bar, b, n, 4e-4, 1e-5)
        assert value <= previous + 1e-10 * abs(previous if np.isfinite(previous) else 1)
        previous = value


def test_sufficient_statistics_are_additive_and_fedstats_equals_the_centralised_solve():
    grid, protocol = _toy_grid(), _toy_protocol(r=0.2, seed=2)
    options = dict(learn_window=False, inner_iterations=3)
    first, second, whole = (OnlinePathLossLearner(grid.centres, **options) for _ in range(3))
    batches = list(protocol.stream(6))
    for i, batch in enumerate(batches):
        (first if i < 3 else second).partial_fit(batch.tx_xy, batch.rx_xy, batch.s_hat)
        whole.partial_fit(batch.tx_xy, batch.rx_xy, batch.s_hat)
    summed = {key: first.stats()[key] + second.stats()[key] for key in ("A_bar", "b", "n", "c")}
    for key, value in whole.stats().items():
        np.testing.assert_allclose(summed[key], value, rtol=1e-12, atol=1e-12)
    federated = solve_elastic_net(summed["A_bar"], summed["b"], summed["n"], 4e-4, 1e-5, iterations=3000)
    centralised = solve_elastic_net(*(whole.stats()[key] for key in ("A_bar", "b", "n")), 4e-4, 1e-5,
                                    iterations=3000)
    np.testing.assert_allclose(federated, centralised, atol=1e-10)


def test_learner_f_step_converges_to_the_elastic_net_solution_given_the_windows():
    grid, batch = _toy_grid(), _toy_protocol(r=0.2, seed=4, links=60).batch(1)
    learner = OnlinePathLossLearner(grid.centres, lambda1=4e-3, lambda2=0.1, learn_window=False,
                                    inner_iterations=4000)
    learner.partial_fit(batch.tx_xy, batch.rx_xy, batch.s_hat)
    A_bar, b = _stats_of([batch.w_model], [batch.s_hat])
    reference = _generic_elastic_net(A_bar, b, 60 / 120, 4e-3, 0.1)
    np.testing.assert_allclose(learner.slf, reference, atol=1e-6)


def test_small_federated_batches_add_up_to_one_reference_batch():
    grid, batch = _toy_grid(), _toy_protocol(links=120).batch(1)
    halves = [OnlinePathLossLearner(grid.centres, learn_window=False) for _ in range(2)]
    halves[0].partial_fit(batch.tx_xy[:60], batch.rx_xy[:60], batch.s_hat[:60])
    halves[1].partial_fit(batch.tx_xy[60:], batch.rx_xy[60:], batch.s_hat[60:])
    assert halves[0].stats()["n"] + halves[1].stats()["n"] == 1.0


# -- the hybrid learner ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "identity"])
@pytest.mark.parametrize("order", ["f-first", "literal"])
def test_hybrid_at_radius_zero_is_exactly_the_baseline(kernel, order):
    grid, protocol = _toy_grid(), _toy_protocol(r=0.5, seed=5)
    hybrid = _fit(OnlinePathLossLearner(grid.centres, r=0.0, kernel=kernel, order=order), protocol, 8)
    baseline = _fit(OnlinePathLossLearner(grid.centres, r=0.0, learn_window=False), protocol, 8)
    np.testing.assert_array_equal(hybrid.slf, baseline.slf)
    np.testing.assert_array_equal(hybrid.stats()["A_bar"], baseline.stats()["A_bar"])
    np.testing.assert_array_equal(hybrid.stats()["b"], baseline.stats()["b"])
    assert hybrid.objective() == baseline.objective()
    assert np.abs(hybrid.slf).sum() > 0


@pytest.mark.parametrize("kernel", ["rbf", "identity"])
def test_alpha_iterates_stay_in_the_balls(kernel):
    grid, protocol = _toy_grid(), _toy_protocol(r=0.5, mismatch="structured", seed=6)
    learner = OnlinePathLossLearner(grid.centres, r=0.05, kernel=kernel, alpha_init="random", lambda3=0.0)
    for batch in protocol.stream(5):
        learner.partial_fit(batch.tx_xy, batch.rx_xy, batch.s_hat)
        distance = np.linalg.norm(learner.last_alpha_ - learner.last_ball_centres_, axis=1)
        assert (distance <= 0.05 * (1 + 1e-9)).all()
        assert distance.max() > 0.01  # the window did move
    if kernel == "identity":
        assert (np.linalg.norm(learner.last_window_ - batch.w_model, axis=1) <= 0.05 * (1 + 1e-9)).all()


def test_cost_decreases_on_the_synthetic_protocol():
    grid, gains = _toy_grid(), []
    for seed in range(3):
        learner = OnlinePathLossLearner(grid.centres, r=0.01, kernel="identity", mu=0.1)
        costs = [learner.partial_fit(b.tx_xy, b.rx_xy, b.s_hat).objective()
                 for b in _toy_protocol(r=0.01, seed=seed).stream(20)]
        gains.append(costs[1] - costs[19])
    assert np.mean(gains) > 0


def test_literal_order_collapses_the_window_on_the_first_step():
    grid, batch = _toy_grid(), _toy_protocol(r=1.0, seed=7).batch(1)
    literal = OnlinePathLossLearner(grid.centres, r=1.0, kernel="identity", order="literal", inner_iterations=1)
    literal.partial_fit(batch.tx_xy, batch.rx_xy, batch.s_hat)
    norms = np.linalg.norm(literal.last_window_, axis=1) / np.linalg.norm(batch.w_model, axis=1)
    assert norms.max() < 0.5  # alpha <- eps * alpha, then projected: the model window is shrunk


def test_select_alpha_step_returns_the_best_candidate():
    grid, protocol = _toy_grid(), _toy_protocol(r=0.1, seed=8)
    batches = [(b.tx_xy, b.rx_xy, b.s_hat) for b in protocol.stream(4)]
    held = protocol.heldout(200)
    best, scores = select_alpha_step(batches, (held.tx_xy, held.rx_xy, held.s_hat), grid.centres,
                                     candidates=(1.0, 0.1), r=0.1, kernel="identity")
    assert set(scores) == {1.0, 0.1} and scores[best] == min(scores.values())


# -- the log-distance part ------------------------------------------------------------------------------------


def test_log_distance_fit_recovers_the_parameters_from_additive_statistics():
    d = np.random.default_rng(9).uniform(2, 200, 100)
    pl = 75.0 + 10 * 2.9 * np.log10(d / 1.0)
    stats = log_distance_stats(d[:40], pl[:40]) + log_distance_stats(d[40:], pl[40:])
    np.testing.assert_allclose(stats, log_distance_stats(d, pl), rtol=1e-12)
    pl0, delta = solve_log_distance(stats)
    assert pl0 == pytest.approx(75.0, abs=1e-9) and delta == pytest.approx(2.9, abs=1e-10)
    with pytest.raises(ValueError, match="two distinct"):
        solve_log_distance(log_distance_stats(np.full(5, 10.0), np.full(5, 100.0)))


def test_path_loss_prediction_adds_the_log_distance_term():
    grid = _toy_grid()
    learner = OnlinePathLossLearner(grid.centres)
    learner.set_slf(grid.slf)
    tx, rx = np.array([[1.0, 1.0], [3.0, 20.0]]), np.array([[28.0, 21.0], [27.0, 3.0]])  # not pixel centres
    shadowing = learner.predict_shadowing(tx, rx)
    np.testing.assert_allclose(shadowing, model_window(tx, rx, grid.centres) @ grid.slf)
    distance = np.linalg.norm(tx - rx, axis=1)
    np.testing.assert_allclose(learner.predict_path_loss(tx, rx, 75.0, 2.9), 75 + 29 * np.log10(distance) + shadowing)


# -- the synthetic protocol -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mismatch", ["dense", "structured"])
def test_protocol_mismatch_has_norm_r_and_is_reproducible(mismatch):
    protocol = MadridSLFProtocol(r=0.3, mismatch=mismatch, links_per_step=50, noise_std=0.05, random_state=1)
    batch = protocol.batch(4)
    deviation = np.linalg.norm(batch.w_true - batch.w_model, axis=1)
    assert np.all(np.isclose(deviation, 0.3) | (deviation == 0)) and (deviation > 0).mean() > 0.5
    road = set(protocol.grid.road_pixels)
    assert road.issuperset(batch.tx_pixel) and road.issuperset(batch.rx_pixel)
    assert (batch.tx_pixel != batch.rx_pixel).all()
    np.testing.assert_allclose(batch.s_true, batch.w_true @ madrid_grid().slf)
    assert 0 < np.std(batch.s_hat - batch.s_true) < 0.1
    np.testing.assert_array_equal(MadridSLFProtocol(r=0.3, mismatch=mismatch, links_per_step=50, noise_std=0.05,
                                                    random_state=1).batch(4).s_hat, batch.s_hat)
    assert len(protocol.grid.road_pixels) == 744


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    (dict(r=-0.1), "r must be >= 0"),
    (dict(lambda1=-1.0), "lambda1"),
    (dict(mu=0.0), "mu"),
    (dict(mu=2.0), "mu"),
    (dict(sigma=0.0), "sigma"),
    (dict(order="alpha-first"), "order"),
    (dict(kernel="gaussian"), "kernel"),
    (dict(eps=1.0), "eps"),
])
def test_invalid_hyper_parameters_are_refused_at_construction(bad, message):
    with pytest.raises(ValueError, match=message):
        OnlinePathLossLearner(_toy_grid().centres, **bad)


def test_bad_links_are_skipped_with_a_warning_and_an_all_bad_batch_is_refused():
    grid = _toy_grid()
    batch = _toy_protocol(seed=10, links=6).batch(1)
    tx, rx, s = batch.tx_xy.copy(), batch.rx_xy.copy(), batch.s_hat.copy()
    rx[1] = tx[1] + 0.4  # same pixel
    s[2] = np.nan
    tx[3, 0] = np.inf
    learner = OnlinePathLossLearner(grid.centres, r=0.1)
    with pytest.warns(UserWarning, match="skipping 3 of 6 links"):
        learner.partial_fit(tx, rx, s)
    np.testing.assert_array_equal(learner.last_kept_, [True, False, False, False, True, True])
    assert learner.last_window_.shape == (3, grid.num_pixels) and np.isfinite(learner.slf).all()
    with pytest.raises(ValueError, match="no usable link"), pytest.warns(UserWarning):
        learner.partial_fit(tx[1:3], rx[1:3], s[1:3])
    with pytest.raises(ValueError, match="same pixel"):
        learner.predict_shadowing(tx[1:2], rx[1:2])
    with pytest.raises(ValueError, match="shape"):
        learner.partial_fit(tx, rx, s[:4])
    with pytest.raises(ValueError, match="shape"):
        learner.set_slf(np.zeros(3))
