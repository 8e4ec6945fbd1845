"""The synthetic MIMO-OFDM CSI generator of SPG-MIBO (digest 001, Secs. 6.3 and 11.6) and the WiMANS-shaped loader."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedsim.data.csi import (
    ACTIVITIES,
    CSIRoom,
    dynamic_csi,
    dynamic_path_lengths,
    feature_moments,
    load_csi_arrays,
    make_csi_dataset,
    make_csi_environment,
    standardise,
    zone_of,
)

ROOM = CSIRoom()


@pytest.fixture(scope="module")
def small():
    return make_csi_dataset(300, seed=3, keep_csi=True)


def per_link_summary(ds):
    """Mean log|D| and the angle of the mean phase step per link, over informative subcarriers and time."""
    columns = []
    for link in range(ds.n_pair):
        sel = ds.informative[link]
        log_abs, cos, sin = (ds.features[:, c, link][:, sel].mean(axis=(1, 2)) for c in range(3))
        columns += [log_abs, np.arctan2(sin, cos)]
    return np.stack(columns, axis=1)


def test_shapes_dtypes_and_labels(small):
    n, m, t = 300, ROOM.n_subcarriers, ROOM.n_snapshots
    assert len(small) == n and small.n_pair == 2 and small.n_subcarriers_total == 64
    assert small.features.shape == (n, 3, 2, m, t) and small.features.dtype == np.float32
    assert np.isfinite(small.features).all()
    np.testing.assert_allclose(small.features[:, 1] ** 2 + small.features[:, 2] ** 2, 1.0, atol=1e-5)
    assert small.position.shape == (n, 2) and small.position.dtype == np.float64
    grid = {tuple(p) for p in np.round(ROOM.grid_points, 6)}
    assert len(grid) == 17 * 12 and {tuple(p) for p in np.round(small.position, 6)} <= grid
    assert small.activity.dtype == np.int64 and set(small.activity.tolist()) == {0, 1, 2}
    assert ((small.respiration_rate >= 0.2) & (small.respiration_rate <= 0.5)).all()
    assert small.waveform.shape == (n, t) and small.waveform.dtype == np.float32
    assert np.abs(small.waveform).max() <= 1.0
    assert small.csi.shape == (n, 2, m, t) and small.csi.dtype == np.complex64
    assert small.informative.shape == (2, m) and small.informative.dtype == bool
    for row in ~small.informative:  # one contiguous block of round(0.25 M) = 8 per link
        blocked = np.flatnonzero(row)
        assert len(blocked) == 8 and blocked[-1] - blocked[0] == 7
    assert make_csi_dataset(5).csi is None

    part = small.subset(np.arange(10, 20))
    assert len(part) == 10 and part.csi.shape[0] == 10
    np.testing.assert_array_equal(part.features, small.features[10:20])
    np.testing.assert_array_equal(small.subset(small.activity == 2).activity, 2)


def test_other_layouts_and_sizes():
    room = CSIRoom(tx=((0.05, 1.5, 1.0), (3.95, 2.7, 1.2)), n_subcarriers=64, n_snapshots=4)
    ds = make_csi_dataset(7, room=room)
    assert ds.features.shape == (7, 3, 4, 64, 4) and ds.n_subcarriers_total == 256
    assert (~ds.informative).sum(axis=1).tolist() == [16] * 4
    assert make_csi_dataset(3, room=CSIRoom(interference_fraction=0.0)).informative.all()
    swayed, still = make_csi_dataset(20, room=CSIRoom(sway=0.1)), make_csi_dataset(20)
    np.testing.assert_array_equal(swayed.position, still.position)  # labels stay on the grid...
    assert not np.allclose(swayed.features, still.features)  # ...the scatterer moves
    assert len(still.subset(3)) == 1


def test_determinism_and_prefix_stability():
    a = make_csi_dataset(530, env_seed=2, seed=5)
    b = make_csi_dataset(530, env_seed=2, seed=5)
    for name in ("features", "position", "activity", "respiration_rate", "waveform", "informative"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = make_csi_dataset(530, env_seed=2, seed=6)
    assert not np.array_equal(a.position, c.position) and not np.array_equal(a.features, c.features)
    head = make_csi_dataset(520, env_seed=2, seed=5)  # samples are generated in chunks of 512: cross a boundary
    np.testing.assert_array_equal(head.features, a.features[:520])
    np.testing.assert_array_equal(head.activity, a.activity[:520])


def test_env_seed_changes_static_csi_and_interference_blocks():
    envs = [make_csi_environment(ROOM, env_seed) for env_seed in range(4)]
    for e in envs[1:]:
        assert np.abs(e.static - envs[0].static).max() > 0.1 * np.abs(envs[0].static).mean()
    assert len({e.informative.tobytes() for e in envs}) == 4
    np.testing.assert_array_equal(make_csi_environment(ROOM, 1).static, envs[1].static)
    # The static path lengths are geometry, not environment: only the phases move.
    np.testing.assert_array_equal(envs[1].static_lengths, envs[0].static_lengths)

    a = make_csi_dataset(40, env_seed=0, seed=1)
    b = make_csi_dataset(40, env_seed=1, seed=1)
    c = make_csi_dataset(40, env_seed=1, seed=9)
    np.testing.assert_array_equal(a.position, b.position)  # seed fixes the samples...
    assert not np.array_equal(a.informative, b.informative)  # ...env_seed the environment
    assert not np.allclose(a.features, b.features)
    np.testing.assert_array_equal(b.informative, c.informative)


def test_dynamic_power_follows_the_path_loss_law_and_falls_with_distance():
    points = ROOM.grid_points
    one_path = CSIRoom(dynamic_coefficients=(1.0, 0.0, 0.0), path_loss_exponent=2.5)
    power = (np.abs(dynamic_csi(one_path, points, 1)) ** 2).mean(axis=2)
    length = dynamic_path_lengths(one_path, np.column_stack([points, np.full(len(points), 0.7)]))[..., 0]
    np.testing.assert_allclose(power, (0.7 / length**2.5) ** 2, rtol=1e-10)

    # The default three coherent paths interfere, but the nearest third of the grid is still stronger than the
    # farthest by at least half of what the 1/d^2 law of the direct path alone gives (link 0: 2.3 of 3.7 dB).
    power = (np.abs(dynamic_csi(ROOM, points, 0)) ** 2).mean(axis=2)
    length = dynamic_path_lengths(ROOM, np.column_stack([points, np.full(len(points), 1.1)]))[..., 0]
    for link in range(ROOM.n_pair):
        near, far = np.argsort(length[:, link])[:68], np.argsort(length[:, link])[-68:]
        law_db = 40 * np.log10(length[far, link].mean() / length[near, link].mean())
        assert 10 * np.log10(power[near, link].mean() / power[far, link].mean()) > max(0.5 * law_db, 1.0)


def test_measured_csi_is_static_plus_dynamic_plus_small_impairments(small):
    env = make_csi_environment(ROOM, 0)
    heights = np.asarray(ROOM.activity_heights)[small.activity]
    dynamic = dynamic_csi(ROOM, small.position, small.activity)
    residual = small.csi.mean(axis=-1) - env.static - dynamic  # respiration, phase error, AGC and noise
    sel = env.informative
    ratio = (np.abs(residual[:, sel]) ** 2).mean() / (np.abs(dynamic[:, sel]) ** 2).mean()
    assert ratio < 0.1
    # Power of D falls with the direct path length (standing targets, informative subcarriers).
    d_power = (np.abs(small.csi - env.static[None, :, :, None]) ** 2).mean(axis=-1)
    length = dynamic_path_lengths(ROOM, np.column_stack([small.position, heights]))[..., 0]
    for link in range(2):
        standing = small.activity == 0
        p, d = d_power[standing, link][:, sel[link]].mean(axis=1), length[standing, link]
        assert np.corrcoef(np.argsort(np.argsort(p)), np.argsort(np.argsort(d)))[0, 1] < -0.4


def test_activity_changes_the_csi():
    per_class = [make_csi_dataset(150, seed=4, activities=(activity,)) for activity in range(len(ACTIVITIES))]
    for activity, ds in enumerate(per_class):
        assert (ds.activity == activity).all()
        np.testing.assert_array_equal(ds.position, per_class[0].position)  # same seed: same positions
    means = [ds.features[:, 0][:, ds.informative].mean() for ds in per_class]
    # Lower scattering point and gamma 1.0 / 0.7 / 0.45: log|D| falls from standing to lying.
    assert means[0] - means[1] > 0.2 and means[1] - means[2] > 0.3
    assert means[0] - means[2] > 0.8 * np.log(1 / 0.45)


def test_interfered_subcarriers_are_noisier(small):
    inf = small.informative
    temporal_std = small.features[:, 0].std(axis=-1)  # (n, link, M)
    assert temporal_std[:, ~inf].mean() > 3 * temporal_std[:, inf].mean()
    # Phase steps: consistent over time on informative subcarriers, close to random on interfered ones.
    resultant = np.hypot(small.features[:, 1].mean(axis=-1), small.features[:, 2].mean(axis=-1))
    step_ok = inf & np.roll(inf, -1, axis=1)  # both ends of the step informative (the last repeats its left one)
    step_ok[:, -1] = inf[:, -1] & inf[:, -2]
    step_bad = ~inf & np.roll(~inf, -1, axis=1)
    assert resultant[:, step_ok].mean() > 0.9 and resultant[:, step_bad].mean() < 0.5


def test_poor_coverage_link_is_weaker():
    room = CSIRoom(poor_coverage_link=1)
    base, poor = make_csi_dataset(80, seed=2), make_csi_dataset(80, seed=2, room=room)
    for link, drop in ((0, 0.0), (1, np.log(10))):
        sel = base.informative[link]
        diff = base.features[:, 0, link][:, sel].mean() - poor.features[:, 0, link][:, sel].mean()
        assert abs(diff - drop) < 0.5


def test_knn_probe_beats_predicting_the_mean():
    train = make_csi_dataset(1500, env_seed=0, seed=10)
    test = make_csi_dataset(400, env_seed=0, seed=11)
    probe = make_pipeline(StandardScaler(), KNeighborsRegressor(10)).fit(per_link_summary(train), train.position)
    rmse = np.sqrt(((probe.predict(per_link_summary(test)) - test.position) ** 2).sum(axis=1).mean())
    baseline = np.sqrt(((train.position.mean(axis=0) - test.position) ** 2).sum(axis=1).mean())
    assert rmse < 0.7 * baseline


def test_zone_and_activity_subsets():
    assert zone_of(np.array([[0.4, 0.4], [2.0, 0.4], [0.4, 1.6], [3.6, 2.6], [1.8, 1.4]])).tolist() == [0, 1, 2, 3, 0]
    ds = make_csi_dataset(200, zones=(1, 2), activities=[0, 2], seed=7)
    assert set(ds.zone.tolist()) == {1, 2} and set(ds.activity.tolist()) == {0, 2}
    one = make_csi_dataset(50, zones=3, activities=1)
    assert (one.zone == 3).all() and (one.activity == 1).all()
    assert (one.position[:, 0] >= 2.0).all() and (one.position[:, 1] >= 1.5).all()


def test_feature_moments_and_standardise(small):
    mean, std = feature_moments(small.features)
    assert mean.shape == std.shape == (3,) and (std > 0).all()
    z = standardise(small.features, mean, std)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3, 4)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3, 4)), 1.0, atol=1e-3)


def test_wimans_shaped_loader():
    rng = np.random.default_rng(0)
    amplitude = rng.uniform(0.5, 30.0, size=(4, 20, 3, 3, 30))
    ds = load_csi_arrays(amplitude, position=rng.uniform(0, 3, (4, 2)), activity=np.array([0, 8, 3, 3]))
    assert ds.features.shape == (4, 1, 9, 30, 20) and ds.features.dtype == np.float32
    assert ds.n_subcarriers_total == 270 and ds.informative.all() and ds.room is None
    assert ds.features[2, 0, 1 * 3 + 2, 17, 5] == pytest.approx(np.log(amplitude[2, 5, 1, 2, 17] + 1e-6), rel=1e-6)
    assert np.isnan(ds.respiration_rate).all() and np.isnan(ds.waveform).all()
    assert ds.activity.tolist() == [0, 8, 3, 3] and len(ds.subset([1, 3])) == 2
    assert feature_moments(ds.features)[0].shape == (1,)
    bare = load_csi_arrays(amplitude[:1])
    assert bare.activity.tolist() == [-1] and np.isnan(bare.position).all()


def _nan_amplitude():
    a = np.ones((2, 4, 3, 3, 30))
    a[1, 2, 0, 0, 5] = np.nan
    return a


@pytest.mark.parametrize(("call", "name"), [
    (lambda: make_csi_dataset(0), "n_samples"),
    (lambda: make_csi_dataset(-3), "n_samples"),
    (lambda: make_csi_dataset(2.5), "n_samples"),
    (lambda: make_csi_dataset(5, zones=(0, 4)), "zones"),
    (lambda: make_csi_dataset(5, zones=()), "zones"),
    (lambda: make_csi_dataset(5, activities=(3,)), "activities"),
    (lambda: make_csi_dataset(5, activities=[-1]), "activities"),
    (lambda: make_csi_dataset(5, env_seed=-1), "env_seed"),
    (lambda: make_csi_dataset(5, seed=-1), "seed"),
    (lambda: CSIRoom(n_subcarriers=0), "n_subcarriers"),
    (lambda: CSIRoom(n_snapshots=0), "n_snapshots"),
    (lambda: CSIRoom(width=0.0), "width"),
    (lambda: CSIRoom(grid=-0.2), "grid"),
    (lambda: CSIRoom(margin=2.0), "margin"),
    (lambda: CSIRoom(sway=0.5), "sway"),
    (lambda: CSIRoom(poor_coverage_link=2), "poor_coverage_link"),
    (lambda: CSIRoom(interference_fraction=1.0), "interference_fraction"),
    (lambda: CSIRoom(rx=((5.0, 1.0, 1.0),)), "rx"),
    (lambda: load_csi_arrays(np.ones((4, 3, 3, 30))), "amplitude"),
    (lambda: load_csi_arrays(np.ones((0, 4, 3, 3, 30))), "amplitude"),
    (lambda: load_csi_arrays(_nan_amplitude()), "amplitude"),
    (lambda: load_csi_arrays(-np.ones((1, 4, 3, 3, 30))), "amplitude"),
    (lambda: load_csi_arrays(np.ones((2, 4, 3, 3, 30)), position=np.zeros((2, 3))), "position"),
    (lambda: load_csi_arrays(np.ones((2, 4, 3, 3, 30)), activity=np.array([0.5, 1.0])), "activity"),
    (lambda: standardise(np.zeros((2, 3, 2, 4, 4)), np.zeros(2), np.ones(2)), "mean"),
    (lambda: dynamic_csi(ROOM, np.zeros((2, 2)), 3), "activity"),
])
def test_bad_inputs_raise_a_one_line_value_error(call, name):
    with pytest.raises(ValueError, match=name) as info:
        call()
    assert "\n" not in str(info.value)
