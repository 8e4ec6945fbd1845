"""Link-adaptation policies: OLLA variants, CQI-Tune, RI-CQI-Tune, throughput and gain arithmetic."""

import numpy as np
import pytest

from fedsim.data.link_env import ChannelConfig, SimulationConfig, run_episode
from fedsim.data.nr_tables import LogisticBler, link_tables, transport_block_size
from fedsim.link_adaptation import (
    GlobalOffsetOlla,
    PerCqiOlla,
    cqi_tune,
    make_olla,
    period_throughput_bps,
    rank_window,
    ri_cqi_tune,
    table_cqi,
    table_rank,
    throughput_gain,
)

TABLES = link_tables(2)
MODEL = LogisticBler(2)
THRESHOLDS = np.array([np.inf] + [MODEL.snr_at_bler(int(TABLES.mcs[q])) for q in range(1, 16)])
FAST = SimulationConfig(prbs_per_subband=16, chunk_periods=8)
SHORT = ChannelConfig("B", 100.0, 30.0, "low", csi_period_ms=10)


def test_table_cqi_takes_the_highest_cqi_meeting_its_threshold():
    thresholds = np.arange(16, dtype=float)              # CQI q needs q dB
    effective = np.array([np.full(16, 7.5), np.full(16, -3.0), np.r_[0, np.full(10, 20.0), np.full(5, 0.0)]])
    assert table_cqi(effective, thresholds).tolist() == [7, 1, 10]


def test_table_rank_maximises_rank_times_spectral_efficiency():
    cqi_per_rank = [15, 10, 7, 4]                      # SE 7.41, 4.52, 2.73, 1.48
    scores = [i * TABLES.cqi_se[q] for i, q in zip(range(1, 5), cqi_per_rank)]
    assert table_rank(cqi_per_rank, TABLES.cqi_se) == int(np.argmax(scores)) + 1 == 2
    assert table_rank([2, 1, 1, 1], TABLES.cqi_se, r_max=2) == 1


def test_olla_step_ratio_is_nine_and_updates_only_the_pair_in_use():
    olla = PerCqiOlla(THRESHOLDS)
    assert olla.delta_up_db == 0.5 and olla.delta_up_db / olla.delta_down_db == pytest.approx(9.0)
    before = olla.thresholds_db_.copy()
    olla.update(2, 7, np.array([False]))
    changed = np.argwhere(olla.thresholds_db_ != before).tolist()
    assert changed == [[1, 7]] and olla.thresholds_db_[1, 7] == pytest.approx(before[1, 7] + 0.5)
    olla.update(2, 7, np.array([True, True]))
    assert olla.thresholds_db_[1, 7] == pytest.approx(before[1, 7] + 0.5 - 2 * 0.5 / 9)


def test_olla_clips_sequentially():
    olla = PerCqiOlla(THRESHOLDS)
    olla.update(1, 5, np.r_[np.zeros(30, bool), True])   # 30 NACKs hit the +10 dB clip, then one ACK
    assert olla.thresholds_db_[0, 5] == pytest.approx(THRESHOLDS[5] + 10.0 - 0.5 / 9)
    classic = GlobalOffsetOlla(THRESHOLDS)
    assert classic.delta_up_db == 1.0 and classic.delta_up_db / classic.delta_down_db == pytest.approx(9.0)
    classic.update(1, 3, np.zeros(50, bool))
    assert classic.offset_db_ == 20.0
    classic.update(4, 9, np.ones(9, bool))
    assert classic.offset_db_ == pytest.approx(19.0)
    assert np.allclose(classic.thresholds_db_[1:], THRESHOLDS[1:] + 19.0)
    with pytest.raises(ValueError, match="olla"):
        make_olla("fancy", THRESHOLDS)


def _static_link(olla, snr_db, mismatch_db, num_tx=20000, seed=0):
    """Per-transmission OLLA on a static channel whose true BLER curves are ``mismatch_db`` worse than the table's."""
    rng = np.random.default_rng(seed)
    errors = np.empty(num_tx, bool)
    for k in range(num_tx):
        cqi = int(olla.select(np.full((1, 16), snr_db))[0])
        nack = rng.random() < MODEL.cb_bler(int(TABLES.mcs[cqi]), snr_db - mismatch_db)
        olla.update(1, cqi, np.array([not nack]))
        errors[k] = nack
    return errors


@pytest.mark.parametrize("mismatch_db", [0.0, 3.0, -3.0])
def test_global_olla_converges_to_the_bler_target(mismatch_db):
    errors = _static_link(GlobalOffsetOlla(THRESHOLDS, 1), 12.3, mismatch_db)
    assert errors[10000:].mean() == pytest.approx(0.1, abs=0.01)


def test_per_cqi_olla_corrects_an_optimistic_table_and_stays_at_or_below_target():
    olla = PerCqiOlla(THRESHOLDS, 1)
    first_cqi = int(olla.select(np.full((1, 16), 12.3))[0])
    errors = _static_link(olla, 12.3, 3.0)
    assert errors[:3].all()                           # the AWGN table is 3 dB optimistic at first
    assert int(olla.select(np.full((1, 16), 12.3))[0]) < first_cqi
    assert olla.thresholds_db_[0, first_cqi] > THRESHOLDS[first_cqi] + 0.3
    assert errors[10000:].mean() <= 0.12              # thresholds of the CQIs in use move up, never jointly


def test_cqi_tune_backs_off_by_exactly_one_with_k_equal_one():
    called = []
    cqi, predictions = cqi_tune(9, lambda q: called.append(q) or 0.9)
    assert (cqi, predictions, called) == (8, [0.9], [9])
    assert cqi_tune(9, lambda q: 0.0) == (9, [0.0])
    assert cqi_tune(9, lambda q: 0.89) == (9, [0.89])
    assert cqi_tune(1, lambda q: 0.9) == (1, [])


def test_deep_back_off_goes_down_to_one_or_to_the_first_safe_cqi():
    assert cqi_tune(9, lambda q: 0.9, deep=True) == (1, [0.9] * 8)
    cqi, predictions = cqi_tune(12, lambda q: 0.9 if q >= 10 else 0.2, deep=True)
    assert cqi == 9 and predictions == [0.9, 0.9, 0.9, 0.2]


@pytest.mark.parametrize("rank, expected", [(1, [1, 2, 3]), (2, [1, 2, 3]), (3, [2, 3, 4]), (4, [2, 3, 4])])
def test_rank_window(rank, expected):
    assert list(rank_window(rank, 4)) == expected


def test_rank_window_respects_r_max():
    assert list(rank_window(2, 2)) == [1, 2]


def test_ri_cqi_tune_picks_the_best_rank_times_se_after_back_off():
    cqi_per_rank = [15, 12, 11, 7]
    rank = table_rank(cqi_per_rank, TABLES.cqi_se)
    assert rank == 3                                     # 3 * 5.12 beats 2 * 5.55, 1 * 7.41 and 4 * 2.73
    assert ri_cqi_tune(rank, cqi_per_rank, lambda i, q: 0.0, TABLES.cqi_se)[:2] == (3, 11)
    # the predictor flags rank 3 only: rank 3 drops to CQI 10 (3 * 4.52 = 13.6) and rank 2 keeps 2 * 5.55
    # = 11.1, rank 4 keeps 4 * 2.73 = 10.9 -> rank 3 with CQI 10 still wins
    asked = []

    def flag_rank_three(i, q):
        asked.append((i, q))
        return 0.9 if i == 3 else 0.0

    chosen_rank, chosen_cqi, predictions = ri_cqi_tune(rank, cqi_per_rank, flag_rank_three, TABLES.cqi_se)
    assert asked == [(2, 12), (3, 11), (4, 7)] and len(predictions) == 3
    assert (chosen_rank, chosen_cqi) == (3, 10)
    # flagging everything: brute force over the window of i * SE(max(CQI - 1, 1))
    backed_off = {i: max(cqi_per_rank[i - 1] - 1, 1) for i in rank_window(rank)}
    best = max(rank_window(rank), key=lambda i: i * TABLES.cqi_se[backed_off[i]])
    assert ri_cqi_tune(rank, cqi_per_rank, lambda i, q: 0.95, TABLES.cqi_se)[:2] == (best, backed_off[best])
    # a deep back-off of rank 3 to CQI 5 (3 * 1.91) makes rank 2 (2 * 5.55) the best: the rank changes
    picked = ri_cqi_tune(3, [15, 12, 11, 7], lambda i, q: 0.9 if (i == 3 and q > 5) else 0.0, TABLES.cqi_se,
                         deep=True)
    assert picked[:2] == (2, 12) and len(picked[2]) == 1 + 7 + 1


def test_cqi_tune_in_an_episode_lowers_the_table_cqi_by_one_and_keeps_the_rank(recording_predictor):
    flagging = recording_predictor(0.9)
    result = run_episode(SHORT, 15.0, 6, seed=1, method="cqi-tune", predictor=flagging, sim=FAST)
    assert np.array_equal(result.rank, result.table_rank)
    assert np.array_equal(result.cqi, np.maximum(result.table_cqi - 1, 1))
    assert len(flagging.calls) == np.sum(result.table_cqi > 1) and len(flagging.observed) == 6
    assert np.all(result.x[:, 9] == result.cqi) and np.all(result.x[:, 8] == result.rank)
    deep = run_episode(SHORT, 15.0, 6, seed=1, method="cqi-tune", predictor=recording_predictor(0.9),
                       deep_backoff=True, sim=FAST)
    assert np.all(deep.cqi == 1)
    silent = run_episode(SHORT, 15.0, 6, seed=1, method="cqi-tune", predictor=recording_predictor(0.0), sim=FAST)
    baseline = run_episode(SHORT, 15.0, 6, seed=1, method="olla", sim=FAST)
    assert np.array_equal(silent.cqi, baseline.cqi) and np.array_equal(silent.throughput_bps,
                                                                       baseline.throughput_bps)


def test_ri_cqi_tune_in_an_episode_predicts_once_per_window_rank(recording_predictor):
    predictor = recording_predictor(0.0)
    result = run_episode(SHORT, 25.0, 5, seed=2, method="ri-cqi-tune", predictor=predictor, sim=FAST)
    windows = [len(rank_window(r)) for r in result.table_rank]
    assert result.num_predictions.tolist() == windows
    candidate_ranks = [int(x[8]) for x in predictor.calls]
    assert candidate_ranks[:windows[0]] == list(rank_window(result.table_rank[0]))
    # the CSI-RS capacity feature is recomputed per candidate rank and grows with the rank at 25 dB
    first = predictor.calls[:windows[0]]
    assert len({float(x[1]) for x in first}) == len(first)


def test_throughput_arithmetic_and_gain():
    assert period_throughput_bps(150, 1000, 160) == pytest.approx(150 * 1000 / (160 * 0.5e-3))
    result = run_episode(SHORT, 20.0, 4, seed=0, sim=FAST)
    for t in range(4):
        tbs = transport_block_size(TABLES.mcs_qm[result.cqi[t]], TABLES.mcs_r1024[result.cqi[t]], result.rank[t],
                                   273, 1)
        assert result.tbs_bits[t] == tbs
        assert result.throughput_bps[t] == pytest.approx((1 - result.p_bler[t]) * tbs / 0.5e-3)
    snr = [16.0, 20.0, 24.0, 28.0]
    gain = throughput_gain(snr, [110.0, 220.0, 330.0, 1.0], [100.0, 200.0, 300.0, 2.0], (16, 20, 24))
    assert gain == pytest.approx(660 / 600 - 1)
    with pytest.raises(ValueError, match="not in the evaluated"):
        throughput_gain(snr, [1, 1, 1, 1], [1, 1, 1, 1], (32, 36))
