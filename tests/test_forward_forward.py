"""The FF MLP of LightTune: closed-form local gradients against autograd, losses, optimiser variants."""

import numpy as np
import pytest
import torch

from fedsim.forward_forward import (
    AdamState,
    FFSpec,
    adam_update,
    check_params,
    class_scores,
    encode,
    forward,
    init_params,
    layer_losses,
    local_gradients,
    one_step_update,
    predict_index,
    train_offline,
)

VARIANTS = [dict(goodness=g, loss=lo, layer_norm=n) for g in ("neuron", "mean") for lo in ("quadratic", "softplus")
            for n in (False, True)] + [dict(goodness="mean", loss="softplus", layer_norm=True, input_norm=True)]


def torch_layer_losses(spec, thetas, z_pos, z_neg):
    """Independent per-layer loss in torch: each layer's input detached (no gradient across layers)."""
    out = []
    hp, hn = torch.as_tensor(z_pos), torch.as_tensor(z_neg)
    params = [torch.tensor(t, requires_grad=True) for t in thetas]
    t = spec.threshold
    for index, theta in enumerate(params):
        parts = []
        for h, positive in ((hp, True), (hn, False)):
            h = h.detach()
            if spec.layer_norm and (index > 0 or spec.input_norm):
                h = h / (h.norm(dim=1, keepdim=True) + 1e-4)
            h = torch.relu(torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1) @ theta.T)
            g = (h**2).mean(1) if spec.goodness == "mean" else h**2
            s = -1.0 if positive else 1.0
            if spec.loss == "quadratic":
                unit = (g - t) ** 2 + s * 4 * (g - t)
            else:
                unit = torch.logaddexp(torch.zeros_like(g), s * (g - t))  # exact softplus
            parts.append(unit.mean())
            if positive:
                hp = h
            else:
                hn = h
        out.append(parts[0] + parts[1])
    return out, params


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_closed_form_gradients_match_autograd(options):
    rng = np.random.default_rng(3)
    spec = FFSpec(12, hidden=(32, 16), threshold=2.0 if options["layer_norm"] else 9.0, **options)
    thetas = [t * 3 for t in init_params(spec, rng)]  # larger weights: some units dead, some active
    x = rng.normal(size=(7, 12)) * 2
    z_pos = encode(spec, x, rng.integers(0, 10, 7))
    z_neg = encode(spec, x, rng.integers(0, 10, 7))
    grads = local_gradients(spec, thetas, z_pos, z_neg)
    losses, params = torch_layer_losses(spec, thetas, z_pos, z_neg)
    expected_losses = [float(v.detach()) for v in losses]
    np.testing.assert_allclose(layer_losses(spec, thetas, z_pos, z_neg), expected_losses, rtol=1e-12)
    for loss, param, grad in zip(losses, params, grads):
        (expected,) = torch.autograd.grad(loss, param)
        assert np.abs(expected.numpy()).max() > 0
        np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-9, atol=1e-12)


def test_paper_eq9_per_neuron_form():
    """Eq. 9 written out for one positive and one negative, [13 -> 32] layer, T = 9."""
    rng = np.random.default_rng(0)
    spec = FFSpec.paper(12, hidden=(32,))
    (theta,) = init_params(spec, rng)
    theta *= 4
    x = rng.normal(size=(1, 12))
    z_pos, z_neg = encode(spec, x, [3]), encode(spec, x, [7])
    (grad,) = local_gradients(spec, [theta], z_pos, z_neg)
    expected = np.zeros_like(theta)
    for z, shift in ((z_pos, -2.0), (z_neg, 2.0)):
        h_in = np.append(z[0], 1.0)
        h = np.maximum(theta @ h_in, 0)
        expected += 4 / 32 * np.outer((h**2 - 9 + shift) * h * (h > 0), h_in)
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


def test_quadratic_loss_is_eight_softplus_taylor_and_balanced_constants_cancel():
    spec_q = FFSpec(4, hidden=(6,), goodness="neuron", layer_norm=False)
    spec_s = FFSpec(4, hidden=(6,), goodness="neuron", layer_norm=False, loss="softplus")
    rng = np.random.default_rng(1)
    thetas = [t * 0.02 for t in init_params(spec_q, rng)]  # tiny weights: g ~ 0
    spec_q = FFSpec(4, hidden=(6,), goodness="neuron", layer_norm=False, threshold=0.0)
    spec_s = FFSpec(4, hidden=(6,), goodness="neuron", layer_norm=False, loss="softplus", threshold=0.0)
    x = rng.normal(size=(5, 4))
    z_pos, z_neg = encode(spec_q, x, [1] * 5), encode(spec_q, x, [2] * 5)
    quad = layer_losses(spec_q, thetas, z_pos, z_neg)[0]
    soft = layer_losses(spec_s, thetas, z_pos, z_neg)[0]
    # 8 softplus(a) - 8 ln 2 = 4a + a^2 + O(a^3), summed over the positive and the negative part
    assert abs(8 * soft - 16 * np.log(2) - quad) < 1e-6
    # eq. 7: with |S+| = |S-| the +-4T terms cancel: loss = mean[(g+ - T)^2 - 4 g+] + mean[(g- - T)^2 + 4 g-]
    spec_t = FFSpec(4, hidden=(6,), goodness="neuron", layer_norm=False, threshold=9.0)
    thetas = init_params(spec_t, rng)
    g_pos = np.maximum(np.c_[z_pos, np.ones(5)] @ thetas[0].T, 0) ** 2
    g_neg = np.maximum(np.c_[z_neg, np.ones(5)] @ thetas[0].T, 0) ** 2
    eq7 = ((g_pos - 9) ** 2 - 4 * g_pos).mean() + ((g_neg - 9) ** 2 + 4 * g_neg).mean()
    assert layer_losses(spec_t, thetas, z_pos, z_neg)[0] == pytest.approx(eq7, rel=1e-12)


def test_one_step_is_adam_restarted_and_sign_sgd_without_eps():
    rng = np.random.default_rng(2)
    g = [rng.normal(size=(3, 4)), np.array([[0.0, 1e-3, -2.0]])]
    start = [rng.normal(size=(3, 4)), rng.normal(size=(1, 3))]
    a = [t.copy() for t in start]
    one_step_update(a, g, lr=0.03)
    b = [t.copy() for t in start]
    adam_update(b, g, AdamState.zeros(b), lr=0.03)  # a fresh Adam's first step
    for x, y, grad, s in zip(a, b, g, start):
        np.testing.assert_allclose(x, y, rtol=1e-12)
        np.testing.assert_allclose(x, s - 0.03 * grad / (np.abs(grad) + 1e-8), rtol=1e-12)
    c = [t.copy() for t in start]
    one_step_update(c, g, lr=0.03, eps=0.0 + 1e-300)
    np.testing.assert_allclose(c[1], start[1] - 0.03 * np.sign(g[1]), atol=1e-15)


def test_standard_adam_counts_only_executed_updates():
    rng = np.random.default_rng(4)
    thetas = [rng.normal(size=(2, 2))]
    state = AdamState.zeros(thetas)
    g = [np.ones((2, 2))]
    adam_update(thetas, g, state, lr=0.1)
    adam_update(thetas, g, state, lr=0.1)
    assert state.t == 2
    np.testing.assert_allclose(state.m[0], (1 - 0.9**2) * np.ones((2, 2)))


def test_prediction_is_argmax_of_goodness_with_ties_to_the_lower_class():
    spec = FFSpec(3, hidden=(4,))
    thetas = [np.zeros((4, spec.input_size + 1))]  # every class has goodness 0
    assert list(predict_index(spec, thetas, np.ones((2, 3)))) == [0, 0]
    rng = np.random.default_rng(5)
    thetas = init_params(spec, rng)
    x = rng.normal(size=(6, 3))
    assert np.array_equal(predict_index(spec, thetas, x), class_scores(spec, thetas, x).argmax(1))


def test_floor_binning_of_bler_labels():
    spec = FFSpec(12)
    assert list(spec.class_index([0.0, 0.05, 0.1, 0.19, 0.3, 0.899, 0.9, 1.0])) == [0, 0, 1, 1, 3, 8, 9, 9]


def test_sizes_and_cost_of_the_paper_model():
    spec = FFSpec.paper(12)
    assert spec.sizes == (13, 32, 32) and spec.forward_macs() == 1440 and spec.num_parameters() == 1504
    with pytest.raises(ValueError, match="do not fit 12 features"):
        check_params(spec, init_params(FFSpec.paper(11), np.random.default_rng(0)))
    with pytest.raises(ValueError, match="goodness = 'max'"):
        FFSpec(12, goodness="max")


def test_the_mean_goodness_variant_learns_an_ordinal_toy_better_than_the_majority_class():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 4))
    label = np.clip(np.floor((np.tanh(x[:, 0] + 0.5 * x[:, 1]) + 1) * 5), 0, 9).astype(int)
    spec = FFSpec(4, hidden=(32, 32), threshold=2.0)
    thetas = init_params(spec, rng)
    train_offline(spec, thetas, x[:2000], label[:2000], epochs=20, batch_size=100, lr=0.03, rng=rng)
    pred = predict_index(spec, thetas, x[2000:])
    majority = np.bincount(label[:2000]).argmax()
    mae = np.abs(pred - label[2000:]).mean()
    assert mae < 0.6 * np.abs(majority - label[2000:]).mean()


def test_sgd_on_the_last_layer_satisfies_the_descent_lemma_of_theorem_1():
    """Lemma 5 / eq. 64: with alpha < 1/rho_L (eq. 17, B_h measured), L(theta+) <= L(theta) - alpha/2 |grad|^2."""
    rng = np.random.default_rng(11)
    spec = FFSpec.paper(12)
    for _ in range(50):
        thetas = init_params(spec, rng)
        x = rng.normal(size=(1, 12))
        z_pos, z_neg = encode(spec, x, [rng.integers(10)]), encode(spec, x, [rng.integers(10)])
        grad = local_gradients(spec, thetas, z_pos, z_neg, layers="last")[-1]
        b_h = max(np.linalg.norm(h) for z in (z_pos, z_neg) for h in [z, *forward(spec, thetas, z).outputs])
        rho = 8 * (3 * b_h**2 + spec.threshold + 2) * (b_h + 1) ** 2 / spec.hidden[-1]
        alpha = 0.9 / rho
        before = layer_losses(spec, thetas, z_pos, z_neg)[-1]
        thetas[-1] = thetas[-1] - alpha * grad
        after = layer_losses(spec, thetas, z_pos, z_neg)[-1]
        assert after <= before - alpha / 2 * (grad**2).sum() + 1e-12
