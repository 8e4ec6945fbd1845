"""Link-adaptation policies of LightTune (paper 003): table selection with OLLA, CQI-Tune, RI-CQI-Tune, throughput.

Pure functions and two small stateful OLLA classes over numpy arrays; the episode simulator
(:mod:`fedsim.data.link_env`) drives them once per CSI-RS period. Ranks are 1-based, CQIs are 1..15, and arrays
indexed by CQI have 16 entries (index 0, CQI "out of range", is never selected).

Choices the paper leaves open (digest 5.4-5.8, 8.1 A8-A9, 8.2 B1/B4):

- The baseline keeps per-rank, per-CQI SNR thresholds initialised at the AWGN 10 % points and updates only the
  (rank, CQI) in use: Delta_up = 0.5 dB, Delta_down = Delta_up / 9, clipped to +/-10 dB around the initial value
  (:class:`PerCqiOlla`, [rec] 5.6). The classic global offset of ``sionna.sys.OuterLoopLinkAdaptation``
  (Delta_up = 1 dB, BLER target 0.1, offset clipped to +/-20 dB) is :class:`GlobalOffsetOlla`.
- When no CQI meets its threshold the table reports CQI 1 (the UE always transmits; there is no CQI 0 in use).
- Rank selection (eq. 27) and RI-CQI-Tune (eq. 29) rank candidates by i * SE of the CQI (Q_m R of the CQI table,
  eq. 28); ties go to the lowest rank (first maximum).
- CQI-Tune's floor is CQI_min = max(CQI - 1, 1) (one prediction, "K = 1"; the lowered CQI is not re-checked);
  ``deep=True`` uses CQI_min = 1 and re-checks each lowered CQI ([rec] A8).
- Throughput: full buffer, one new TB per slot, Sum ACK * TBS / (n_tx * 0.5 ms); the gain over a range of SNR
  points is the ratio of range-averaged throughputs minus one ([rec] 5.8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

TAU_BLER = 0.9
"""Back-off threshold on the predicted BLER (paper: tau_BLER = 0.9)."""
SLOT_S = 0.5e-3
"""Slot duration at 30 kHz subcarrier spacing."""
MEDIUM_SNR_DB = (16.0, 20.0, 24.0)
HIGH_SNR_DB = (28.0, 32.0, 36.0, 40.0)
"""SNR points averaged for the paper's "medium" and "high" SNR gains ([rec] 5.8)."""


def table_cqi(effective_snr_db: np.ndarray, thresholds_db: np.ndarray) -> np.ndarray:
    """Table CQI per rank: the highest q with effective SNR(rank, q) >= threshold(rank, q), else 1.

    Parameters
    ----------
    effective_snr_db : ndarray [R, 16]
        EESM effective SNR at the CSI-RS occasion for each rank and each CQI's MCS (column 0 ignored).
    thresholds_db : ndarray [R, 16] or [16]
        SNR thresholds (column 0 ignored).
    """
    meets = np.asarray(effective_snr_db)[:, 1:] >= np.asarray(thresholds_db)[..., 1:]
    highest = meets.shape[1] - np.argmax(meets[:, ::-1], axis=1)
    return np.where(meets.any(axis=1), highest, 1)


def table_rank(cqi_per_rank: Sequence[int], cqi_se: np.ndarray, r_max: int = 4) -> int:
    """Eq. 27: the rank i in 1..r_max maximising i * SE(CQI^(i)) (first maximum on ties)."""
    scores = [i * cqi_se[cqi_per_rank[i - 1]] for i in range(1, r_max + 1)]
    return int(np.argmax(scores)) + 1


class _Olla:
    """What both OLLA variants share: the initial thresholds, the steps and the table selection."""

    thresholds_db_: np.ndarray

    def __init__(self, initial_thresholds_db: np.ndarray, delta_up_db: float, bler_target: float, clip_db: float):
        self.initial_thresholds_db = np.asarray(initial_thresholds_db, dtype=float)
        self.delta_up_db = delta_up_db
        self.delta_down_db = delta_up_db * bler_target / (1.0 - bler_target)
        self.clip_db = clip_db

    def select(self, effective_snr_db: np.ndarray) -> np.ndarray:
        """Table CQI per rank ([R] ints) from the effective SNRs [R, 16]."""
        return table_cqi(effective_snr_db, self.thresholds_db_)


class PerCqiOlla(_Olla):
    """Table-based OLLA with per-rank, per-CQI SNR thresholds (digest 5.6, the paper's baseline).

    ``thresholds_db_[r-1, q]`` starts at the AWGN 10 %-BLER SNR of CQI q's MCS; each HARQ outcome of a
    transmission with (r, q) moves only that entry: -Delta_down on ACK, +Delta_up on NACK, with
    Delta_up / Delta_down = (1 - BLER_T) / BLER_T, clipped to the initial value +/- ``clip_db``.

    Parameters
    ----------
    initial_thresholds_db : ndarray [16]
        AWGN 10 % points per CQI (index 0 ignored).
    num_ranks : int
        Number of ranks kept (r_max).
    delta_up_db : float
        Step on NACK.
    bler_target : float
        BLER_T; sets Delta_down = Delta_up * BLER_T / (1 - BLER_T).
    clip_db : float
        Maximum distance from the initial threshold.
    """

    def __init__(self, initial_thresholds_db: np.ndarray, num_ranks: int = 4, delta_up_db: float = 0.5,
                 bler_target: float = 0.1, clip_db: float = 10.0):
        super().__init__(initial_thresholds_db, delta_up_db, bler_target, clip_db)
        self.thresholds_db_ = np.tile(self.initial_thresholds_db, (num_ranks, 1))

    def update(self, rank: int, cqi: int, acks: np.ndarray) -> None:
        """Apply the HARQ outcomes (True = ACK), in order, to the threshold of (rank, cqi)."""
        initial = self.initial_thresholds_db[cqi]
        self.thresholds_db_[rank - 1, cqi] = _olla_walk(
            self.thresholds_db_[rank - 1, cqi], acks, -self.delta_down_db, self.delta_up_db,
            initial - self.clip_db, initial + self.clip_db)


class GlobalOffsetOlla(_Olla):
    """Classic OLLA with one offset for all ranks and CQIs (Pedersen 2005; ``sionna.sys.OuterLoopLinkAdaptation``).

    CQI^(r) = max{q : SNR_eff(r, q) - offset >= gamma10(q)}; offset -= Delta_down on ACK, += Delta_up on NACK,
    Delta_up / Delta_down = (1 - BLER_T) / BLER_T, clipped to +/- ``clip_db``.
    """

    def __init__(self, initial_thresholds_db: np.ndarray, num_ranks: int = 4, delta_up_db: float = 1.0,
                 bler_target: float = 0.1, clip_db: float = 20.0):
        super().__init__(initial_thresholds_db, delta_up_db, bler_target, clip_db)
        self.offset_db_ = 0.0

    @property
    def thresholds_db_(self) -> np.ndarray:
        """Effective per-CQI thresholds gamma10(q) + offset ([16])."""
        return self.initial_thresholds_db + self.offset_db_

    def update(self, rank: int, cqi: int, acks: np.ndarray) -> None:
        self.offset_db_ = _olla_walk(self.offset_db_, acks, -self.delta_down_db, self.delta_up_db,
                                     -self.clip_db, self.clip_db)


def make_olla(kind: str, initial_thresholds_db: np.ndarray, num_ranks: int = 4,
              delta_up_db: float | None = None) -> PerCqiOlla | GlobalOffsetOlla:
    """``"per-cqi"`` -> :class:`PerCqiOlla`, ``"global"`` -> :class:`GlobalOffsetOlla` (default steps unless given)."""
    steps = {} if delta_up_db is None else {"delta_up_db": delta_up_db}
    if kind == "per-cqi":
        return PerCqiOlla(initial_thresholds_db, num_ranks, **steps)
    if kind == "global":
        return GlobalOffsetOlla(initial_thresholds_db, num_ranks, **steps)
    raise ValueError(f"olla must be 'per-cqi' or 'global', got {kind!r}")


def _olla_walk(value: float, acks: np.ndarray, step_ack: float, step_nack: float, low: float, high: float) -> float:
    """Sequential clipped random walk; vectorised when the unclipped path stays inside [low, high]."""
    steps = np.where(np.asarray(acks, dtype=bool), step_ack, step_nack)
    path = value + np.cumsum(steps)
    if path.size == 0:
        return float(value)
    if low <= path.min() and path.max() <= high:
        return float(path[-1])
    for step in steps:
        value = min(max(value + step, low), high)
    return float(value)


def cqi_tune(cqi: int, predict_at: Callable[[int], float], tau: float = TAU_BLER,
             deep: bool = False) -> tuple[int, list[float]]:
    """CQI-Tune back-off (Alg. 3): lower the CQI while the predicted BLER is >= tau, down to CQI_min.

    Parameters
    ----------
    cqi : int
        The table CQI of the rank in use.
    predict_at : callable
        q -> predicted BLER of transmitting with CQI q (the caller builds the features).
    tau : float
        Back-off threshold tau_BLER.
    deep : bool
        False: CQI_min = max(cqi - 1, 1), at most one prediction ([rec] A8). True: CQI_min = 1, each lowered
        CQI is predicted again.

    Returns
    -------
    (cqi, predictions) : the adjusted CQI and the predictions made, in order.
    """
    cqi_min = 1 if deep else max(cqi - 1, 1)
    predictions: list[float] = []
    while cqi > cqi_min:
        predictions.append(float(predict_at(cqi)))
        if predictions[-1] < tau:
            break
        cqi -= 1
    return cqi, predictions


def rank_window(rank: int, r_max: int = 4) -> range:
    """RI-CQI-Tune's candidate ranks [ceil(r/2), min(ceil(r/2) + 2, r_max)] (eq. 29)."""
    low = math.ceil(rank / 2)
    return range(low, min(low + 2, r_max) + 1)


def ri_cqi_tune(rank: int, cqi_per_rank: Sequence[int], predict_at: Callable[[int, int], float],
                cqi_se: np.ndarray, tau: float = TAU_BLER, deep: bool = False,
                r_max: int = 4) -> tuple[int, int, list[float]]:
    """RI-CQI-Tune (Alg. 4): CQI-Tune on every rank of the window, then the best i * SE(CQI_L^(i)).

    Parameters
    ----------
    rank : int
        The table rank r (eq. 27).
    cqi_per_rank : sequence of int
        Table CQI of each rank 1..r_max (entry i-1 for rank i).
    predict_at : callable
        (i, q) -> predicted BLER with rank i and CQI q; the caller recomputes the rank-dependent features
        (CSI-RS capacity) for rank i ([rec] A9).
    cqi_se : ndarray [16]
        Per-layer spectral efficiency of each CQI.

    Returns
    -------
    (rank, cqi, predictions) : the reported pair and every prediction made (at most 3 with ``deep=False``).
    """
    best: tuple[float, int, int] | None = None
    predictions: list[float] = []
    for i in rank_window(rank, r_max):
        cqi_i, made = cqi_tune(int(cqi_per_rank[i - 1]), lambda q, i=i: predict_at(i, q), tau, deep)
        predictions.extend(made)
        score = i * cqi_se[cqi_i]
        if best is None or score > best[0]:
            best = (score, i, cqi_i)
    return best[1], best[2], predictions


def period_throughput_bps(num_ack: int | np.ndarray, tbs_bits: int | np.ndarray, num_tx: int,
                          slot_s: float = SLOT_S) -> np.ndarray:
    """Throughput of a CSI-RS period: Sum ACK * TBS / (n_tx * slot) in bit/s (digest 5.8)."""
    return np.asarray(num_ack, dtype=float) * np.asarray(tbs_bits, dtype=float) / (num_tx * slot_s)


def range_mean(snr_points_db: Sequence[float], values: Sequence[float], snr_range_db: Sequence[float]) -> float:
    """Mean of ``values`` over the SNR points listed in ``snr_range_db`` (all must be present)."""
    lookup = {float(s): float(v) for s, v in zip(snr_points_db, values)}
    missing = [s for s in snr_range_db if float(s) not in lookup]
    if missing:
        raise ValueError(f"SNR points {missing} are not in the evaluated points {sorted(lookup)}")
    return float(np.mean([lookup[float(s)] for s in snr_range_db]))


def throughput_gain(snr_points_db: Sequence[float], throughput_method: Sequence[float],
                    throughput_baseline: Sequence[float], snr_range_db: Sequence[float] = MEDIUM_SNR_DB) -> float:
    """Gain of a method over the baseline on an SNR range: mean TP_method / mean TP_baseline - 1 ([rec] 5.8)."""
    return (range_mean(snr_points_db, throughput_method, snr_range_db)
            / range_mean(snr_points_db, throughput_baseline, snr_range_db) - 1.0)
