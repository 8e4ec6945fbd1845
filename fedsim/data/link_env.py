"""Link-adaptation episodes for LightTune (paper 003): a fast numpy abstraction of a 4x4 NR downlink.

One episode = one (channel configuration, SNR, seed) over ``num_periods`` CSI-RS periods (digest 7.1):

1. **Channel**: a correlated TR 38.901 TDL channel (:mod:`fedsim.data.tdl_channel`) on a subband grid (one
   sample per 4 PRBs of 273, 69 subbands; per 2 PRBs when DS >= 200 ns), evolving continuously in time.
2. **CSI at the CSI-RS occasion** (start of the period): H_est = H + CN(0, 1/(rho G_CE)), G_CE = 10. Wideband SVD
   precoder F_i = the i dominant right singular vectors of Sum_f H_est^H H_est; post-LMMSE SINR per subband and
   layer, SINR = 1/[(I + rho/i F^H H^H H F)^-1]_ll - 1; EESM effective SNR per rank and CQI (beta of the CQI's
   MCS); table CQI per rank from the OLLA thresholds; table RI by eq. 27. The policy
   (:mod:`fedsim.link_adaptation`) then reports (RI, CQI).
3. **Transmissions**: n_tx = period / 0.5 ms slots. Every ``slot_stride``-th slot is simulated and stands for
   the ``slot_stride`` slots of its group ([rec] stride 4). Each simulated slot uses the true channel with the
   stale precoder, the LMMSE SINR with a PDSCH channel-estimation loss SINR / (1 + SINR s2),
   s2 = 1/(rho n_DMRS 6) + 2 (f_D 0.5 ms)^2 ([rec] 7.1 step 3), EESM over the allocated subbands, the AWGN
   code-block BLER of the MCS, TB-BLER = 1 - (1 - BLER_cb)^C with TS 38.212 segmentation, and one uniform per
   slot (ACK iff u >= TB-BLER).
4. **Label** P_BLER = n_NACK / n_tx; **throughput** = Sum ACK TBS / (n_tx 0.5 ms).
5. **Features** (digest 5.2 order, :data:`FEATURE_NAMES`): CSI-RS SNR (dB, + N(0, 0.5^2) dB estimation noise),
   CSI-RS capacity with the rank's precoder (bit/s/Hz), delay-spread estimate (ns, true x lognormal(0, 0.1)),
   Doppler estimate (Hz, true x lognormal(0, 0.15)), the post-equalisation SNR (dB) of the 4 most recent PDSCH
   slots of the previous period (most recent first; these 4 consecutive slots are always simulated), rank, CQI,
   number of RBs, number of DMRS symbols. Period 0 has no previous PDSCH: its 4 PDSCH-SNR features repeat the
   CSI-based wideband post-LMMSE SNR of the candidate rank.

**Common random numbers**: the channel, the CSI estimation noise, the feature noise and the ACK uniforms come
from separate streams of ``SeedSequence(seed)`` and are drawn for every period whatever the method decides, so
two methods run with the same (config, SNR, seed) see the same channel and the same uniforms.

Differences from the paper's internal link-level simulator are listed in ``datasets/link-adaptation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

from fedsim.data.nr_tables import (
    BLER_TARGET,
    BlerModel,
    LinkTables,
    default_bler_model,
    link_tables,
    num_code_blocks,
    tb_bler,
    transport_block_size,
)
from fedsim.data.tdl_channel import CORRELATION_LEVELS, TDL_PROFILES, TDLChannel, subband_frequencies
from fedsim.link_adaptation import (
    SLOT_S,
    TAU_BLER,
    cqi_tune,
    make_olla,
    period_throughput_bps,
    ri_cqi_tune,
    table_rank,
)

FEATURE_NAMES: tuple[str, ...] = (
    "csi-snr-db", "csi-capacity", "delay-spread", "doppler", "pdsch-snr-0", "pdsch-snr-1", "pdsch-snr-2",
    "pdsch-snr-3", "rank", "cqi", "num-rb", "num-dmrs")
"""The paper's 12 input features, in the digest's section 5.2 order."""
CAPACITY_FEATURE = FEATURE_NAMES.index("csi-capacity")
RANK_FEATURE = FEATURE_NAMES.index("rank")
CQI_FEATURE = FEATURE_NAMES.index("cqi")
METHODS = ("olla", "cqi-tune", "ri-cqi-tune", "explore")
NUM_PDSCH_SNR = 4
EXPLORE_STREAM = 7919
"""Salt of the random stream of the "explore" method's (rank, CQI) draws."""
TRAINING_NUM_RB = (68, 136, 273)
TRAINING_NUM_DMRS = (1, 2, 3)


@dataclass(frozen=True)
class ChannelConfig:
    """A test or training channel: TDL profile and delay spread, Doppler, antenna correlation, CSI-RS period."""

    profile: str = "A"
    delay_spread_ns: float = 30.0
    doppler_hz: float = 10.0
    correlation: str = "low"
    csi_period_ms: int = 80

    def __post_init__(self):
        if self.profile not in TDL_PROFILES:
            raise ValueError(f"profile must be one of {sorted(TDL_PROFILES)}, got {self.profile!r}")
        if self.correlation not in CORRELATION_LEVELS:
            raise ValueError(f"correlation must be one of {sorted(CORRELATION_LEVELS)}, got {self.correlation!r}")
        if self.csi_period_ms <= 0 or (2 * self.csi_period_ms) % 1:
            raise ValueError(f"csi_period_ms must be a positive multiple of 0.5 ms, got {self.csi_period_ms}")
        if self.delay_spread_ns <= 0 or self.doppler_hz < 0:
            raise ValueError("delay_spread_ns must be > 0 and doppler_hz >= 0")

    @classmethod
    def parse(cls, name: str, doppler_hz: float, correlation: str = "low", csi_period_ms: int = 80) -> ChannelConfig:
        """``"TDL-B100"`` -> profile B scaled to 100 ns (the paper's naming: letter + RMS delay spread in ns)."""
        prefix, _, rest = name.strip().upper().partition("-")
        letter, digits = rest[:1], rest[1:]
        if prefix != "TDL" or letter not in TDL_PROFILES or not digits.replace(".", "", 1).isdigit():
            raise ValueError(f"channel name must look like 'TDL-A30' (letter in {sorted(TDL_PROFILES)}, delay "
                             f"spread in ns), got {name!r}")
        return cls(letter, float(digits), float(doppler_hz), correlation, csi_period_ms)

    @property
    def name(self) -> str:
        return f"TDL-{self.profile}{self.delay_spread_ns:g}"

    @property
    def num_slots(self) -> int:
        """PDSCH slots per CSI-RS period (= n_tx of eq. 25)."""
        return int(round(self.csi_period_ms * 1e-3 / SLOT_S))


@dataclass(frozen=True)
class SimulationConfig:
    """Numerical knobs of the abstraction (defaults = the digest's [rec] values)."""

    slot_stride: int = 4
    """Simulate every ``slot_stride``-th slot; each simulated slot stands for that many HARQ outcomes."""
    prbs_per_subband: int | None = None
    """Frequency sampling; None = 4 PRBs, or 2 when the delay spread is >= 200 ns (digest 7.1)."""
    num_prb_total: int = 273
    num_rx: int = 4
    num_tx: int = 4
    num_sinusoids: int = 16
    csi_estimation_gain: float = 10.0
    """G_CE: CSI-RS estimation noise variance is 1 / (rho G_CE) per channel entry."""
    csi_snr_noise_db: float = 0.5
    delay_spread_log_sigma: float = 0.1
    doppler_log_sigma: float = 0.15
    pdsch_estimation_loss: bool = True
    doppler_loss_coefficient: float = 2.0
    num_symbols: int = 14
    cqi_table: int = 2
    bler_model: BlerModel | None = field(default=None, compare=False)
    """None = :func:`fedsim.data.nr_tables.default_bler_model` (Sionna table if present, else closed form)."""
    chunk_periods: int = 16
    """Periods whose channel is computed in one vectorised batch (memory vs speed; results agree to round-off)."""

    def subband_prbs(self, delay_spread_ns: float) -> int:
        if self.prbs_per_subband is not None:
            return self.prbs_per_subband
        return 2 if delay_spread_ns >= 200 else 4


class Predictor(Protocol):
    """A BLER predictor as CQI-Tune / RI-CQI-Tune and the online learner see it."""

    def predict(self, x: np.ndarray) -> float:
        """Predicted BLER class value (0, 0.1, ..., 0.9) for one raw 12-feature vector."""
        ...

    def observe(self, x: np.ndarray, p_bler: float) -> None:
        """End of a period: the features of the (rank, CQI) finally used and the realised P_BLER."""
        ...


@dataclass
class EpisodeResult:
    """Per-CSI-RS-period record of an episode (one entry per period)."""

    x: np.ndarray
    """[T, 12] features of the (rank, CQI) used."""
    predicted: np.ndarray
    """[T] last BLER prediction made before transmission (NaN when no predictor). With CQI-Tune's single-step
    back-off the lowered CQI is not re-predicted, so this is the prediction of the table CQI in that case."""
    p_bler: np.ndarray
    rank: np.ndarray
    cqi: np.ndarray
    throughput_bps: np.ndarray
    table_rank: np.ndarray
    table_cqi: np.ndarray
    tbs_bits: np.ndarray
    num_predictions: np.ndarray

    @property
    def mean_throughput(self) -> float:
        """Mean throughput over the episode (bit/s)."""
        return float(np.mean(self.throughput_bps))

    @property
    def mean_bler(self) -> float:
        return float(np.mean(self.p_bler))

    @property
    def prediction_error(self) -> float:
        """Mean |predicted - P_BLER| over periods with a prediction (eq. 26)."""
        return float(np.nanmean(np.abs(self.predicted - self.p_bler)))

    @property
    def false_alarm_rate(self) -> float:
        """Fraction of periods with predicted >= 0.9 while P_BLER < 0.9 (Remark 4)."""
        return float(np.mean((self.predicted >= TAU_BLER) & (self.p_bler < TAU_BLER)))


# --------------------------------------------------------------------------- PHY abstraction


def eesm_db(sinr: np.ndarray, beta: np.ndarray | float, axis: int | tuple[int, ...] = -1) -> np.ndarray:
    """EESM effective SNR in dB: -beta ln(mean exp(-SINR / beta)), computed stably (shifted by the min SINR)."""
    sinr = np.asarray(sinr, dtype=float)
    low = np.min(sinr, axis=axis, keepdims=True)
    mean = np.mean(np.exp(-(sinr - low) / beta), axis=axis, keepdims=True)
    effective = np.squeeze(low - beta * np.log(mean), axis=axis)
    return 10.0 * np.log10(np.maximum(effective, 1e-12))


def lmmse_sinr(gram: np.ndarray, snr_per_layer: float) -> np.ndarray:
    """Post-LMMSE SINR per layer: 1/[(I + snr G)^-1]_ll - 1 for Gram matrices G = F^H H^H H F [..., i, i]."""
    rank = gram.shape[-1]
    if rank == 1:
        return snr_per_layer * gram[..., 0, 0].real[..., None]
    matrix = np.eye(rank) + snr_per_layer * gram
    if rank == 2:  # closed form: diag(A^-1) = (a11, a00) / det A
        a00, a11 = matrix[..., 0, 0].real, matrix[..., 1, 1].real
        det = a00 * a11 - np.abs(matrix[..., 0, 1]) ** 2
        diagonal = np.stack([a11, a00], axis=-1) / det[..., None]
    else:
        diagonal = np.diagonal(np.linalg.inv(matrix), axis1=-2, axis2=-1).real
    return 1.0 / np.maximum(diagonal, 1e-300) - 1.0


def log2_det_capacity(gram: np.ndarray, snr_per_layer: float) -> np.ndarray:
    """log2 det(I + snr G) for Hermitian PSD G [..., i, i] (via Cholesky)."""
    chol = np.linalg.cholesky(np.eye(gram.shape[-1]) + snr_per_layer * gram)
    return 2.0 * np.sum(np.log2(np.diagonal(chol, axis1=-2, axis2=-1).real), axis=-1)


@dataclass
class _Period:
    """Everything about one CSI-RS period that does not depend on the method's decisions."""

    csi_snr_db: float
    delay_spread_est_ns: float
    doppler_est_hz: float
    csi_effective_snr_db: np.ndarray   # [R, 16] EESM at the CSI occasion, per rank and CQI
    csi_capacity: np.ndarray           # [R]
    csi_wideband_snr_db: np.ndarray    # [R] post-LMMSE SNR of the estimated channel (period-0 PDSCH features)
    slot_gram: np.ndarray              # [O, F, Nt, Nt] F^H H^H H F of the true channel at the simulated slots
    uniforms: np.ndarray               # [n_tx] ACK uniforms


class _ChannelTrace:
    """Generates the decision-independent part of an episode, ``chunk_periods`` periods at a time."""

    def __init__(self, channel: ChannelConfig, snr_db: float, seed: int | np.random.SeedSequence,
                 sim: SimulationConfig, tables: LinkTables, r_max: int):
        sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        streams = [np.random.default_rng(s) for s in sequence.spawn(4)]
        self.channel_rng, self.csi_rng, self.feature_rng, self.ack_rng = streams
        self.config, self.sim, self.tables, self.r_max = channel, sim, tables, r_max
        self.rho = 10.0 ** (snr_db / 10.0)
        self.tdl = TDLChannel.draw(channel.profile, channel.delay_spread_ns, channel.doppler_hz,
                                   channel.correlation, self.channel_rng, sim.num_rx, sim.num_tx,
                                   sim.num_sinusoids)
        prbs = sim.subband_prbs(channel.delay_spread_ns)
        self.prbs_per_subband = prbs
        self.frequencies = subband_frequencies(sim.num_prb_total, prbs)
        n_tx, stride = channel.num_slots, sim.slot_stride
        if n_tx % stride:
            raise ValueError(f"slot_stride {stride} must divide the {n_tx} slots of a period")
        sampled = np.arange(stride - 1, n_tx, stride)              # last slot of each group of `stride`
        recent = np.arange(n_tx - NUM_PDSCH_SNR, n_tx)
        self.slots = np.union1d(sampled, recent)
        self.sampled_index = np.searchsorted(self.slots, sampled)
        self.recent_index = np.searchsorted(self.slots, recent)[::-1]   # most recent first
        self.slot_offsets_s = (self.slots + 0.5) * SLOT_S

    def periods(self, num_periods: int) -> Iterator[_Period]:
        for start in range(0, num_periods, self.sim.chunk_periods):
            count = min(self.sim.chunk_periods, num_periods - start)
            yield from self._chunk(start, count)

    def _chunk(self, start: int, count: int) -> list[_Period]:
        sim, rho = self.sim, self.rho
        period_s = self.config.csi_period_ms * 1e-3
        starts = (start + np.arange(count)) * period_s
        h_csi = self.tdl.frequency_response_grid(starts, np.zeros(1), self.frequencies)[:, 0]   # [P, F, Nr, Nt]
        noise = self.csi_rng.standard_normal((*h_csi.shape, 2)) @ np.array([1.0, 1j])
        h_est = h_csi + noise * np.sqrt(0.5 / (rho * sim.csi_estimation_gain))
        covariance = np.einsum("pfri,pfrj->pij", h_est.conj(), h_est)
        _, vectors = np.linalg.eigh(covariance)
        precoder = vectors[..., ::-1]                                   # [P, Nt, Nt], dominant first
        hv_est = h_est @ precoder[:, None]
        gram_est = hv_est.conj().swapaxes(-1, -2) @ hv_est               # [P, F, Nt, Nt]
        h_slots = self.tdl.frequency_response_grid(starts, self.slot_offsets_s, self.frequencies)
        hv = h_slots @ precoder[:, None, None]
        gram = hv.conj().swapaxes(-1, -2) @ hv                            # [P, O, F, Nt, Nt]

        csi_snr_db = 10 * np.log10(rho * np.mean(np.abs(h_csi) ** 2, axis=(1, 2, 3)))
        feature_noise = self.feature_rng.standard_normal((count, 3))
        uniforms = self.ack_rng.random((count, self.config.num_slots))
        beta = self.tables.eesm_beta[1:]
        effective = np.zeros((count, self.r_max, len(self.tables.eesm_beta)))
        capacity = np.zeros((count, self.r_max))
        wideband = np.zeros((count, self.r_max))
        for i in range(1, self.r_max + 1):
            block = gram_est[..., :i, :i]
            sinr = lmmse_sinr(block, rho / i).reshape(count, -1)              # [P, F*i]
            effective[:, i - 1, 1:] = eesm_db(sinr[:, None, :], beta[None, :, None])
            capacity[:, i - 1] = log2_det_capacity(block, rho / i).mean(axis=1)
            wideband[:, i - 1] = 10 * np.log10(sinr.mean(axis=1))
        effective[:, :, 0] = -np.inf
        return [_Period(
            csi_snr_db=float(csi_snr_db[p] + sim.csi_snr_noise_db * feature_noise[p, 0]),
            delay_spread_est_ns=float(self.config.delay_spread_ns
                                      * math.exp(sim.delay_spread_log_sigma * feature_noise[p, 1])),
            doppler_est_hz=float(self.config.doppler_hz * math.exp(sim.doppler_log_sigma * feature_noise[p, 2])),
            csi_effective_snr_db=effective[p], csi_capacity=capacity[p], csi_wideband_snr_db=wideband[p],
            slot_gram=gram[p], uniforms=uniforms[p]) for p in range(count)]


@dataclass
class _Transmission:
    acks: np.ndarray          # [n_tx] bool
    pdsch_snr_db: np.ndarray  # [4] most recent first
    tbs_bits: int


class _Episode:
    """Sequential part of an episode: features, PDSCH transmissions and the OLLA state."""

    def __init__(self, channel: ChannelConfig, snr_db: float, seed: int | np.random.SeedSequence,
                 sim: SimulationConfig, olla: str, r_max: int, olla_delta_up_db: float | None = None):
        self.sim, self.channel, self.r_max = sim, channel, r_max
        self.tables = link_tables(sim.cqi_table)
        self.bler_model = sim.bler_model if sim.bler_model is not None else default_bler_model(sim.cqi_table)
        if self.bler_model.mcs_table != self.tables.mcs_table:
            raise ValueError("the BLER model's MCS table differs from the CQI table's MCS table")
        self.trace = _ChannelTrace(channel, snr_db, seed, sim, self.tables, r_max)
        thresholds = np.array([np.inf] + [self.bler_model.snr_at_bler(int(self.tables.mcs[q]), BLER_TARGET)
                                          for q in range(1, 16)])
        self.olla = make_olla(olla, thresholds, r_max, olla_delta_up_db)
        self.rho = self.trace.rho
        self.previous_pdsch_snr_db: np.ndarray | None = None

    def features(self, period: _Period, rank: int, cqi: int, num_rb: int, num_dmrs: int) -> np.ndarray:
        pdsch = self.previous_pdsch_snr_db
        if pdsch is None:
            pdsch = np.full(NUM_PDSCH_SNR, period.csi_wideband_snr_db[rank - 1])
        return np.array([period.csi_snr_db, period.csi_capacity[rank - 1], period.delay_spread_est_ns,
                         period.doppler_est_hz, *pdsch, rank, cqi, num_rb, num_dmrs], dtype=float)

    def table_choice(self, period: _Period) -> tuple[int, np.ndarray]:
        cqi_per_rank = self.olla.select(period.csi_effective_snr_db)
        return table_rank(cqi_per_rank, self.tables.cqi_se, self.r_max), cqi_per_rank

    def transmit(self, period: _Period, rank: int, cqi: int, num_rb: int, num_dmrs: int) -> _Transmission:
        tables, sim = self.tables, self.sim
        mcs = int(tables.mcs[cqi])
        tbs = transport_block_size(tables.mcs_qm[cqi], tables.mcs_r1024[cqi], rank, num_rb, num_dmrs,
                                   sim.num_symbols)
        num_subbands = math.ceil(num_rb / self.trace.prbs_per_subband)
        # only the used rank and the allocated subbands: the LMMSE inverse is the costliest step
        sinr = lmmse_sinr(period.slot_gram[:, :num_subbands, :rank, :rank], self.rho / rank)  # [O, F_alloc, rank]
        if sim.pdsch_estimation_loss:
            variance = (1.0 / (self.rho * num_dmrs * 6)
                        + sim.doppler_loss_coefficient * (self.channel.doppler_hz * SLOT_S) ** 2)
            sinr = sinr / (1.0 + sinr * variance)
        effective = eesm_db(sinr[self.trace.sampled_index], tables.eesm_beta[cqi], axis=(1, 2))
        error = tb_bler(self.bler_model.cb_bler(mcs, effective), num_code_blocks(tbs, tables.mcs_r1024[cqi] / 1024))
        acks = period.uniforms >= np.repeat(error, sim.slot_stride)
        pdsch_snr_db = 10 * np.log10(sinr[self.trace.recent_index].mean(axis=(1, 2)))
        self.olla.update(rank, cqi, acks)
        self.previous_pdsch_snr_db = pdsch_snr_db
        return _Transmission(acks, pdsch_snr_db, tbs)


def _check_method(method: str, predictor: Predictor | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("cqi-tune", "ri-cqi-tune") and predictor is None:
        raise ValueError(f"method {method!r} needs a predictor")


def run_episode(channel: ChannelConfig, snr_db: float, num_periods: int, seed: int, method: str = "olla",
                predictor: Predictor | None = None, olla: str = "per-cqi", deep_backoff: bool = False,
                r_max: int = 4, num_rb: int = 273, num_dmrs: int = 1, olla_delta_up_db: float | None = None,
                sim: SimulationConfig | None = None) -> EpisodeResult:
    """Simulate one test episode of ``num_periods`` CSI-RS periods with a link-adaptation method.

    Parameters
    ----------
    channel : ChannelConfig
        Channel profile, Doppler, correlation and CSI-RS period.
    snr_db : float
        Average SNR per receive antenna (total transmit power normalised to 1).
    num_periods : int
        Number of CSI-RS periods.
    seed : int
        Seeds the channel, the estimation and feature noise, and the ACK uniforms (common random numbers:
        identical across methods).
    method : {"olla", "cqi-tune", "ri-cqi-tune", "explore"}
        "olla": table + OLLA; a predictor, if given, predicts the used (rank, CQI) and observes the outcome but
        does not change decisions (prediction error / false alarms). "cqi-tune": Alg. 3 on the table rank.
        "ri-cqi-tune": Alg. 4 over the rank window. "explore": the (rank, CQI) randomised around the table
        choice as in :func:`training_data` (drawn from their own stream of ``seed``, so identical for every
        predictor), with ``num_rb`` and ``num_dmrs`` fixed; a predictor predicts and observes as under "olla".
    predictor : Predictor, optional
        Required by the two tune methods; ``observe`` is called at the end of each period with the features of
        the (rank, CQI) used and the realised P_BLER.
    olla : {"per-cqi", "global"}
        Baseline OLLA (:class:`fedsim.link_adaptation.PerCqiOlla` or ``GlobalOffsetOlla``).
    deep_backoff : bool
        CQI_min = 1 instead of max(CQI - 1, 1).
    r_max : int
        Largest rank (<= number of antennas).
    num_rb, num_dmrs : int
        Allocated PRBs (first ``num_rb`` of 273) and DMRS symbols; also features 11-12.
    olla_delta_up_db : float, optional
        OLLA step on NACK (default 0.5 dB per-CQI, 1.0 dB global; Delta_down = Delta_up / 9). The step applies
        per HARQ outcome, i.e. up to 160 times per 80 ms period, so the loop gain per period is large.
    sim : SimulationConfig, optional
        Numerical knobs (slot stride, subband size, BLER model, ...).

    Returns
    -------
    EpisodeResult
    """
    _check_method(method, predictor)
    sim = sim if sim is not None else SimulationConfig()
    if not 1 <= r_max <= min(sim.num_rx, sim.num_tx):
        raise ValueError(f"r_max must be in 1..{min(sim.num_rx, sim.num_tx)}, got {r_max}")
    episode = _Episode(channel, snr_db, seed, sim, olla, r_max, olla_delta_up_db)
    explore_rng = np.random.default_rng(np.random.SeedSequence([seed, EXPLORE_STREAM]))
    cqi_se = episode.tables.cqi_se
    rows: dict[str, list] = {k: [] for k in ("x", "predicted", "p_bler", "rank", "cqi", "throughput_bps",
                                             "table_rank", "table_cqi", "tbs_bits", "num_predictions")}
    for period in episode.trace.periods(num_periods):
        rank_t, cqi_per_rank = episode.table_choice(period)

        def predict_at(rank: int, cqi: int, period: _Period = period) -> float:
            return float(predictor.predict(episode.features(period, rank, cqi, num_rb, num_dmrs)))

        rank, cqi, predictions = rank_t, int(cqi_per_rank[rank_t - 1]), []
        if method == "cqi-tune":
            cqi, predictions = cqi_tune(cqi, partial(predict_at, rank_t), TAU_BLER, deep_backoff)
        elif method == "ri-cqi-tune":
            rank, cqi, predictions = ri_cqi_tune(rank_t, cqi_per_rank, predict_at, cqi_se, TAU_BLER, deep_backoff,
                                                 r_max)
        else:
            if method == "explore":
                rank, cqi = explore(explore_rng, rank_t, cqi_per_rank, r_max)
            if predictor is not None:
                predictions = [predict_at(rank, cqi)]
        x = episode.features(period, rank, cqi, num_rb, num_dmrs)
        sent = episode.transmit(period, rank, cqi, num_rb, num_dmrs)
        p_bler = 1.0 - sent.acks.mean()
        if predictor is not None:
            predictor.observe(x, p_bler)
        for key, value in (("x", x), ("predicted", predictions[-1] if predictions else np.nan),
                           ("p_bler", p_bler), ("rank", rank), ("cqi", cqi), ("table_rank", rank_t),
                           ("table_cqi", int(cqi_per_rank[rank_t - 1])), ("tbs_bits", sent.tbs_bits),
                           ("num_predictions", len(predictions)),
                           ("throughput_bps", float(period_throughput_bps(sent.acks.sum(), sent.tbs_bits,
                                                                          len(sent.acks))))):
            rows[key].append(value)
    return EpisodeResult(**{k: np.asarray(v, dtype=float if k in ("x", "predicted", "p_bler", "throughput_bps")
                                          else int) for k, v in rows.items()})


def explore(rng: np.random.Generator, rank_t: int, cqi_per_rank: np.ndarray, r_max: int) -> tuple[int, int]:
    """A (rank, CQI) around the table choice: rank ~ U{max(1, r-1)..min(r_max, r+1)}, CQI^(rank) + U{-3..+2}."""
    rank = int(rng.integers(max(1, rank_t - 1), min(r_max, rank_t + 1) + 1))
    return rank, int(np.clip(cqi_per_rank[rank - 1] + rng.integers(-3, 3), 1, 15))


def training_data(channel: ChannelConfig, snr_range_db: tuple[float, float], num_periods: int, seed: int,
                  periods_per_episode: int = 100, r_max: int = 4, sim: SimulationConfig | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Offline training set: (X [N, 12] float64, P_BLER [N]) with randomised (RI, CQI) around the table choice.

    The periods are split into episodes of ``periods_per_episode`` periods; each episode draws its SNR from
    U(snr_range_db) and its own channel, and runs the per-CQI OLLA from its initial thresholds. In every
    period the transmitted rank is drawn from U{max(1, r-1)..min(r_max, r+1)} around the table rank r and the
    CQI is clip(CQI^(rank) + U{-3..+2}, 1, 15) ([rec] 7.1 step 6); the number of RBs and DMRS symbols are drawn
    from {68, 136, 273} and {1, 2, 3} so that features 11-12 vary ([rec] 5.2). OLLA is updated with the outcomes
    of the transmitted pair. ``progress(done, total)`` is called after each episode.
    """
    sim = sim if sim is not None else SimulationConfig()
    low, high = snr_range_db
    num_episodes = math.ceil(num_periods / periods_per_episode)
    episode_seeds = np.random.SeedSequence(seed).spawn(num_episodes)
    xs, labels = [], []
    for index, episode_seed in enumerate(episode_seeds):
        channel_seed, draw_seed = episode_seed.spawn(2)
        draw_rng = np.random.default_rng(draw_seed)
        count = min(periods_per_episode, num_periods - index * periods_per_episode)
        episode = _Episode(channel, float(draw_rng.uniform(low, high)), channel_seed, sim, "per-cqi", r_max)
        for period in episode.trace.periods(count):
            rank, cqi = explore(draw_rng, *episode.table_choice(period), r_max)
            num_rb = int(draw_rng.choice(TRAINING_NUM_RB))
            num_dmrs = int(draw_rng.choice(TRAINING_NUM_DMRS))
            xs.append(episode.features(period, rank, cqi, num_rb, num_dmrs))
            labels.append(1.0 - episode.transmit(period, rank, cqi, num_rb, num_dmrs).acks.mean())
        if progress is not None:
            progress(index + 1, num_episodes)
    return np.asarray(xs, dtype=float), np.asarray(labels, dtype=float)
