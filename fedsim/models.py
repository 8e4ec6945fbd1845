"""Small PyTorch models for the built-in tasks (no torchvision needed)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, one hidden ReLU layer, logits (IFCA's MNIST model is 784-200-10).

    Parameters
    ----------
    input_shape : tuple[int, ...]
        Shape of one example.
    hidden_size : int
        Width of the hidden layer.
    num_classes : int
        Number of output logits.
    """

    def __init__(self, input_shape: tuple[int, ...], hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 5x5 conv + ReLU + 2x2 max-pool blocks and two dense layers.

    The layout of PFLlib's ``FedAvgCNN`` (used by the CLoVE paper's baselines),
    with the widths as arguments: conv(C->16) and conv(16->32) by default, and
    ``padding=2`` so that 8x8 inputs (scikit-learn digits) fit as well as 28x28.
    """

    def __init__(self, input_shape: tuple[int, int, int], hidden_size: int, num_classes: int,
                 channels: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = channels[1] * (h // 4) * (w // 4)
        self.head = nn.Sequential(nn.Linear(flat, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class AutoEncoder(nn.Module):
    """Fully connected autoencoder ``D - 4h - h - 4h - D`` with a sigmoid output.

    With ``h = 64`` on MNIST this is the digest's 784-256-64-256-784 model for
    the CLoVE paper's unsupervised experiments (inputs in [0, 1]).
    """

    def __init__(self, input_shape: tuple[int, ...], hidden_size: int) -> None:
        super().__init__()
        d = math.prod(input_shape)
        self.input_shape = tuple(input_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, 4 * hidden_size), nn.ReLU(),
                                     nn.Linear(4 * hidden_size, hidden_size), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size), nn.ReLU(),
                                     nn.Linear(4 * hidden_size, d), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).view(-1, *self.input_shape)


class LinearRegressor(nn.Module):
    """``y = <theta, x>`` without bias (the mixed-linear-regression model)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class QosMLP(nn.Module):
    """The QoS-distribution predictor of paper 000: ``p -> 256 -> 256 -> 128 -> m``.

    ReLU and 20 % dropout after each hidden layer; a linear output layer (``head``)
    giving the standardised ``[mu, log-diagonal Cholesky]`` of the Gaussian one
    hour ahead. ``base`` (the first three layers) is what BCD freezes and shares;
    ``head`` is the per-cluster last layer. Input and target standardisation are
    buffers, so they travel with the weights and are identical for every cell.
    """

    def __init__(self, num_inputs: int = 27, num_outputs: int = 9, hidden: tuple[int, int, int] = (256, 256, 128),
                 dropout: float = 0.2) -> None:
        super().__init__()
        layers, width = [], num_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.base = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_outputs)
        self.register_buffer("x_mean", torch.zeros(num_inputs))
        self.register_buffer("x_std", torch.ones(num_inputs))
        self.register_buffer("y_mean", torch.zeros(num_outputs))
        self.register_buffer("y_std", torch.ones(num_outputs))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features phi(x) of raw inputs."""
        return self.base((x - self.x_mean) / self.x_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised prediction of raw inputs."""
        return self.head(self.features(x))

    def standardise_targets(self, y: torch.Tensor) -> torch.Tensor:
        """Targets in the units of the output."""
        return (y - self.y_mean) / self.y_std

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction in the modelling domain (``[mu, log-diagonal Cholesky]``)."""
        return self.forward(x) * self.y_std + self.y_mean


class FFModel(nn.Module):
    """Parameter container of a forward-forward MLP (LightTune, paper 003).

    The maths is numpy (:mod:`fedsim.forward_forward`); this module only holds
    the layers ``layers.<l>`` (``Theta_l``, shape ``(M_l, M_{l-1} + 1)``, bias in
    the last column, float64) and the feature standardisation buffers, so that
    FedAvg and the run's results treat it like any other model.
    """

    def __init__(self, sizes: tuple[int, ...], num_features: int) -> None:
        super().__init__()
        self.layers = nn.ParameterList()
        for fan_in, width in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default range
            layer = torch.empty(width, fan_in + 1, dtype=torch.float64).uniform_(-bound, bound)
            self.layers.append(nn.Parameter(layer))
        self.register_buffer("x_mean", torch.zeros(num_features, dtype=torch.float64))
        self.register_buffer("x_std", torch.ones(num_features, dtype=torch.float64))


class SLFModel(nn.Module):
    """Parameter container of an any-to-any path-loss map (paper 004): the spatial loss field and (pl0, delta).

    The maths is numpy (:mod:`fedsim.pathloss`); this module only holds the SLF ``slf`` (shape ``(P,)``,
    float64, zero at the start: the paper's ``f_1 = 0``) and the log-distance buffers ``pl0`` [dB] and
    ``delta`` (shape ``(1,)``, float64; the paper's V2X values 75 dB and 2.9 by default), so that the
    strategies and the run's results treat it like any other model.
    """

    def __init__(self, num_pixels: int, pl0_db: float = 75.0, delta: float = 2.9) -> None:
        super().__init__()
        self.slf = nn.Parameter(torch.zeros(num_pixels, dtype=torch.float64))
        self.register_buffer("pl0", torch.tensor([pl0_db], dtype=torch.float64))
        self.register_buffer("delta", torch.tensor([delta], dtype=torch.float64))


class MIBOModel(nn.Module):
    """Localisation and sensing networks reading CSI through relaxed subcarrier masks (SPG-MIBO, paper 001).

    The networks are the digest's MLPs (:func:`fedsim.spg_mibo.make_task_mlp`); ``mask`` is the relaxed
    mask w in [0, 1]^d shared by both tasks, initialised U(0.4, 0.6) (digest Sec. 4.7). With ``separate``
    the sensing network has its own mask ``mask_sen`` (the single-task baselines); ``mask`` is then the
    localisation network's. The masks are buffers: they are learned by the SPG-MIBO trainer's proximal
    step, not by an optimiser, and travel with the model's state dict.

    Parameters
    ----------
    input_shape : tuple[int, int, int, int]
        ``(channels, links, subcarriers, snapshots)`` of one sample.
    sensing_outputs : int
        Outputs of the sensing network (3 activity classes, 1 rate, or T waveform samples).
    separate : bool
        Give the sensing network its own mask.
    hidden : tuple[int, ...]
        Hidden widths of both networks.
    """

    def __init__(self, input_shape: tuple[int, int, int, int], sensing_outputs: int, separate: bool = False,
                 hidden: tuple[int, ...] = (128, 64)) -> None:
        from fedsim.spg_mibo import make_task_mlp

        super().__init__()
        _, links, subcarriers, _ = input_shape
        self.input_shape = tuple(input_shape)
        self.loc = make_task_mlp(math.prod(input_shape), 2, hidden)
        self.sen = make_task_mlp(math.prod(input_shape), sensing_outputs, hidden)
        self.register_buffer("mask", 0.4 + 0.2 * torch.rand(links * subcarriers))
        if separate:
            self.register_buffer("mask_sen", 0.4 + 0.2 * torch.rand(links * subcarriers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Position and sensing outputs with the relaxed masks."""
        from fedsim.spg_mibo import apply_mask

        _, links, subcarriers, _ = self.input_shape
        sen_mask = self.mask_sen if hasattr(self, "mask_sen") else self.mask
        return (self.loc(apply_mask(x, self.mask, links, subcarriers)),
                self.sen(apply_mask(x, sen_mask, links, subcarriers)))
