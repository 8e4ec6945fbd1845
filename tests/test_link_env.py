"""Episode simulator: PHY abstraction against direct formulas, features, determinism, common random numbers."""

import numpy as np
import pytest

from fedsim.data.link_env import (
    CQI_FEATURE,
    FEATURE_NAMES,
    RANK_FEATURE,
    ChannelConfig,
    EpisodeResult,
    SimulationConfig,
    _ChannelTrace,
    eesm_db,
    lmmse_sinr,
    log2_det_capacity,
    run_episode,
    training_data,
)
from fedsim.data.nr_tables import link_tables

FAST = SimulationConfig(prbs_per_subband=16, chunk_periods=8)
SHORT = ChannelConfig("A", 30.0, 10.0, "low", csi_period_ms=10)


def test_feature_names_follow_the_digest_order():
    assert len(FEATURE_NAMES) == 12
    assert FEATURE_NAMES[:5] == ("csi-snr-db", "csi-capacity", "delay-spread", "doppler", "pdsch-snr-0")
    assert FEATURE_NAMES[-4:] == ("rank", "cqi", "num-rb", "num-dmrs")
    assert (RANK_FEATURE, CQI_FEATURE) == (8, 9)


def test_channel_names_parse_and_bad_names_fail_clearly():
    config = ChannelConfig.parse("TDL-B100", 50, correlation="medium", csi_period_ms=40)
    assert config == ChannelConfig("B", 100.0, 50.0, "medium", 40)
    assert config.name == "TDL-B100" and config.num_slots == 80
    assert ChannelConfig.parse("tdl-c200", 10).profile == "C"
    for bad in ("TDL-D30", "B100", "TDL-A", "TDL-Ax", "CDL-A30"):
        with pytest.raises(ValueError, match="TDL-A30"):
            ChannelConfig.parse(bad, 10)
    with pytest.raises(ValueError, match="correlation"):
        ChannelConfig(correlation="none")
    assert SimulationConfig().subband_prbs(200.0) == 2 and SimulationConfig().subband_prbs(100.0) == 4


def test_lmmse_sinr_matches_the_interference_plus_noise_formula():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((5, 4, 4)) + 1j * rng.standard_normal((5, 4, 4))
    for rank in (1, 2, 3, 4):
        precoder = np.linalg.qr(rng.standard_normal((4, 4)) + 1j * rng.standard_normal((4, 4)))[0][:, :rank]
        snr = 10.0 / rank
        effective = h @ precoder
        sinr = lmmse_sinr(effective.conj().swapaxes(-1, -2) @ effective, snr)
        for f in range(5):
            for layer in range(rank):
                others = np.delete(effective[f], layer, axis=1)
                covariance = np.eye(4) + snr * others @ others.conj().T
                column = effective[f][:, layer]
                direct = snr * np.real(column.conj() @ np.linalg.solve(covariance, column))
                assert sinr[f, layer] == pytest.approx(direct, rel=1e-9)


def test_capacity_matches_slogdet():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 3)) + 1j * rng.standard_normal((3, 3, 3))
    gram = x.conj().swapaxes(-1, -2) @ x
    expected = np.linalg.slogdet(np.eye(3) + 2.5 * gram)[1] / np.log(2)
    assert np.allclose(log2_det_capacity(gram, 2.5), expected)


def test_eesm_properties():
    assert eesm_db(np.full(7, 12.0), 5.0) == pytest.approx(10 * np.log10(12.0))
    rng = np.random.default_rng(2)
    sinr = rng.exponential(20.0, size=(50, 30))
    for beta in (1.6, 10.0, 132.0):
        effective = 10 ** (eesm_db(sinr, beta) / 10)
        assert np.all(effective <= sinr.mean(axis=1) + 1e-9) and np.all(effective >= sinr.min(axis=1) - 1e-9)
    assert 10 ** (eesm_db(sinr, 1e7) / 10) == pytest.approx(sinr.mean(axis=1), rel=1e-4)
    multi_axis = eesm_db(sinr.reshape(50, 5, 6), 3.0, axis=(1, 2))
    assert np.allclose(multi_axis, eesm_db(sinr, 3.0))


def test_csi_precoder_is_the_wideband_dominant_eigenvector():
    sim = SimulationConfig(prbs_per_subband=16, csi_estimation_gain=1e12)
    trace = _ChannelTrace(SHORT, 10.0, 3, sim, link_tables(2), 4)
    period = next(trace.periods(1))
    h = trace.tdl.frequency_response(np.zeros(1), trace.frequencies)[0]
    covariance = np.einsum("fri,frj->ij", h.conj(), h)
    top = np.linalg.eigh(covariance)[1][:, -1]
    direct = 10 * np.log10(np.mean(10.0 * np.sum(np.abs(h @ top) ** 2, axis=1)))
    assert period.csi_wideband_snr_db[0] == pytest.approx(direct, abs=1e-6)
    assert period.csi_capacity[0] == pytest.approx(np.mean(np.log2(1 + 10.0 * np.sum(np.abs(h @ top) ** 2, axis=1))))


def test_episode_shapes_ranges_and_features():
    result = run_episode(SHORT, 10.0, 10, seed=0, sim=FAST)
    assert result.x.shape == (10, 12) and np.all(np.isnan(result.predicted))
    assert np.all((result.p_bler >= 0) & (result.p_bler <= 1))
    assert np.allclose(result.p_bler * 20, np.round(result.p_bler * 20))          # n_tx = 20 at 10 ms
    assert np.all((result.rank >= 1) & (result.rank <= 4)) and np.all((result.cqi >= 1) & (result.cqi <= 15))
    assert np.array_equal(result.x[:, RANK_FEATURE], result.rank) and np.array_equal(result.x[:, CQI_FEATURE],
                                                                                     result.cqi)
    assert np.all(result.x[:, 10] == 273) and np.all(result.x[:, 11] == 1)
    assert result.x[:, 0].mean() == pytest.approx(10.0, abs=4.0)                  # CSI-RS SNR around the SNR
    assert np.all(np.abs(np.log(result.x[:, 2] / 30.0)) < 0.5) and np.all(np.abs(np.log(result.x[:, 3] / 10)) < 0.8)
    assert result.mean_throughput == pytest.approx(result.throughput_bps.mean())


def test_same_seed_same_episode_and_chunking_does_not_matter():
    first = run_episode(SHORT, 12.0, 12, seed=5, sim=FAST)
    second = run_episode(SHORT, 12.0, 12, seed=5, sim=SimulationConfig(prbs_per_subband=16, chunk_periods=5))
    for name in ("p_bler", "rank", "cqi", "throughput_bps"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert np.allclose(first.x, second.x, rtol=1e-12, atol=1e-12)   # batched BLAS may round differently
    again = run_episode(SHORT, 12.0, 12, seed=5, sim=FAST)
    assert np.array_equal(first.x, again.x)
    other = run_episode(SHORT, 12.0, 12, seed=6, sim=FAST)
    assert not np.array_equal(first.x[:, 0], other.x[:, 0])


def test_common_random_numbers_across_methods(recording_predictor):
    one = _ChannelTrace(SHORT, 15.0, 11, FAST, link_tables(2), 4)
    two = _ChannelTrace(SHORT, 15.0, 11, FAST, link_tables(2), 4)
    for a, b in zip(one.periods(9), two.periods(9)):
        assert np.array_equal(a.uniforms, b.uniforms) and np.array_equal(a.slot_gram, b.slot_gram)
        assert a.csi_snr_db == b.csi_snr_db
    olla = run_episode(SHORT, 15.0, 9, seed=11, sim=FAST)
    tuned = run_episode(SHORT, 15.0, 9, seed=11, method="cqi-tune", predictor=recording_predictor(0.95), sim=FAST)
    assert not np.array_equal(olla.cqi, tuned.cqi)                                 # decisions differ ...
    for column in (0, 2, 3):                                                       # ... the channel does not
        assert np.array_equal(olla.x[:, column], tuned.x[:, column])
    # identical decisions -> identical ACKs: the uniforms do not depend on the method
    passive = run_episode(SHORT, 15.0, 9, seed=11, method="ri-cqi-tune", predictor=recording_predictor(0.0), sim=FAST)
    assert np.array_equal(passive.p_bler, olla.p_bler) and np.array_equal(passive.x, olla.x)


def test_passive_predictor_sees_the_used_pair_without_changing_decisions(recording_predictor):
    predictor = recording_predictor(0.9)
    watched = run_episode(SHORT, 15.0, 6, seed=4, predictor=predictor, sim=FAST)
    plain = run_episode(SHORT, 15.0, 6, seed=4, sim=FAST)
    assert np.array_equal(watched.cqi, plain.cqi) and np.array_equal(watched.p_bler, plain.p_bler)
    assert np.all(watched.predicted == 0.9) and len(predictor.observed) == 6
    assert np.array_equal(np.array(predictor.calls), watched.x)
    assert [p for _, p in predictor.observed] == watched.p_bler.tolist()


def test_prediction_error_and_false_alarm_arithmetic():
    result = EpisodeResult(x=np.zeros((4, 12)), predicted=np.array([0.9, 0.9, 0.0, np.nan]),
                           p_bler=np.array([0.95, 0.1, 0.5, 0.2]), rank=np.ones(4, int), cqi=np.ones(4, int),
                           throughput_bps=np.array([1.0, 2.0, 3.0, 6.0]), table_rank=np.ones(4, int),
                           table_cqi=np.ones(4, int), tbs_bits=np.ones(4, int), num_predictions=np.ones(4, int))
    assert result.prediction_error == pytest.approx((0.05 + 0.8 + 0.5) / 3)
    assert result.false_alarm_rate == pytest.approx(1 / 4)
    assert result.mean_throughput == 3.0


def test_methods_are_validated():
    with pytest.raises(ValueError, match="method"):
        run_episode(SHORT, 10.0, 2, seed=0, method="magic", sim=FAST)
    with pytest.raises(ValueError, match="predictor"):
        run_episode(SHORT, 10.0, 2, seed=0, method="cqi-tune", sim=FAST)
    with pytest.raises(ValueError, match="r_max"):
        run_episode(SHORT, 10.0, 2, seed=0, r_max=5, sim=FAST)


def test_link_behaves_physically():
    low, high = (run_episode(SHORT, snr, 12, seed=3, sim=FAST) for snr in (0.0, 25.0))
    assert high.mean_throughput > 3 * low.mean_throughput
    assert high.cqi.mean() > low.cqi.mean()
    correlated = run_episode(ChannelConfig("A", 30.0, 10.0, "high", 10), 25.0, 12, seed=3, sim=FAST)
    assert correlated.rank.mean() < high.rank.mean()


def test_training_data_randomises_the_pair_and_is_deterministic():
    x, p_bler = training_data(SHORT, (0.0, 12.0), 30, seed=0, periods_per_episode=10, sim=FAST)
    assert x.shape == (30, 12) and p_bler.shape == (30,)
    assert np.all((p_bler >= 0) & (p_bler <= 1))
    assert set(np.unique(x[:, 10])) <= {68, 136, 273} and set(np.unique(x[:, 11])) <= {1, 2, 3}
    assert len(np.unique(x[:, CQI_FEATURE])) >= 4 and len(np.unique(x[:, RANK_FEATURE])) >= 2
    assert p_bler.max() - p_bler.min() > 0.5                # randomised CQIs give both clean and failed periods
    snr_per_episode = x[:, 0].reshape(3, 10).mean(axis=1)
    assert snr_per_episode.max() - snr_per_episode.min() > 0.5
    x_again, p_again = training_data(SHORT, (0.0, 12.0), 30, seed=0, periods_per_episode=10, sim=FAST)
    assert np.array_equal(x, x_again) and np.array_equal(p_bler, p_again)
