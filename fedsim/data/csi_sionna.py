"""Ray-traced Wi-Fi CSI of the SPG-MIBO room (``datasets/csi_sionna.npz``), as a :class:`~fedsim.data.csi.CSIDataset`.

``datasets/sionna_csi.py`` (Sionna RT 2.2, needs the ``sionna`` extra; this module does not) traced the channel
frequency response (CFR) of the numpy generator's room, ``CSIRoom()`` (4 m x 3 m, a 2.8 m ceiling, concrete
slabs; TX (0.05, 1.5, 1.0), RX1 (3.95, 0.3, 1.0), RX2 (2.0, 2.95, 1.0); M = 32 subcarriers at 5.18 GHz over
40 MHz), once empty (``static``) and once with a box-shaped person of body tissue on each traced grid point
and in each activity (standing / sitting / lying). Each traced CFR is split into the paths that touch the body
(``body``) and the others (``rest``; ``rest - static`` is the shadowing by the body). See
``datasets/csi-sionna.md`` for the scene.

What this module **synthesises** from the traces, with the generator's conventions and random streams
(``fedsim.data.csi``; every number below comes from the ``room`` argument, default the generator's):

- **Labels**: a traced grid point (uniformly, restricted to ``zones``) and an activity (uniformly, restricted to
  ``activities``); respiration amplitude A ~ U[2, 5] mm, rate r ~ U[0.2, 0.5] Hz, phase phi0 ~ U[0, 2 pi).
- **Snapshots**: T = 16 packets at 8 Hz. Every body path's length changes by 2 A sin(2 pi r t + phi0), i.e.

      H_t[l, n] = rest[l, n] + body[l, n] exp(-j 2 pi f_n 2 A sin(2 pi r t + phi0) / c)

  (one chest displacement for the whole body, also on paths that touch the body twice, and no change of the
  path gains: the same approximation as the generator's). The shadowing part does not breathe.
- **Impairments** as in ``make_csi_dataset``: per packet and link a common phase error N(0, 0.05 rad) and AGC
  jitter N(0, 0.2 dB), then AWGN at SNR 25 dB relative to the mean traced static power, and per link one
  block of 8 subcarriers at SNR -5 dB. The blocks come from ``make_csi_environment(room, env_seed)``, so
  they equal the numpy generator's for the same ``env_seed``; ``informative`` is False there.
- **Features**: static removal D_t = H_t - static (the traced, noise-free empty room) and
  :func:`~fedsim.data.csi.csi_features` (log|D|, cos and sin of the phase step), raw.

``env_seed`` therefore changes only the interference blocks (there is one traced room: the static multipath
is the same for every environment); ``seed`` fixes labels, respiration and noise, with the generator's
SeedSequence streams, so the first k samples of a larger data set equal a data set of k samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsim.data.csi import (
    ACTIVITIES,
    FEATURE_NAMES,
    N_ZONES,
    SPEED_OF_LIGHT,
    CSIDataset,
    CSIRoom,
    csi_features,
    draw_breathing,
    impair,
    make_csi_environment,
    zone_of,
)

SIONNA_CSI_PATH = Path(__file__).resolve().parents[2] / "datasets" / "csi_sionna.npz"
"""The shipped traces (made by ``python datasets/sionna_csi.py``)."""

_GEOMETRY = ("width", "height", "tx", "rx", "carrier_hz", "bandwidth_hz", "n_subcarriers", "grid", "margin")
"""CSIRoom fields fixed by the traces; a ``room`` passed to :func:`load_sionna_csi` must keep them."""
_KEYS = ("frequencies", "positions", "static", "body", "rest", "metadata")
_CHUNK = 512
# The generator's SeedSequence streams (fedsim.data.csi), so that the same seed draws the same way.
_POS, _ACT, _PHASE, _AGC, _NOISE = 1, 2, 5, 6, 7  # 3 is the breathing stream (draw_breathing)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _subset(name: str, values: Iterable[int] | int | None, n_classes: int) -> np.ndarray:
    if values is None:
        return np.arange(n_classes)
    if isinstance(values, int | np.integer) and not isinstance(values, bool):
        values = (values,)
    try:
        array = np.unique(np.asarray(list(values)))
    except TypeError as error:
        raise ValueError(f"{name} must be a collection of ints in [0, {n_classes}), got {values!r}") from error
    if array.size == 0 or array.dtype.kind not in "iu" or array.min() < 0 or array.max() >= n_classes:
        raise ValueError(f"{name} must be a non-empty collection of ints in [0, {n_classes}), got {values!r}")
    return array


@dataclass(frozen=True)
class SionnaCSITraces:
    """The traced CFRs of ``csi_sionna.npz``.

    Attributes
    ----------
    positions : ndarray of float64, shape (P, 2)
        Traced grid points (x, y) [m], x-major.
    static : ndarray of complex128, shape (n_pair, M)
        Empty room.
    body, rest : ndarray of complex128, shape (3, P, n_pair, M)
        Per activity (0 standing, 1 sitting, 2 lying) and position: CFR of the paths that touch the body, and
        of all other paths with the body in the room.
    frequencies : ndarray of float64, shape (M,)
        Subcarrier frequencies [Hz] (equal to ``room.frequencies``).
    room : CSIRoom
        The generator's room with the traced geometry (the file's width, height, TX/RX, carrier, bandwidth, M,
        grid and margin; every other field at its default).
    metadata : dict
        Generation settings, Sionna RT version and measured wall time.
    n_paths, n_body_paths : ndarray of int, shape (3, P), optional
        Number of traced paths and of body paths per trace.
    """

    positions: np.ndarray
    static: np.ndarray
    body: np.ndarray
    rest: np.ndarray
    frequencies: np.ndarray
    room: CSIRoom
    metadata: dict
    n_paths: np.ndarray | None = field(default=None, repr=False)
    n_body_paths: np.ndarray | None = field(default=None, repr=False)

    @property
    def target(self) -> np.ndarray:
        """Noise-free CFR with the person in the room, ``body + rest``, shape (3, P, n_pair, M)."""
        return self.body + self.rest

    @property
    def dynamic(self) -> np.ndarray:
        """Noise-free static-removed CFR ``target - static`` (the counterpart of ``dynamic_csi``), (3, P, n_pair, M)."""
        return self.target - self.static


def load_sionna_traces(path: str | Path = SIONNA_CSI_PATH) -> SionnaCSITraces:
    """Read and check the traced CFRs (no ray tracing; numpy only).

    Raises
    ------
    ValueError
        If ``path`` does not exist or the file lacks a key or has inconsistent shapes.
    """
    if not isinstance(path, str | Path):
        raise ValueError(f"path must be a str or Path, got {type(path).__name__} {path!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} does not exist; make it with `python datasets/sionna_csi.py` "
                         "(needs the sionna extra) or use the shipped datasets/csi_sionna.npz")
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in _KEYS if key not in data.files]
        if missing:
            raise ValueError(f"path {str(path)!r} lacks the keys {missing}: not a sionna_csi.py file")
        arrays = {key: data[key] for key in data.files}
    metadata = json.loads(str(arrays["metadata"]))
    geometry = metadata["room"]
    room = CSIRoom(width=geometry["width_m"], height=geometry["height_m"],
                   tx=tuple(tuple(p) for p in geometry["tx"]), rx=tuple(tuple(p) for p in geometry["rx"]),
                   carrier_hz=metadata["carrier_hz"], bandwidth_hz=metadata["bandwidth_hz"],
                   n_subcarriers=metadata["n_subcarriers"], grid=metadata["grid_m"], margin=metadata["margin_m"])
    positions = arrays["positions"].astype(np.float64)
    static = arrays["static"].astype(np.complex128)
    body, rest = arrays["body"].astype(np.complex128), arrays["rest"].astype(np.complex128)
    shape = (len(ACTIVITIES), len(positions), room.n_pair, room.n_subcarriers)
    if static.shape != shape[2:] or body.shape != shape or rest.shape != shape or positions.shape[1:] != (2,):
        raise ValueError(f"path {str(path)!r} has inconsistent shapes: static {static.shape}, body {body.shape}, "
                         f"rest {rest.shape}, positions {positions.shape}; expected body {shape}")
    if not np.allclose(arrays["frequencies"], room.frequencies, rtol=0, atol=1.0):
        raise ValueError(f"path {str(path)!r}: the stored frequencies are not the room's subcarriers")
    return SionnaCSITraces(positions=positions, static=static, body=body, rest=rest,
                           frequencies=arrays["frequencies"].astype(np.float64), room=room, metadata=metadata,
                           n_paths=arrays.get("n_paths"), n_body_paths=arrays.get("n_body_paths"))


def _check_room(room: CSIRoom | None, traced: CSIRoom) -> CSIRoom:
    if room is None:
        return traced
    if not isinstance(room, CSIRoom):
        raise ValueError(f"room must be a CSIRoom or None, got {type(room).__name__}")
    for name in _GEOMETRY:
        ours, theirs = np.asarray(getattr(room, name), dtype=float), np.asarray(getattr(traced, name), dtype=float)
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=1e-9, atol=1e-9):
            raise ValueError(f"room.{name} = {getattr(room, name)!r} differs from the traced "
                             f"{getattr(traced, name)!r}; only snapshot, respiration and impairment fields can change")
    if room.sway != 0:
        raise ValueError(f"room.sway must be 0 for traced data (the body stands on the grid points), got {room.sway}")
    if room.poor_coverage_link is not None:
        raise ValueError("room.poor_coverage_link is not supported for traced data; use None")
    return room


def load_sionna_csi(path: str | Path = SIONNA_CSI_PATH, n_samples: int = 6000, *, seed: int = 0, env_seed: int = 0,
                    room: CSIRoom | None = None, zones: Iterable[int] | None = None,
                    activities: Iterable[int] | None = None, keep_csi: bool = False) -> CSIDataset:
    """Draw ``n_samples`` CSI samples from the ray-traced room (the module docstring says what is synthesised).

    Parameters
    ----------
    path : str or Path
        The traces (default: the shipped ``datasets/csi_sionna.npz``).
    n_samples : int
        Number of samples (>= 1).
    seed : int
        Sample seed: labels, respiration, phase error, AGC and noise (the generator's streams).
    env_seed : int
        Environment seed: the interference blocks (the same as the generator's for the same seed).
    room : CSIRoom, optional
        Snapshot, respiration and impairment parameters (``n_snapshots``, ``sample_rate``, ``breath_*``,
        ``snr_db``, ``interference_*``, ``phase_noise_std``, ``agc_jitter_db``). Its geometry must equal the
        traced one (:attr:`SionnaCSITraces.room`, the default); ``sway`` must be 0 and
        ``poor_coverage_link`` None. The gain and height fields are ignored (the ray tracer replaces them).
    zones, activities : iterable of int, optional
        Subsets of the 2 x 2 room zones and of the activities to draw from (label skew), as in
        ``make_csi_dataset``.
    keep_csi : bool
        Also return the measured complex CSI H_t (complex64).

    Returns
    -------
    CSIDataset
        ``features`` (n, 3, n_pair, M, T) float32, raw; ``position`` the traced grid point; ``room`` the room used.

    Raises
    ------
    ValueError
        For a missing or malformed file, a bad ``n_samples`` or seed, a ``room`` with another geometry, or
        ``zones`` / ``activities`` out of range, empty, or without a traced point.
    """
    if not isinstance(path, str | Path):
        raise ValueError(f"path must be a str or Path, got {type(path).__name__} {path!r} "
                         "(pass the sample count as n_samples=...)")
    n = _check_int("n_samples", n_samples, 1)
    seed = _check_int("seed", seed, 0)
    env_seed = _check_int("env_seed", env_seed, 0)
    zone_set = _subset("zones", zones, N_ZONES)
    activity_set = _subset("activities", activities, len(ACTIVITIES))
    traces = load_sionna_traces(path)
    room = _check_room(room, traces.room)

    candidates = np.flatnonzero(np.isin(zone_of(traces.positions, room), zone_set))
    if len(candidates) == 0:
        raise ValueError(f"zones {zone_set.tolist()} contain no traced grid point")
    point = candidates[_rng(seed, _POS).integers(0, len(candidates), size=n)]
    activity = activity_set[_rng(seed, _ACT).integers(0, len(activity_set), size=n)].astype(np.int64)
    amplitude, rate, phase0, waveform = draw_breathing(room, seed, n)

    env = make_csi_environment(room, env_seed)  # only its interference blocks are used
    power = float(np.mean(np.abs(traces.static) ** 2))
    noise_std = np.where(env.informative, np.sqrt(power / 10 ** (room.snr_db / 10)),
                         np.sqrt(power / 10 ** (room.interference_snr_db / 10)))[None, :, :, None] / np.sqrt(2)
    n_pair, m, t_len = room.n_pair, room.n_subcarriers, room.n_snapshots
    k = 2 * np.pi * room.frequencies[None, None, :, None] / SPEED_OF_LIGHT
    static = traces.static[None, :, :, None]
    phase_rng, agc_rng, noise_rng = _rng(seed, _PHASE), _rng(seed, _AGC), _rng(seed, _NOISE)
    features = np.empty((n, len(FEATURE_NAMES), n_pair, m, t_len), dtype=np.float32)
    csi = np.empty((n, n_pair, m, t_len), dtype=np.complex64) if keep_csi else None
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        offset = (2 * amplitude[rows, None] * waveform[rows])[:, None, None, :]  # (c, 1, 1, T) path-length change
        body = traces.body[activity[rows], point[rows]][..., None]
        h = traces.rest[activity[rows], point[rows]][..., None] + body * np.exp(-1j * k * offset)
        h = impair(h, room, noise_std, phase_rng, agc_rng, noise_rng)
        if csi is not None:
            csi[rows] = h
        features[rows] = csi_features(h - static)
    return CSIDataset(features=features, position=traces.positions[point].copy(), activity=activity,
                      respiration_rate=rate, waveform=waveform.astype(np.float32),
                      informative=env.informative.copy(), room=room, env_seed=env_seed, csi=csi)
