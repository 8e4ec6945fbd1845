import numpy as np
import pytest

from fedsim.data.qos import (
    FEATURES,
    SCHEMA,
    decode_gaussian,
    encode_gaussian,
    generate_cells,
    modelling_q,
    read_csv_cells,
    windowed,
    write_csv_cells,
)


@pytest.fixture(scope="module")
def small():
    return generate_cells(num_cells=12, days=2, samples_per_window=12, seed=5)


def test_generator_schema_sizes_and_determinism(small):
    tables, regimes = small
    assert len(tables) == 12 and list(regimes) == [1, 2, 3, 2, 0, 0, 0, 0, 1, 1, 0, 1]
    for table in tables:
        assert set(table) == set(SCHEMA) and len(table["Time"]) == 2 * 96 * 12
    again, _ = generate_cells(num_cells=12, days=2, samples_per_window=12, seed=5)
    assert all(np.array_equal(a["Rsrp"], b["Rsrp"]) for a, b in zip(tables, again))
    q = modelling_q(tables[0])
    assert np.all(np.isfinite(q)) and -140 < q[:, 2].mean() < -70  # RSRP in dBm


def test_more_cells_than_the_simulator_has():
    tables, regimes = generate_cells(num_cells=15, days=1, samples_per_window=4, seed=0)
    assert len(tables) == 15 and len(regimes) == 15 and set(regimes) <= {0, 1, 2, 3}


def test_gaussian_encoding_round_trip():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3, 3))
    cov = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(3)
    mu = rng.standard_normal((5, 3))
    mu2, chol = decode_gaussian(encode_gaussian(mu, cov))
    np.testing.assert_allclose(mu2, mu)
    np.testing.assert_allclose(chol @ chol.transpose(0, 2, 1), cov, atol=1e-10)


def test_windows_targets_and_chronological_split(small):
    tables, _ = small
    table = tables[3]
    data = windowed(table)
    q = modelling_q(table)
    window = np.floor(table["Time"] / 900).astype(int)
    for row in (0, len(data.y) // 2, len(data.y) - 1):
        target = data.target_window[row]
        qw = q[window == target]
        expected = encode_gaussian(qw.mean(0), np.cov(qw, rowvar=False) + 1e-6 * np.eye(3))
        np.testing.assert_allclose(data.y[row], expected, rtol=1e-9)
        own = target - 4
        qo = q[window == own]
        np.testing.assert_allclose(data.x[row, len(FEATURES):],
                                   encode_gaussian(qo.mean(0), np.cov(qo, rowvar=False) + 1e-6 * np.eye(3)))
    w_of = data.target_window - 4
    assert w_of[data.split == "train"].max() < w_of[data.split == "val"].min()
    assert w_of[data.split == "val"].max() < w_of[data.split == "test"].min()
    assert abs(np.mean(data.split == "train") - 0.7) < 0.03
    assert data.x.shape[1] == 27 and data.y.shape[1] == 9


def test_bad_samples_and_empty_windows_are_left_out_not_fatal(small):
    tables, _ = small
    table = {k: v.copy() for k, v in tables[0].items()}
    window = np.floor(table["Time"] / 900).astype(int)
    table["SINR"][window == 10] = np.nan          # a window with no valid sample
    table["AvgDelay"][::50] = -1.0                 # log of a negative latency: NaN
    data = windowed(table)
    assert data.windows_dropped == 1
    assert np.all(np.isfinite(data.x)) and np.all(np.isfinite(data.y))
    assert 10 not in set(data.target_window) and 10 not in set(data.target_window - 4)


def test_csv_round_trip(small, tmp_path):
    tables, _ = small
    write_csv_cells(tables[:3], tmp_path)
    back = read_csv_cells(tmp_path)
    assert len(back) == 3
    for a, b in zip(tables[:3], back):
        for column in SCHEMA:
            np.testing.assert_allclose(b[column], a[column], rtol=1e-8, atol=1e-9)


def test_csv_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CSV files"):
        read_csv_cells(tmp_path)
    (tmp_path / "cell.csv").write_text("Time,CellId\n1,1\n")
    with pytest.raises(ValueError, match="lacks columns FlowId"):
        read_csv_cells(tmp_path)


def test_drift_moves_the_drifted_cells_only():
    base, _ = generate_cells(num_cells=12, days=3, samples_per_window=8, seed=2)
    drifted, _ = generate_cells(num_cells=12, days=3, samples_per_window=8, seed=2, drift=True)
    late = base[4]["Time"] >= 56 * 3600
    assert np.array_equal(base[0]["Rsrp"], drifted[0]["Rsrp"])
    assert not np.allclose(base[4]["AvgDelay"][late], drifted[4]["AvgDelay"][late])
    assert np.array_equal(base[4]["AvgDelay"][~late], drifted[4]["AvgDelay"][~late])


def test_radio_map_places_ues_on_covered_cells_and_sets_rsrp(tmp_path):
    from fedsim.data.qos import RadioMap

    ny, nx = 30, 40
    xs, ys = np.meshgrid(np.arange(nx) * 10.0 - 200, np.arange(ny) * 10.0 - 150)
    centers = np.stack([xs, ys], -1).astype(np.float32)
    gain = np.full((2, ny, nx), -np.inf, np.float32)
    gain[0, :10, :10] = -100.0
    gain[1, 20:, 30:] = np.linspace(-120, -90, 10 * 10).reshape(10, 10)
    path = tmp_path / "map.npz"
    np.savez(path, path_gain_db=gain, cell_centers=centers, enb_positions=np.zeros((2, 3), np.float32),
             frequency_hz=np.float32(3.5e9), cell_size_m=np.float32(10.0))
    tables, _ = generate_cells(num_cells=2, days=1, samples_per_window=4, seed=0, radio_map=RadioMap(path))
    t0 = tables[0]
    assert np.all((t0["UE_X"] >= -205) & (t0["UE_X"] <= -105) & (t0["UE_Y"] >= -155) & (t0["UE_Y"] <= -55))
    base = 30 - 10 * np.log10(12 * 106) - 100.0
    offset = np.median(t0["Rsrp"]) - base  # the cell's constant offset
    assert abs(offset) < 10 and np.std(t0["Rsrp"] - base - offset) == pytest.approx(2.0, rel=0.15)
    with pytest.raises(ValueError, match="radio map has 2 cells"):
        RadioMap(path).candidates(5)


def test_shipped_munich_radio_map_gives_plausible_rsrp():
    from pathlib import Path

    from fedsim.data.qos import RadioMap

    path = Path(__file__).resolve().parents[1] / "datasets" / "munich_path_gain.npz"
    tables, _ = generate_cells(num_cells=12, days=1, samples_per_window=4, seed=0, radio_map=RadioMap(path))
    rsrp = np.concatenate([t["Rsrp"] for t in tables])
    assert np.all(np.isfinite(rsrp)) and -160 < np.median(rsrp) < -60
