"""TR 38.901 TDL MIMO channel: scaled tap profiles, Kronecker spatial correlation, sum-of-sinusoids fading.

Model (digest 7.1 step 1 and 7.2):

- TDL-A/B/C tap tables of TR 38.901 Tables 7.7.2-1/2/3 (normalised delays d_k, powers in dB), scaled by the RMS
  delay spread: tau_k = d_k * DS, powers normalised to sum 1.
- Per tap, an N_r x N_t matrix H_k(t) = sqrt(p_k) R_UE^{1/2} G_k(t) (R_gNB^{1/2})^T with the TS 36.101
  correlation [R]_{ij} = a^{((i-j)/(n-1))^2}, a = beta (UE) or alpha (gNB) of digest Table V; the "high" level
  uses 36.101's (R + 0.00012 I) / 1.00012 so that the square root is well conditioned.
- Each entry of G_k(t) is an independent unit-power sum-of-sinusoids process (16 sinusoids),
  g(t) = N_s^{-1/2} sum_n exp(j (2 pi f_D cos(alpha_n) t + phi_n)) with alpha_n = 2 pi n / N_s + theta_n,
  theta_n ~ U(-pi/N_s, pi/N_s), phi_n ~ U(-pi, pi) (Sionna's TDL construction); its autocorrelation is
  approximately J0(2 pi f_D dt). The process is a deterministic function of time once drawn, so the channel
  evolves continuously across slots and CSI-RS periods and can be evaluated at any set of times.
- Frequency response H_f(t) = sum_k H_k(t) exp(-j 2 pi f tau_k) on a subband grid (one sample per
  ``prbs_per_subband`` PRBs, at the subband centre, relative to the carrier).

Array layout everywhere: [time, subband, rx antenna, tx antenna], complex128.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TDL_PROFILES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "A": (np.array([0, .3819, .4025, .5868, .4610, .5375, .6708, .5750, .7618, 1.5375, 1.8978, 2.2242, 2.1718,
                    2.4942, 2.5119, 3.0582, 4.0810, 4.4579, 4.5695, 4.7966, 5.0066, 5.3043, 9.6586]),
          np.array([-13.4, 0, -2.2, -4, -6, -8.2, -9.9, -10.5, -7.5, -15.9, -6.6, -16.7, -12.4, -15.2, -10.8,
                    -11.3, -12.7, -16.2, -18.3, -18.9, -16.6, -19.9, -29.7])),
    "B": (np.array([0, .1072, .2155, .2095, .2870, .2986, .3752, .5055, .3681, .3697, .5700, .5283, 1.1021,
                    1.2756, 1.5474, 1.7842, 2.0169, 2.8294, 3.0219, 3.6187, 4.1067, 4.2790, 4.7834]),
          np.array([0, -2.2, -4, -3.2, -9.8, -1.2, -3.4, -5.2, -7.6, -3, -8.9, -9, -4.8, -5.7, -7.5, -1.9, -7.6,
                    -12.2, -9.8, -11.4, -14.9, -9.2, -11.3])),
    "C": (np.array([0, .2099, .2219, .2329, .2176, .6366, .6448, .6560, .6584, .7935, .8213, .9336, 1.2285,
                    1.3083, 2.1704, 2.7105, 4.2589, 4.6003, 5.4902, 5.6077, 6.3065, 6.6374, 7.0427, 8.6523]),
          np.array([-4.4, -1.2, -3.5, -5.2, -2.5, 0, -2.2, -3.9, -7.4, -7.1, -10.7, -11.1, -5.1, -6.8, -8.7,
                    -13.2, -13.9, -13.9, -15.8, -17.1, -16, -15.7, -21.6, -22.8])),
}
"""TR 38.901 TDL tap tables: profile letter -> (normalised delays in units of DS, powers in dB)."""

CORRELATION_LEVELS: dict[str, tuple[float, float]] = {"low": (0.0, 0.0), "medium": (0.3, 0.9), "high": (0.9, 0.9)}
"""TS 36.101 / paper Table V: level -> (alpha at the gNB, beta at the UE)."""

_HIGH_CORRELATION_LOADING = 0.00012  # TS 36.101 B.2.3.2: R_high = (R + a I) / (1 + a)


def scaled_profile(profile: str, delay_spread_ns: float) -> tuple[np.ndarray, np.ndarray]:
    """Tap delays (s) and linear powers (summing to 1) of TDL ``profile`` scaled to ``delay_spread_ns``."""
    if profile not in TDL_PROFILES:
        raise ValueError(f"unknown TDL profile {profile!r}; expected one of {sorted(TDL_PROFILES)}")
    delays, powers_db = TDL_PROFILES[profile]
    powers = 10.0 ** (powers_db / 10.0)
    return delays * delay_spread_ns * 1e-9, powers / powers.sum()


def rms_delay_spread(delays_s: np.ndarray, powers: np.ndarray) -> float:
    """Power-weighted RMS delay spread (s) of a tap profile."""
    weights = powers / powers.sum()
    mean = np.sum(weights * delays_s)
    return float(np.sqrt(np.sum(weights * (delays_s - mean) ** 2)))


def antenna_correlation(coefficient: float, num_antennas: int, high: bool = False) -> np.ndarray:
    """TS 36.101 uniform-array correlation matrix [R]_{ij} = a^{((i-j)/(n-1))^2} (real, a in [0, 1)).

    ``high=True`` applies 36.101's loading (R + 0.00012 I) / 1.00012 used for the high-correlation level.
    """
    if num_antennas == 1:
        return np.ones((1, 1))
    lag = np.arange(num_antennas)
    exponent = ((lag[:, None] - lag[None, :]) / (num_antennas - 1)) ** 2
    matrix = np.where(exponent == 0, 1.0, float(coefficient) ** exponent)
    if high:
        matrix = (matrix + _HIGH_CORRELATION_LOADING * np.eye(num_antennas)) / (1.0 + _HIGH_CORRELATION_LOADING)
    return matrix


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.conj().T


def subband_frequencies(num_prb: int = 273, prbs_per_subband: int = 4, scs_hz: float = 30e3) -> np.ndarray:
    """Centre frequencies (Hz, relative to the carrier) of the subbands of ``prbs_per_subband`` PRBs.

    273 PRBs at 30 kHz (100 MHz) give 69 subbands of 4 PRBs (the last one holds 1 PRB), digest 7.1.
    """
    starts = np.arange(0, num_prb, prbs_per_subband)
    widths = np.minimum(prbs_per_subband, num_prb - starts)
    centre_prb = starts + widths / 2.0
    return (centre_prb - num_prb / 2.0) * 12 * scs_hz


@dataclass(frozen=True)
class TDLChannel:
    """One drawn realisation of a correlated TDL MIMO channel; evaluate it at any times with :meth:`frequency_response`.

    Build with :meth:`draw`. All randomness is in the drawn sinusoid angles and phases, so the response at a
    given time depends only on the draw (common random numbers across link-adaptation methods).

    Attributes
    ----------
    delays_s, powers : ndarray [K]
        Tap delays and linear powers (sum 1).
    doppler_hz : float
        Maximum Doppler frequency f_D.
    rx_sqrt, tx_sqrt : ndarray
        Square roots of R_UE [N_r, N_r] and R_gNB [N_t, N_t].
    angular_rate : ndarray [K, N_r, N_t, N_s]
        2 pi f_D cos(alpha_n) of each sinusoid (rad/s).
    phase : ndarray [K, N_r, N_t, N_s]
        phi_n of each sinusoid.
    """

    delays_s: np.ndarray
    powers: np.ndarray
    doppler_hz: float
    rx_sqrt: np.ndarray
    tx_sqrt: np.ndarray
    angular_rate: np.ndarray
    phase: np.ndarray

    @classmethod
    def draw(cls, profile: str, delay_spread_ns: float, doppler_hz: float, correlation: str = "low",
             rng: np.random.Generator | int | None = None, num_rx: int = 4, num_tx: int = 4,
             num_sinusoids: int = 16) -> TDLChannel:
        """Draw a channel realisation.

        Parameters
        ----------
        profile : {"A", "B", "C"}
            TR 38.901 TDL profile letter.
        delay_spread_ns : float
            RMS delay spread the profile is scaled to.
        doppler_hz : float
            Maximum Doppler frequency.
        correlation : {"low", "medium", "high"}
            Antenna-correlation level (paper Table V).
        rng : Generator or int, optional
            Source of the sinusoid angles and phases.
        num_rx, num_tx : int
            UE and gNB antenna counts (4 x 4 by default, digest B2).
        num_sinusoids : int
            Sinusoids per fading process.
        """
        if correlation not in CORRELATION_LEVELS:
            raise ValueError(f"unknown correlation {correlation!r}; expected one of {sorted(CORRELATION_LEVELS)}")
        rng = np.random.default_rng(rng)
        delays, powers = scaled_profile(profile, delay_spread_ns)
        alpha_gnb, beta_ue = CORRELATION_LEVELS[correlation]
        high = correlation == "high"
        shape = (len(delays), num_rx, num_tx, num_sinusoids)
        n = np.arange(1, num_sinusoids + 1)
        theta = rng.uniform(-np.pi / num_sinusoids, np.pi / num_sinusoids, size=shape)
        angle_of_arrival = 2.0 * np.pi * n / num_sinusoids + theta
        phase = rng.uniform(-np.pi, np.pi, size=shape)
        return cls(delays_s=delays, powers=powers, doppler_hz=float(doppler_hz),
                   rx_sqrt=_sqrt_psd(antenna_correlation(beta_ue, num_rx, high)),
                   tx_sqrt=_sqrt_psd(antenna_correlation(alpha_gnb, num_tx, high)),
                   angular_rate=2.0 * np.pi * doppler_hz * np.cos(angle_of_arrival), phase=phase)

    def frequency_response(self, times_s: np.ndarray, frequencies_hz: np.ndarray) -> np.ndarray:
        """H_f(t) = sum_k sqrt(p_k) R_UE^{1/2} G_k(t) R_gNB^{T/2} exp(-j 2 pi f tau_k): [T, F, N_r, N_t].

        E|[H_f]_{ij}|^2 = 1 for every entry (unit-diagonal correlation, powers summing to 1).
        """
        return self.frequency_response_grid(np.zeros(1), times_s, frequencies_hz)[0]

    def frequency_response_grid(self, start_times_s: np.ndarray, offsets_s: np.ndarray,
                                frequencies_hz: np.ndarray) -> np.ndarray:
        """The response at times start + offset for every start and offset: [P, O, F, N_r, N_t].

        The fast path for the episode simulator: every CSI-RS period uses the same slot offsets, and
        exp(j w (t0 + o)) = exp(j w t0) exp(j w o), so the expensive complex exponentials are taken once per
        offset and once per start instead of once per (start, offset) pair; the sum over sinusoids becomes a
        batched matrix product.
        """
        starts = np.atleast_1d(np.asarray(start_times_s, dtype=float))
        offsets = np.atleast_1d(np.asarray(offsets_s, dtype=float))
        num_k, num_rx, num_tx, num_s = self.phase.shape
        rate = self.angular_rate.reshape(-1, num_s)                               # [p, n], p = (k, r, t)
        per_offset = np.exp(1j * offsets[None, :, None] * rate[:, None, :])     # [p, O, n]
        per_start = np.exp(1j * (starts[None, None, :] * rate[:, :, None]
                                 + self.phase.reshape(-1, num_s)[:, :, None]))  # [p, n, P]
        fading = (per_offset @ per_start) / np.sqrt(num_s)                       # [p, O, P]
        fading = fading.reshape(num_k, num_rx * num_tx, -1)
        steering = np.sqrt(self.powers)[:, None] * np.exp(
            -2j * np.pi * self.delays_s[:, None] * np.asarray(frequencies_hz, dtype=float)[None, :])  # [K, F]
        response = np.tensordot(fading, steering, axes=(0, 0))                   # [(r, t), (O, P), F]
        if not self._uncorrelated:  # vec(R_rx^{1/2} H R_tx^{T/2}) = (R_rx^{1/2} kron R_tx^{1/2}) vec(H), one GEMM
            spatial = np.kron(self.rx_sqrt, self.tx_sqrt)
            response = (spatial @ response.reshape(num_rx * num_tx, -1)).reshape(response.shape)
        response = response.reshape(num_rx, num_tx, len(offsets), len(starts), -1)
        return np.ascontiguousarray(response.transpose(3, 2, 4, 0, 1))

    @property
    def _uncorrelated(self) -> bool:
        return bool(np.array_equal(self.rx_sqrt, np.eye(len(self.rx_sqrt)))
                    and np.array_equal(self.tx_sqrt, np.eye(len(self.tx_sqrt))))
