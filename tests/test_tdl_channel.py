"""TDL channel: tap tables, delay spread, Jakes autocorrelation, Kronecker correlation, frequency correlation."""

import numpy as np
import pytest
from scipy.special import j0

from fedsim.data.tdl_channel import (
    TDL_PROFILES,
    TDLChannel,
    antenna_correlation,
    rms_delay_spread,
    scaled_profile,
    subband_frequencies,
)


def test_tap_tables_have_the_38901_sizes_and_normalised_powers():
    assert {k: len(v[0]) for k, v in TDL_PROFILES.items()} == {"A": 23, "B": 23, "C": 24}
    for letter, (delays, powers_db) in TDL_PROFILES.items():
        assert len(delays) == len(powers_db) and delays[0] == 0 and powers_db.max() == 0
        _, powers = scaled_profile(letter, 50.0)
        assert powers.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("letter", ["A", "B", "C"])
@pytest.mark.parametrize("delay_spread_ns", [10.0, 30.0, 200.0])
def test_scaled_profile_has_the_requested_rms_delay_spread(letter, delay_spread_ns):
    delays, powers = scaled_profile(letter, delay_spread_ns)
    assert rms_delay_spread(delays, powers) == pytest.approx(delay_spread_ns * 1e-9, rel=0.01)


def test_unknown_profile_and_correlation_are_rejected():
    with pytest.raises(ValueError, match="profile"):
        scaled_profile("D", 30.0)
    with pytest.raises(ValueError, match="correlation"):
        TDLChannel.draw("A", 30.0, 10.0, "extreme", rng=0)


def test_36101_correlation_matrix():
    a = 0.9
    expected_first_row = [1, a ** (1 / 9), a ** (4 / 9), a]
    matrix = antenna_correlation(a, 4)
    assert np.allclose(matrix[0], expected_first_row) and np.allclose(matrix, matrix.T)
    assert np.allclose(matrix[1], [a ** (1 / 9), 1, a ** (1 / 9), a ** (4 / 9)])
    assert np.array_equal(antenna_correlation(0.0, 4), np.eye(4))
    loaded = antenna_correlation(a, 4, high=True)
    assert np.allclose(loaded, (matrix + 0.00012 * np.eye(4)) / 1.00012)


def test_subband_grid_covers_100_mhz():
    freqs = subband_frequencies(273, 4)
    assert len(freqs) == 69 and len(subband_frequencies(273, 2)) == 137
    assert freqs[0] == pytest.approx(-(273 / 2 - 2) * 360e3) and np.all(np.diff(freqs[:-1]) == 4 * 360e3)


def test_grid_evaluation_equals_direct_evaluation_and_is_deterministic():
    channel = TDLChannel.draw("B", 100.0, 50.0, "medium", rng=3)
    freqs = subband_frequencies(273, 16)
    starts, offsets = np.array([0.0, 0.08, 0.4]), np.array([0.0, 0.5e-3, 7.25e-3])
    grid = channel.frequency_response_grid(starts, offsets, freqs)
    assert grid.shape == (3, 3, len(freqs), 4, 4)
    for p, start in enumerate(starts):
        assert np.allclose(grid[p], channel.frequency_response(start + offsets, freqs))
    again = TDLChannel.draw("B", 100.0, 50.0, "medium", rng=3).frequency_response_grid(starts, offsets, freqs)
    assert np.array_equal(grid, again)


def test_fading_has_unit_power_and_the_jakes_autocorrelation():
    doppler = 20.0
    lags = np.arange(0, 41) * 1e-3                       # f_D * lag from 0 to 0.8
    origins = np.arange(10) * 0.5                        # well-separated time origins
    products = []
    for seed in range(12):
        channel = TDLChannel.draw("A", 30.0, doppler, "low", rng=seed)
        h = channel.frequency_response_grid(origins, lags, np.zeros(1))[:, :, 0]   # [origin, lag, 4, 4]
        products.append(np.mean(h[:, :1] .conj() * h, axis=(0, 2, 3)))
    autocorrelation = np.mean(products, axis=0)
    assert autocorrelation[0].real == pytest.approx(1.0, abs=0.1)
    expected = j0(2 * np.pi * doppler * lags)
    assert np.max(np.abs(autocorrelation.real - expected)) < 0.1
    assert np.max(np.abs(autocorrelation.imag)) < 0.1


def test_spatial_correlation_is_the_kronecker_product():
    rx, tx = antenna_correlation(0.9, 4), antenna_correlation(0.3, 4)   # medium: beta 0.9 (UE), alpha 0.3 (gNB)
    samples = []
    for seed in range(40):
        channel = TDLChannel.draw("C", 300.0, 100.0, "medium", rng=seed)
        h = channel.frequency_response(np.arange(10) * 0.05, subband_frequencies(273, 69))
        samples.append(h.reshape(-1, 16))
    vec = np.concatenate(samples)
    empirical = vec.T @ vec.conj() / len(vec)             # E[h_i h_j^*], row-major vec(H)
    assert np.max(np.abs(empirical - np.kron(rx, tx))) < 0.1


def test_frequency_correlation_matches_the_power_delay_profile():
    delays, powers = scaled_profile("B", 100.0)
    spacing = 1.44e6
    freqs = np.array([0.0, spacing])
    products = []
    for seed in range(30):
        channel = TDLChannel.draw("B", 100.0, 100.0, "low", rng=seed)
        h = channel.frequency_response(np.arange(20) * 0.05, freqs)
        products.append(np.mean(h[:, 0] * h[:, 1].conj()))
    expected = np.sum(powers * np.exp(2j * np.pi * spacing * delays))
    assert abs(np.mean(products) - expected) < 0.08
    assert abs(expected) < 0.9   # the check is not trivial: the subbands decorrelate at 100 ns
