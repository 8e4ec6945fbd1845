"""Vehicular-cell QoS data for BCD QoS clustering (paper 000): a generator, a CSV adapter, windowing.

Raw data is a table of 1-second samples per cell in the schema of the paper's
ns-3/Sionna simulator (FlowMonitor CSV, :data:`SCHEMA`). :func:`generate_cells`
makes such tables from the digest's statistical model (Sec. 6.4: 12 cells with
latent regimes, 24-hour load cycle, log-distance path loss with LoS/NLoS and
shadowing, load-dependent interference, lognormal latency and jitter, Gaussian
RSRP, an optional drift event); :func:`read_csv_cells` reads real tables in the
same schema. :func:`windowed` turns a table into model inputs and targets:

- modelling domain q = (log latency [ms], log jitter [ms], RSRP [dBm]);
- per 15-minute window, the Gaussian of q (mean and Cholesky factor);
- input of a sample = its 18 features + the Gaussian of its own window,
  encoded as ``[mu (3), log-diagonal Cholesky (6)]`` (p = 27);
- target = the Gaussian of the window one hour ahead (4 windows later), same
  encoding (m = 9); the realised q of that window is kept for the NLL;
- chronological split by window: 70 % train, 10 % validation, 20 % test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SCHEMA = ("Time", "FlowId", "CellId", "CellLoad", "UE_X", "UE_Y", "Speed", "Direction", "PacketSize",
          "DeltaTxPackets", "DeltaRxPackets", "AvgDelay", "ThroughputKbps", "IntervalLossRate", "IntervalJitter",
          "SINR", "Rsrp", "Gain", "LOS")
"""Columns of the simulator's FlowMonitor CSV (AvgDelay and IntervalJitter in seconds)."""

FEATURES = tuple(c for c in SCHEMA if c != "Gain")
"""The paper's 18 instantaneous input features (the schema without the path gain)."""

KPIS = ("latency", "jitter", "rsrp")
WINDOW_S = 900
HORIZON_WINDOWS = 4
ENB_POSITIONS = np.array([(640, 490, 50), (-690, 490, 50), (640, -530, 50), (-690, -530, 50), (75, -3, 29),
                          (-335, 295, 30), (-190, -395, 28), (-75, -110, 29), (445, 98, 29), (0, 495, 50),
                          (230, -190, 30), (-488, 40, 30)], dtype=float)
"""The 12 eNB positions (x, y, z in m) of the authors' simulator."""
REGIME_OF_CELL = np.array([1, 2, 3, 2, 0, 0, 0, 0, 1, 1, 0, 1])
"""Latent regime of each of the 12 cells: R0 dense urban {5,6,7,8,11}, R1 arterial {1,9,10,12},
R2 suburban {2,4}, R3 open {3} (1-based cell numbers, digest Sec. 6.4)."""
HOURLY_LOAD = np.array([0.5, 0.4, 0.3, 0.3, 0.333, 0.367, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.4, 1.4, 1.2, 1.1, 1.0,
                        0.933, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
"""Hour-of-day load multiplier of the authors' simulator."""

@dataclass(frozen=True)
class RegimeTable:
    """Per-regime parameters of the generator, one entry per regime R0..R3.

    The load of a regime-r cell at hour h is ``load_level[r] + load_swing[r] *
    (P(h + load_phase_h[r]) - mean(P))`` with P the simulator's hourly profile,
    times a day factor, plus window noise. ``noise`` scales every unpredictable
    draw (load noise, latency and jitter noise) before ``qos-noise-scale``.
    """

    load_level: np.ndarray
    load_swing: np.ndarray
    load_phase_h: np.ndarray
    p_los: np.ndarray
    pl_exponent: np.ndarray
    shadow_db: np.ndarray
    latency0_ms: np.ndarray
    kappa_latency: np.ndarray
    jitter0_ms: np.ndarray
    kappa_jitter: np.ndarray
    speed_kmh: np.ndarray
    noise: float = 1.0


def _table(noise: float = 1.0, **columns) -> RegimeTable:
    return RegimeTable(**{k: np.asarray(v, dtype=float) for k, v in columns.items()}, noise=noise)


_DIGEST_LOAD_SCALE = np.array([1.3, 1.0, 0.7, 0.5])
DIGEST_REGIMES = _table(
    load_level=_DIGEST_LOAD_SCALE * HOURLY_LOAD.mean(), load_swing=_DIGEST_LOAD_SCALE, load_phase_h=[0, -2, 3, 6],
    p_los=[0.2, 0.4, 0.6, 0.9], pl_exponent=[3.5, 3.3, 3.1, 2.9], shadow_db=[8, 6, 5, 3],
    latency0_ms=[20, 15, 12, 10], kappa_latency=[1.2, 0.8, 0.5, 0.3], jitter0_ms=[3, 2, 1.5, 1],
    kappa_jitter=[1.4, 0.9, 0.6, 0.3], speed_kmh=[(30, 50), (40, 70), (60, 100), (80, 100)])
"""The digest's regime table (Sec. 6.4) as printed: regimes differ in load scale and phase, radio
(LoS probability, path-loss exponent, shadowing), speeds and QoS sensitivity to load. It fails the
digest's own sanity gate: the regime is visible in every sample's features (speed, RSRP, LoS), so one
global head predicts as well as regime heads."""

LATENT_REGIMES = _table(
    load_level=np.full(4, HOURLY_LOAD.mean()), load_swing=[0.3, 0.9, 1.5, 2.0], load_phase_h=[0, 6, 12, 18],
    p_los=np.full(4, 0.5), pl_exponent=np.full(4, 3.2), shadow_db=np.full(4, 5.0),
    latency0_ms=np.full(4, 15.0), kappa_latency=np.full(4, 1.5), jitter0_ms=np.full(4, 2.0),
    kappa_jitter=np.full(4, 1.5), speed_kmh=[(50, 80)] * 4, noise=0.4)
"""Regimes that pass the digest's sanity gate (the default): the same radio, speeds, base QoS and mean
load everywhere; regimes differ only in the amplitude and phase of their daily load cycle, which the
current window does not reveal (a cell at a given load may be on its way up or down), with 0.4x the
digest's noise so that the hour-ahead change is not lost in the window estimates. Chosen by measuring
the gate over amplitudes, phases, load sensitivities and noise levels (experiments/bcd/README.md)."""

REGIME_TABLES = {"latent": LATENT_REGIMES, "digest": DIGEST_REGIMES}
"""The generator's regime tables by name (run-config key ``qos-regimes``)."""

CELL_RADIUS_M = 350.0
FREQ_GHZ = 3.5
NOISE_RE_DBM = -174 + 10 * np.log10(15e3) + 7


def hourly_load(hour: np.ndarray) -> np.ndarray:
    """The simulator's hourly load profile, linearly interpolated (periodic in 24 h)."""
    hour = np.mod(hour, 24.0)
    lo = np.floor(hour).astype(int)
    frac = hour - lo
    return HOURLY_LOAD[lo] * (1 - frac) + HOURLY_LOAD[(lo + 1) % 24] * frac


def cell_layout(num_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and regimes: the simulator's 12 cells first, further cells drawn at random."""
    positions, regimes = ENB_POSITIONS[:num_cells].copy(), REGIME_OF_CELL[:num_cells].copy()
    extra = num_cells - len(positions)
    if extra > 0:
        rng = np.random.default_rng([seed, 31])
        more = np.column_stack([rng.uniform(-800, 800, (extra, 2)), rng.uniform(25, 50, extra)])
        positions = np.vstack([positions, more])
        regimes = np.concatenate([regimes, rng.choice(4, size=extra, p=np.array([5, 4, 2, 1]) / 12)])
    return positions, regimes


RADIO_MAP_NOISE_DB = 2.0
"""Spread of RSRP around a ray-traced path gain (measurement noise and small movements)."""


class RadioMap:
    """Ray-traced path gain of every cell on a grid (an npz written by ``datasets/sionna_radio_map.py``).

    Parameters
    ----------
    path : str or Path
        The npz file (``path_gain_db`` [cells, ny, nx], ``cell_centers`` [ny, nx, 2]).
    radius_m : float
        UEs of a cell are placed on covered grid cells within this distance of its eNB
        (the nearest 50 covered grid cells if fewer are that close).
    """

    def __init__(self, path, radius_m: float = CELL_RADIUS_M) -> None:
        with np.load(path) as data:
            self.gain_db = data["path_gain_db"]
            self.centers = data["cell_centers"]
            self.enb = data["enb_positions"]
            self.cell_size = float(data["cell_size_m"])
        self.radius_m = radius_m
        self._candidates: dict[int, np.ndarray] = {}

    def candidates(self, cell: int) -> np.ndarray:
        """Flat indices of the grid cells a UE of ``cell`` may stand on."""
        if cell not in self._candidates:
            if cell >= len(self.gain_db):
                raise ValueError(f"the radio map has {len(self.gain_db)} cells; cell {cell + 1} is not in it")
            covered = np.flatnonzero(np.isfinite(self.gain_db[cell]).ravel())
            if covered.size == 0:
                raise ValueError(f"the radio map covers no grid cell of cell {cell + 1}")
            dist = np.linalg.norm(self.centers.reshape(-1, 2)[covered] - self.enb[cell, :2], axis=1)
            near = covered[dist <= self.radius_m]
            self._candidates[cell] = near if near.size >= 50 else covered[np.argsort(dist)[:50]]
        return self._candidates[cell]

    def sample(self, cell: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` UE positions (x, y) on covered grid cells and their path gains in dB."""
        pick = rng.choice(self.candidates(cell), size=n)
        xy = self.centers.reshape(-1, 2)[pick] + rng.uniform(-0.5, 0.5, (n, 2)) * self.cell_size
        return xy[:, 0], xy[:, 1], self.gain_db[cell].ravel()[pick].astype(float)


def generate_cells(num_cells: int = 12, days: int = 2, samples_per_window: int = 40, seed: int = 0,
                   drift: bool = False, drift_cells: tuple[int, ...] = (4, 10), drift_start_h: float = 56.0,
                   noise_scale: float = 1.0, radio_map: RadioMap | None = None, regime_table: str = "latent"
                   ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Generate the raw per-cell sample tables of the statistical vehicular-QoS model.

    Parameters
    ----------
    num_cells : int
        Number of cells (12 in the paper).
    days : int
        Days simulated (96 windows of 15 min per day).
    samples_per_window : int
        Samples per cell and window (40 gives about 7.7k samples per cell in 2 days).
    seed : int
        Seed of every draw.
    drift : bool
        From ``drift_start_h`` hours on (default: day 3, 08:00), the ``drift_cells``
        (0-based; default cells 5 and 11) take regime R2's parameters with
        1.5 times the load (e.g. roadworks). Not in the paper.
    noise_scale : float
        Factor on the unpredictable noise (load, latency, jitter), on top of the
        regime table's own ``noise``.
    radio_map : RadioMap, optional
        Ray-traced path gains (``datasets/sionna_radio_map.py``): UEs are placed on
        covered grid cells and RSRP follows the map instead of the log-distance model.
    regime_table : {"latent", "digest"}
        Regime table (:data:`REGIME_TABLES`): :data:`LATENT_REGIMES` (passes the
        digest's sanity gate) or :data:`DIGEST_REGIMES` (the digest's table as printed).

    Returns
    -------
    tables : list of dict
        One table per cell: column name (:data:`SCHEMA`) -> array.
    regimes : ndarray
        Latent regime of each cell (before any drift).
    """
    table = REGIME_TABLES[regime_table]
    noise_scale = noise_scale * table.noise
    rng = np.random.default_rng([seed, 29])
    positions, regimes = cell_layout(num_cells, seed)
    num_windows = 96 * days
    n = samples_per_window
    window_hour = (np.arange(num_windows) + 0.5) * WINDOW_S / 3600.0
    day_noise = rng.normal(0, 0.1 * noise_scale, (num_cells, days))
    cycle = hourly_load(window_hour[None, :] + table.load_phase_h[regimes][:, None]) - HOURLY_LOAD.mean()
    load = ((table.load_level[regimes][:, None] + table.load_swing[regimes][:, None] * cycle)
            * (1 + np.repeat(day_noise, 96, axis=1)) + rng.normal(0, 0.05 * noise_scale, (num_cells, num_windows)))
    mean_load = np.maximum(load, 0.02).mean()  # the reference load, before any drift
    # drift: the affected cells behave like regime R2 under 1.5x load from the drift time on
    regime_t = np.repeat(regimes[:, None], num_windows, axis=1)
    if drift:
        after = window_hour >= drift_start_h
        for cell in drift_cells:
            regime_t[cell, after] = 2
            load[cell, after] *= 1.5
    load = np.maximum(load, 0.02)
    dist = np.linalg.norm(positions[:, None, :2] - positions[None, :, :2], axis=-1)
    neighbours = np.argsort(dist, axis=1)[:, 1:4]
    cell_latency = rng.normal(0, 0.05, num_cells)
    cell_jitter = rng.normal(0, 0.05, num_cells)
    cell_rsrp = rng.normal(0, 2.0, num_cells)
    tables = []
    for i in range(num_cells):
        rng = np.random.default_rng([seed, 30, i])  # one stream per cell: a change in one cell moves no other
        w = np.repeat(np.arange(num_windows), n)
        r = regime_t[i, w]
        rho = load[i, w]
        t = w * WINDOW_S + rng.uniform(0, WINDOW_S, w.size)
        radius = np.sqrt(rng.uniform(20.0**2, CELL_RADIUS_M**2, w.size))
        angle = rng.uniform(-np.pi, np.pi, w.size)
        d3 = np.sqrt(radius**2 + (positions[i, 2] - 1.5) ** 2)
        los = rng.random(w.size) < table.p_los[r]
        path_loss = np.where(los, 32.4 + 21 * np.log10(d3) + 20 * np.log10(FREQ_GHZ),
                             22.4 + 10 * table.pl_exponent[r] * np.log10(d3) + 21.3 * np.log10(FREQ_GHZ))
        shadow = rng.normal(0, 1, w.size) * table.shadow_db[r]
        ue_x, ue_y = positions[i, 0] + radius * np.cos(angle), positions[i, 1] + radius * np.sin(angle)
        if radio_map is not None:  # ray-traced large-scale gain instead of log-distance + shadowing
            ue_x, ue_y, gain_db = radio_map.sample(i, w.size, rng)
            path_loss, shadow = -gain_db, rng.normal(0, RADIO_MAP_NOISE_DB, w.size)
        rsrp = 30 - 10 * np.log10(12 * 106) - path_loss - shadow + cell_rsrp[i]
        interference = NOISE_RE_DBM + 10 * np.log10(1 + 5 * load[neighbours[i]].mean(0)[w])
        sinr = rsrp - interference + rng.normal(0, 1, w.size)
        log_lat_mean = np.log(table.latency0_ms[r]) + cell_latency[i] + table.kappa_latency[r] * rho \
            + 0.03 * np.maximum(0, 15 - sinr)
        log_lat = log_lat_mean + rng.normal(0, 1, w.size) * (0.15 + 0.2 * rho) * noise_scale
        log_jit = (np.log(table.jitter0_ms[r]) + cell_jitter[i] + table.kappa_jitter[r] * rho
                   + 0.5 * (log_lat - log_lat_mean) + rng.normal(0, 1, w.size) * (0.25 + 0.3 * rho) * noise_scale)
        hour = t / 3600.0
        size = 1500 * hourly_load(hour) * rng.uniform(0.8, 1.3, w.size)
        loss = 1 / (1 + np.exp(-(-6 + 4 * rho - 0.2 * sinr)))
        rx = 100 * (1 - loss)
        lo, hi = table.speed_kmh[r, 0], table.speed_kmh[r, 1]
        tables.append({
            "Time": t, "FlowId": rng.integers(0, 30, w.size).astype(float), "CellId": np.full(w.size, i + 1.0),
            "CellLoad": np.random.default_rng([seed, 32, i]).poisson(2.5 * rho / mean_load).astype(float),
            "UE_X": ue_x, "UE_Y": ue_y,
            "Speed": rng.uniform(lo, hi), "Direction": rng.uniform(-180, 180, w.size), "PacketSize": size,
            "DeltaTxPackets": np.full(w.size, 100.0), "DeltaRxPackets": rx, "AvgDelay": np.exp(log_lat) / 1000,
            "ThroughputKbps": rx * size * 8 / 1000, "IntervalLossRate": loss,
            "IntervalJitter": np.exp(log_jit) / 1000, "SINR": sinr, "Rsrp": rsrp, "Gain": -path_loss - shadow,
            "LOS": los.astype(float),
        })
        order = np.argsort(tables[-1]["Time"], kind="stable")
        tables[-1] = {k: v[order] for k, v in tables[-1].items()}
    return tables, regimes


def write_csv_cells(tables: list[dict[str, np.ndarray]], folder: Path) -> None:
    """Write one CSV per cell (``cell_<id>.csv``) in :data:`SCHEMA`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, table in enumerate(tables):
        data = np.column_stack([table[c] for c in SCHEMA])
        np.savetxt(folder / f"cell_{i + 1:02d}.csv", data, delimiter=",", header=",".join(SCHEMA), comments="",
                   fmt="%.9g")


def read_csv_cells(folder: Path) -> list[dict[str, np.ndarray]]:
    """Read per-cell tables in :data:`SCHEMA` from ``folder/*.csv`` (one file per cell, or one file with CellId).

    Raises
    ------
    FileNotFoundError
        If the folder holds no CSV file.
    ValueError
        If a file lacks a column of the schema.
    """
    files = sorted(Path(folder).glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no CSV files in '{folder}' (expected per-cell tables with the columns "
                                f"{', '.join(SCHEMA)})")
    rows: dict[float, list[np.ndarray]] = {}
    for path in files:
        with open(path) as fh:
            header = fh.readline().strip().split(",")
        missing = [c for c in SCHEMA if c not in header]
        if missing:
            raise ValueError(f"'{path.name}' lacks columns {', '.join(missing)}")
        data = np.atleast_2d(np.loadtxt(path, delimiter=",", skiprows=1))
        data = data[:, [header.index(c) for c in SCHEMA]]
        for cell in np.unique(data[:, SCHEMA.index("CellId")]):
            rows.setdefault(float(cell), []).append(data[data[:, SCHEMA.index("CellId")] == cell])
    tables = []
    for cell in sorted(rows):
        data = np.concatenate(rows[cell])
        data = data[np.argsort(data[:, 0], kind="stable")]
        tables.append({c: data[:, j] for j, c in enumerate(SCHEMA)})
    return tables


@dataclass(frozen=True)
class CellData:
    """One cell's model-ready data.

    Attributes
    ----------
    x, y : ndarray
        Inputs (n, 27) and targets (n, 9), in the modelling domain, not standardised.
    split : ndarray of str
        ``train``, ``val`` or ``test`` for every sample (chronological by window).
    target_window : ndarray of int
        Row of ``window_q`` holding the realised QoS of each sample's target window.
    window_q : ndarray of shape (windows, samples, 3)
        Realised q per window (NaN-padded), for the NLL.
    windows_dropped : int
        Windows left out for having fewer than 3 valid samples.
    """

    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    target_window: np.ndarray
    window_q: np.ndarray
    windows_dropped: int


def encode_gaussian(mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``[mu, log L11, L21, log L22, L31, L32, log L33]`` from mean and covariance (batched)."""
    chol = np.linalg.cholesky(cov)
    d = mu.shape[-1]
    parts = [mu]
    for r in range(d):
        for c in range(r + 1):
            v = chol[..., r, c]
            parts.append((np.log(v) if r == c else v)[..., None])
    return np.concatenate(parts, axis=-1)


def decode_gaussian(v: np.ndarray, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_gaussian`: mean and lower Cholesky factor (batched)."""
    mu = v[..., :d]
    chol = np.zeros(v.shape[:-1] + (d, d))
    k = d
    for r in range(d):
        for c in range(r + 1):
            chol[..., r, c] = np.exp(v[..., k]) if r == c else v[..., k]
            k += 1
    return mu, chol


def modelling_q(table: dict[str, np.ndarray]) -> np.ndarray:
    """q = (log latency [ms], log jitter [ms], RSRP [dBm]) of every sample."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.column_stack([np.log(table["AvgDelay"] * 1000), np.log(table["IntervalJitter"] * 1000),
                                table["Rsrp"]])


def windowed(table: dict[str, np.ndarray], window_s: float = WINDOW_S, horizon: int = HORIZON_WINDOWS,
             min_samples: int = 3, ridge: float = 1e-6) -> CellData:
    """Model inputs, targets and splits of one cell (see the module docstring).

    Samples with a non-finite feature or q are left out; a window with fewer than
    ``min_samples`` valid samples (or a covariance that is not positive definite
    even after a ``ridge``) has no Gaussian, so its samples and the samples whose
    target it is are left out too; how many windows were left out is recorded.
    """
    q = modelling_q(table)
    feats = np.column_stack([table[c] for c in FEATURES]).astype(float)
    feats[:, 0] = np.mod(table["Time"], 86400) / 3600.0  # the timestamp enters as hour of day
    valid = np.all(np.isfinite(feats), axis=1) & np.all(np.isfinite(q), axis=1)
    window = np.floor(table["Time"] / window_s).astype(int)
    window -= window.min()
    num_windows = window.max() + 1
    counts = np.bincount(window[valid], minlength=num_windows)
    width = max(int(counts.max()), 1)
    window_q = np.full((num_windows, width, 3), np.nan)
    gauss = np.full((num_windows, 9), np.nan)
    for w in range(num_windows):
        qw = q[valid & (window == w)]
        window_q[w, : len(qw)] = qw
        if len(qw) >= min_samples:
            cov = np.cov(qw, rowvar=False) + ridge * np.eye(3)
            try:
                gauss[w] = encode_gaussian(qw.mean(0), cov)
            except np.linalg.LinAlgError:
                pass
    has_gauss = np.all(np.isfinite(gauss), axis=1)
    target = window + horizon
    keep = valid & (target < num_windows)
    keep[keep] &= has_gauss[window[keep]] & has_gauss[target[keep]]
    x = np.column_stack([feats, gauss[window]])[keep]
    y = gauss[target[keep]]
    kept_windows = window[keep]
    order = np.unique(kept_windows)
    train_end, val_end = order[int(0.7 * len(order))], order[int(0.8 * len(order))]
    split = np.where(kept_windows < train_end, "train", np.where(kept_windows < val_end, "val", "test"))
    return CellData(x=x, y=y, split=split, target_window=target[keep], window_q=window_q,
                    windows_dropped=int(num_windows - has_gauss.sum()))


def fit_gaussian(q: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the finite rows of q (the cell summary N_i sent to the server)."""
    q = q[np.all(np.isfinite(q), axis=1)]
    return q.mean(0), np.cov(q, rowvar=False) + ridge * np.eye(q.shape[1])


def resolve_path(path: str) -> Path:
    """An absolute path, or one relative to the working directory or, failing that, to the repository.

    Raises
    ------
    FileNotFoundError
        If neither exists.
    """
    candidates = [Path(path).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(Path(__file__).resolve().parents[2] / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"'{path}' not found (looked in: {', '.join(str(c) for c in candidates)})")


@dataclass(frozen=True)
class Federation:
    """Every cell of a QoS run: model-ready data, latent regime (-1 if unknown), training-period Gaussian."""

    cells: list[CellData]
    regimes: np.ndarray
    means: np.ndarray
    covs: np.ndarray


@lru_cache(maxsize=4)
def load_federation(num_cells: int, days: int, samples_per_window: int, seed: int, drift: bool,
                    noise_scale: float, csv_dir: str = "", radio_map: str = "", regime_table: str = "latent"
                    ) -> Federation:
    """The cells of a run, generated (``csv_dir`` empty) or read from per-cell CSVs (cached per process).

    Raises
    ------
    ValueError
        If the CSV folder holds a different number of cells than the run has clients.
    """
    if csv_dir:
        tables = read_csv_cells(Path(csv_dir))
        if len(tables) != num_cells:
            raise ValueError(f"'{csv_dir}' holds {len(tables)} cells but the run has {num_cells} clients")
        regimes = np.full(num_cells, -1)
    else:
        tables, regimes = generate_cells(num_cells, days, samples_per_window, seed, drift=drift,
                                         noise_scale=noise_scale, regime_table=regime_table,
                                         radio_map=RadioMap(resolve_path(radio_map)) if radio_map else None)
    cells = [windowed(t) for t in tables]
    gaussians = []
    for table, cell in zip(tables, cells):
        q = modelling_q(table)
        window = np.floor(table["Time"] / WINDOW_S).astype(int)
        first_test_window = (cell.target_window - HORIZON_WINDOWS)[cell.split != "train"].min()
        gaussians.append(fit_gaussian(q[window - window.min() < first_test_window]))
    return Federation(cells=cells, regimes=np.asarray(regimes), means=np.stack([g[0] for g in gaussians]),
                      covs=np.stack([g[1] for g in gaussians]))


def sanity_gate(fed: Federation, num_features: int = 256, ridge: float = 1e-2, seed: int = 0) -> dict[str, float]:
    """The digest's sanity gate (Sec. 6.4) on a random-ReLU frozen base with closed-form heads.

    Heads are ridge least squares on standardised targets: one global head, one per cell, one per
    true regime (the oracle). Returns the ratios the gate checks:

    - ``local/oracle sd-MAE`` per KPI (oracle regime heads beat per-cell heads on the predicted
      standard deviation by at least 5 %: ratio >= 1.05);
    - ``global/oracle mean-MAE`` per KPI (the global head at least 1.5x the oracle on the mean);
    - mean Bhattacharyya kernel within and across regimes (clearly apart, e.g. > 0.9 and < 0.8).
    """
    from fedsim.bcd import bhattacharyya_kernel

    train = [c.split == "train" for c in fed.cells]
    x_all = np.concatenate([c.x[t] for c, t in zip(fed.cells, train)])
    y_all = np.concatenate([c.y[t] for c, t in zip(fed.cells, train)])
    mx, sx, my, sy = x_all.mean(0), x_all.std(0) + 1e-9, y_all.mean(0), y_all.std(0) + 1e-9
    rng = np.random.default_rng([seed, 43])
    w = rng.standard_normal((x_all.shape[1], num_features)) / np.sqrt(x_all.shape[1])
    b = rng.standard_normal(num_features)

    def phi(x):
        return np.column_stack([np.maximum(0, ((x - mx) / sx) @ w + b), np.ones(len(x))])

    def fit(cells):
        p = np.concatenate([phi(fed.cells[i].x[train[i]]) for i in cells])
        y = np.concatenate([(fed.cells[i].y[train[i]] - my) / sy for i in cells])
        return np.linalg.solve(p.T @ p + ridge * np.eye(p.shape[1]), p.T @ y)

    def errors(head_of):
        mean_err, sd_err = [], []
        for i, cell in enumerate(fed.cells):
            test = cell.split == "test"
            mu, chol = decode_gaussian(phi(cell.x[test]) @ head_of(i) * sy + my)
            mu_t, chol_t = decode_gaussian(cell.y[test])
            mean_err.append(np.abs(mu - mu_t))
            sd_err.append(np.abs(np.sqrt(np.einsum("nij,nij->ni", chol, chol))
                                 - np.sqrt(np.einsum("nij,nij->ni", chol_t, chol_t))))
        return np.concatenate(mean_err).mean(0), np.concatenate(sd_err).mean(0)

    n = len(fed.cells)
    global_head = fit(range(n))
    local = [fit([i]) for i in range(n)]
    oracle = {r: fit(np.flatnonzero(fed.regimes == r)) for r in np.unique(fed.regimes)}
    g_mean, g_sd = errors(lambda i: global_head)
    l_mean, l_sd = errors(lambda i: local[i])
    o_mean, o_sd = errors(lambda i: oracle[fed.regimes[i]])
    kernel = bhattacharyya_kernel(fed.means, fed.covs)
    same = fed.regimes[:, None] == fed.regimes[None, :]
    off = ~np.eye(n, dtype=bool)
    out = {"kernel-within": float(kernel[same & off].mean()), "kernel-across": float(kernel[~same].mean())}
    for k, kpi in enumerate(KPIS):
        out[f"local/oracle sd-MAE {kpi}"] = float(l_sd[k] / o_sd[k])
        out[f"global/oracle sd-MAE {kpi}"] = float(g_sd[k] / o_sd[k])
        out[f"local/oracle mean-MAE {kpi}"] = float(l_mean[k] / o_mean[k])
        out[f"global/oracle mean-MAE {kpi}"] = float(g_mean[k] / o_mean[k])
    return out
