"""Tasks: what is learned, by which model, under which loss and metrics.

A task is built from a :class:`~fedsim.config.RunConfig`. It builds models,
gives per-example losses (so that a client can score several models on its
data in one pass) and computes evaluation metrics. A plug-in task subclasses
:class:`Task` and is registered under ``fedsim.tasks``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsim.config import ConfigError, RunConfig
from fedsim.models import MLP, AutoEncoder, FFModel, LinearRegressor, QosMLP, SmallCNN

INPUT_SHAPES = {
    "digits": (1, 8, 8),
    "mnist-5k": (1, 28, 28),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
NUM_CLASSES = 10


class Task:
    """Base class of a task.

    Parameters
    ----------
    config : RunConfig
        The run configuration.
    """

    models: tuple[str, ...] = ()
    """Values of the ``model`` key this task accepts."""
    metric: str = "loss"
    """The headline evaluation metric (reported as ``eval-<metric>``)."""
    higher_is_better: bool = False

    def __init__(self, config: RunConfig, client_infos: list[dict] | None = None) -> None:
        self.config = config
        self.client_infos = client_infos or []
        """What the clients said of themselves before round 1 (used by :meth:`calibrate`)."""

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Raise :class:`ConfigError` if the configuration does not fit the task."""
        if config.model not in cls.models:
            raise ConfigError(
                f"model = '{config.model}' does not fit task = '{config.task}'; allowed: {', '.join(cls.models)}"
            )

    def build_model(self) -> nn.Module:
        """Return a new, untrained model."""
        raise NotImplementedError

    def init_model(self, seed: int) -> nn.Module:
        """Return a new model whose initial weights depend only on ``seed`` (calibrated if clients told how)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        if self.client_infos:
            with torch.no_grad():
                self.calibrate(model, self.client_infos)
        return model

    def calibrate(self, model: nn.Module, infos: list[dict]) -> None:
        """Adjust a new model to the federation (e.g. standardisation buffers); nothing by default."""

    def example_losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example training loss, shape ``(len(x),)``."""
        raise NotImplementedError

    @torch.no_grad()
    def mean_losses(self, model: nn.Module, state_dicts: list[dict[str, torch.Tensor]], x: torch.Tensor,
                    y: torch.Tensor) -> list[float]:
        """Mean loss on ``(x, y)`` of ``model`` under each of several weight sets.

        One model object is reused and the data stays in memory. Vectorising the
        K forward passes with ``torch.func.vmap`` was measured no faster on one
        CPU thread (0.49 vs 0.52 ms for 4 digits MLPs, 18.4 vs 18.6 ms for 4
        MNIST autoencoders) and not bitwise equal to a single evaluation, so the
        passes run one after another.
        """
        model.eval()
        out = []
        for state_dict in state_dicts:
            model.load_state_dict(state_dict)
            out.append(float(self.example_losses(model, x, y).mean()))
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Mean loss (and task metrics) of ``model`` on ``(x, y)``."""
        model.eval()
        return {"loss": float(self.example_losses(model, x, y).mean())}


class ClassificationTask(Task):
    """Supervised image classification with cross-entropy; reports accuracy."""

    models = ("mlp", "cnn")
    metric = "accuracy"
    higher_is_better = True

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        if config.dataset not in INPUT_SHAPES:
            raise ConfigError(f"dataset = '{config.dataset}' has no classes; classification needs an image dataset")

    def build_model(self) -> nn.Module:
        shape = INPUT_SHAPES[self.config.dataset]
        if self.config.model == "cnn":
            return SmallCNN(shape, self.config.hidden_size, NUM_CLASSES)
        return MLP(shape, self.config.hidden_size, NUM_CLASSES)

    def example_losses(self, model, x, y):
        return F.cross_entropy(model(x), y, reduction="none")

    @torch.no_grad()
    def evaluate(self, model, x, y):
        model.eval()
        logits = model(x)
        return {
            "loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(-1) == y).float().mean()),
        }


class ReconstructionTask(Task):
    """Unsupervised: an autoencoder reconstructs the images; loss = mean squared error."""

    models = ("autoencoder",)

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        if config.dataset not in INPUT_SHAPES:
            raise ConfigError(f"dataset = '{config.dataset}' is not an image dataset; reconstruction needs one")

    def build_model(self) -> nn.Module:
        return AutoEncoder(INPUT_SHAPES[self.config.dataset], self.config.hidden_size)

    def example_losses(self, model, x, y):
        return F.mse_loss(model(x), x, reduction="none").flatten(1).mean(1)


class RegressionTask(Task):
    """Mixed linear regression with squared loss ``(<theta, x> - y)^2``."""

    models = ("linear",)

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        if config.dataset != "mixed-linear":
            raise ConfigError(f"task = 'regression' needs dataset = 'mixed-linear', not '{config.dataset}'")

    def build_model(self) -> nn.Module:
        return LinearRegressor(self.config.linear_dim)

    def example_losses(self, model, x, y):
        return (model(x) - y) ** 2



class QosTask(Task):
    """One-hour-ahead QoS-distribution regression of a cell (paper 000): MSE on standardised targets.

    Inputs and targets are standardised with the federation's pooled training
    moments, which the cells report in their self-description and
    :meth:`calibrate` writes into the model's buffers before round 1.
    """

    models = ("qos-mlp",)

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        if config.partitioning != "cells" or config.client_role != "qos-cell":
            raise ConfigError("task = 'qos' needs partitioning = 'cells' and client-role = 'qos-cell'")

    def build_model(self) -> nn.Module:
        return QosMLP()

    def calibrate(self, model: nn.Module, infos: list[dict]) -> None:
        """Set the standardisation buffers from the cells' moments (count, sums, sums of squares)."""
        count = sum(float(i["qos-count"]) for i in infos)
        for name in ("x", "y"):
            total = sum(np.asarray(i[f"qos-{name}-sum"]) for i in infos)
            total_sq = sum(np.asarray(i[f"qos-{name}-sumsq"]) for i in infos)
            mean = total / count
            std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
            getattr(model, f"{name}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
            getattr(model, f"{name}_std").copy_(torch.as_tensor(std, dtype=torch.float32))

    def example_losses(self, model, x, y):
        return ((model(x) - model.standardise_targets(y)) ** 2).mean(1)


class BlerTask(Task):
    """Short-term BLER prediction for link adaptation with a forward-forward MLP (LightTune, paper 003).

    The model is an :class:`~fedsim.models.FFModel`; training, prediction and
    the online fine-tuning are the ``lighttune`` client role's (numpy, closed-form
    local gradients). Features are standardised with the federation's pooled
    offline moments, which the UEs report in their self-description and
    :meth:`calibrate` writes into the model's buffers before round 1.
    """

    models = ("ff-mlp",)
    metric = "bler-error"

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        if config.dataset != "link-adaptation" or config.client_role != "lighttune":
            raise ConfigError("task = 'bler' needs dataset = 'link-adaptation' and client-role = 'lighttune'")
        from clients.lighttune import check_run_config

        check_run_config(config)

    def build_model(self) -> nn.Module:
        from clients.lighttune import ff_spec
        from fedsim.data.link_env import FEATURE_NAMES

        spec = ff_spec(self.config, len(FEATURE_NAMES))
        return FFModel(spec.sizes, spec.num_features)

    def calibrate(self, model: nn.Module, infos: list[dict]) -> None:
        """Set the feature standardisation from the UEs' moments (count, sums, sums of squares)."""
        count = sum(float(i["la-count"]) for i in infos)
        mean = sum(np.asarray(i["la-x-sum"]) for i in infos) / count
        var = sum(np.asarray(i["la-x-sumsq"]) for i in infos) / count - mean**2
        model.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float64))
        model.x_std.copy_(torch.as_tensor(np.sqrt(np.maximum(var, 0.0)) + 1e-6, dtype=torch.float64))


class PathLossTask(Task):
    """Online any-to-any path-loss map learning (paper 004): a spatial loss field learned by vehicles.

    The model is an :class:`~fedsim.models.SLFModel` over the pixels of the Madrid grid (all three
    ``a2a-*`` datasets use it); learning and scoring are the ``pathloss`` client role's (numpy), and the
    ``pathloss`` strategy aggregates its replies (sufficient statistics or SLFs, ``pl-aggregation``).
    The headline ``eval-loss`` is the held-out NMSE of the shadowing; the role also reports the NMSE of
    the SLF against the ground truth (``eval-nmse-f``) and the path-loss RMSE.
    """

    models = ("slf",)

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        from fedsim.config import A2A_DATASETS

        if config.dataset not in A2A_DATASETS or config.client_role != "pathloss":
            raise ConfigError(f"task = 'pathloss' needs dataset in {', '.join(A2A_DATASETS)} and "
                              "client-role = 'pathloss'")
        if config.strategy != "pathloss":
            raise ConfigError("task = 'pathloss' needs strategy = 'pathloss': the clients reply with sufficient "
                              "statistics or SLFs plus weights, which only that strategy aggregates")
        if config.pl_fit_log_distance and config.dataset == "a2a-madrid":
            raise ConfigError("pl-fit-log-distance needs path losses (a2a-physics or a2a-sionna); a2a-madrid "
                              "measures the shadowing directly")

    def build_model(self) -> nn.Module:
        from fedsim.data.madrid import madrid_grid
        from fedsim.models import SLFModel

        return SLFModel(madrid_grid().num_pixels)


class MIBOTask(Task):
    """Joint localisation and sensing from CSI through a shared subcarrier mask (SPG-MIBO, paper 001).

    The model is a :class:`~fedsim.models.MIBOModel` over the ``csi-synthetic`` features
    ``(3, 2 links, csi-subcarriers, csi-snapshots)``; training and scoring are the ``spg-mibo`` client
    role's (:mod:`clients.spg_mibo`), and the ``spg-mibo`` strategy aggregates the networks and the mask
    (``local-only`` keeps everything on the clients). ``eval-loss`` is the sum of the two task losses;
    ``eval-accuracy`` (activity sensing) is the headline when present.
    """

    models = ("mibo-mlp",)
    metric = "accuracy"
    higher_is_better = True

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        from fedsim.config import CSI_DATASETS

        if config.dataset not in CSI_DATASETS or config.client_role != "spg-mibo":
            raise ConfigError("task = 'mibo' needs dataset = 'csi-synthetic' or 'csi-sionna' and "
                              "client-role = 'spg-mibo'")
        if config.dataset == "csi-sionna" and config.csi_subcarriers != 32:
            raise ConfigError(f"csi-subcarriers = {config.csi_subcarriers}: the ray-traced csi-sionna data has 32")
        if config.strategy not in ("spg-mibo", "local-only"):
            raise ConfigError(f"task = 'mibo' needs strategy = 'spg-mibo' (or 'local-only'), not '{config.strategy}':"
                              " the mask is aggregated with a proximal step and a budget repair")

    def build_model(self) -> nn.Module:
        from fedsim.models import MIBOModel

        cfg = self.config
        outputs = {"activity": 3, "respiration-rate": 1, "waveform": cfg.csi_snapshots}[cfg.mibo_sensing]
        return MIBOModel((3, 2, cfg.csi_subcarriers, cfg.csi_snapshots), outputs,
                         separate=cfg.mibo_method == "separate")
