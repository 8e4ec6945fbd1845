"""Forward-forward (FF) MLP with closed-form layer-local gradients (LightTune, paper 003).

Everything here is numpy: no autograd, no backward pass across layers, which is
the point of the method (a UE modem has neither).

Model
    Layers ``h_l = ReLU(Theta_l [h~_{l-1}; 1])`` with ``Theta_l`` of shape
    ``(M_l, M_{l-1} + 1)`` (bias in the last column). The input is the feature
    vector with the candidate label appended (``z = [x, y]``). Goodness of a
    layer: its squared activations, per neuron (``g = h**2``, the paper's eqs.
    2-3) or as their mean over the layer's neurons (``mean``, the structure of
    the FF reference code the paper cites as [24]). The prediction is the class
    with the largest goodness (eq. 5; ties keep the lower class).

Loss (per layer, positive and negative samples)
    ``quadratic`` is the paper's eq. 6, the second-order Taylor expansion of
    Softplus: ``(u - T)**2 - 4 (u - T)`` for positives and ``(u - T)**2 + 4 (u - T)``
    for negatives, where ``u`` is a neuron's goodness (``neuron``) or the layer's
    mean goodness (``mean``); ``softplus`` is eq. 4. Gradients are eq. 9: with
    the layer input treated as a constant, ``dL/dTheta_l = (dL/dh * 1[h > 0])^T h~``.

Options the paper leaves open (digest Sec. 8 A1-A4), as :class:`FFSpec` fields:
``goodness`` (``neuron`` = paper, ``mean``), ``layer_norm`` (L2-normalised
inputs of the hidden layers 2..L, which hides the previous layer's goodness,
as in [24]; the paper has none; [24] also normalises the first layer's input,
which on BLER features drowns the label under out-of-range SNR features:
at 28-40 dB the standardised SNR features are ~10, the label 1), ``goodness_layers`` (``last`` =
paper, ``all``), ``label_encoding`` (``scalar`` = paper, ``onehot``).
:meth:`FFSpec.paper` is the literal recipe; the default is the variant that
learned in the digest's toy study (mean goodness, normalised inputs, goodness
of all layers, one-hot label).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

BLER_CLASSES = tuple(round(0.1 * k, 1) for k in range(10))
"""The paper's BLER classes {0, 0.1, ..., 0.9}."""

_NORM_EPS = 1e-4
_CHOICES = {"goodness": ("neuron", "mean"), "goodness_layers": ("last", "all"),
            "label_encoding": ("scalar", "onehot"), "loss": ("quadratic", "softplus")}


@dataclass(frozen=True)
class FFSpec:
    """Architecture and loss of a forward-forward MLP.

    Parameters
    ----------
    num_features : int
        Length of a feature vector (12 for BLER prediction).
    hidden : tuple of int
        Widths of the ReLU layers ([32, 32] in the paper).
    classes : tuple of float
        Label values; the prediction is one of them.
    threshold : float
        Goodness threshold T (9 for BLER, 2 for MNIST).
    goodness, goodness_layers, label_encoding, layer_norm, loss
        See the module docstring.
    label_scale : float
        Factor on the appended label (scalar encoding) or one-hot vector.
    input_norm : bool
        With ``layer_norm``, also L2-normalise the first layer's input, as [24] does (its MNIST
        setting; on BLER features it drowns the label under out-of-range SNR features).
    """

    num_features: int
    hidden: tuple[int, ...] = (32, 32)
    classes: tuple[float, ...] = BLER_CLASSES
    threshold: float = 9.0
    goodness: str = "mean"
    layer_norm: bool = True
    goodness_layers: str = "all"
    label_encoding: str = "onehot"
    label_scale: float = 1.0
    loss: str = "quadratic"
    input_norm: bool = False

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} = {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.num_features < 1 or not self.hidden or min(self.hidden) < 1 or len(self.classes) < 2:
            raise ValueError("an FF MLP needs at least one feature, one non-empty layer and two classes")

    @classmethod
    def paper(cls, num_features: int, **overrides) -> FFSpec:
        """The paper's literal recipe: per-neuron goodness of the last layer, raw inputs, scalar label."""
        return replace(cls(num_features, goodness="neuron", layer_norm=False, goodness_layers="last",
                           label_encoding="scalar"), **overrides)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> int:
        """M_0: features plus the label encoding."""
        return self.num_features + (1 if self.label_encoding == "scalar" else self.num_classes)

    @property
    def sizes(self) -> tuple[int, ...]:
        """(M_0, M_1, ..., M_L)."""
        return (self.input_size, *self.hidden)

    def num_parameters(self) -> int:
        """N_total = sum_l M_l (M_{l-1} + 1)."""
        return sum(m * (n + 1) for n, m in zip(self.sizes[:-1], self.sizes[1:]))

    def forward_macs(self) -> int:
        """Q = sum_l M_l M_{l-1}: multiply-accumulates of one forward pass."""
        return sum(m * n for n, m in zip(self.sizes[:-1], self.sizes[1:]))

    def class_index(self, values: np.ndarray) -> np.ndarray:
        """Floor-bin values onto the classes (digest A5: ``min(floor(10 P), 9)`` for BLER)."""
        edges = np.asarray(self.classes)
        return np.clip(np.searchsorted(edges, np.asarray(values) + 1e-9, side="right") - 1, 0, len(edges) - 1)


def init_params(spec: FFSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """Random layers, uniform in +-1/sqrt(fan-in) like ``torch.nn.Linear``."""
    out = []
    for n, m in zip(spec.sizes[:-1], spec.sizes[1:]):
        bound = 1.0 / np.sqrt(n)
        out.append(rng.uniform(-bound, bound, (m, n + 1)))
    return out


def check_params(spec: FFSpec, thetas: list[np.ndarray]) -> None:
    """Raise ``ValueError`` if the layer shapes do not fit the spec (e.g. another feature count)."""
    expected = [(m, n + 1) for n, m in zip(spec.sizes[:-1], spec.sizes[1:])]
    got = [tuple(t.shape) for t in thetas]
    if got != expected:
        raise ValueError(f"FF layers {got} do not fit {spec.num_features} features, {spec.num_classes} classes "
                         f"and hidden {list(spec.hidden)}: expected {expected}")


def encode(spec: FFSpec, x: np.ndarray, label_index: np.ndarray) -> np.ndarray:
    """Inputs z = [x, label] for each row of ``x`` and its label index."""
    x = np.atleast_2d(x)
    label_index = np.broadcast_to(np.asarray(label_index), (len(x),))
    if spec.label_encoding == "scalar":
        label = np.asarray(spec.classes)[label_index][:, None]
    else:
        label = np.eye(spec.num_classes)[label_index]
    return np.concatenate([x, spec.label_scale * label], axis=1)


@dataclass
class Pass:
    """One forward pass: the (augmented, maybe normalised) input of every layer and its output."""

    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)


def forward(spec: FFSpec, thetas: list[np.ndarray], z: np.ndarray) -> Pass:
    """Run ``z`` [N, M_0] through the layers."""
    p = Pass()
    h = z
    for index, theta in enumerate(thetas):
        if spec.layer_norm and (index > 0 or spec.input_norm):
            h = h / (np.linalg.norm(h, axis=1, keepdims=True) + _NORM_EPS)
        h_in = np.concatenate([h, np.ones((len(h), 1))], axis=1)
        h = np.maximum(h_in @ theta.T, 0.0)
        p.inputs.append(h_in)
        p.outputs.append(h)
    return p


def layer_goodness(spec: FFSpec, h: np.ndarray) -> np.ndarray:
    """Goodness per sample of one layer's output: sum (``neuron``) or mean (``mean``) of h**2."""
    return (h**2).mean(axis=1) if spec.goodness == "mean" else (h**2).sum(axis=1)


def goodness(spec: FFSpec, thetas: list[np.ndarray], z: np.ndarray) -> np.ndarray:
    """G(z) per row: the last layer's goodness, or the sum over layers (``all``)."""
    outputs = forward(spec, thetas, z).outputs
    used = outputs if spec.goodness_layers == "all" else outputs[-1:]
    return sum(layer_goodness(spec, h) for h in used)


def class_scores(spec: FFSpec, thetas: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Goodness of every candidate class, [N, C] (C forward passes, Alg. 2)."""
    x = np.atleast_2d(x)
    n, c = len(x), spec.num_classes
    z = encode(spec, np.repeat(x, c, axis=0), np.tile(np.arange(c), n))
    return goodness(spec, thetas, z).reshape(n, c)


def predict_index(spec: FFSpec, thetas: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Index of the class with the largest goodness (eq. 5; ties keep the lower class)."""
    return class_scores(spec, thetas, x).argmax(axis=1)


def _unit_loss(spec: FFSpec, u: np.ndarray, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Loss of a goodness value u and its derivative in u (positive or negative sample)."""
    t = spec.threshold
    sign = -1.0 if positive else 1.0  # positives are pushed up, negatives down
    if spec.loss == "quadratic":  # eq. 6: (u - T)^2 -+ 4 (u - T)
        return (u - t) ** 2 + sign * 4 * (u - t), 2 * (u - t) + sign * 4
    a = sign * (u - t)  # eq. 4: softplus(-(u - T)) for positives, softplus(u - T) for negatives
    return np.logaddexp(0.0, a), sign / (1.0 + np.exp(-a))


def _layer_terms(spec: FFSpec, h: np.ndarray, positive: bool) -> tuple[float, np.ndarray]:
    """A layer's mean loss over its samples and dL/dh [N, M] for one sign."""
    n, m = h.shape
    if spec.goodness == "mean":
        loss, d_u = _unit_loss(spec, (h**2).mean(axis=1), positive)
        return float(loss.sum() / n), d_u[:, None] * 2 * h / (m * n)
    loss, d_u = _unit_loss(spec, h**2, positive)
    return float(loss.sum() / (n * m)), d_u * 2 * h / (n * m)


def layer_losses(spec: FFSpec, thetas: list[np.ndarray], z_pos: np.ndarray, z_neg: np.ndarray) -> list[float]:
    """The local loss of every layer (positive part averaged over positives plus negative part over negatives)."""
    pos, neg = forward(spec, thetas, z_pos), forward(spec, thetas, z_neg)
    return [_layer_terms(spec, hp, True)[0] + _layer_terms(spec, hn, False)[0]
            for hp, hn in zip(pos.outputs, neg.outputs)]


def losses_and_gradients(spec: FFSpec, thetas: list[np.ndarray], z_pos: np.ndarray, z_neg: np.ndarray,
                         layers: str = "all") -> tuple[list[float], list[np.ndarray]]:
    """Every layer's local loss and its closed-form gradient in the layer's own parameters (eqs. 8-9).

    One forward pass on the positives and one on the negatives with the current
    parameters; every layer's gradient uses those pre-update activations (digest
    A7). With ``layers="last"`` the other layers get zero gradients (the scope
    of the paper's Theorem 1).
    """
    pos, neg = forward(spec, thetas, z_pos), forward(spec, thetas, z_neg)
    losses, grads = [], []
    for index, (hp, hn) in enumerate(zip(pos.outputs, neg.outputs)):
        loss_p, dp = _layer_terms(spec, hp, True)
        loss_n, dn = _layer_terms(spec, hn, False)
        losses.append(loss_p + loss_n)
        if layers == "last" and index < len(thetas) - 1:
            grads.append(np.zeros_like(thetas[index]))
        else:  # ReLU: dh/dp = 1[h > 0]; dL/dh carries the factor h, so it vanishes where h = 0
            grads.append(dp.T @ pos.inputs[index] + dn.T @ neg.inputs[index])
    return losses, grads


def local_gradients(spec: FFSpec, thetas: list[np.ndarray], z_pos: np.ndarray, z_neg: np.ndarray,
                    layers: str = "all") -> list[np.ndarray]:
    """The gradients of :func:`losses_and_gradients`."""
    return losses_and_gradients(spec, thetas, z_pos, z_neg, layers)[1]


@dataclass
class AdamState:
    """Adam moments and the counter of executed updates (t_A)."""

    m: list[np.ndarray]
    v: list[np.ndarray]
    t: int = 0

    @classmethod
    def zeros(cls, thetas: list[np.ndarray]) -> AdamState:
        return cls([np.zeros_like(t) for t in thetas], [np.zeros_like(t) for t in thetas], 0)


def adam_update(thetas: list[np.ndarray], grads: list[np.ndarray], state: AdamState, lr: float,
                beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
    """One Adam step in place (Alg. 1 line 12); ``state.t`` counts executed updates."""
    state.t += 1
    for theta, g, m, v in zip(thetas, grads, state.m, state.v):
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g**2
        theta -= lr * (m / (1 - beta1**state.t)) / (np.sqrt(v / (1 - beta2**state.t)) + eps)


def one_step_update(thetas: list[np.ndarray], grads: list[np.ndarray], lr: float, eps: float = 1e-8) -> None:
    """LightTune's one-step variant (eqs. 11-13): Adam restarted at every trigger, i.e. lr * g / (|g| + eps).

    No moments are kept; with ``eps = 0`` it is sign-SGD.
    """
    for theta, g in zip(thetas, grads):
        theta -= lr * g / (np.abs(g) + eps)


def sgd_update(thetas: list[np.ndarray], grads: list[np.ndarray], lr: float) -> None:
    """Plain gradient step (the optimiser of the paper's Theorem 1)."""
    for theta, g in zip(thetas, grads):
        theta -= lr * g


def train_offline(spec: FFSpec, thetas: list[np.ndarray], x: np.ndarray, label_index: np.ndarray, epochs: int,
                  batch_size: int, lr: float, rng: np.random.Generator) -> float:
    """Offline FF training in place: mini-batch Adam on every layer's local loss; return the mean loss.

    Every step draws one fresh uniform negative label per sample (standard FF,
    digest A3); all layers are updated together from the same forward passes.
    The paper's full-batch 22,000 epochs are out of reach here; mini-batches
    are the digest's recommendation for CPU runs.
    """
    state = AdamState.zeros(thetas)
    c = spec.num_classes
    total, count = 0.0, 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            pos_label = label_index[idx]
            neg_label = (pos_label + rng.integers(1, c, len(idx))) % c  # uniform over the other classes
            losses, grads = losses_and_gradients(spec, thetas, encode(spec, x[idx], pos_label),
                                                 encode(spec, x[idx], neg_label))
            total += sum(losses) * len(idx)
            count += len(idx)
            adam_update(thetas, grads, state, lr)
    return total / max(count, 1)
