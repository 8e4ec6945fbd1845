"""Federated SPG-MIBO (digest 001 Sec. 10): the server side of the ``spg-mibo`` client role.

The global model is a :class:`~fedsim.models.MIBOModel`: the localisation and sensing networks and the relaxed
subcarrier mask(s). The networks are averaged as in FedAvg (weighted by the clients' training examples, in
partition order). The mask, per ``mibo-mask-aggregation``:

- ``mean``: the weighted average (which stays in [0, 1]^d, but coordinates on which clients disagree become
  fractional), then one server proximal step ``prox_{eta_s, rho G}`` with the clients' current mask step
  ``eta_s = mibo-eta-w / sqrt(t)`` and the same G delay / warm-up (``t`` = the largest step counter the clients
  report; SPG-MIBO only: Penalty-MIBO and the single-task baselines have no prox), then the exact Euclidean
  projection onto the budget ``{w in [0, 1]^d : N_min <= sum w <= N_max}`` (the digest's "L1 repair");
- ``vote``: the weighted share of clients whose binary feasible mask selects each subcarrier, turned into the
  binary feasible mask of those shares (top-k, k within the budget): d bits per client would suffice;
- ``local``: personal masks; the clients keep theirs and do not send them, the server's mask is never updated.

Cuts, their multipliers and mu stay on the clients (node state). The train metrics are the clients' weighted
means plus ``mask-ifg-mean`` (the averaged mask's integrality gap before the server step), ``mask-ifg`` (after)
and ``mask-selected`` (size of its binary feasible mask). A reply with other array names, shapes or dtypes than
expected, or with a NaN, is dropped with a warning by the base screening and the round goes on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedsim.arrays import weighted_average
from fedsim.config import RunConfig
from fedsim.spg_mibo import feasible_binary, integrality_gap, mask_budget, project_l1_band, prox_binary
from strategies.base import arrays_of, metrics_of
from strategies.fedavg import FedAvg, flower_sampling_kwargs

MASK_AGGREGATIONS = ("mean", "vote", "local")
MASK_KEYS = ("mask", "mask_sen")


def g_weight(step: int, rho: float, delay: int, warmup: int) -> float:
    """Weight of G at client step ``step``: 0 during the delay, then a linear ramp to ``rho`` (as the clients)."""
    if step <= delay:
        return 0.0
    return rho if warmup <= 0 else rho * min(1.0, (step - delay) / warmup)


def vote_mask(masks: list[np.ndarray], weights: np.ndarray, n_min: int, n_max: int) -> np.ndarray:
    """Binary feasible mask of the weighted share of clients whose binary feasible mask selects each entry."""
    votes = np.array([feasible_binary(torch.from_numpy(m), n_min, n_max).numpy() for m in masks], dtype=float)
    share = (weights[:, None] * votes).sum(0) / weights.sum()
    return feasible_binary(torch.from_numpy(share), n_min, n_max).numpy()


class SPGMIBOStrategy(FedAvg):
    """FedAvg of the networks plus the mask aggregation of ``mask_aggregation`` (module docstring).

    Parameters
    ----------
    mask_aggregation : {"mean", "vote", "local"}
    proximal : bool
        Apply the server prox after averaging (SPG-MIBO; False for Penalty-MIBO and the single-task runs).
    eta_w, rho : float
        Base mask step and weight of G, as the clients'.
    rho_delay, rho_warmup : int
        The clients' G delay and linear warm-up, in steps.
    n_min, n_max : int
        Mask budget; 0 = round(d/3), round(d/2).
    **kwargs
        Passed to :class:`strategies.fedavg.FedAvg` (``seed``, sampling).
    """

    def __init__(self, *, mask_aggregation: str = "mean", proximal: bool = True, eta_w: float = 5.0,
                 rho: float = 1.0, rho_delay: int = 100, rho_warmup: int = 0, n_min: int = 0, n_max: int = 0,
                 **kwargs) -> None:
        if mask_aggregation not in MASK_AGGREGATIONS:
            raise ValueError(f"mask_aggregation must be one of {MASK_AGGREGATIONS}, got {mask_aggregation!r}")
        super().__init__(**kwargs)
        self.mask_aggregation, self.proximal = mask_aggregation, proximal
        self.eta_w, self.rho, self.rho_delay, self.rho_warmup = eta_w, rho, rho_delay, rho_warmup
        self.n_min, self.n_max = n_min, n_max

    def reply_template(self) -> ArrayRecord:
        """What a reply must carry: the sent model, without the masks when they are personal."""
        if self.mask_aggregation != "local":
            return self._sent
        return ArrayRecord({k: v for k, v in self._sent.items() if k not in MASK_KEYS})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the networks, aggregate the masks (module docstring)."""
        valid = self.screen(replies, "train", expect_arrays=self.reply_template())
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        averaged = weighted_average(contents, self.weighted_by_key)
        metrics = dict(self.train_metrics_aggr_fn(contents, self.weighted_by_key))
        weights = np.array([float(metrics_of(c)[self.weighted_by_key]) for c in contents])
        steps = [int(metrics_of(c).get("step", 0)) for c in contents]
        new = {k: a.numpy() for k, a in averaged.items()}
        for key in (k for k in MASK_KEYS if k in self._sent):
            mean = new.get(key)
            if self.mask_aggregation == "local" or mean is None:
                new[key] = self._sent[key].numpy()
                continue
            n_min, n_max = self.budget(mean.size)
            if self.mask_aggregation == "vote":
                masks = [arrays_of(c)[key].numpy().astype(np.float64) for c in contents]
                new[key] = vote_mask(masks, weights, n_min, n_max).astype(mean.dtype)
            else:
                new[key] = self.server_step(mean, max(steps), n_min, n_max)
            if key == "mask":
                metrics.update({"mask-ifg-mean": integrality_gap(mean.astype(np.float64), n_min, n_max),
                                "mask-ifg": integrality_gap(new[key].astype(np.float64), n_min, n_max),
                                "mask-selected": float(feasible_binary(new[key].astype(np.float64), n_min,
                                                                       n_max).sum())})
        return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()}), MetricRecord(metrics)

    def server_step(self, mean: np.ndarray, step: int, n_min: int, n_max: int) -> np.ndarray:
        """Server prox (SPG-MIBO) and the exact projection onto the budget."""
        w = mean.astype(np.float64)
        weight = g_weight(step, self.rho, self.rho_delay, self.rho_warmup) if self.proximal else 0.0
        if weight > 0:
            w = prox_binary(w, self.eta_w / math.sqrt(max(step, 1)), weight)
        return project_l1_band(w, n_min, n_max).astype(mean.dtype)

    def budget(self, d: int) -> tuple[int, int]:
        """``(N_min, N_max)``: the configured values or the paper's round(d/3), round(d/2)."""
        default_min, default_max = mask_budget(d)
        return self.n_min or default_min, self.n_max or default_max


def build(config: RunConfig) -> SPGMIBOStrategy:
    """Build the SPG-MIBO strategy from a run configuration."""
    return SPGMIBOStrategy(mask_aggregation=config.mibo_mask_aggregation, proximal=config.mibo_method == "spg",
                           eta_w=config.mibo_eta_w, rho=config.mibo_rho, rho_delay=config.mibo_rho_delay,
                           rho_warmup=config.mibo_rho_warmup, n_min=config.mibo_n_min, n_max=config.mibo_n_max,
                           seed=config.seed, **flower_sampling_kwargs(config))
