"""Offline synthetic MIMO-OFDM Wi-Fi CSI for joint indoor localisation and sensing (SPG-MIBO, paper 001).

The paper's "Wisimulation" data (its Appendix A, Table IV) is not public; this module implements the digest's
generator (``reference/001-spg-mibo.md``, Secs. 6.2-6.3) on top of the paper's channel model

    H_t[l, n] = sum_{i in static} a_i exp(j theta_i) exp(-j 2 pi f_n d_i / c)
              + sum_{k in dynamic} b_k(t) exp(-j 2 pi f_n d_k(t) / c) + n_t[l, n]           (eqs. 26-27)

    a_i = a0 g_i / d_i^alpha,        b_k(t) = b0 gamma(s) c_k / d_k(t)^alpha                   (eq. 28)

for link ``l`` (one TX/RX pair) and subcarrier ``n``. Paper: 4 m x 3 m room, 1 TX, 2 RX, 3 static and 3
dynamic paths, 0.2 m position grid, 32-512 subcarriers, activities standing / sitting / lying. Everything
else is marked **Ours** below (the paper gives no geometry, no gain constants, no gamma values, no noise model
that is dimensionally consistent; digest A19).

**Geometry** (plan view x in [0, width], y in [0, height]; z is the height above the floor).

- Ours: TX = (0.05, 1.5, 1.0), RX1 = (3.95, 0.3, 1.0), RX2 = (2.0, 2.95, 1.0) (the paper's Fig. 9 is an
  image). Links are ordered TX-major: ``l = i_tx * n_rx + i_rx``. Several TX or RX are allowed.
- Target positions: the 0.2 m grid inside a 0.4 m margin, 17 x 12 = 204 points; optional uniform sway
  (ours, default 0): the scatterer is moved by U[-sway, sway] in x and y but the label stays the grid point.
- Zones (ours, for label skew): a 2 x 2 split of the room, ``zone = (x >= width/2) + 2 (y >= height/2)``,
  i.e. 0 = low-x low-y, 1 = high-x low-y, 2 = low-x high-y, 3 = high-x high-y.

**Frequencies.** f_n = f_c + (n - (M - 1)/2) B / M, f_c = 5.18 GHz, B = 40 MHz (ours), M = 32. Per-subcarrier
frequency in the exponent (the paper writes a per-path "carrier frequency", digest A19); sign convention
exp(-j 2 pi f tau) (ours).

**Static paths** (3 per link, per environment): line of sight (g = 1) and the image-method reflections off the
walls y = 0 and y = height (g = 0.6, ours). Phases theta_i ~ U[0, 2 pi), drawn once per environment from
``env_seed``. a0 = 1 (ours; only ratios matter).

**Dynamic paths** (3 per link): TX -> target -> RX (c = 1), TX -> target -> wall x = width -> RX (c = 0.3) and
TX -> wall y = 0 -> target -> RX (c = 0.3), all by the image method (ours). The scattering point is
(x, y, h(s)) with h = 1.1 / 0.7 / 0.3 m and gamma(s) = 1.0 / 0.7 / 0.45 for standing / sitting / lying (ours;
the paper gives no values). Dynamic phases theta_k = 0 (ours: a deterministic scattering phase keeps the CSI a
smooth function of the position). b0 = a0 10^(dynamic_gain_db / 20) with ``dynamic_gain_db = 0`` (ours: the
paper's a0 and b0 are both "reference gains" with the same Table IV range, [-30, 0] dB). With a0 = b0 = 1 and
alpha = 2 the static gains are -35 to -15 dB and the dynamic ones -54 to -15 dB (the weak wall-scattered paths of
a lying target fall below Table IV's -30 dB); path lengths are 2.4-8.5 m, delays 8-28 ns (Table IV: 10 ns to
10 us, for larger rooms). Path loss: the paper's 1/d^2 on the *amplitude* (it calls it free-space; free space is
1/d); the exponent ``path_loss_exponent`` is configurable.

**Respiration** (ours): chest displacement A ~ U[2, 5] mm, rate r ~ U[0.2, 0.5] Hz, phase phi0 ~ U[0, 2 pi);
every dynamic path length becomes d_k(t) = d_k + 2 A sin(2 pi r t + phi0) (also in its gain), sampled at
T = 16 snapshots of 8 Hz (2 s). Labels: ``respiration_rate`` r and ``waveform`` sin(2 pi r t + phi0). For
respiration targets use T >= 64 (digest 6.3).

**Impairments** (ours), per sample, link and snapshot ("packet"):

- The CSI is **phase-sanitised**: no random common phase or timing offset survives, only a residual common
  phase error N(0, 0.05 rad) and an AGC gain jitter N(0, 0.2 dB), both common to all subcarriers of a packet.
  (Digest pilot: with a uniformly random common phase the features carry no usable location information.)
- AWGN, circular complex Gaussian, SNR 25 dB relative to the mean static power ``mean_{l,n} |H_static|^2``
  over all links (one noise level for all receivers, as thermal noise would be). It is added after the
  phase error and AGC.
- Narrowband interference (the selection ground truth): per link, one contiguous block of
  ``floor(0.25 M + 1/2)`` subcarriers (M = 32: 8), its start drawn once per environment, where the noise is
  replaced by noise at SNR -5 dB relative to the same static power. ``informative[l, n]`` is False there.
- Optional poor-coverage link (ours): ``poor_coverage_link`` scales gamma on that link by
  ``poor_coverage_gain`` (0.1), mimicking the paper's "certain TX/RX pairs may have limited coverage".

**Features.** Static removal D_t = H_t - H_static with the environment's empty-room CSI (ours: the calibration is
taken as noise-free, i.e. averaged over many packets). Three channels per (link, subcarrier, snapshot):
``log|D_t[n]|`` (natural log, floored at 1e-30), and cos and sin of the phase step angle(D_t[n+1] conj(D_t[n])).
The step is defined for n < M - 1; subcarrier M - 1 repeats the step of M - 2 (ours). A step touches two
subcarriers, so the step just before an interference block is noisy too: ``informative`` marks the
interfered subcarriers themselves. :attr:`CSIDataset.features` is **raw**; standardise with
:func:`feature_moments` (on training data) and :func:`standardise`.

**Seeds.** ``env_seed`` fixes the environment (static phases, interference blocks); ``seed`` fixes the samples
(labels, respiration, noise). Each random quantity has its own stream, so the first k samples of a dataset of
n >= k samples equal a dataset of k samples made with the same other arguments. Two clients with different
``env_seed`` and the same ``seed`` see the same labels and noise draws: give clients different seeds too.

**Real data.** :func:`load_csi_arrays` wraps WiMANS-shaped amplitude arrays (n, T, 3, 3, 30) into a
:class:`CSIDataset` with one feature channel (log amplitude), digest A23.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
ACTIVITIES = ("standing", "sitting", "lying")
N_ZONES = 4
FEATURE_NAMES = ("log_abs", "cos_phase_step", "sin_phase_step")
_LOG_FLOOR = 1e-30
_CHUNK = 512  # samples per vectorised block: bounds the (chunk, links, paths, M, T) complex temporaries
# Independent random streams (SeedSequence spawn keys) so that adding a quantity never shifts another one.
_ENV, _POS, _ACT, _BREATH, _SWAY, _PHASE, _AGC, _NOISE = range(8)

Point = tuple[float, float, float]


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def impair(h: np.ndarray, room: CSIRoom, noise_std: float, phase_rng: np.random.Generator,
           agc_rng: np.random.Generator, noise_rng: np.random.Generator) -> np.ndarray:
    """Per-packet residual common phase and AGC jitter on clean CSI ``h`` (c, links, M, T), then AWGN."""
    c, n_pair, m, t_len = h.shape
    common = np.exp(1j * room.phase_noise_std * phase_rng.standard_normal((c, n_pair, 1, t_len)))
    common *= 10 ** (room.agc_jitter_db * agc_rng.standard_normal((c, n_pair, 1, t_len)) / 20)
    noise = noise_rng.standard_normal((c, n_pair, m, t_len, 2))
    return common * h + noise_std * (noise[..., 0] + 1j * noise[..., 1])


def draw_breathing(room: CSIRoom, seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Respiration of ``n`` samples: chest amplitude (m), rate (Hz), initial phase and the unit waveform (n, T).

    Drawn from the ``seed``'s own breathing stream, so any generator of samples with that seed agrees.
    """
    breath = _rng(seed, _BREATH).uniform(size=(n, 3))  # amplitude, rate, phase
    amplitude = room.breath_amplitude[0] + breath[:, 0] * (room.breath_amplitude[1] - room.breath_amplitude[0])
    rate = room.breath_rate[0] + breath[:, 1] * (room.breath_rate[1] - room.breath_rate[0])
    phase0 = 2 * np.pi * breath[:, 2]
    return amplitude, rate, phase0, np.sin(2 * np.pi * rate[:, None] * room.times + phase0[:, None])


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


def _check_seed(name: str, seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")


@dataclass(frozen=True)
class CSIRoom:
    """Room, radio and impairment parameters of the synthetic CSI generator.

    Lengths in metres, frequencies in Hz. Defaults are the digest's (Sec. 6.3); the paper fixes only the room
    size, 1 TX / 2 RX, the 0.2 m grid and M in 32-512. See the module docstring for which values are ours.

    Parameters
    ----------
    width, height : float
        Room extent along x and y in plan view (4 m x 3 m, paper). ``height`` is *not* the ceiling height.
    tx, rx : tuple of (x, y, z)
        Transmitter and receiver positions (ours). Links are all TX/RX pairs, TX-major.
    carrier_hz, bandwidth_hz : float
        Centre frequency (5.18 GHz, ours) and bandwidth (40 MHz, ours).
    n_subcarriers : int
        M, subcarriers per link (32; paper range 32-512). At least 2 (the phase step needs two).
    n_snapshots : int
        T, packets per sample (16).
    sample_rate : float
        Packet rate (8 Hz, ours).
    grid, margin : float
        Target grid spacing (0.2 m, paper) and distance of the grid from the walls (0.4 m, ours).
    sway : float
        Half-width of the uniform jitter of the scatterer around its grid point (0, ours); labels stay on the grid.
    snr_db : float
        AWGN level relative to the mean static power (25 dB, ours).
    interference_snr_db, interference_fraction : float
        SNR on the interfered block (-5 dB, ours) and its length as a fraction of M (0.25, ours).
    path_loss_exponent : float
        alpha in a0 / d^alpha on the amplitude (2, paper's eq. 28).
    wall_reflection : float
        Static wall reflection coefficient g (0.6, ours).
    dynamic_coefficients : tuple of 3 floats
        c_k of the direct, wall-x and wall-y0 target paths (1.0, 0.3, 0.3; ours).
    dynamic_gain_db : float
        b0 / a0 in dB (0, ours).
    activity_heights, activity_gains : tuple of 3 floats
        Scattering height h(s) (1.1, 0.7, 0.3 m) and gamma(s) (1.0, 0.7, 0.45) for standing / sitting / lying
        (ours).
    breath_amplitude, breath_rate : tuple of 2 floats
        Uniform ranges of the chest displacement A (2-5 mm) and the respiration rate (0.2-0.5 Hz); ours.
    phase_noise_std, agc_jitter_db : float
        Residual common phase error (0.05 rad) and AGC jitter (0.2 dB) per packet, standard deviations (ours).
    poor_coverage_link : int or None
        Index of a link whose gamma is scaled by ``poor_coverage_gain`` (None: no such link; ours).
    poor_coverage_gain : float
        The scale (0.1, ours).
    """

    width: float = 4.0
    height: float = 3.0
    tx: tuple[Point, ...] = ((0.05, 1.5, 1.0),)
    rx: tuple[Point, ...] = ((3.95, 0.3, 1.0), (2.0, 2.95, 1.0))
    carrier_hz: float = 5.18e9
    bandwidth_hz: float = 40e6
    n_subcarriers: int = 32
    n_snapshots: int = 16
    sample_rate: float = 8.0
    grid: float = 0.2
    margin: float = 0.4
    sway: float = 0.0
    snr_db: float = 25.0
    interference_snr_db: float = -5.0
    interference_fraction: float = 0.25
    path_loss_exponent: float = 2.0
    wall_reflection: float = 0.6
    dynamic_coefficients: tuple[float, float, float] = (1.0, 0.3, 0.3)
    dynamic_gain_db: float = 0.0
    activity_heights: tuple[float, float, float] = (1.1, 0.7, 0.3)
    activity_gains: tuple[float, float, float] = (1.0, 0.7, 0.45)
    breath_amplitude: tuple[float, float] = (0.002, 0.005)
    breath_rate: tuple[float, float] = (0.2, 0.5)
    phase_noise_std: float = 0.05
    agc_jitter_db: float = 0.2
    poor_coverage_link: int | None = None
    poor_coverage_gain: float = 0.1

    def __post_init__(self) -> None:
        for name in ("width", "height", "carrier_hz", "bandwidth_hz", "sample_rate", "grid"):
            _positive(f"CSIRoom.{name}", getattr(self, name))
        for name in ("margin", "sway", "path_loss_exponent", "wall_reflection", "phase_noise_std",
                     "agc_jitter_db", "poor_coverage_gain"):
            _non_negative(f"CSIRoom.{name}", getattr(self, name))
        for name, low in (("n_subcarriers", 2), ("n_snapshots", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"CSIRoom.{name} must be an int >= {low}, got {value!r}")
        if not 0 <= self.interference_fraction < 1:
            raise ValueError(f"CSIRoom.interference_fraction must be in [0, 1), got {self.interference_fraction!r}")
        for name in ("tx", "rx"):
            points = np.asarray(getattr(self, name), dtype=float)
            if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] != 3 or not np.isfinite(points).all():
                raise ValueError(f"CSIRoom.{name} must be a non-empty tuple of finite (x, y, z), got {points.shape}")
            inside = (points[:, 0] >= 0) & (points[:, 0] <= self.width) & (points[:, 1] >= 0)
            if not (inside & (points[:, 1] <= self.height)).all():
                raise ValueError(f"CSIRoom.{name} positions must lie in the room [0, width] x [0, height]")
        for name in ("dynamic_coefficients", "activity_heights", "activity_gains"):
            values = np.asarray(getattr(self, name), dtype=float)
            if values.shape != (3,) or not (values >= 0).all():
                raise ValueError(f"CSIRoom.{name} must be 3 non-negative numbers, got {getattr(self, name)!r}")
        for name in ("breath_amplitude", "breath_rate"):
            values = np.asarray(getattr(self, name), dtype=float)
            if values.shape != (2,) or not 0 <= values[0] <= values[1]:
                raise ValueError(f"CSIRoom.{name} must be a range (low, high) with 0 <= low <= high")
        if self.poor_coverage_link is not None and not 0 <= self.poor_coverage_link < self.n_pair:
            raise ValueError(f"CSIRoom.poor_coverage_link must be None or in [0, {self.n_pair}), "
                             f"got {self.poor_coverage_link!r}")
        if self.sway > self.margin:
            raise ValueError(f"CSIRoom.sway must be <= margin ({self.margin}) to stay in the room, got {self.sway}")
        if len(self.grid_axis(0)) == 0 or len(self.grid_axis(1)) == 0:
            raise ValueError("CSIRoom.margin leaves no grid point inside the room")

    @property
    def n_pair(self) -> int:
        """Number of links (TX/RX pairs)."""
        return len(self.tx) * len(self.rx)

    @property
    def frequencies(self) -> np.ndarray:
        """Subcarrier frequencies f_n = f_c + (n - (M - 1)/2) B / M [Hz], shape (M,)."""
        n = np.arange(self.n_subcarriers)
        return self.carrier_hz + (n - (self.n_subcarriers - 1) / 2) * self.bandwidth_hz / self.n_subcarriers

    @property
    def times(self) -> np.ndarray:
        """Snapshot times t_k = k / sample_rate [s], shape (T,)."""
        return np.arange(self.n_snapshots) / self.sample_rate

    def grid_axis(self, axis: int) -> np.ndarray:
        """Grid coordinates along x (``axis=0``) or y (``axis=1``): margin, margin + grid, ... <= extent - margin."""
        extent = self.width if axis == 0 else self.height
        span = extent - 2 * self.margin
        if span < 0:
            return np.empty(0)
        return self.margin + self.grid * np.arange(int(np.floor(span / self.grid + 1e-9)) + 1)

    @property
    def grid_points(self) -> np.ndarray:
        """All target grid points (x, y), shape (P, 2), x-major (204 points by default)."""
        x, y = np.meshgrid(self.grid_axis(0), self.grid_axis(1), indexing="ij")
        return np.stack([x.ravel(), y.ravel()], axis=1)

    def links(self) -> tuple[np.ndarray, np.ndarray]:
        """TX and RX position of every link, two arrays of shape (n_pair, 3), TX-major."""
        tx = np.asarray(self.tx, dtype=float)
        rx = np.asarray(self.rx, dtype=float)
        return np.repeat(tx, len(rx), axis=0), np.tile(rx, (len(tx), 1))


@dataclass(frozen=True)
class CSIEnvironment:
    """The per-environment (per-client) part of the generator: empty-room CSI and interference blocks.

    Attributes
    ----------
    room : CSIRoom
    env_seed : int
    static : ndarray of complex128, shape (n_pair, M)
        Noise-free empty-room CSI H_static (the calibration used for static removal).
    static_lengths : ndarray, shape (n_pair, 3)
        Static path lengths [m]: line of sight, wall y = 0, wall y = height.
    static_phases : ndarray, shape (n_pair, 3)
        Random static phases theta_i [rad].
    informative : ndarray of bool, shape (n_pair, M)
        False on each link's interference block.
    noise_std, interference_std : float
        Complex noise standard deviation (E|n|^2 = std^2) outside and inside the interference block.
    """

    room: CSIRoom
    env_seed: int
    static: np.ndarray
    static_lengths: np.ndarray
    static_phases: np.ndarray
    informative: np.ndarray
    noise_std: float
    interference_std: float

    @property
    def noise_std_map(self) -> np.ndarray:
        """Complex noise standard deviation per (link, subcarrier), shape (n_pair, M)."""
        return np.where(self.informative, self.noise_std, self.interference_std)


def _interference_length(room: CSIRoom) -> int:
    return int(np.floor(room.interference_fraction * room.n_subcarriers + 0.5))


def make_csi_environment(room: CSIRoom = CSIRoom(), env_seed: int = 0) -> CSIEnvironment:
    """Draw one environment: static phases and per-link interference blocks.

    Parameters
    ----------
    room : CSIRoom
        Geometry and radio parameters.
    env_seed : int
        Non-negative seed; the same seed gives the same environment.

    Returns
    -------
    CSIEnvironment
    """
    _check_seed("env_seed", env_seed)
    rng = _rng(int(env_seed), _ENV)
    tx, rx = room.links()
    images = np.stack([tx, tx * [1, -1, 1], tx * [1, -1, 1] + [0, 2 * room.height, 0]], axis=1)  # (L, 3, 3)
    lengths = np.linalg.norm(images - rx[:, None, :], axis=-1)
    coeff = np.array([1.0, room.wall_reflection, room.wall_reflection])
    phases = rng.uniform(0, 2 * np.pi, size=lengths.shape)
    gains = coeff / lengths**room.path_loss_exponent
    delay_phase = -2j * np.pi * room.frequencies[None, None, :] * lengths[..., None] / SPEED_OF_LIGHT
    static = np.sum((gains * np.exp(1j * phases))[..., None] * np.exp(delay_phase), axis=1)
    block = _interference_length(room)
    informative = np.ones((room.n_pair, room.n_subcarriers), dtype=bool)
    if block > 0:
        starts = rng.integers(0, room.n_subcarriers - block + 1, size=room.n_pair)
        for link, start in enumerate(starts):
            informative[link, start:start + block] = False
    power = float(np.mean(np.abs(static) ** 2))
    return CSIEnvironment(room=room, env_seed=int(env_seed), static=static, static_lengths=lengths,
                          static_phases=phases, informative=informative,
                          noise_std=float(np.sqrt(power / 10 ** (room.snr_db / 10))),
                          interference_std=float(np.sqrt(power / 10 ** (room.interference_snr_db / 10))))


def dynamic_path_lengths(room: CSIRoom, scatterer: np.ndarray) -> np.ndarray:
    """Lengths of the 3 dynamic paths of every link for scattering points ``scatterer`` (..., 3).

    Returns
    -------
    ndarray, shape (..., n_pair, 3)
        TX -> target -> RX, TX -> target -> wall x = width -> RX, TX -> wall y = 0 -> target -> RX [m].
    """
    tx, rx = room.links()
    p = np.asarray(scatterer, dtype=float)[..., None, :]
    rx_image = rx * [-1, 1, 1] + [2 * room.width, 0, 0]
    tx_image = tx * [1, -1, 1]
    tx_p = np.linalg.norm(p - tx, axis=-1)
    p_rx = np.linalg.norm(p - rx, axis=-1)
    return np.stack([tx_p + p_rx, tx_p + np.linalg.norm(p - rx_image, axis=-1),
                     np.linalg.norm(p - tx_image, axis=-1) + p_rx], axis=-1)


def _link_gamma(room: CSIRoom, activity: np.ndarray) -> np.ndarray:
    """gamma(s) per sample and link, shape (n, n_pair), with the poor-coverage scale applied."""
    gamma = np.asarray(room.activity_gains, dtype=float)[activity][:, None] * np.ones(room.n_pair)
    if room.poor_coverage_link is not None:
        gamma[:, room.poor_coverage_link] *= room.poor_coverage_gain
    return gamma


def _dynamic(room: CSIRoom, scatterer: np.ndarray, gamma: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Dynamic CSI, complex128 (n, n_pair, M, T) for scatterers (n, 3), gamma (n, L) and length offsets (n, T)."""
    lengths = dynamic_path_lengths(room, scatterer)[..., None] + offset[:, None, None, :]  # (n, L, 3, T)
    b0 = 10 ** (room.dynamic_gain_db / 20)
    gains = (b0 * gamma[:, :, None, None] * np.asarray(room.dynamic_coefficients)[:, None]
             / lengths**room.path_loss_exponent)
    k = 2 * np.pi * room.frequencies / SPEED_OF_LIGHT
    phase = k[None, None, None, :, None] * lengths[:, :, :, None, :]  # (n, L, 3, M, T)
    return np.einsum("nlpt,nlpmt->nlmt", gains, np.exp(-1j * phase))


def dynamic_csi(room: CSIRoom, position: np.ndarray, activity: np.ndarray | int = 0,
                offset: np.ndarray | None = None) -> np.ndarray:
    """Noise-free dynamic CSI (the target's contribution) for given target positions and activities.

    Parameters
    ----------
    room : CSIRoom
    position : array_like, shape (n, 2)
        Target positions (x, y) [m]; the scattering height comes from the activity.
    activity : int or array_like of int, shape (n,)
        Activity class per target (0 standing, 1 sitting, 2 lying).
    offset : array_like, shape (n, T), optional
        Path-length change per snapshot (respiration: 2 A sin(2 pi r t + phi0)).

    Returns
    -------
    ndarray of complex128
        Shape (n, n_pair, M) without ``offset``, (n, n_pair, M, T) with it.
    """
    position = np.asarray(position, dtype=float)
    if position.ndim != 2 or position.shape[1] != 2:
        raise ValueError(f"position must have shape (n, 2), got {position.shape}")
    activity = np.broadcast_to(np.asarray(activity, dtype=np.int64), (len(position),))
    _check_classes("activity", activity, len(ACTIVITIES))
    heights = np.asarray(room.activity_heights)[activity]
    scatterer = np.concatenate([position, heights[:, None]], axis=1)
    if offset is None:
        return _dynamic(room, scatterer, _link_gamma(room, activity), np.zeros((len(position), 1)))[..., 0]
    offset = np.asarray(offset, dtype=float)
    if offset.ndim != 2 or offset.shape[0] != len(position):
        raise ValueError(f"offset must have shape (n, T) with n = {len(position)}, got {offset.shape}")
    return _dynamic(room, scatterer, _link_gamma(room, activity), offset)


def zone_of(position: np.ndarray, room: CSIRoom = CSIRoom()) -> np.ndarray:
    """Zone of each position in the 2 x 2 split of the room: ``(x >= width/2) + 2 (y >= height/2)``.

    Parameters
    ----------
    position : array_like, shape (n, 2)
    room : CSIRoom

    Returns
    -------
    ndarray of int64, shape (n,)
        0 = low-x low-y, 1 = high-x low-y, 2 = low-x high-y, 3 = high-x high-y.
    """
    position = np.asarray(position, dtype=float)
    return ((position[:, 0] >= room.width / 2).astype(np.int64)
            + 2 * (position[:, 1] >= room.height / 2).astype(np.int64))


def _check_classes(name: str, values: np.ndarray, n_classes: int) -> None:
    if values.size and (values.min() < 0 or values.max() >= n_classes):
        raise ValueError(f"{name} values must be in [0, {n_classes}), got range [{values.min()}, {values.max()}]")


def _subset(name: str, values: Iterable[int] | None, n_classes: int) -> np.ndarray:
    if values is None:
        return np.arange(n_classes)
    if isinstance(values, int | np.integer):
        values = (values,)
    array = np.unique(np.asarray(list(values)))
    if array.size == 0 or array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a non-empty collection of ints in [0, {n_classes}), got {values!r}")
    _check_classes(name, array, n_classes)
    return array


def csi_features(d: np.ndarray) -> np.ndarray:
    """The 3 feature channels of static-removed CSI.

    Parameters
    ----------
    d : ndarray of complex, shape (n, n_pair, M, T)
        D_t = H_t - H_static.

    Returns
    -------
    ndarray of float32, shape (n, 3, n_pair, M, T)
        log|D| (floored at 1e-30), cos and sin of angle(D[n+1] conj(D[n])); the last subcarrier repeats the
        step of the one before it.
    """
    if d.ndim != 4 or d.shape[2] < 2:
        raise ValueError(f"d must have shape (n, n_pair, M >= 2, T), got {d.shape}")
    magnitude = np.abs(d)
    step = d[:, :, 1:, :] * np.conj(d[:, :, :-1, :])
    step = np.concatenate([step, step[:, :, -1:, :]], axis=2)
    step_abs = np.abs(step)
    zero = step_abs == 0
    unit = np.where(zero, 1.0, step / np.where(zero, 1.0, step_abs))  # a zero step has no angle: call it 0
    out = np.empty((d.shape[0], 3, *d.shape[1:]), dtype=np.float32)
    out[:, 0] = np.log(np.maximum(magnitude, _LOG_FLOOR))
    out[:, 1] = unit.real
    out[:, 2] = unit.imag
    return out


@dataclass
class CSIDataset:
    """CSI features and labels of one environment (or one loaded real data set).

    Attributes
    ----------
    features : ndarray of float32, shape (n, C, n_pair, M, T)
        Raw (not standardised) features; C = 3 for the generator (:data:`FEATURE_NAMES`), 1 for
        :func:`load_csi_arrays` (log amplitude).
    position : ndarray of float, shape (n, 2)
        Target position [m] (the grid point). NaN when unknown.
    activity : ndarray of int64, shape (n,)
        0 standing, 1 sitting, 2 lying for the generator (any class index for loaded data; -1 when unknown).
    respiration_rate : ndarray of float, shape (n,)
        Respiration rate [Hz]; NaN when unknown.
    waveform : ndarray of float32, shape (n, T)
        Respiration waveform sin(2 pi r t + phi0) at the snapshot times; NaN when unknown.
    informative : ndarray of bool, shape (n_pair, M)
        Ground truth of the subcarrier selection: False on interfered subcarriers (all True for loaded data).
    room : CSIRoom or None
        Generator parameters; None for loaded data.
    env_seed : int or None
        Environment seed; None for loaded data.
    csi : ndarray of complex64, shape (n, n_pair, M, T), optional
        The measured CSI H_t (before static removal), only with ``keep_csi=True``.
    """

    features: np.ndarray
    position: np.ndarray
    activity: np.ndarray
    respiration_rate: np.ndarray
    waveform: np.ndarray
    informative: np.ndarray
    room: CSIRoom | None
    env_seed: int | None
    csi: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.features)
        for name in ("position", "activity", "respiration_rate", "waveform"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, features has {n}")
        if self.features.ndim != 5 or self.informative.shape != self.features.shape[2:4]:
            raise ValueError(f"informative {self.informative.shape} must match features (n, C, n_pair, M, T) "
                             f"{self.features.shape}")

    def __len__(self) -> int:
        return len(self.features)

    def __repr__(self) -> str:
        return (f"CSIDataset(n={len(self)}, features={self.features.shape}, env_seed={self.env_seed}, "
                f"informative={int(self.informative.sum())}/{self.informative.size})")

    @property
    def n_pair(self) -> int:
        """Number of links."""
        return self.features.shape[2]

    @property
    def n_subcarriers_total(self) -> int:
        """N_subs = n_pair * M, the dimension of the selection mask."""
        return self.informative.size

    @property
    def zone(self) -> np.ndarray:
        """Zone of each sample (:func:`zone_of`); needs ``room``."""
        if self.room is None:
            raise ValueError("zone needs a dataset with a room (generated data)")
        return zone_of(self.position, self.room)

    def subset(self, index: np.ndarray | slice | list[int]) -> CSIDataset:
        """The samples selected by ``index`` (an int, integer indices, a boolean mask or a slice), as a new dataset."""
        rows = np.atleast_1d(np.arange(len(self))[index])
        return replace(self, features=self.features[rows], position=self.position[rows],
                       activity=self.activity[rows], respiration_rate=self.respiration_rate[rows],
                       waveform=self.waveform[rows], csi=None if self.csi is None else self.csi[rows])


def make_csi_dataset(n_samples: int, *, room: CSIRoom = CSIRoom(), env_seed: int = 0, seed: int = 0,
                     zones: Iterable[int] | None = None, activities: Iterable[int] | None = None,
                     keep_csi: bool = False) -> CSIDataset:
    """Generate ``n_samples`` synthetic CSI samples in one environment.

    Positions are drawn uniformly from the room's grid points (restricted to ``zones``), activities uniformly
    from ``activities``, respiration parameters uniformly from the room's ranges.

    Parameters
    ----------
    n_samples : int
        Number of samples (>= 1).
    room : CSIRoom
        Geometry, radio and impairment parameters.
    env_seed : int
        Environment seed: static phases and interference blocks (:func:`make_csi_environment`).
    seed : int
        Sample seed: labels, respiration, sway, phase error, AGC and noise.
    zones : iterable of int, optional
        Subset of the 2 x 2 room zones (:func:`zone_of`: 0 low-x low-y, 1 high-x low-y, 2 low-x high-y,
        3 high-x high-y) to draw positions from, for label skew. Default: all.
    activities : iterable of int, optional
        Subset of the activity classes (0 standing, 1 sitting, 2 lying), for label skew. Default: all.
    keep_csi : bool
        Also return the measured complex CSI (complex64, n x n_pair x M x T x 8 bytes).

    Returns
    -------
    CSIDataset

    Raises
    ------
    ValueError
        For a non-positive ``n_samples``, negative seeds, or ``zones`` / ``activities`` out of range or empty.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    _check_seed("seed", seed)
    if not isinstance(room, CSIRoom):
        raise ValueError(f"room must be a CSIRoom, got {type(room).__name__}")
    zone_set = _subset("zones", zones, N_ZONES)
    activity_set = _subset("activities", activities, len(ACTIVITIES))
    env = make_csi_environment(room, env_seed)
    points = room.grid_points
    points = points[np.isin(zone_of(points, room), zone_set)]
    if len(points) == 0:
        raise ValueError(f"zones {zone_set.tolist()} contain no grid point of this room")

    seed = int(seed)
    n, n_pair, m, t_len = int(n_samples), room.n_pair, room.n_subcarriers, room.n_snapshots
    position = points[_rng(seed, _POS).integers(0, len(points), size=n)]
    activity = activity_set[_rng(seed, _ACT).integers(0, len(activity_set), size=n)].astype(np.int64)
    amplitude, rate, phase0, waveform = draw_breathing(room, seed, n)
    sway = _rng(seed, _SWAY).uniform(-room.sway, room.sway, size=(n, 2)) if room.sway > 0 else np.zeros((n, 2))
    scatterer = np.column_stack([position + sway, np.asarray(room.activity_heights)[activity]])
    gamma = _link_gamma(room, activity)

    phase_rng, agc_rng, noise_rng = _rng(seed, _PHASE), _rng(seed, _AGC), _rng(seed, _NOISE)
    noise_std = env.noise_std_map[None, :, :, None] / np.sqrt(2)
    features = np.empty((n, len(FEATURE_NAMES), n_pair, m, t_len), dtype=np.float32)
    csi = np.empty((n, n_pair, m, t_len), dtype=np.complex64) if keep_csi else None
    static = env.static[None, :, :, None]
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        h = static + _dynamic(room, scatterer[rows], gamma[rows], 2 * amplitude[rows, None] * waveform[rows])
        h = impair(h, room, noise_std, phase_rng, agc_rng, noise_rng)
        if csi is not None:
            csi[rows] = h
        features[rows] = csi_features(h - static)
    return CSIDataset(features=features, position=position, activity=activity, respiration_rate=rate,
                      waveform=waveform.astype(np.float32), informative=env.informative.copy(), room=room,
                      env_seed=env.env_seed, csi=csi)


def feature_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature channel over samples, links, subcarriers and time.

    Parameters
    ----------
    features : ndarray, shape (n, C, n_pair, M, T)

    Returns
    -------
    mean, std : ndarray of float32, shape (C,)
        ``std`` is floored at 1e-12 so that a constant channel standardises to 0 rather than NaN.
    """
    features = np.asarray(features)
    if features.ndim != 5 or features.shape[0] == 0:
        raise ValueError(f"features must have shape (n >= 1, C, n_pair, M, T), got {features.shape}")
    axes = (0, 2, 3, 4)
    mean = features.mean(axis=axes, dtype=np.float64)
    std = features.std(axis=axes, dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-12).astype(np.float32)


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(features - mean) / std`` per feature channel, as float32.

    Parameters
    ----------
    features : ndarray, shape (n, C, n_pair, M, T)
    mean, std : array_like, shape (C,)
        From :func:`feature_moments` of the training data.

    Returns
    -------
    ndarray of float32, shape (n, C, n_pair, M, T)
    """
    features = np.asarray(features)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if features.ndim != 5:
        raise ValueError(f"features must have shape (n, C, n_pair, M, T), got {features.shape}")
    if mean.shape != (features.shape[1],) or std.shape != (features.shape[1],):
        raise ValueError(f"mean and std must have shape ({features.shape[1]},), got {mean.shape} and {std.shape}")
    if not (std > 0).all():
        raise ValueError("std must be > 0 for every feature channel")
    shape = (1, -1, 1, 1, 1)
    return ((features - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def load_csi_arrays(amplitude: np.ndarray, position: np.ndarray | None = None, activity: np.ndarray | None = None,
                    respiration_rate: np.ndarray | None = None, waveform: np.ndarray | None = None, *,
                    eps: float = 1e-6) -> CSIDataset:
    """Wrap real CSI amplitudes shaped like WiMANS (n, T, 3, 3, 30) into a :class:`CSIDataset` (digest A23).

    The antenna axes are flattened into links (``link = i_tx * n_rx + i_rx``, 9 for WiMANS) and the only feature
    channel is ``log(amplitude + eps)``, so ``features`` has shape (n, 1, n_tx n_rx, M, T). ``informative`` is
    all True (no ground truth). Missing labels are NaN (position, respiration rate, waveform) or -1 (activity).
    WiMANS pads every recording to 3000 packets with zeros: trim or downsample the time axis before calling
    (the padded zeros become ``log(eps)``). WiMANS labels are per user; pass single-user class indices here.

    Parameters
    ----------
    amplitude : array_like, shape (n, T, n_tx, n_rx, M)
        Non-negative, finite CSI amplitudes.
    position : array_like, shape (n, 2), optional
        Target coordinates (map WiMANS locations a-e to coordinates if needed).
    activity : array_like of int, shape (n,), optional
        Non-negative class indices.
    respiration_rate : array_like, shape (n,), optional
    waveform : array_like, shape (n, T), optional
    eps : float
        Added before the logarithm (> 0).

    Returns
    -------
    CSIDataset
        With ``room = None`` and ``env_seed = None``.
    """
    amplitude = np.asarray(amplitude)
    if amplitude.ndim != 5 or min(amplitude.shape) == 0:
        raise ValueError(f"amplitude must have shape (n, T, n_tx, n_rx, M) like WiMANS (n, T, 3, 3, 30), "
                         f"got {amplitude.shape}")
    if amplitude.dtype.kind not in "biuf":
        raise ValueError(f"amplitude must be real (take np.abs of complex CSI), got dtype {amplitude.dtype}")
    if not np.isfinite(amplitude).all():
        raise ValueError("amplitude contains NaN or infinite values")
    if (amplitude < 0).any():
        raise ValueError("amplitude must be non-negative")
    _positive("eps", eps)
    n, t_len, n_tx, n_rx, m = amplitude.shape

    def label(name: str, value: np.ndarray | None, shape: tuple[int, ...], fill: float) -> np.ndarray:
        if value is None:
            return np.full(shape, fill)
        value = np.asarray(value, dtype=float)
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        return value

    position = label("position", position, (n, 2), np.nan)
    rate = label("respiration_rate", respiration_rate, (n,), np.nan)
    wave = label("waveform", waveform, (n, t_len), np.nan).astype(np.float32)
    if activity is None:
        classes = np.full(n, -1, dtype=np.int64)
    else:
        classes = np.asarray(activity)
        if classes.shape != (n,) or classes.dtype.kind not in "iu" or (classes < 0).any():
            raise ValueError(f"activity must be non-negative ints of shape ({n},), got {classes.dtype} {classes.shape}")
        classes = classes.astype(np.int64)
    log_amp = np.log(amplitude.astype(np.float64) + eps).reshape(n, t_len, n_tx * n_rx, m)
    features = np.ascontiguousarray(log_amp.transpose(0, 2, 3, 1)[:, None], dtype=np.float32)
    return CSIDataset(features=features, position=position, activity=classes, respiration_rate=rate,
                      waveform=wave, informative=np.ones((n_tx * n_rx, m), dtype=bool), room=None, env_seed=None)
