"""Realistic any-to-any (A2A) path-loss links on the Madrid grid: a physics generator, vehicle streams, Sionna RT data.

This is the data side of the online A2A path-loss map learner (paper 004, digest Secs. 6.2, 8, 9). The paper's
realistic data (GEMV2, Lower Manhattan) is not public; two substitutes live here.

**Physics-flavoured generator** (:class:`LinkPhysics`, :class:`A2AEnvironment`), independent of the paper's
window model. The path loss of a link between ``x_i`` and ``x_j`` (metres, ends in different pixels) is

    pl = pl0 + 10 * exponent * log10(max(d, d0) / d0) + L_obst + X + n

- ``pl0 = 75 dB``, ``exponent = 2.9``, ``d0 = 1 m``: the paper's V2X pre-processing (its d0 is not given;
  digest A7). The distance is floored at d0 (never binding between two pixel centres, 2.5 m apart at least).
- ``L_obst = sum_p l_p * a_p``: ``l_p`` is the length [m] of the straight Tx-Rx segment inside pixel p, from an
  exact grid traversal (:func:`segment_pixel_lengths`), and ``a_p`` is the **attenuation field** [dB/m]:
  ``building_db_per_m`` (1.0, the low end of the digest's 1-2 dB/m: a linear loss through several 30 m
  blocks is already large; the Sionna RT data shows about 1 dB/m, saturating) in buildings,
  ``park_db_per_m`` (0.1, the digest's 0.1 x) in the park, 0 on roads. An optional cap
  ``max_obstruction_db`` (the digest's 40 dB, off by default; it would bind on a third of random links)
  mimics the real path going around a block; it makes the obstruction term non-linear in the field.
- ``X = (g(x_i) + g(x_j)) / sqrt(2)``: spatially correlated log-normal shadowing, one stationary Gaussian
  field ``g`` over the map (std ``shadowing_std_db`` = 3 dB, exponential correlation
  ``exp(-distance / decorrelation_m)``, 15 m: the digest's 3-4 dB and 10-20 m). Choice: a field *per end
  point* (local clutter around each vehicle, Gudmundson's model along each end's path) rather than the
  Agrawal-Patwari sum of a field along the link: the building losses already are a line integral, and an
  end-point field cannot be explained away by a tomographic SLF, so it stays a clean "unmodelled" part.
  X is symmetric (reciprocity); moving one end by D keeps a correlation of ``(1 + exp(-D/d_c)) / 2``.
  The field is a random-Fourier-feature Gaussian field (:class:`CorrelatedField`): exact covariance in
  expectation, evaluated at any continuous position, deterministic from the seed.
- ``n ~ N(0, noise_std_db^2)``, 1 dB, independent per measurement.

**Ground truth and the SLF.** Without the cap, ``L_obst`` is exactly a tomographic projection: the true
window of a link is its row of :meth:`A2AEnvironment.true_window` (metres per pixel, a sparse [N, P] matrix)
and the true SLF is the attenuation field. :attr:`A2ADataset.slf` is the field divided by
``building_db_per_m`` (buildings 1, park 0.1, roads 0: ``Grid.slf`` for the defaults), so the scale matches
the paper's normalised SLF. A learner with another window (e.g. the paper's ``1/sqrt(d)`` ellipse) recovers
the field only up to its window's normalisation: score it with the NMSE after a least-squares scale, or
with the image correlation, and state which.

**Vehicle trajectories** (:func:`vehicle_route`, :func:`fleet_routes`, :func:`client_stream`). A vehicle
follows shortest paths on the road graph (4-neighbour road pixels) between random road destinations (a
random-waypoint model): one pixel (2.5 m) per time step, to a 4-neighbour road pixel only, never standing
still. Vehicle k's route depends only on (seed, k), so every client can recompute the whole fleet. At each
step a client measures ``links_per_step`` links from its pixel centre to the other vehicles' pixel centres
(a random subset if there are more) topped up with random road pixels within ``partner_radius_m`` of it:
its links cluster around its own route (non-IID).

**Sionna RT data** (:func:`load_sionna_a2a`): ``datasets/a2a_sionna.npz`` made by ``datasets/sionna_a2a.py``.

**Invariants.** Positions outside the map raise the ``ValueError`` of ``Grid.pixel_of``; a link whose two
ends share a pixel is rejected (``ValueError``) and is never produced; no NaN is produced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from fedsim.data.madrid import BUILDING, PARK, Grid, madrid_grid

SIONNA_A2A_PATH = Path(__file__).resolve().parents[2] / "datasets" / "a2a_sionna.npz"
_TRAVERSAL_CHUNK = 4096
_FIELD_CHUNK = 8192


@dataclass(frozen=True)
class A2ALinks:
    """A batch of measured links.

    Parameters
    ----------
    tx_xy, rx_xy : ndarray, shape (N, 2)
        End points in metres.
    path_loss_db : ndarray, shape (N,)
        Measured long-term path loss in dB.
    """

    tx_xy: np.ndarray
    rx_xy: np.ndarray
    path_loss_db: np.ndarray

    def __len__(self) -> int:
        return len(self.path_loss_db)

    @property
    def distance_m(self) -> np.ndarray:
        """Link lengths [N] in metres."""
        return np.linalg.norm(self.rx_xy - self.tx_xy, axis=1)

    def shadowing_db(self, pl0_db: float = 75.0, exponent: float = 2.9, d0_m: float = 1.0) -> np.ndarray:
        """The learner's target: path loss minus the log-distance part (paper eq. 40), [N] dB."""
        return self.path_loss_db - log_distance_db(self.distance_m, pl0_db, exponent, d0_m)

    def subset(self, index: np.ndarray) -> A2ALinks:
        """The links at ``index`` (an integer or boolean array)."""
        return A2ALinks(self.tx_xy[index], self.rx_xy[index], self.path_loss_db[index])


@dataclass(frozen=True)
class A2ADataset:
    """Links plus the ground truth that scores a learner.

    Parameters
    ----------
    links : A2ALinks
    grid : Grid
        The map; pixel p of ``slf`` is ``grid.centres[p]``.
    slf : ndarray, shape (P,)
        Normalised true spatial loss field (buildings 1).
    metadata : dict
        How the data was made.
    components : dict of str to ndarray
        Per-link parts of the path loss in dB (physics generator only): ``log_distance``, ``obstruction``,
        ``shadowing``, ``noise``.
    """

    links: A2ALinks
    grid: Grid
    slf: np.ndarray
    metadata: dict = field(default_factory=dict)
    components: dict = field(default_factory=dict)


def log_distance_db(distance_m: np.ndarray, pl0_db: float, exponent: float, d0_m: float) -> np.ndarray:
    """``pl0 + 10 * exponent * log10(max(d, d0) / d0)`` in dB."""
    return pl0_db + 10.0 * exponent * np.log10(np.maximum(distance_m, d0_m) / d0_m)


def validate_links(grid: Grid, tx_xy: np.ndarray, rx_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices of both ends; ``ValueError`` if not finite, outside the map, or both ends in one pixel."""
    tx_xy, rx_xy = np.atleast_2d(np.asarray(tx_xy, float)), np.atleast_2d(np.asarray(rx_xy, float))
    if tx_xy.shape != rx_xy.shape or tx_xy.shape[1:] != (2,):
        raise ValueError(f"tx_xy {tx_xy.shape} and rx_xy {rx_xy.shape} must both be [N, 2]")
    if not (np.isfinite(tx_xy).all() and np.isfinite(rx_xy).all()):
        raise ValueError("link end positions must be finite")
    tx_pixel, rx_pixel = grid.pixel_of(tx_xy), grid.pixel_of(rx_xy)
    same = tx_pixel == rx_pixel
    if same.any():
        raise ValueError(f"{same.sum()} link(s) have both ends in the same pixel (first: pixel "
                         f"{tx_pixel[np.argmax(same)]}); a link needs two distinct pixels")
    return tx_pixel, rx_pixel


def segment_pixel_lengths(grid: Grid, tx_xy: np.ndarray, rx_xy: np.ndarray) -> sparse.csr_matrix:
    """Length [m] of each straight Tx-Rx segment inside each pixel: a sparse [N, P] matrix.

    Exact grid traversal: the segment is cut at every crossing of a pixel boundary line; each piece lies in
    the pixel of its midpoint. Row sums equal the link lengths.
    """
    tx_xy, rx_xy = np.atleast_2d(np.asarray(tx_xy, float)), np.atleast_2d(np.asarray(rx_xy, float))
    validate_links(grid, tx_xy, rx_xy)
    pieces = [_traverse_chunk(grid, tx_xy[s : s + _TRAVERSAL_CHUNK], rx_xy[s : s + _TRAVERSAL_CHUNK], s)
              for s in range(0, len(tx_xy), _TRAVERSAL_CHUNK)]
    rows, cols, lengths = (np.concatenate(part) for part in zip(*pieces)) if pieces else ([], [], [])
    return sparse.csr_matrix((lengths, (rows, cols)), shape=(len(tx_xy), grid.num_pixels))


def _traverse_chunk(grid: Grid, a: np.ndarray, b: np.ndarray, first_row: int):
    nx, ny = grid.shape
    step = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        tx_cross = (np.arange(1, nx) * grid.pixel_m - a[:, :1]) / step[:, :1]
        ty_cross = (np.arange(1, ny) * grid.pixel_m - a[:, 1:]) / step[:, 1:]
    crossings = np.concatenate([tx_cross, ty_cross], axis=1)
    crossings = np.where(np.isfinite(crossings) & (crossings > 0) & (crossings < 1), crossings, 1.0)
    t = np.sort(np.concatenate([np.zeros((len(a), 1)), crossings, np.ones((len(a), 1))], axis=1), axis=1)
    middle = a[:, None, :] + ((t[:, :-1] + t[:, 1:]) / 2)[..., None] * step[:, None, :]
    ix = np.clip(np.floor(middle[..., 0] / grid.pixel_m).astype(int), 0, nx - 1)
    iy = np.clip(np.floor(middle[..., 1] / grid.pixel_m).astype(int), 0, ny - 1)
    lengths = np.diff(t, axis=1) * np.linalg.norm(step, axis=1, keepdims=True)
    keep = lengths > 0
    rows = np.broadcast_to(np.arange(first_row, first_row + len(a))[:, None], keep.shape)
    return rows[keep], (ix * ny + iy)[keep], lengths[keep]


@dataclass(frozen=True)
class CorrelatedField:
    """A stationary Gaussian random field on the plane with covariance ``std^2 * exp(-|u - v| / length)``.

    Random Fourier features: ``g(x) = std * sqrt(2/K) * sum_k cos(omega_k . x + phase_k)`` with ``omega``
    drawn from the exponential covariance's 2-D spectral density (a bivariate Cauchy scaled by 1/length)
    and uniform phases. Its covariance over realisations is exactly the model; one realisation is
    Gaussian as K grows.

    Parameters
    ----------
    omega : ndarray, shape (K, 2)
        Angular frequencies [rad/m].
    phase : ndarray, shape (K,)
    std : float
    """

    omega: np.ndarray
    phase: np.ndarray
    std: float

    @classmethod
    def sample(cls, std: float, length_m: float, num_components: int, rng: np.random.Generator) -> CorrelatedField:
        """Draw a field with the given standard deviation and decorrelation length."""
        gaussian = rng.standard_normal((num_components, 2))
        scale = np.abs(rng.standard_normal((num_components, 1))) + 1e-12
        return cls(gaussian / scale / length_m, rng.uniform(0, 2 * np.pi, num_components), float(std))

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Field values [N] at positions [N, 2] (metres)."""
        xy = np.atleast_2d(np.asarray(xy, float))
        if not len(xy):
            return np.zeros(0)
        unique_xy, inverse = np.unique(xy, axis=0, return_inverse=True)  # links share end points (pixel centres)
        amplitude = self.std * np.sqrt(2.0 / len(self.phase))
        values = np.concatenate([amplitude * np.cos(unique_xy[s : s + _FIELD_CHUNK] @ self.omega.T + self.phase).sum(1)
                                 for s in range(0, len(unique_xy), _FIELD_CHUNK)])
        return values[inverse.ravel()]


@dataclass(frozen=True)
class LinkPhysics:
    """Parameters of the physics-flavoured path-loss model (see the module docstring for the formula)."""

    pl0_db: float = 75.0
    exponent: float = 2.9
    d0_m: float = 1.0
    building_db_per_m: float = 1.0
    park_db_per_m: float = 0.1
    max_obstruction_db: float | None = None
    shadowing_std_db: float = 3.0
    decorrelation_m: float = 15.0
    noise_std_db: float = 1.0
    num_field_components: int = 512


class LinkMeasurer(Protocol):
    """What :func:`client_stream` needs from a generator."""

    def measure(self, tx_xy: np.ndarray, rx_xy: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class A2AEnvironment:
    """One realised world: the grid, the physics, and the shadowing field drawn from ``seed``.

    Every client of a run builds the same environment from the same seed (nothing else is random in it).

    Parameters
    ----------
    grid : Grid
    physics : LinkPhysics
    seed : int
    """

    grid: Grid
    physics: LinkPhysics = LinkPhysics()
    seed: int = 0

    @cached_property
    def attenuation_db_per_m(self) -> np.ndarray:
        """The true attenuation field [P] in dB per metre (the SLF's role)."""
        kinds = self.grid.kinds.ravel()
        return np.where(kinds == BUILDING, self.physics.building_db_per_m,
                        np.where(kinds == PARK, self.physics.park_db_per_m, 0.0))

    @property
    def slf(self) -> np.ndarray:
        """The attenuation field in units of ``building_db_per_m`` (buildings 1), [P]."""
        return self.attenuation_db_per_m / self.physics.building_db_per_m

    @cached_property
    def shadowing_field(self) -> CorrelatedField:
        """The end-point shadowing field ``g`` (shared by all links and all clients)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xF1E1D]))
        p = self.physics
        return CorrelatedField.sample(p.shadowing_std_db, p.decorrelation_m, p.num_field_components, rng)

    def true_window(self, tx_xy: np.ndarray, rx_xy: np.ndarray) -> sparse.csr_matrix:
        """Sparse [N, P] metres of each link inside each pixel: ``obstruction = window @ attenuation``."""
        return segment_pixel_lengths(self.grid, tx_xy, rx_xy)

    def components(self, tx_xy: np.ndarray, rx_xy: np.ndarray) -> dict[str, np.ndarray]:
        """Noise-free parts of the path loss [N] in dB: ``log_distance``, ``obstruction``, ``shadowing``."""
        tx_xy, rx_xy = np.atleast_2d(np.asarray(tx_xy, float)), np.atleast_2d(np.asarray(rx_xy, float))
        validate_links(self.grid, tx_xy, rx_xy)
        p = self.physics
        obstruction = self.true_window(tx_xy, rx_xy) @ self.attenuation_db_per_m
        if p.max_obstruction_db is not None:
            obstruction = np.minimum(obstruction, p.max_obstruction_db)
        distance = np.linalg.norm(rx_xy - tx_xy, axis=1)
        shadowing = (self.shadowing_field(tx_xy) + self.shadowing_field(rx_xy)) / np.sqrt(2.0)
        return {"log_distance": log_distance_db(distance, p.pl0_db, p.exponent, p.d0_m),
                "obstruction": obstruction, "shadowing": shadowing}

    def measure(self, tx_xy: np.ndarray, rx_xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy path loss [N] in dB of the links ``tx_xy[n] -> rx_xy[n]``."""
        parts = self.components(tx_xy, rx_xy)
        return sum(parts.values()) + self.physics.noise_std_db * rng.standard_normal(len(parts["obstruction"]))


def make_environment(grid: Grid | None = None, physics: LinkPhysics | None = None, seed: int = 0) -> A2AEnvironment:
    """The physics environment of a run (the Madrid grid and default physics unless given)."""
    return A2AEnvironment(grid if grid is not None else madrid_grid(), physics or LinkPhysics(), seed)


def sample_links(environment: A2AEnvironment, num_links: int, seed: int = 0) -> A2ADataset:
    """i.i.d. links between road pixel centres, uniform over unordered pairs of distinct pixels (digest A18).

    Returns
    -------
    A2ADataset
        With the per-link components (``noise`` included) and the environment's normalised SLF.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x11D]))
    roads, centres = environment.grid.road_pixels, environment.grid.centres
    first = rng.integers(len(roads), size=num_links)
    second = (first + rng.integers(1, len(roads), size=num_links)) % len(roads)  # uniform over the others
    tx_xy, rx_xy = centres[roads[first]], centres[roads[second]]
    parts = environment.components(tx_xy, rx_xy)
    parts["noise"] = environment.physics.noise_std_db * rng.standard_normal(num_links)
    links = A2ALinks(tx_xy, rx_xy, sum(parts.values()))
    metadata = {"source": "physics", "physics": asdict(environment.physics), "seed": environment.seed,
                "link_seed": seed, "pixel_m": environment.grid.pixel_m}
    return A2ADataset(links, environment.grid, environment.slf, metadata, parts)


# --- vehicle trajectories on the road graph -------------------------------------------------------------------


def road_graph(grid: Grid) -> sparse.csr_matrix:
    """Adjacency [R, R] of the road pixels (index r is ``grid.road_pixels[r]``), 4-neighbours."""
    nx, ny = grid.shape
    road_index = np.full(grid.num_pixels, -1)
    road_index[grid.road_pixels] = np.arange(len(grid.road_pixels))
    index = road_index.reshape(nx, ny)
    pairs = [(index[:-1, :], index[1:, :]), (index[:, :-1], index[:, 1:])]
    rows, cols = [], []
    for u, v in pairs:
        both = (u >= 0) & (v >= 0)
        rows += [u[both], v[both]]
        cols += [v[both], u[both]]
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    count = len(grid.road_pixels)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(count, count))


def _shortest_path(graph: sparse.csr_matrix, start: int, goal: int) -> list[int]:
    """Road indices from ``start`` (excluded) to ``goal`` (included), breadth first (ties: scipy's order)."""
    _, predecessors = csgraph.breadth_first_order(graph, start, directed=False, return_predecessors=True)
    path = [goal]
    while predecessors[path[-1]] != start:
        if predecessors[path[-1]] < 0:
            raise ValueError(f"road index {goal} is not reachable from {start}")
        path.append(int(predecessors[path[-1]]))
    return path[::-1]


def vehicle_route(grid: Grid, num_steps: int, seed: int | np.random.SeedSequence) -> np.ndarray:
    """Pixel indices [num_steps] of one vehicle: shortest paths between random road destinations.

    The start and every destination are uniform over the road pixels; the vehicle moves one 4-neighbour road
    pixel per step.
    """
    rng = np.random.default_rng(seed)
    graph, roads = road_graph(grid), grid.road_pixels
    route = [int(rng.integers(len(roads)))]
    while len(route) < num_steps:
        goal = (route[-1] + int(rng.integers(1, len(roads)))) % len(roads)
        route += _shortest_path(graph, route[-1], goal)
    return roads[np.array(route[:num_steps], dtype=int)]


def fleet_routes(grid: Grid, num_vehicles: int, num_steps: int, seed: int) -> np.ndarray:
    """Routes [num_vehicles, num_steps] (pixel indices); vehicle k's route depends only on (seed, k)."""
    return np.stack([vehicle_route(grid, num_steps, np.random.SeedSequence([seed, 0x7A1, k]))
                     for k in range(num_vehicles)])


def _partner_pixels(grid: Grid, own: int, vehicles: np.ndarray, count: int, radius_m: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``count`` partner pixels != own: other vehicles first, then road pixels within ``radius_m``."""
    vehicles = vehicles[vehicles != own]
    if len(vehicles) >= count:
        return rng.choice(vehicles, size=count, replace=False)
    roads = grid.road_pixels
    near = roads[(np.linalg.norm(grid.centres[roads] - grid.centres[own], axis=1) <= radius_m) & (roads != own)]
    extra = rng.choice(near, size=count - len(vehicles), replace=len(near) < count - len(vehicles))
    return np.concatenate([vehicles, extra])


def client_stream(grid: Grid, client: int, num_steps: int, links_per_step: int, seed: int,
                  generator: LinkMeasurer | None = None, num_clients: int = 8,
                  partner_radius_m: float = 50.0) -> Iterator[A2ALinks]:
    """Per-step link batches measured by one vehicle (client) of a fleet.

    Parameters
    ----------
    grid : Grid
    client : int
        The vehicle, ``0 <= client < num_clients``.
    num_steps : int
        Time steps (one road pixel of motion each).
    links_per_step : int
        Links measured per step, from the vehicle to its partners (see :func:`_partner_pixels`).
    seed : int
        Run seed: fixes the fleet's routes, the partners, the noise, and the default environment.
    generator : LinkMeasurer, optional
        Produces the path loss; defaults to ``make_environment(grid, seed=seed)``, which every client
        rebuilds identically (the same shadowing field).
    num_clients : int
        Vehicles in the fleet.
    partner_radius_m : float
        Radius of the random road partners that top up the other vehicles.

    Yields
    ------
    A2ALinks
        ``links_per_step`` links with ``tx_xy`` the vehicle's pixel centre.
    """
    if not 0 <= client < num_clients:
        raise ValueError(f"client {client} is not in [0, {num_clients})")
    generator = generator if generator is not None else make_environment(grid, seed=seed)
    routes = fleet_routes(grid, num_clients, num_steps, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC11E, client]))
    for step in range(num_steps):
        own = int(routes[client, step])
        partners = _partner_pixels(grid, own, routes[:, step], links_per_step, partner_radius_m, rng)
        tx_xy = np.repeat(grid.centres[own][None], len(partners), axis=0)
        rx_xy = grid.centres[partners]
        yield A2ALinks(tx_xy, rx_xy, generator.measure(tx_xy, rx_xy, rng))


# --- Sionna RT data -------------------------------------------------------------------------------------------


def load_sionna_a2a(path: str | Path = SIONNA_A2A_PATH, censored_db: float | None = None) -> A2ADataset:
    """The ray-traced V2V links of ``datasets/a2a_sionna.npz`` (made by ``datasets/sionna_a2a.py``).

    Parameters
    ----------
    path : str or Path
    censored_db : float, optional
        Links without any ray-traced path are dropped (default), or given this path loss (e.g. 180 dB).

    Returns
    -------
    A2ADataset
        Path loss = -path gain; ``slf`` is the building mask of the Madrid grid (the park is open ground
        in the scene, so 0 there); ``metadata`` holds the generation settings plus ``num_censored``.
    """
    with np.load(path) as data:
        tx_xy, rx_xy = data["tx_xy"].astype(float), data["rx_xy"].astype(float)
        path_loss = -data["path_gain_db"].astype(float)
        metadata = json.loads(str(data["metadata"]))
    grid = madrid_grid()
    validate_links(grid, tx_xy, rx_xy)
    censored = ~np.isfinite(path_loss)
    metadata.update(source="sionna-rt", num_censored=int(censored.sum()), censored_db=censored_db)
    links = A2ALinks(tx_xy, rx_xy, path_loss)
    if censored_db is None:
        links = links.subset(~censored)
    else:
        links = A2ALinks(tx_xy, rx_xy, np.where(censored, censored_db, path_loss))
    return A2ADataset(links, grid, (grid.kinds.ravel() == BUILDING).astype(float), metadata)
