"""Federated any-to-any path-loss map learning (paper 004, digest Sec. 8): the server side of ``pathloss``.

The global model is the SLF f plus the log-distance parameters (pl0, delta) (an
:class:`~fedsim.models.SLFModel` record). Clients (``clients/pathloss.py``) run the online learner on their
own links and reply per ``pl-aggregation``:

- ``fedstats`` (exact): the replies are this round's increments of the sufficient statistics; the server
  sums them into the global ``A_bar``, ``b``, ``n``, ``c`` (in partition order) and re-solves the
  elastic net ``(f^T A f - 2 b^T f + c)/(2n) + lambda2/2 |f|^2 + lambda1 |f|_1`` by ISTA
  (:func:`~fedsim.pathloss.solve_elastic_net`), warm-started from the previous f. Choice (the digest gives
  no count): ``pl-inner-iterations x pl-steps-per-round`` iterations per round, the ISTA budget the
  centralised learner spends over the same time steps. Given the clients' windows this equals the
  centralised surrogate (the alphas were computed against a stale f: the only difference).
- ``coverage``: ``f_p = sum_k D_p^k f_p^k / sum_k D_p^k`` with ``D^k = diag(A_bar^k) + 1e-12``, then the
  digest's global soft-threshold. Choice of the threshold (the digest gives none): the proximal step of
  ``lambda1 |f|_1`` in the diagonal metric of the pooled coverage, per pixel
  ``tau_p = (1 - eps) lambda1 / (sum_k D_p^k / sum_k n_k + lambda2)`` -- an ISTA step's threshold with
  the curvature of that pixel; pixels nobody covers get ``(1 - eps) lambda1 / lambda2`` and go to 0.
- ``fedavg``: ``f = sum_k n_k f^k / sum_k n_k`` (the contrast: biased under non-IID coverage).

With ``pl-fit-log-distance`` the clients' 2 x 3 normal equations are summed over all rounds and
(pl0, delta) re-solved every round (:func:`~fedsim.pathloss.solve_log_distance`); FedStats then forms
``b = b_pl - pl0 b_one - delta b_x`` from the split statistics, so every measurement uses the latest fit.

A reply whose arrays have other names or shapes than the mode's layout, or hold a NaN or inf, is dropped
by the base screening with a warning naming the client, and the round goes on with the others. The train
metrics are the clients' weighted means plus ``objective`` (FedStats: the global surrogate at the new f),
``pl0`` and ``delta``.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from clients.pathloss import reply_layout
from fedsim.config import RunConfig
from fedsim.pathloss import elastic_net_objective, largest_eigenvalue, soft_threshold, solve_elastic_net
from fedsim.pathloss import solve_log_distance as solve_log_distance_fit
from strategies.base import arrays_of
from strategies.fedavg import FedAvg, flower_sampling_kwargs

AGGREGATIONS = ("fedstats", "coverage", "fedavg")
COVERAGE_FLOOR = 1e-12
"""The digest's epsilon in ``D = diag(A_bar) + epsilon``."""


def symmetric_from_upper(upper: np.ndarray, num_pixels: int) -> np.ndarray:
    """The symmetric P x P matrix whose upper triangle (row by row, diagonal included) is ``upper``."""
    matrix = np.zeros((num_pixels, num_pixels))
    rows, cols = np.triu_indices(num_pixels)
    matrix[rows, cols] = upper
    matrix[cols, rows] = upper
    return matrix


def coverage_average(slfs: list[np.ndarray], coverages: list[np.ndarray], counts: list[float], lambda1: float,
                     lambda2: float, eps: float = 0.1) -> np.ndarray:
    """Coverage-weighted average of the clients' SLFs followed by the per-pixel soft-threshold (module docstring).

    Parameters
    ----------
    slfs, coverages : list of ndarray, shape (P,)
        The clients' f and diag(A_bar).
    counts : list of float
        The clients' n (time steps their statistics summarise).
    lambda1, lambda2 : float
        Elastic-net weights.
    eps : float
        Step margin of the threshold.
    """
    weights = np.array(coverages) + COVERAGE_FLOOR
    average = (weights * np.array(slfs)).sum(0) / weights.sum(0)
    curvature = np.array(coverages).sum(0) / max(float(sum(counts)), 1e-12) + lambda2
    return soft_threshold(average, (1 - eps) * lambda1 / curvature)


class PathLossStrategy(FedAvg):
    """Server of the federated path-loss map: FedStats, coverage-weighted or plain averaging of the SLF.

    Parameters
    ----------
    aggregation : {"fedstats", "coverage", "fedavg"}
        How replies are combined (module docstring).
    lambda1, lambda2 : float
        Elastic-net weights of the server solve and of the coverage threshold.
    solver_iterations : int
        ISTA iterations per round of the FedStats solve.
    fit_log_distance : bool
        Fit (pl0, delta) from the clients' normal equations.
    eps : float
        Step margin of ISTA, as the learner's.
    **kwargs
        Passed to :class:`strategies.fedavg.FedAvg` (``seed``, sampling).
    """

    def __init__(self, *, aggregation: str = "fedstats", lambda1: float = 4e-4, lambda2: float = 1e-5,
                 solver_iterations: int = 50, fit_log_distance: bool = False, eps: float = 0.1, **kwargs) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        super().__init__(**kwargs)
        self.aggregation, self.lambda1, self.lambda2 = aggregation, lambda1, lambda2
        self.solver_iterations, self.fit_log_distance, self.eps = int(solver_iterations), fit_log_distance, eps
        self.A_bar_: np.ndarray | None = None
        self.b_ = self.b_one_ = self.b_x_ = None
        self.n_, self.c_ = 0.0, 0.0
        self.log_distance_ = np.zeros((2, 3))

    # -- what travels ---------------------------------------------------------------------------------------
    def reply_template(self, num_pixels: int) -> ArrayRecord:
        """Names, shapes and dtypes a reply must have (the base screening compares replies with it)."""
        layout = reply_layout(self.aggregation, self.fit_log_distance, num_pixels)
        return ArrayRecord({k: Array(np.zeros(shape)) for k, shape in layout.items()})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Combine the valid replies into the new global model (module docstring)."""
        sent = self._sent
        f, pl0, delta = (sent[k].numpy().astype(float) for k in ("slf", "pl0", "delta"))
        valid = self.screen(replies, "train", expect_arrays=self.reply_template(f.size))
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        received = [{k: a.numpy() for k, a in arrays_of(c).items()} for c in contents]
        metrics = dict(self.train_metrics_aggr_fn(contents, self.weighted_by_key))
        pl0, delta = self._update_log_distance(received, float(pl0[0]), float(delta[0]))
        if self.aggregation == "fedstats":
            f = self._fedstats(received, f, pl0, delta)
            metrics["objective"] = elastic_net_objective(f, self.A_bar_, self._b(pl0, delta), self.n_,
                                                         self.lambda1, self.lambda2, self.c_)
        elif self.aggregation == "coverage":
            f = coverage_average([r["slf"] for r in received], [r["coverage"] for r in received],
                                 [float(r["n"][0]) for r in received], self.lambda1, self.lambda2, self.eps)
        else:
            counts = np.array([float(r["n"][0]) for r in received])
            f = (counts[:, None] * np.array([r["slf"] for r in received])).sum(0) / counts.sum()
        metrics.update({"pl0": pl0, "delta": delta})
        new = ArrayRecord({"slf": Array(f), "pl0": Array(np.array([pl0])), "delta": Array(np.array([delta]))})
        return new, MetricRecord(metrics)

    # -- the pieces -----------------------------------------------------------------------------------------
    def _fedstats(self, received: list[dict[str, np.ndarray]], f: np.ndarray, pl0: float, delta: float) -> np.ndarray:
        """Sum the increments into the global statistics and re-solve the elastic net from the previous f."""
        num_pixels = f.size
        if self.A_bar_ is None:
            self.A_bar_ = np.zeros((num_pixels, num_pixels))
            self.b_, self.b_one_, self.b_x_ = np.zeros(num_pixels), np.zeros(num_pixels), np.zeros(num_pixels)
        for reply in received:
            self.A_bar_ += symmetric_from_upper(reply["A-upper"], num_pixels)
            self.b_ += reply["b"]
            self.n_ += float(reply["n"][0])
            self.c_ += float(reply["c"][0])
            if self.fit_log_distance:
                self.b_one_ += reply["b-one"]
                self.b_x_ += reply["b-x"]
        if self.n_ <= 0:
            return f
        lipschitz = largest_eigenvalue(self.A_bar_) / self.n_ + self.lambda2
        return solve_elastic_net(self.A_bar_, self._b(pl0, delta), self.n_, self.lambda1, self.lambda2, f0=f,
                                 iterations=self.solver_iterations, eps=self.eps, lipschitz=lipschitz)

    def _b(self, pl0: float, delta: float) -> np.ndarray:
        """``sum W^T s`` with the current log-distance fit (split statistics) or as summed."""
        if not self.fit_log_distance:
            return self.b_
        return self.b_ - pl0 * self.b_one_ - delta * self.b_x_

    def _update_log_distance(self, received: list[dict[str, np.ndarray]], pl0: float,
                             delta: float) -> tuple[float, float]:
        """Add the clients' normal equations and re-fit (pl0, delta); keep the old values if undetermined."""
        if not self.fit_log_distance:
            return pl0, delta
        for reply in received:
            self.log_distance_ += reply["log-distance"].reshape(2, 3)
        try:
            return solve_log_distance_fit(self.log_distance_)
        except ValueError as err:
            log(WARNING, "log-distance fit kept at pl0 = %.4g dB, delta = %.4g: %s", pl0, delta, err)
            return pl0, delta


def build(config: RunConfig) -> PathLossStrategy:
    """Build the path-loss strategy from a run configuration."""
    return PathLossStrategy(aggregation=config.pl_aggregation, lambda1=config.pl_lambda1, lambda2=config.pl_lambda2,
                            solver_iterations=config.pl_inner_iterations * config.pl_steps_per_round,
                            fit_log_distance=config.pl_fit_log_distance, seed=config.seed,
                            **flower_sampling_kwargs(config))
