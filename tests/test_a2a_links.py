"""The realistic A2A link data: physics generator, vehicle streams, and the Sionna RT file (never ray-traced here)."""

import numpy as np
import pytest

from fedsim.data.a2a_links import (
    SIONNA_A2A_PATH,
    CorrelatedField,
    LinkPhysics,
    client_stream,
    fleet_routes,
    load_sionna_a2a,
    make_environment,
    sample_links,
    segment_pixel_lengths,
)
from fedsim.data.madrid import BUILDING, PARK, ROAD, madrid_grid

GRID = madrid_grid()
NO_RANDOMNESS = LinkPhysics(shadowing_std_db=0.0, noise_std_db=0.0)


def centre(ix, iy):
    return GRID.centres[ix * GRID.shape[1] + iy]


def sampled_lengths_by_kind(tx, rx, num_samples=40_001):
    """Independent check: metres of the segment in each kind, from a fine sampling of the segment."""
    t = (np.arange(num_samples) + 0.5) / num_samples
    points = tx + t[:, None] * (rx - tx)
    kinds = GRID.kinds.ravel()[GRID.pixel_of(points)]
    step = np.linalg.norm(rx - tx) / num_samples
    return {kind: (kinds == kind).sum() * step for kind in (ROAD, BUILDING, PARK)}


def test_clear_road_link_has_no_obstruction():
    env = make_environment(GRID, NO_RANDOMNESS)
    tx, rx = centre(0, 0), centre(55, 0)  # along the bottom road
    parts = env.components(tx[None], rx[None])
    assert parts["obstruction"][0] == 0.0
    assert segment_pixel_lengths(GRID, tx[None], rx[None]).sum() == pytest.approx(np.linalg.norm(rx - tx))


def test_traversal_matches_fine_sampling_on_random_links():
    rng = np.random.default_rng(3)
    roads = GRID.road_pixels
    tx = GRID.centres[rng.choice(roads, 40)] + rng.uniform(-1.2, 1.2, (40, 2))
    rx = GRID.centres[rng.choice(roads, 40)] + rng.uniform(-1.2, 1.2, (40, 2))
    keep = GRID.pixel_of(tx) != GRID.pixel_of(rx)
    tx, rx = tx[keep], rx[keep]
    window = segment_pixel_lengths(GRID, tx, rx)
    kinds = GRID.kinds.ravel()
    np.testing.assert_allclose(window.sum(axis=1).A1, np.linalg.norm(rx - tx, axis=1), rtol=1e-9)
    for n in range(len(tx)):
        expected = sampled_lengths_by_kind(tx[n], rx[n])
        row = window.getrow(n)
        for kind in (BUILDING, PARK):
            assert row.data[kinds[row.indices] == kind].sum() == pytest.approx(expected[kind], abs=0.05)


def test_obstruction_grows_with_building_length_crossed():
    env = make_environment(GRID, NO_RANDOMNESS)
    tx = centre(0, 7)  # left road, level with the first row of big blocks
    receivers = np.array([centre(ix, 7) for ix in (13, 14, 27, 28, 41, 42, 55)])  # behind 1, 2, 3, 4 blocks
    receivers[:, 1] += 0.3  # a slight slope, so the segment is not on a pixel row
    obstruction = env.components(np.repeat(tx[None], len(receivers), 0), receivers)["obstruction"]
    building_m = np.array([sampled_lengths_by_kind(tx, rx)[BUILDING] for rx in receivers])
    park_m = np.array([sampled_lengths_by_kind(tx, rx)[PARK] for rx in receivers])
    assert np.all(np.diff(obstruction) > -1e-3) and obstruction[-1] > 3 * obstruction[0] > 0  # 1 vs 4 blocks
    expected = env.physics.building_db_per_m * building_m + env.physics.park_db_per_m * park_m
    np.testing.assert_allclose(obstruction, expected, atol=0.1)


def test_log_distance_part_matches_the_formula():
    physics = LinkPhysics(pl0_db=75.0, exponent=2.9, d0_m=1.0, shadowing_std_db=0.0, noise_std_db=0.0)
    env = make_environment(GRID, physics)
    tx = np.repeat(centre(0, 0)[None], 4, 0)
    rx = np.array([centre(1, 0), centre(4, 0), centre(20, 0), centre(55, 0)])
    distance = np.linalg.norm(rx - tx, axis=1)
    parts = env.components(tx, rx)
    np.testing.assert_allclose(parts["log_distance"], 75.0 + 29.0 * np.log10(distance))
    links = sample_links(env, 50, seed=1).links
    expected = links.path_loss_db - 75.0 - 29.0 * np.log10(links.distance_m)
    np.testing.assert_allclose(links.shadowing_db(), expected, atol=1e-9)


def test_path_loss_is_the_sum_of_its_parts_and_finite():
    data = sample_links(make_environment(GRID, seed=2), 2000, seed=5)
    total = sum(data.components.values())
    np.testing.assert_allclose(data.links.path_loss_db, total)
    assert np.isfinite(data.links.path_loss_db).all()
    assert np.all(GRID.pixel_of(data.links.tx_xy) != GRID.pixel_of(data.links.rx_xy))
    np.testing.assert_allclose(data.slf, GRID.slf)  # the default physics reproduce the paper's normalised SLF
    assert 0.9 < data.components["noise"].std() < 1.1


def test_shadowing_correlation_decays_like_the_exponential_model():
    decorrelation_m, std = 15.0, 3.0
    rng = np.random.default_rng(0)
    lags = np.array([0.0, 5.0, 15.0, 30.0, 60.0])
    num_fields, num_points = 300, 60
    start = rng.uniform([20, 20], [120, 80], (num_points, 2))
    angle = rng.uniform(0, 2 * np.pi, num_points)
    direction = np.column_stack([np.cos(angle), np.sin(angle)])
    products = np.zeros(len(lags))
    for _ in range(num_fields):
        field = CorrelatedField.sample(std, decorrelation_m, 512, rng)
        at_start = field(start)
        for k, lag in enumerate(lags):
            products[k] += np.mean(at_start * field(start + lag * direction))
    correlation = products / num_fields / std**2
    np.testing.assert_allclose(correlation, np.exp(-lags / decorrelation_m), atol=0.08)


def test_environment_is_shared_and_deterministic():
    a, b = make_environment(GRID, seed=4), make_environment(GRID, seed=4)
    xy = GRID.centres[GRID.road_pixels[:30]]
    np.testing.assert_array_equal(a.shadowing_field(xy), b.shadowing_field(xy))
    assert not np.allclose(a.shadowing_field(xy), make_environment(GRID, seed=5).shadowing_field(xy))


def test_routes_stay_on_roads_and_move_to_neighbouring_pixels():
    routes = fleet_routes(GRID, 4, 400, seed=1)
    assert np.isin(routes, GRID.road_pixels).all()
    ix, iy = np.divmod(routes, GRID.shape[1])
    steps = np.abs(np.diff(ix, axis=1)) + np.abs(np.diff(iy, axis=1))
    assert (steps == 1).all()
    assert len(np.unique(routes)) > 200  # the fleet explores the map
    np.testing.assert_array_equal(fleet_routes(GRID, 2, 400, seed=1), routes[:2])  # k's route: (seed, k) only


def test_client_stream_is_deterministic_local_and_valid():
    env = make_environment(GRID, seed=0)
    first = list(client_stream(GRID, 1, 30, 12, seed=7, generator=env, num_clients=5))
    again = list(client_stream(GRID, 1, 30, 12, seed=7, generator=env, num_clients=5))
    other = list(client_stream(GRID, 2, 30, 12, seed=7, generator=env, num_clients=5))
    assert len(first) == 30 and all(len(batch) == 12 for batch in first)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x.path_loss_db, y.path_loss_db)
        np.testing.assert_array_equal(x.rx_xy, y.rx_xy)
    assert not np.array_equal(first[0].tx_xy, other[0].tx_xy)
    routes = fleet_routes(GRID, 5, 30, seed=7)
    for step, batch in enumerate(first):
        assert (GRID.pixel_of(batch.tx_xy) == routes[1, step]).all()
        partners = GRID.pixel_of(batch.rx_xy)
        assert (partners != routes[1, step]).all() and np.isin(partners, GRID.road_pixels).all()
        others = np.delete(routes[:, step], 1)
        assert np.isin(others[others != routes[1, step]], partners).all()  # every other vehicle is a partner
        assert np.isfinite(batch.path_loss_db).all()


def test_bad_positions_raise():
    env = make_environment(GRID, seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.measure(np.array([[-1.0, 5.0]]), np.array([[10.0, 1.0]]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside"):
        env.measure(np.array([[400.0, 5.0]]), np.array([[10.0, 1.0]]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        env.measure(np.array([[np.nan, 5.0]]), np.array([[10.0, 1.0]]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="same pixel"):
        env.measure(np.array([[1.0, 1.0]]), np.array([[2.0, 2.0]]), np.random.default_rng(0))


@pytest.mark.skipif(not SIONNA_A2A_PATH.exists(),
                    reason=f"{SIONNA_A2A_PATH.name} not shipped; make it with `python datasets/sionna_a2a.py`")
def test_sionna_file_loads_in_the_same_structure():
    data = load_sionna_a2a()
    links = data.links
    assert links.tx_xy.shape == links.rx_xy.shape == (len(links), 2) and len(links) > 1000
    assert np.isfinite(links.path_loss_db).all() and 40 < links.path_loss_db.min() < links.path_loss_db.max() < 300
    assert np.all(GRID.pixel_of(links.tx_xy) != GRID.pixel_of(links.rx_xy))
    assert np.isin(GRID.pixel_of(links.rx_xy), GRID.road_pixels).all()
    assert data.slf.shape == (GRID.num_pixels,) and set(np.unique(data.slf)) == {0.0, 1.0}
    for key in ("carrier_hz", "antenna_height_m", "max_depth", "samples_per_src", "sionna_rt_version", "wall_time_s"):
        assert key in data.metadata
    censored = load_sionna_a2a(censored_db=180.0)
    assert len(censored.links) == len(links) + data.metadata["num_censored"]
    assert (censored.links.path_loss_db == 180.0).sum() == data.metadata["num_censored"]
