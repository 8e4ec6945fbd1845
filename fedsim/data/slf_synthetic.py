"""The synthetic protocol of the any-to-any path-loss paper (004, Sec. VI-A) on the Madrid grid.

At every time step t, ``M`` links are drawn i.i.d. (uniform over unordered pairs of distinct road pixels,
with replacement; digest A18) between road-pixel centres. Their true windows are the elliptical model
window plus a mismatch of norm exactly ``r`` per link, and the measurements are
``s_hat = W_true f_true + noise`` with the Madrid SLF as ``f_true`` (building 1, park 0.1, road 0).

The paper does not say how the true windows were perturbed (digest A9); two generators are offered:

- ``"dense"`` (digest 6.1): ``w_true = w_model + r u`` with ``u`` uniform on the unit sphere of R^P;
- ``"structured"`` (digest 6.3): the true window is a WIDER ellipse, ``eta_true = 4 eta``, scaled into the
  r-sphere: ``w_true = w_model + r (w_wide - w_model) / |w_wide - w_model|``. A link whose wider ellipse
  contains no further pixel centre carries no mismatch. The deviation is a systematic function of the
  link geometry, which is where a learnable window can help.

Every batch is a pure function of ``(random_state, t)``, so batches can be regenerated in any order (the
true windows of 200 steps would take 420 MB; regenerate them to score the learned windows).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fedsim.data.madrid import Grid, madrid_grid
from fedsim.pathloss import ETA, ellipse_window, link_geometry

MISMATCHES = ("dense", "structured")
_TRAIN, _HELDOUT = 0, 1


@dataclass(frozen=True)
class LinkBatch:
    """A batch of links with measurements and ground truth.

    Attributes
    ----------
    tx_pixel, rx_pixel : ndarray of int, shape (M,)
        End pixels.
    tx_xy, rx_xy : ndarray, shape (M, 2)
        End points (pixel centres) in metres.
    s_hat : ndarray, shape (M,)
        Measured shadowing (true shadowing plus noise).
    s_true : ndarray, shape (M,)
        Noise-free shadowing ``W_true f_true``.
    w_true, w_model : ndarray, shape (M, P)
        True and elliptical-model windows.
    """

    tx_pixel: np.ndarray
    rx_pixel: np.ndarray
    tx_xy: np.ndarray
    rx_xy: np.ndarray
    s_hat: np.ndarray
    s_true: np.ndarray
    w_true: np.ndarray
    w_model: np.ndarray


class MadridSLFProtocol:
    """Generator of the paper's synthetic stream of shadowing measurements.

    Parameters
    ----------
    r : float
        Norm of the window mismatch of every link (>= 0); 0 means the model is exact.
    mismatch : {"dense", "structured"}
        Mismatch generator (see the module docstring).
    links_per_step : int
        M, links per time step (paper: 120).
    noise_std : float
        Standard deviation of the Gaussian measurement noise in normalised SLF units (paper: none given;
        default 0).
    eta : float
        Wavelength of the model ellipse in metres (paper: 0.1499).
    structured_eta_factor : float
        ``eta_true / eta`` of the structured generator (> 1).
    random_state : int
        Seed; batch t is a function of ``(random_state, t)`` only.
    grid : Grid, optional
        The map; the Madrid grid by default.
    """

    def __init__(self, r: float = 0.1, mismatch: str = "dense", links_per_step: int = 120, noise_std: float = 0.0,
                 eta: float = ETA, structured_eta_factor: float = 4.0, random_state: int = 0,
                 grid: Grid | None = None) -> None:
        if not r >= 0:
            raise ValueError(f"r must be >= 0, got {r}")
        if mismatch not in MISMATCHES:
            raise ValueError(f"mismatch must be one of {MISMATCHES}, got {mismatch!r}")
        if links_per_step < 1 or not noise_std >= 0 or not eta > 0 or not structured_eta_factor > 1:
            raise ValueError("links_per_step must be >= 1, noise_std >= 0, eta > 0 and structured_eta_factor > 1")
        self.r, self.mismatch, self.links_per_step = r, mismatch, links_per_step
        self.noise_std, self.eta, self.structured_eta_factor = noise_std, eta, structured_eta_factor
        self.random_state = random_state
        self.grid = madrid_grid() if grid is None else grid

    @property
    def slf_true(self) -> np.ndarray:
        """The ground-truth SLF f_true, shape (P,)."""
        return self.grid.slf

    def batch(self, t: int) -> LinkBatch:
        """The batch of time step ``t`` (1-based by convention; any int works)."""
        return self._draw(np.random.default_rng([self.random_state, _TRAIN, t]), self.links_per_step)

    def stream(self, t_max: int) -> Iterator[LinkBatch]:
        """Batches for t = 1..t_max."""
        for t in range(1, t_max + 1):
            yield self.batch(t)

    def heldout(self, num_links: int = 5000) -> LinkBatch:
        """Held-out links from an independent random stream (digest A15: 5,000 fixed links).

        They are drawn from the same distribution as the training links, so some pairs may coincide
        with training pairs (about 8 % after 200 steps).
        """
        return self._draw(np.random.default_rng([self.random_state, _HELDOUT]), num_links)

    def _pairs(self, rng: np.random.Generator, num_links: int) -> tuple[np.ndarray, np.ndarray]:
        """End pixels of ``num_links`` links: uniform pairs of distinct road pixels (subclasses restrict them)."""
        return _distinct_road_pairs(rng, self.grid.road_pixels, num_links)

    def _draw(self, rng: np.random.Generator, num_links: int) -> LinkBatch:
        tx_pixel, rx_pixel = self._pairs(rng, num_links)
        tx_xy, rx_xy = self.grid.centres[tx_pixel], self.grid.centres[rx_pixel]
        phi1, phi2 = link_geometry(tx_xy, rx_xy, self.grid.centres)
        w_model = ellipse_window(phi1, phi2, self.eta)
        w_true = w_model + self.r * self._mismatch_directions(rng, phi1, phi2, w_model)
        s_true = w_true @ self.slf_true
        s_hat = s_true + self.noise_std * rng.standard_normal(num_links) if self.noise_std else s_true.copy()
        return LinkBatch(tx_pixel, rx_pixel, tx_xy, rx_xy, s_hat, s_true, w_true, w_model)

    def _mismatch_directions(self, rng: np.random.Generator, phi1: np.ndarray, phi2: np.ndarray,
                             w_model: np.ndarray) -> np.ndarray:
        """Unit (or zero) rows: the direction of every link's window mismatch."""
        if self.mismatch == "dense":
            direction = rng.standard_normal(w_model.shape)
        else:
            direction = ellipse_window(phi1, phi2, self.structured_eta_factor * self.eta) - w_model
        norms = np.linalg.norm(direction, axis=1, keepdims=True)
        return direction / np.where(norms > 0, norms, 1.0)


def _distinct_road_pairs(rng: np.random.Generator, road: np.ndarray, num_links: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform ordered pairs of distinct road pixels (hence uniform unordered pairs), with replacement."""
    first = rng.integers(road.size, size=num_links)
    second = rng.integers(road.size - 1, size=num_links)
    second += second >= first
    return road[first], road[second]
