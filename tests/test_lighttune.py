"""LightTune's online step (Alg. 1): trigger, negatives, variants, node state, the backprop baseline."""

import numpy as np
import pytest
import torch

from clients.lighttune import LightTuner, TuneSettings, backprop_loss, parse_ue
from fedsim.forward_forward import FFSpec, encode, init_params, local_gradients, predict_index


def make(variant="one-step", sampling="uniform", delta=0.3, seed=0, **spec_kw):
    spec = FFSpec(5, hidden=(8, 6), **spec_kw)
    thetas = init_params(spec, np.random.default_rng(seed))
    return LightTuner(spec, thetas, np.zeros(5), np.ones(5), TuneSettings(variant, sampling, delta),
                      np.random.default_rng(seed + 1))


def test_no_update_below_the_threshold_and_one_update_at_it():
    tuner = make()
    x = np.random.default_rng(2).normal(size=5)
    predicted = tuner.predict(x)
    before = [t.copy() for t in tuner.thetas]
    tuner.observe(x, min(predicted + 0.29, 1.0) if predicted < 0.7 else predicted - 0.29)
    assert tuner.triggers == 0 and all(np.array_equal(a, b) for a, b in zip(before, tuner.thetas))
    label = 0.95 if predicted < 0.6 else 0.0
    tuner.observe(x, label)
    assert tuner.triggers == 1 and tuner.periods == 2
    moved = np.concatenate([np.abs(a - b).ravel() for a, b in zip(before, tuner.thetas)])
    # one-step: a parameter moves by alpha_f |g| / (|g| + 1e-8): 0 or (for |g| >> 1e-8) alpha_f
    assert np.all(np.isclose(moved, 0.0) | np.isclose(moved, 0.03, rtol=1e-2)) and moved.max() > 0


def test_hard_negative_is_the_wrong_prediction_and_uniform_negative_is_never_the_positive():
    tuner = make(sampling="hard")
    x = np.random.default_rng(3).normal(size=5)
    xs = tuner.scaled(x)
    predicted = int(predict_index(tuner.spec, tuner.thetas, xs)[0])
    label = 0.95 if predicted < 6 else 0.05
    z_pos = encode(tuner.spec, xs, [tuner.spec.class_index(label)])
    expected = local_gradients(tuner.spec, [t.copy() for t in tuner.thetas], z_pos, encode(tuner.spec, xs, [predicted]))
    start = [t.copy() for t in tuner.thetas]
    tuner.observe(x, label)
    for s, t, g in zip(start, tuner.thetas, expected):
        np.testing.assert_allclose(t, s - 0.03 * g / (np.abs(g) + 1e-8))
    uniform = make()
    draws = []
    uniform.update = lambda z_pos, z_neg: draws.append((z_pos[0, 5:].argmax(), z_neg[0, 5:].argmax()))
    for _ in range(200):
        uniform.observe(x, 0.95 if uniform.predict(x) < 0.6 else 0.05)
    assert all(p != n for p, n in draws) and len({n for _, n in draws}) == 9


def test_frozen_never_changes_and_adam_keeps_its_moments():
    frozen, adam = make("frozen"), make("adam")
    rng = np.random.default_rng(4)
    start = [t.copy() for t in frozen.thetas]
    for _ in range(30):
        x = rng.normal(size=5)
        frozen.observe(x, rng.uniform())
        adam.observe(x, rng.uniform())
    assert all(np.array_equal(a, b) for a, b in zip(start, frozen.thetas)) and frozen.triggers == 0
    assert adam.adam.t == adam.triggers > 0


def test_node_state_round_trip_keeps_parameters_moments_and_counters():
    a = make("adam")
    rng = np.random.default_rng(5)
    for _ in range(20):
        a.observe(rng.normal(size=5), rng.uniform())
    arrays, counters = a.state_record()
    b = make("adam", seed=9)
    b.load_state(arrays, counters, parameters=True)
    assert (b.periods, b.triggers, b.adam.t) == (a.periods, a.triggers, a.adam.t)
    for x, y in zip(a.thetas + a.adam.m + a.adam.v, b.thetas + b.adam.m + b.adam.v):
        np.testing.assert_array_equal(x, y)
    c = make("adam", seed=9)
    c.load_state(arrays, counters, parameters=False)  # lt-reset = episode: counters only
    assert c.triggers == a.triggers and not np.array_equal(c.thetas[0], a.thetas[0])


def test_backprop_gradient_is_local_on_the_last_layer_and_crosses_layers_on_the_first():
    spec = FFSpec(5, hidden=(8, 6))
    thetas = [t * 2 for t in init_params(spec, np.random.default_rng(6))]
    x = np.random.default_rng(7).normal(size=(1, 5))
    z_pos, z_neg = encode(spec, x, [2]), encode(spec, x, [7])
    params = [torch.tensor(t, requires_grad=True) for t in thetas]
    loss = backprop_loss(spec, params, torch.from_numpy(z_pos), True) + \
        backprop_loss(spec, params, torch.from_numpy(z_neg), False)
    loss.backward()
    local = local_gradients(spec, thetas, z_pos, z_neg)
    np.testing.assert_allclose(params[1].grad.numpy(), local[1], rtol=1e-10, atol=1e-14)
    assert not np.allclose(params[0].grad.numpy(), local[0])  # the second layer's loss reaches the first layer


def test_backprop_tuner_updates_every_layer_in_place():
    tuner = make("backprop")
    x = np.random.default_rng(8).normal(size=5)
    start = [t.copy() for t in tuner.thetas]
    tuner.observe(x, 0.95 if tuner.predict(x) < 0.6 else 0.0)
    assert tuner.triggers == 1 and all(not np.array_equal(a, b) for a, b in zip(start, tuner.thetas))


def test_bad_inputs_raise_clear_errors():
    tuner = make()
    with pytest.raises(ValueError, match="outside"):
        tuner.observe(np.zeros(5), 1.5)
    with pytest.raises(ValueError, match="5 finite numbers"):
        tuner.predict(np.array([0, 1, np.nan, 0, 0]))
    with pytest.raises(ValueError, match="do not fit"):
        LightTuner(FFSpec(6), init_params(FFSpec(5), np.random.default_rng(0)), np.zeros(6), np.ones(6),
                   TuneSettings(), np.random.default_rng(0))
    assert parse_ue("TDL-B100@50/medium") == ("TDL-B100", 50.0, "medium")
    assert parse_ue("TDL-A30@10") == ("TDL-A30", 10.0, "low")
    with pytest.raises(ValueError, match="is not <TDL-name>"):
        parse_ue("TDL-A30")
