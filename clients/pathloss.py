"""A vehicle that learns the any-to-any path-loss map online (paper 004), federated (digest Sec. 8).

Every client (vehicle) runs the hybrid learner :class:`fedsim.pathloss.OnlinePathLossLearner` on its own
stream of link measurements. Its learner state -- the running statistics ``A_bar = sum W^T W``,
``b = sum W^T s``, ``n``, ``c = sum s^2``, its own SLF ``f`` and its position in its data stream -- lives in
the node's ``context.state`` (``pathloss-learner``, ``pathloss-counters``), so it carries across rounds.

``train`` (one round): set the global SLF received from the server, run ``pl-steps-per-round`` time steps
(``partial_fit``: f-step, alpha-step, absorb) on the client's next batches, and reply per
``pl-aggregation``:

==============  ===========================================================  ==================================
aggregation     reply arrays                                                 bytes (P = 2184 Madrid pixels)
==============  ===========================================================  ==================================
``fedstats``    ``A-upper`` (upper triangle of this round's dA, exact), ``b``,  P(P+1)/2 + P + 2 floats: 19.1 MB
                ``n``, ``c`` -- increments since the last round
``coverage``    ``slf`` (the local f), ``coverage`` (diag of the local A_bar),  2P + 1 floats: 35 kB
                ``n``
``fedavg``      ``slf``, ``n``                                                 P + 1 floats: 17.5 kB
==============  ===========================================================  ==================================

With ``pl-fit-log-distance`` every reply also carries ``log-distance`` (this round's 2 x 3 normal equations
of ``pl = pl0 + 10 delta log10 d``, flattened), and a FedStats reply splits ``b`` into ``b`` =
``sum W^T pl``, ``b-one`` = ``sum W^T 1`` and ``b-x`` = ``sum W^T 10 log10 d``, so that the server forms
``sum W^T s = b - pl0 b-one - delta b-x`` with its LATEST (pl0, delta): exact, no stale targets.
The kernel coefficients alpha_t never leave the client (they encode the link positions, digest Sec. 8);
neither does any per-link quantity.

``evaluate``: the received global SLF on the client's held-out links, predicted with the model window
(digest A14): ``eval-loss`` = ``eval-nmse-s``, the NMSE of the shadowing; ``eval-rmse``, the RMSE of the
path loss in dB (of the shadowing in normalised units on ``a2a-madrid``); ``eval-nmse-f``, the NMSE of the
SLF against the ground truth, and ``eval-corr-f``, its Pearson correlation. Scale convention of
``eval-nmse-f``: on ``a2a-madrid`` the raw NMSE (the truth uses the same ellipse window normalisation as the
learner); on ``a2a-physics`` and ``a2a-sionna`` the learner's window (``1/sqrt(d)`` ellipse) and the
truth's (metres of building, or a 0/1 building mask) differ in units, so it is the NMSE after the
least-squares scale ``min_a |a f - f_true|^2 / |f_true|^2`` (``fedsim.data.a2a_links``'s advice).

Client data (the non-IID split, choices recorded here because the paper is centralised):

- ``a2a-madrid``: the paper's synthetic protocol (:class:`~fedsim.data.slf_synthetic.MadridSLFProtocol`)
  with the transmitter restricted to the client's REGION: the road pixels, ordered by pixel index (x, then
  y), cut into ``num-partitions`` contiguous vertical strips of equal size; the receiver is uniform over
  all other road pixels. The union of the regions' draws is the paper's distribution (uniform ordered
  pairs of distinct road pixels), so one node (``num-partitions = 1``) is the centralised reference with
  the same distribution. Held-out links: transmitters in the region, an independent stream, noise-free
  truth.
- ``a2a-physics``: :func:`~fedsim.data.a2a_links.client_stream`, the vehicle's route on the road graph,
  links to the other vehicles and to road pixels within 50 m (strongly non-IID). Held-out links: the
  client's stream over the steps AFTER its training steps (its route continues), noise-free truth.
- ``a2a-sionna``: the ray-traced links split by transmitter (the 20 transmitters sorted by position,
  client k takes numbers k, k + K, ...); a seeded shuffle holds out ``min(pl-heldout-links, 30 %)`` of its
  links (the measured path loss is the truth), and each step draws ``pl-links-per-step`` training links
  uniformly with replacement (the paper's "i.i.d. draws from the training set", Sec. VI-B).

The learner's lambdas are calibrated for a reference batch (``reference_batch_size``: the paper's M, 120
on Madrid, 60 on the realistic data): a client batch of M_k links counts ``M_k / M`` time steps in n.
The realistic data use the ellipse of the 5.9 GHz wavelength (digest A16); Madrid the paper's 2 GHz one.

Bad input: a link with both ends in one pixel, a non-finite end or a NaN measurement is skipped by the
learner with a warning; a batch with no usable link is skipped with a warning; ``skipped-links`` counts
them in the train metrics. Nothing else of the round is lost.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.config import RunConfig
from fedsim.data.madrid import Grid, madrid_grid
from fedsim.data.slf_synthetic import MadridSLFProtocol
from fedsim.pathloss import (
    ETA,
    OnlinePathLossLearner,
    log_distance_stats,
    model_window,
    nmse,
)
from fedsim.seeding import derive_seed

LEARNER_STATE = "pathloss-learner"
"""Node-state ArrayRecord: ``slf``, ``A_bar``, ``b``, ``power-vector``."""
LEARNER_COUNTERS = "pathloss-counters"
"""Node-state MetricRecord: ``n``, ``c``, ``alpha-penalty``, ``steps``, ``lambda-max``, ``time-step``."""
V2X_ETA = 299_792_458.0 / 5.9e9
"""Wavelength [m] of the ellipse window on the realistic data (5.9 GHz, digest A16)."""
SIONNA_HELDOUT_SHARE = 0.3
PATH_LOSS_DATASETS = ("a2a-physics", "a2a-sionna")


# --- the clients' data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """A batch of links: end points [M, 2] m and the measurement [M] (shadowing, or path loss in dB)."""

    tx_xy: np.ndarray
    rx_xy: np.ndarray
    measured: np.ndarray

    @property
    def distance(self) -> np.ndarray:
        """Link lengths [M] in metres."""
        return np.hypot(*(self.tx_xy - self.rx_xy).T)


def region_roads(grid: Grid, region: int, num_regions: int) -> np.ndarray:
    """Road pixels of a region: the roads ordered by pixel index (x, then y) cut into equal vertical strips."""
    if not 0 <= region < num_regions or num_regions > len(grid.road_pixels):
        raise ValueError(f"region {region} of {num_regions} does not exist on a map of "
                         f"{len(grid.road_pixels)} road pixels")
    return np.array_split(grid.road_pixels, num_regions)[region]


class RegionalSLFProtocol(MadridSLFProtocol):
    """The paper's synthetic stream with the transmitters drawn from one region's road pixels.

    Parameters
    ----------
    tx_pixels : ndarray of int
        Road pixels the transmitter is drawn from (uniformly); the receiver is uniform over the other
        road pixels.
    **kwargs
        Passed to :class:`~fedsim.data.slf_synthetic.MadridSLFProtocol`.
    """

    def __init__(self, tx_pixels: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tx_pixels = np.asarray(tx_pixels, dtype=int)

    def _pairs(self, rng: np.random.Generator, num_links: int) -> tuple[np.ndarray, np.ndarray]:
        roads = self.grid.road_pixels
        tx_pixel = self.tx_pixels[rng.integers(len(self.tx_pixels), size=num_links)]
        other = rng.integers(len(roads) - 1, size=num_links)
        return tx_pixel, roads[other + (other >= np.searchsorted(roads, tx_pixel))]


class ClientData:
    """One client's training stream and held-out links, for any of the ``a2a-*`` datasets.

    Parameters
    ----------
    config : RunConfig
    client, num_clients : int
        Partition id and number of partitions.
    """

    def __init__(self, config: RunConfig, client: int, num_clients: int) -> None:
        self.config, self.client, self.num_clients = config, client, num_clients
        self.grid = madrid_grid()
        self.measures_path_loss = config.dataset in PATH_LOSS_DATASETS
        self.slf_true = _truth_slf(config)

    def batch(self, step: int) -> Links:
        """The links of the client's time step ``step`` (1-based)."""
        cfg = self.config
        if cfg.dataset == "a2a-madrid":
            batch = _madrid_protocol(cfg, self.client, self.num_clients).batch(step)
            return Links(batch.tx_xy, batch.rx_xy, batch.s_hat)
        if cfg.dataset == "a2a-physics":
            stream = _physics_stream(cfg, self.client, self.num_clients)
            if step > training_steps(cfg):
                raise ValueError(f"time step {step} is past the {training_steps(cfg)} steps of the physics stream")
            return stream[step - 1]
        train, _ = _sionna_split(cfg, self.client, self.num_clients)
        rng = np.random.default_rng([cfg.seed, self.client, step, 0x5E])
        pick = rng.integers(len(train.measured), size=cfg.pl_links_per_step)
        return Links(train.tx_xy[pick], train.rx_xy[pick], train.measured[pick])

    def heldout(self) -> Links:
        """Held-out links with their ground truth (noise-free shadowing, or path loss in dB)."""
        cfg = self.config
        if cfg.dataset == "a2a-madrid":
            batch = _madrid_protocol(cfg, self.client, self.num_clients).heldout(cfg.pl_heldout_links)
            return Links(batch.tx_xy, batch.rx_xy, batch.s_true)
        if cfg.dataset == "a2a-physics":
            return _physics_heldout(cfg, self.client, self.num_clients)
        return _sionna_split(cfg, self.client, self.num_clients)[1]

    def target(self, links: Links, pl0: float, delta: float) -> np.ndarray:
        """The learner's shadowing target: the measurement, minus the log-distance part for path losses."""
        if not self.measures_path_loss:
            return links.measured
        with np.errstate(divide="ignore", invalid="ignore"):
            return links.measured - pl0 - 10.0 * delta * np.log10(links.distance)


def training_steps(config: RunConfig) -> int:
    """The most time steps a client can run in a run (every round)."""
    return config.num_server_rounds * config.pl_steps_per_round


@lru_cache(maxsize=64)
def _madrid_protocol(config: RunConfig, client: int, num_clients: int) -> RegionalSLFProtocol:
    grid = madrid_grid()
    return RegionalSLFProtocol(region_roads(grid, client, num_clients), r=config.pl_mismatch_r,
                               mismatch=config.pl_mismatch, links_per_step=config.pl_links_per_step,
                               noise_std=config.pl_noise_std, random_state=derive_seed(config.seed, client, 404),
                               grid=grid)


@lru_cache(maxsize=64)
def _physics_stream(config: RunConfig, client: int, num_clients: int) -> list[Links]:
    """Training steps then held-out steps of one vehicle (generated once per process)."""
    from fedsim.data.a2a_links import client_stream

    steps = training_steps(config) + -(-config.pl_heldout_links // config.pl_links_per_step)
    return [Links(b.tx_xy, b.rx_xy, b.path_loss_db)
            for b in client_stream(madrid_grid(), client, steps, config.pl_links_per_step, config.seed,
                                   num_clients=num_clients)]


@lru_cache(maxsize=64)
def _physics_heldout(config: RunConfig, client: int, num_clients: int) -> Links:
    from fedsim.data.a2a_links import make_environment

    later = _physics_stream(config, client, num_clients)[training_steps(config):]
    tx_xy = np.concatenate([b.tx_xy for b in later])[: config.pl_heldout_links]
    rx_xy = np.concatenate([b.rx_xy for b in later])[: config.pl_heldout_links]
    parts = make_environment(madrid_grid(), seed=config.seed).components(tx_xy, rx_xy)
    return Links(tx_xy, rx_xy, sum(parts.values()))  # noise-free path loss


@lru_cache(maxsize=2)
def _sionna_links() -> tuple[Links, np.ndarray]:
    from fedsim.data.a2a_links import load_sionna_a2a

    data = load_sionna_a2a()
    links = Links(data.links.tx_xy, data.links.rx_xy, data.links.path_loss_db)
    return links, data.slf


@lru_cache(maxsize=64)
def _sionna_split(config: RunConfig, client: int, num_clients: int) -> tuple[Links, Links]:
    """(training, held-out) links of the client's transmitters."""
    links, _ = _sionna_links()
    transmitters, tx_index = np.unique(links.tx_xy, axis=0, return_inverse=True)
    if num_clients > len(transmitters):
        raise ValueError(f"a2a-sionna has {len(transmitters)} transmitters; {num_clients} clients cannot "
                         "each have one")
    mine = np.flatnonzero(tx_index.ravel() % num_clients == client)
    mine = np.random.default_rng(derive_seed(config.seed, client, 505)).permutation(mine)
    cut = min(config.pl_heldout_links, int(SIONNA_HELDOUT_SHARE * len(mine)))

    def take(index: np.ndarray) -> Links:
        return Links(links.tx_xy[index], links.rx_xy[index], links.measured[index])

    return take(mine[cut:]), take(mine[:cut])


def _truth_slf(config: RunConfig) -> np.ndarray:
    if config.dataset == "a2a-sionna":
        return _sionna_links()[1]
    return madrid_grid().slf  # the physics generator's SLF is the same map (buildings 1, park 0.1)


# --- the learner in the node state ---------------------------------------------------------------------------


def build_learner(config: RunConfig, client: int) -> OnlinePathLossLearner:
    """A fresh learner with the run's hyper-parameters."""
    realistic = config.dataset in PATH_LOSS_DATASETS
    return OnlinePathLossLearner(
        madrid_grid().centres, lambda1=config.pl_lambda1, lambda2=config.pl_lambda2, lambda3=config.pl_lambda3,
        r=config.pl_r, sigma=config.pl_sigma, mu=config.pl_mu, inner_iterations=config.pl_inner_iterations,
        kernel=config.pl_kernel, learn_window=config.pl_window == "hybrid", eta=V2X_ETA if realistic else ETA,
        reference_batch_size=60 if realistic else 120, random_state=derive_seed(config.seed, client, 606))


def save_learner(learner: OnlinePathLossLearner, time_step: int, context: Context) -> None:
    """Write the learner's state and the client's stream position into ``context.state``."""
    arrays = {"slf": learner.slf_, "A_bar": learner.A_bar_, "b": learner.b_, "power-vector": learner._power_vector}
    context.state[LEARNER_STATE] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    context.state[LEARNER_COUNTERS] = MetricRecord({
        "n": float(learner.n_), "c": float(learner.c_), "alpha-penalty": float(learner.alpha_penalty_),
        "steps": int(learner.steps_), "lambda-max": float(learner._lambda_max), "time-step": int(time_step)})


def load_learner(learner: OnlinePathLossLearner, context: Context) -> int:
    """Restore a learner saved by :func:`save_learner` (if any); return the client's stream position."""
    if LEARNER_COUNTERS not in context.state:
        return 0
    arrays, counters = context.state.array_records[LEARNER_STATE], context.state[LEARNER_COUNTERS]
    learner.slf_, learner.A_bar_ = arrays["slf"].numpy(), arrays["A_bar"].numpy()
    learner.b_, learner._power_vector = arrays["b"].numpy(), arrays["power-vector"].numpy()
    learner.n_, learner.c_ = float(counters["n"]), float(counters["c"])
    learner.alpha_penalty_, learner.steps_ = float(counters["alpha-penalty"]), int(counters["steps"])
    learner._lambda_max = float(counters["lambda-max"])
    return int(counters["time-step"])


# --- what a round adds ---------------------------------------------------------------------------------------


class RoundIncrements:
    """This round's additions to the statistics, accumulated batch by batch (exactly what the learner absorbs).

    Parameters
    ----------
    num_pixels : int
    statistics : bool
        Accumulate ``dA = sum W^T W`` and ``db`` (FedStats only; the other modes send the local f).
    fit_log_distance : bool
        Accumulate the log-distance normal equations, and (with ``statistics``) keep ``sum W^T pl``,
        ``sum W^T 1`` and ``sum W^T x`` apart instead of ``sum W^T s``.
    """

    def __init__(self, num_pixels: int, statistics: bool, fit_log_distance: bool) -> None:
        size = num_pixels if statistics else 0
        self.A_bar = np.zeros((size, size))
        self.b, self.b_one, self.b_x = np.zeros(size), np.zeros(size), np.zeros(size)
        self.n = self.c = 0.0
        self.links = 0
        self.log_distance = np.zeros((2, 3))
        self.statistics, self.fit_log_distance = statistics, fit_log_distance

    def add(self, window: np.ndarray, target: np.ndarray, links: Links, n_step: float) -> None:
        """Add one absorbed batch: its window rows [M, P], targets [M] and the (kept) links."""
        self.c += float(target @ target)
        self.n += n_step
        self.links += len(target)
        if self.fit_log_distance:
            self.log_distance += log_distance_stats(links.distance, links.measured)
        if not self.statistics:
            return
        self.A_bar += window.T @ window
        if self.fit_log_distance:
            self.b += window.T @ links.measured
            self.b_one += window.sum(0)
            self.b_x += window.T @ (10.0 * np.log10(links.distance))
        else:
            self.b += window.T @ target


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle (diagonal included) of a symmetric matrix, row by row, shape (P(P+1)/2,)."""
    return matrix[np.triu_indices(matrix.shape[0])]


def reply_arrays(aggregation: str, fit_log_distance: bool, learner: OnlinePathLossLearner,
                 increments: RoundIncrements) -> dict[str, np.ndarray]:
    """The arrays a client sends for an aggregation mode (see the module docstring); never any alpha."""
    if aggregation == "fedstats":
        arrays = {"A-upper": upper_triangle(increments.A_bar), "b": increments.b,
                  "n": np.array([increments.n]), "c": np.array([increments.c])}
        if fit_log_distance:
            arrays.update({"b-one": increments.b_one, "b-x": increments.b_x})
    elif aggregation == "coverage":
        arrays = {"slf": learner.slf_, "coverage": np.diag(learner.A_bar_).copy(), "n": np.array([learner.n_])}
    else:
        arrays = {"slf": learner.slf_, "n": np.array([learner.n_])}
    if fit_log_distance:
        arrays["log-distance"] = increments.log_distance.ravel()
    return arrays


def reply_layout(aggregation: str, fit_log_distance: bool, num_pixels: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a reply's arrays, in order (the strategy screens replies against it)."""
    if aggregation == "fedstats":
        layout = {"A-upper": (num_pixels * (num_pixels + 1) // 2,), "b": (num_pixels,), "n": (1,), "c": (1,)}
        if fit_log_distance:
            layout.update({"b-one": (num_pixels,), "b-x": (num_pixels,)})
    elif aggregation == "coverage":
        layout = {"slf": (num_pixels,), "coverage": (num_pixels,), "n": (1,)}
    else:
        layout = {"slf": (num_pixels,), "n": (1,)}
    if fit_log_distance:
        layout["log-distance"] = (6,)
    return layout


def unpack_model(arrays: ArrayRecord) -> tuple[np.ndarray, float, float]:
    """(SLF, pl0, delta) of an :class:`~fedsim.models.SLFModel` record."""
    return arrays["slf"].numpy().astype(float), float(arrays["pl0"].numpy()[0]), float(arrays["delta"].numpy()[0])


def slf_scores(estimate: np.ndarray, truth: np.ndarray, scaled: bool) -> tuple[float, float]:
    """(NMSE, Pearson correlation) of an SLF; ``scaled``: NMSE after the least-squares scale of the estimate."""
    if scaled:
        norm = float(estimate @ estimate)
        estimate = estimate * (float(estimate @ truth) / norm if norm > 0 else 0.0)
    spread = np.std(estimate) * np.std(truth)
    corr = float(np.mean((estimate - estimate.mean()) * (truth - truth.mean())) / spread) if spread > 0 else 0.0
    return nmse(estimate, truth), corr


# --- the role ------------------------------------------------------------------------------------------------


class PathLossRole:
    """Client role of a vehicle that learns the A2A path-loss map online (see the module docstring).

    Parameters
    ----------
    config : RunConfig
        The run configuration.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def data(self, context: Context) -> ClientData:
        """This node's data."""
        return ClientData(self.config, *protocol.partition_of(context))

    def describe(self, context: Context) -> dict:
        """The client's region (its 'true cluster') and the links it measures per round."""
        pid, _ = protocol.partition_of(context)
        return {protocol.TRUE_CLUSTER: pid,
                protocol.NUM_EXAMPLES: self.config.pl_links_per_step * self.config.pl_steps_per_round}

    def train(self, msg: Message, context: Context) -> Message:
        """Run ``pl-steps-per-round`` time steps from the global SLF; reply per ``pl-aggregation``."""
        cfg = self.config
        f, pl0, delta = unpack_model(msg.content[protocol.ARRAYS])
        pid, _ = protocol.partition_of(context)
        learner = build_learner(cfg, pid)
        time_step = load_learner(learner, context)
        learner.set_slf(f)
        data = self.data(context)
        increments = RoundIncrements(learner.num_pixels, cfg.pl_aggregation == "fedstats", cfg.pl_fit_log_distance)
        skipped = 0
        for _ in range(cfg.pl_steps_per_round):
            time_step += 1
            links = data.batch(time_step)
            skipped += self._step(learner, increments, links, data.target(links, pl0, delta), time_step)
        save_learner(learner, time_step, context)
        arrays = reply_arrays(cfg.pl_aggregation, cfg.pl_fit_log_distance, learner, increments)
        metrics = {protocol.NUM_EXAMPLES: increments.links, protocol.TRAIN_LOSS: learner.objective(),
                   "skipped-links": skipped}
        reply = RecordDict({protocol.ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=float))
                                                          for k, v in arrays.items()}),
                            protocol.METRICS: MetricRecord(metrics)})
        return Message(reply, reply_to=msg)

    @staticmethod
    def _step(learner: OnlinePathLossLearner, increments: RoundIncrements, links: Links, target: np.ndarray,
              time_step: int) -> int:
        """One time step; returns the number of links skipped."""
        n_before = learner.n_
        try:
            learner.partial_fit(links.tx_xy, links.rx_xy, target)
        except ValueError as err:
            warnings.warn(f"time step {time_step}: batch skipped: {err}", stacklevel=2)
            return len(target)
        kept = learner.last_kept_
        increments.add(learner.last_window_, target[kept], Links(links.tx_xy[kept], links.rx_xy[kept],
                                                                  links.measured[kept]), learner.n_ - n_before)
        return int((~kept).sum())

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Held-out NMSE of the shadowing, RMSE of the path loss, NMSE of the SLF (see the module docstring)."""
        f, pl0, delta = unpack_model(msg.content[protocol.ARRAYS])
        data = self.data(context)
        held = data.heldout()
        eta = V2X_ETA if data.measures_path_loss else ETA
        predicted = np.concatenate([model_window(held.tx_xy[s : s + 512], held.rx_xy[s : s + 512],
                                                 data.grid.centres, eta) @ f for s in range(0, len(held.tx_xy), 512)])
        truth = data.target(held, pl0, delta)
        nmse_f, corr_f = slf_scores(f, data.slf_true, scaled=data.measures_path_loss)
        nmse_s = nmse(predicted, truth)
        metrics = {"eval-loss": nmse_s, "eval-nmse-s": nmse_s,
                   "eval-rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
                   "eval-nmse-f": nmse_f, "eval-corr-f": corr_f, protocol.NUM_EXAMPLES: len(truth)}
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)
