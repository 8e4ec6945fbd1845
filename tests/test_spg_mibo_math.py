"""SPG-MIBO's maths and trainer mechanics against independent computations (digest 001, Secs. 4, 8 and 11.6)."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector

from fedsim import spg_mibo
from fedsim.spg_mibo import (
    CutPool,
    SingleTaskTrainer,
    SPGMIBOConfig,
    SPGMIBOTrainer,
    apply_mask,
    feasible_binary,
    integrality_gap,
    make_task_mlp,
    mask_budget,
    project_l1_band,
    prox_binary,
    validate_mask_budget,
)

torch.set_num_threads(1)
F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _tiny(seed: int = 0, n_pair: int = 2, n_sub: int = 3, hidden=(5,), batch: int = 16, **cfg):
    """A float64 trainer on random data: d = 6, budget (2, 3), 1 channel, T = 2."""
    torch.manual_seed(seed)
    d_in = n_pair * n_sub * 2
    loc = make_task_mlp(d_in, 2, hidden).to(F64)
    sen = make_task_mlp(d_in, 3, hidden).to(F64)
    trainer = SPGMIBOTrainer(loc, sen, n_pair, n_sub, SPGMIBOConfig(**cfg), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(batch, 1, n_pair, n_sub, 2, generator=g, dtype=F64)
    p = torch.rand(batch, 2, generator=g, dtype=F64)
    m = torch.randint(0, 3, (batch,), generator=g)
    return trainer, x, p, m


def _vec(net: torch.nn.Module) -> torch.Tensor:
    return parameters_to_vector(net.parameters()).detach().clone()


def _call(net: torch.nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` with its parameters replaced by the flat vector ``flat`` (differentiable in ``flat``)."""
    params, offset = {}, 0
    for name, p in net.named_parameters():
        params[name] = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return torch.func.functional_call(net, params, (x,))


def _masked(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * w.reshape(1, 1, x.shape[2], x.shape[3], 1)


def _fd(fun, x0: torch.Tensor, direction: torch.Tensor, h: float = 1e-6) -> float:
    return float((fun(x0 + h * direction) - fun(x0 - h * direction)) / (2 * h))


def _toy(n: int = 512, n_pair: int = 2, n_sub: int = 8, t_len: int = 4, seed: int = 0, n_inf: int = 8):
    """Positions and activities visible only on ``n_inf`` known subcarriers; the others carry pure noise."""
    g = torch.Generator().manual_seed(seed)
    d = n_pair * n_sub
    informative = torch.zeros(d, dtype=torch.bool)
    informative[torch.randperm(d, generator=g)[:n_inf]] = True
    pos = torch.rand(n, 2, generator=g)
    act = torch.randint(0, 3, (n,), generator=g)
    anchors = torch.rand(d, 2, generator=g) * 1.5 - 0.25
    gain = torch.tensor([1.0, 0.6, 0.3])
    base = torch.exp(-((pos[:, None, :] - anchors[None]) ** 2).sum(-1) / 0.3) * gain[act][:, None]
    phase = 2 * torch.pi * torch.arange(t_len) / t_len
    mod = torch.cos(phase[None, :] * (1 + act[:, None]))
    x = base[:, :, None] * (1 + 0.5 * mod[:, None, :]) + 0.1 * torch.randn(n, d, t_len, generator=g)
    x[:, ~informative] = torch.randn(n, int((~informative).sum()), t_len, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    return x.reshape(n, 1, n_pair, n_sub, t_len), pos, act, informative


# ---------------------------------------------------------------------------------------------------------------
# prox (eq. 13)
# ---------------------------------------------------------------------------------------------------------------


def _prox_objective(x: np.ndarray, w: float, eta: float, rho: float) -> np.ndarray:
    return (x - w) ** 2 / (2 * eta) + rho * (x - (x > 0.5)) ** 2


@pytest.mark.parametrize("eta,rho", [(0.01, 1.0), (0.3, 1.0), (2.0, 1.0), (0.5, 0.25), (0.2, 3.0)])
def test_prox_matches_a_brute_force_grid_argmin(eta, rho):
    grid = np.linspace(0.0, 1.0, 200_001)
    rng = np.random.default_rng(0)
    ws = np.concatenate([rng.uniform(0, 1, 40), [0.0, 1.0, 0.2, 0.8, 0.49, 0.51]])
    for w in ws:
        brute = grid[np.argmin(_prox_objective(grid, w, eta, rho))]
        assert prox_binary(w, eta, rho) == pytest.approx(brute, abs=1e-5)


def test_prox_tie_at_one_half_goes_to_the_zero_side():
    for eta, rho in [(0.1, 1.0), (1.0, 1.0), (0.4, 2.5)]:
        lo, hi = 0.5 / (1 + 2 * eta * rho), 1 - 0.5 / (1 + 2 * eta * rho)
        obj = _prox_objective(np.array([lo, hi]), 0.5, eta, rho)
        assert obj[0] == pytest.approx(obj[1], rel=1e-12)  # two minimisers ...
        grid = np.linspace(0, 1, 100_001)
        assert _prox_objective(grid, 0.5, eta, rho).min() >= obj[0] - 1e-12  # ... and they are global
        assert prox_binary(0.5, eta, rho) == pytest.approx(lo, abs=1e-15)  # the formula picks the 0 side
        assert float(prox_binary(torch.tensor([0.5], dtype=F64), eta, rho)[0]) == pytest.approx(lo, abs=1e-15)


def test_prox_is_monotone_keeps_binary_points_and_shrinks_the_gap():
    rng = np.random.default_rng(1)
    w = np.sort(rng.uniform(0, 1, 500))
    for eta, rho in [(0.05, 1.0), (1.0, 1.0), (3.0, 0.5)]:
        out = prox_binary(w, eta, rho)
        assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
        r = (w > 0.5).astype(float)
        np.testing.assert_allclose(np.abs(out - r), np.abs(w - r) / (1 + 2 * eta * rho), atol=1e-15)
        assert np.array_equal(out > 0.5, w > 0.5)  # never crosses 1/2
        np.testing.assert_array_equal(prox_binary(np.array([0.0, 1.0]), eta, rho), [0.0, 1.0])
        # clipping before or after the prox commutes (A10), torch agrees with numpy
        v = rng.uniform(-1, 2, 100)
        np.testing.assert_allclose(np.clip(prox_binary(v, eta, rho), 0, 1), prox_binary(np.clip(v, 0, 1), eta, rho))
        np.testing.assert_allclose(prox_binary(torch.tensor(v), eta, rho).numpy(), prox_binary(v, eta, rho))
    np.testing.assert_array_equal(prox_binary(w, 0.0), w)
    with pytest.raises(ValueError, match="eta"):
        prox_binary(w, -0.1)


def test_pure_prox_decay_of_the_gap_is_the_product_formula():
    rng = np.random.default_rng(2)
    w0 = rng.uniform(0, 1, 30)
    w0 = w0[np.abs(w0 - 0.5) > 0.02]
    r = (w0 > 0.5).astype(float)
    eta, rho, w = 0.1, 1.0, w0.copy()
    factor = 1.0
    for t in range(1, 301):
        w = prox_binary(w, eta / math.sqrt(t), rho)
        factor /= 1 + 2 * rho * eta / math.sqrt(t)
        if t in (1, 10, 100, 300):
            np.testing.assert_allclose(np.abs(w - r), np.abs(w0 - r) * factor, rtol=1e-9, atol=1e-14)
            d = w0.size  # band [0, d]: x_int is the rounding, constant along the path
            assert integrality_gap(w, 0, d) == pytest.approx(integrality_gap(w0, 0, d) * factor, rel=1e-9)


def test_prox_with_a_feasible_anchor_pulls_towards_the_top_k():
    w = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    anchor = feasible_binary(w, 1, 2)
    np.testing.assert_array_equal(anchor, [1, 1, 0, 0, 0])
    np.testing.assert_allclose(prox_binary(w, 0.5, 1.0, anchor=anchor), (w + anchor) / 2)


# ---------------------------------------------------------------------------------------------------------------
# L1 band: projection, feasible rounding, IFG, budget
# ---------------------------------------------------------------------------------------------------------------


def _slsqp_projection(w: np.ndarray, n_min: float, n_max: float) -> np.ndarray:
    cons = [{"type": "ineq", "fun": lambda x: x.sum() - n_min, "jac": lambda x: np.ones_like(x)},
            {"type": "ineq", "fun": lambda x: n_max - x.sum(), "jac": lambda x: -np.ones_like(x)}]
    x0 = np.full_like(w, (n_min + n_max) / 2 / w.size)
    res = minimize(lambda x: 0.5 * np.sum((x - w) ** 2), x0, jac=lambda x: x - w, bounds=[(0, 1)] * w.size,
                   constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    assert res.success
    return res.x


def test_project_l1_band_matches_a_qp_solver_and_is_feasible():
    rng = np.random.default_rng(3)
    for case in range(40):
        d = int(rng.integers(3, 9))
        w = rng.uniform(-0.6, 1.6, d)
        n_min = float(rng.uniform(0, d))
        n_max = float(rng.uniform(n_min, d)) if case % 4 else n_min  # also the degenerate band n_min = n_max
        x = project_l1_band(w, n_min, n_max)
        np.testing.assert_allclose(x, _slsqp_projection(w, n_min, n_max), atol=2e-6)
        assert x.min() >= 0 and x.max() <= 1 and n_min - 1e-9 <= x.sum() <= n_max + 1e-9
        np.testing.assert_allclose(project_l1_band(x, n_min, n_max), x, atol=1e-12)  # idempotent
    inside = np.array([0.2, 0.9, -0.3, 1.4])
    np.testing.assert_array_equal(project_l1_band(inside, 1, 3), np.clip(inside, 0, 1))
    wt = torch.tensor([0.9, 0.8, 0.7, 0.95], dtype=torch.float32)
    out = project_l1_band(wt, 0, 2)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and float(out.sum()) == pytest.approx(2)


def test_feasible_binary_is_the_nearest_feasible_binary_vector():
    rng = np.random.default_rng(4)
    for d in (4, 7, 10):
        cube = np.array(list(itertools.product([0.0, 1.0], repeat=d)))
        for _ in range(15):
            w = rng.uniform(0, 1, d)
            n_min = int(rng.integers(0, d + 1))
            n_max = int(rng.integers(n_min, d + 1))
            ok = cube[(cube.sum(1) >= n_min) & (cube.sum(1) <= n_max)]
            best = ok[np.argmin(((ok - w) ** 2).sum(1))]
            x = feasible_binary(w, n_min, n_max)
            np.testing.assert_array_equal(x, best)
            if n_min <= (w > 0.5).sum() <= n_max:
                np.testing.assert_array_equal(x, (w > 0.5).astype(float))  # = plain rounding when feasible
            xt = feasible_binary(torch.tensor(w), n_min, n_max)
            np.testing.assert_array_equal(xt.numpy(), best)


def test_integrality_gap_definition():
    d = 8
    x = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=float)
    assert integrality_gap(x, 3, 5) == 0.0 and integrality_gap(torch.tensor(x), 3, 5, norm="l1") == 0.0
    w = np.array([0.9, 0.1, 0.7, 0.6, 0.2, 0.0, 1.0, 0.3])
    assert integrality_gap(w, 3, 5) == pytest.approx(np.linalg.norm(w - x) / 2)
    assert integrality_gap(w, 3, 5, norm="l1") == pytest.approx(np.abs(w - x).sum() / 4)
    assert integrality_gap(torch.tensor(w), 3, 5) == pytest.approx(np.linalg.norm(w - x) / 2)
    # rounding infeasible: x_int is the top-2, so an all-ones vector has a gap
    assert integrality_gap(np.ones(d), 0, 2) == pytest.approx(np.sqrt(6) / np.sqrt(2))
    assert integrality_gap(np.zeros(d), 0, 2) == 0.0  # x_int = 0: guarded denominator
    with pytest.raises(ValueError, match="norm"):
        integrality_gap(w, 3, 5, norm="linf")


def test_mask_budget_and_its_validation():
    assert mask_budget(64) == (21, 32)
    assert mask_budget(270) == (90, 135)
    assert mask_budget(32) == (11, 16)
    assert mask_budget(3) == (1, 2)  # halves round up
    with pytest.raises(ValueError, match=r"n_min=5 > n_max=3"):
        validate_mask_budget(5, 3, 10)
    with pytest.raises(ValueError, match=r"n_max=11 > d=10"):
        validate_mask_budget(1, 11, 10)
    with pytest.raises(ValueError, match=r"n_min=-1"):
        validate_mask_budget(-1, 3, 10)
    with pytest.raises(ValueError, match="d=0"):
        mask_budget(0)
    with pytest.raises(ValueError, match=r"n_max=7 > d=6"):
        _tiny(n_min=2, n_max=7)
    with pytest.raises(ValueError, match="no integer count"):
        feasible_binary(np.zeros(4), 1.2, 1.8)


# ---------------------------------------------------------------------------------------------------------------
# mask layer and models
# ---------------------------------------------------------------------------------------------------------------


def test_apply_mask_broadcasts_over_channels_and_time():
    x = torch.randn(3, 2, 2, 4, 5)
    w = torch.rand(8)
    out = apply_mask(x, w, 2, 4)
    for b, c, i, j, t in itertools.product(range(3), range(2), range(2), range(4), range(5)):
        assert out[b, c, i, j, t] == x[b, c, i, j, t] * w[i * 4 + j]
    with pytest.raises(ValueError, match="not"):
        apply_mask(x, w, 4, 2)
    with pytest.raises(ValueError, match="entries"):
        apply_mask(x, torch.rand(7), 2, 4)


def test_make_task_mlp_layout():
    net = make_task_mlp(30, 2)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)] == [(30, 128), (128, 64),
                                                                                                (64, 2)]
    assert net(torch.randn(4, 1, 2, 3, 5)).shape == (4, 2)
    assert [type(m).__name__ for m in make_task_mlp(6, 3, ())] == ["Flatten", "Linear"]


# ---------------------------------------------------------------------------------------------------------------
# Lagrangian, cuts, duals
# ---------------------------------------------------------------------------------------------------------------


def test_lagrangian_gradients_match_finite_differences():
    tr, x, _, m = _tiny()
    g = torch.Generator().manual_seed(5)
    cuts = []
    for lam in (0.3, 0.0, 1.2):
        a, b = torch.randn(tr.d, generator=g, dtype=F64), torch.randn(tr.n_theta1, generator=g, dtype=F64)
        c = float(torch.randn(1, generator=g, dtype=F64))
        tr.cuts.add(a, b, c, lam0=lam)
        cuts.append((a, b, c))
    tr.mu = torch.tensor([0.4, 0.9], dtype=F64)
    tr.mask = torch.rand(tr.d, generator=g, dtype=F64) * 0.8 + 0.1
    w0, th1, th2 = tr.mask, _vec(tr.loc_net), _vec(tr.sen_net)
    lam0, mu0 = torch.tensor([0.3, 0.0, 1.2], dtype=F64), tr.mu.clone()
    n_min, n_max = tr.n_min, tr.n_max

    def lagrangian(w=w0, t1=th1, t2=th2, lam=lam0, mu=mu0):
        ls = F.cross_entropy(_call(tr.sen_net, t2, _masked(x, w)), m)
        cut = sum(lam[i] * (a @ w + b @ t1 + c) for i, (a, b, c) in enumerate(cuts))
        s = w.sum()
        return ls + cut + mu[0] * (n_min - s) + mu[1] * (s - n_max)

    grads = tr.lagrangian_gradients(x, m)
    eye = torch.eye(tr.d, dtype=F64)
    fd_w = torch.tensor([_fd(lambda v: lagrangian(w=v), w0, eye[j]) for j in range(tr.d)], dtype=F64)
    torch.testing.assert_close(grads["w"], fd_w, atol=1e-7, rtol=1e-6)
    for _ in range(4):
        u1 = torch.randn(th1.numel(), generator=g, dtype=F64)
        u2 = torch.randn(th2.numel(), generator=g, dtype=F64)
        assert float(grads["theta1"] @ u1) == pytest.approx(_fd(lambda v: lagrangian(t1=v), th1, u1), rel=1e-6)
        assert float(grads["theta2"] @ u2) == pytest.approx(_fd(lambda v: lagrangian(t2=v), th2, u2), rel=1e-6,
                                                            abs=1e-9)
    fd_lam = torch.tensor([_fd(lambda v: lagrangian(lam=v), lam0, torch.eye(3, dtype=F64)[i]) for i in range(3)],
                          dtype=F64)
    torch.testing.assert_close(grads["lam"], fd_lam, atol=1e-7, rtol=1e-7)
    fd_mu = torch.tensor([_fd(lambda v: lagrangian(mu=v), mu0, torch.eye(2, dtype=F64)[i]) for i in range(2)],
                         dtype=F64)
    torch.testing.assert_close(grads["mu"], fd_mu, atol=1e-7, rtol=1e-7)


def test_a_new_cut_is_the_linearisation_of_J_at_its_creation_point():
    eps = 1e-9
    tr, x, p, m = _tiny(epsilon=eps, rho_delay_steps=0)
    for _ in range(3):
        out = tr.step(x, p, m)
        assert out["J"] > eps and out["cut_added"] == 1.0
    a, b, c = tr.cuts.a[-1], tr.cuts.b[-1], float(tr.cuts.c[-1])
    w, th = tr.mask, _vec(tr.loc_net)
    l_ref = out["loss_ref"]

    def j_of(wv=w, tv=th):
        return (F.mse_loss(_call(tr.loc_net, tv, _masked(x, wv)), p) - l_ref) ** 2

    j0 = float(j_of())
    assert j0 == pytest.approx(out["J"], rel=1e-9)
    value = float(a @ w + b @ th) + c
    assert value == pytest.approx(j0 - eps, rel=1e-9, abs=1e-15)  # C_l(z^{t+1}) = J - eps > 0: violated at creation
    assert value > 0
    assert float(tr.cuts.values(w, th)[-1]) == pytest.approx(j0 - eps, rel=1e-9, abs=1e-15)
    eye = torch.eye(tr.d, dtype=F64)
    fd_a = torch.tensor([_fd(lambda v: j_of(wv=v), w, eye[j]) for j in range(tr.d)], dtype=F64)
    torch.testing.assert_close(a, fd_a, atol=1e-9 + 1e-6 * float(a.abs().max()), rtol=1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        u = torch.randn(th.numel(), generator=g, dtype=F64)
        assert float(b @ u) == pytest.approx(_fd(lambda v: j_of(tv=v), th, u), rel=1e-5, abs=1e-12)


def test_cut_pool_drop_rule_needs_two_consecutive_zero_multipliers():
    pool = CutPool(d=2, n_theta=3, max_cuts=5, dtype=F64)
    for k in range(3):
        pool.add(torch.ones(2, dtype=F64), torch.ones(3, dtype=F64), float(k), lam0=0.1)
    pool.ascend(torch.tensor([-10.0, 1.0, -10.0], dtype=F64), 1.0, 100.0)
    torch.testing.assert_close(pool.lam, torch.tensor([0.0, 1.1, 0.0], dtype=F64))
    assert pool.drop_inactive() == 0 and len(pool) == 3  # zero once: kept
    pool.ascend(torch.tensor([-1.0, -5.0, 2.0], dtype=F64), 1.0, 100.0)  # lam = [0, 0, 2]
    assert pool.drop_inactive() == 1 and pool.c.tolist() == [1.0, 2.0]
    pool.ascend(torch.tensor([-1.0, 1.0], dtype=F64), 1.0, 100.0)  # lam = [0, 3]; the first was 0 before too
    assert pool.drop_inactive() == 1 and pool.c.tolist() == [2.0]
    # lam0 = 0: a new cut survives its first ascent only if it is violated
    pool = CutPool(d=2, n_theta=3, dtype=F64)
    pool.add(torch.ones(2), torch.ones(3), 0.0, lam0=0.0)
    pool.add(torch.ones(2), torch.ones(3), 1.0, lam0=0.0)
    pool.ascend(torch.tensor([-1.0, 1.0], dtype=F64), 0.5, 100.0)
    assert pool.drop_inactive() == 1 and pool.c.tolist() == [1.0]


def test_trainer_drops_a_satisfied_cut_after_two_zero_multipliers():
    tr, x, p, m = _tiny(epsilon=1e9)  # J never exceeds eps: no new cuts
    tr.cuts.add(torch.zeros(tr.d), torch.zeros(tr.n_theta1), -10.0, lam0=0.1)  # C = -10 < 0: inactive
    tr.cuts.add(torch.zeros(tr.d), torch.zeros(tr.n_theta1), 10.0, lam0=0.1)  # C = +10: active
    first, second = tr.step(x, p, m), tr.step(x, p, m)
    assert (first["cuts_dropped"], first["n_cuts"]) == (0.0, 2.0)  # lam hit 0 once
    assert (second["cuts_dropped"], second["n_cuts"]) == (1.0, 1.0) and tr.cuts.c.tolist() == [10.0]


def test_cut_pool_fifo_cap_and_state_round_trip():
    pool = CutPool(d=2, n_theta=3, max_cuts=3)
    evicted = [pool.add(torch.full((2,), float(k)), torch.full((3,), float(k)), float(k), lam0=0.1 * k)
               for k in range(6)]
    assert evicted == [0, 0, 0, 1, 1, 1] and len(pool) == 3
    assert pool.c.tolist() == [3.0, 4.0, 5.0] and pool.a[:, 0].tolist() == [3.0, 4.0, 5.0]
    torch.testing.assert_close(pool.lam, torch.tensor([0.3, 0.4, 0.5], dtype=F64))
    state = pool.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = CutPool(d=2, n_theta=3, max_cuts=3)
    other.load_state_dict(state)
    for k in ("a", "b", "c", "lam", "lam_prev"):
        assert torch.equal(getattr(other, k), getattr(pool, k))
    with pytest.raises(ValueError, match="n_theta"):
        CutPool(d=2, n_theta=4).load_state_dict(state)
    with pytest.raises(ValueError, match="expected 3"):
        pool.add(torch.ones(2), torch.ones(4), 0.0)


def test_dual_projections_keep_the_multipliers_in_their_boxes():
    pool = CutPool(d=1, n_theta=1)
    pool.add(torch.ones(1), torch.ones(1), 0.0, lam0=0.5)
    pool.add(torch.ones(1), torch.ones(1), 0.0, lam0=0.5)
    pool.ascend(torch.tensor([1e6, -1e6], dtype=F64), 1.0, 7.0)
    assert pool.lam.tolist() == [7.0, 0.0]
    # in the trainer: huge dual steps, small boxes, a band [5, 6] that the initial mask (sum ~ 3) violates
    tr, x, p, m = _tiny(eta=50.0, eta_mu=50.0, lam_max=0.7, mu_max=0.3, epsilon=0.0, n_min=5, n_max=6)
    tr.cuts.add(torch.zeros(tr.d), torch.zeros(tr.n_theta1), 10.0)  # always violated: its multiplier hits the cap
    hit_lam = False
    for _ in range(12):
        out = tr.step(x, p, m)
        assert 0.0 <= out["mu1"] <= 0.3 and 0.0 <= out["mu2"] <= 0.3
        assert bool(((tr.cuts.lam >= 0) & (tr.cuts.lam <= 0.7)).all())
        hit_lam |= bool((tr.cuts.lam == 0.7).any())
    assert tr.mu[0] == 0.3 and hit_lam  # the caps were active


# ---------------------------------------------------------------------------------------------------------------
# the outer step: literal vs warm start, penalty mode
# ---------------------------------------------------------------------------------------------------------------


def test_literal_mode_moves_theta1_only_by_the_cut_term():
    tr, x, p, m = _tiny(profile="faithful", warm_start=False, epsilon=0.0, rho_delay_steps=0)
    th = _vec(tr.loc_net)
    tr.step(x, p, m)  # no cuts yet: theta1 does not move at all
    assert torch.equal(_vec(tr.loc_net), th) and len(tr.cuts) == 1
    for _ in range(4):
        th, b, lam, t_next = _vec(tr.loc_net), tr.cuts.b.clone(), tr.cuts.lam.clone(), tr.t + 1
        a, mu, w = tr.cuts.a.clone(), tr.mu.clone(), tr.mask.requires_grad_(True)
        (gw,) = torch.autograd.grad(F.cross_entropy(tr.sen_net(_masked(x, w)), m), [w])
        eta_t = 0.05 / math.sqrt(t_next)
        w_expected = prox_binary(torch.clamp(w.detach() - eta_t * (gw + lam @ a + mu[1] - mu[0]), 0, 1), eta_t, 1.0)
        tr.step(x, p, m)
        torch.testing.assert_close(_vec(tr.loc_net), th - eta_t * (lam @ b), atol=1e-14, rtol=0)
        # the mask step starts from the current w, not from the inner estimate (which is only a reference)
        torch.testing.assert_close(tr.mask, w_expected, atol=1e-14, rtol=0)
    # practical profile (Adam), literal, no cuts: theta1 still does not move
    tr, x, p, m = _tiny(warm_start=False, epsilon=1e9)
    th = _vec(tr.loc_net)
    for _ in range(3):
        tr.step(x, p, m)
    assert torch.equal(_vec(tr.loc_net), th) and len(tr.cuts) == 0


def test_warm_start_takes_the_inner_estimate_then_the_lagrangian_step():
    # eta = eta_w = inner_lr = 0.05, K = 3; a separate mu step
    tr, x, p, m = _tiny(profile="faithful", rho_delay_steps=0, epsilon=1e9, eta_mu=0.3)
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(tr.d, generator=g, dtype=F64), torch.randn(tr.n_theta1, generator=g, dtype=F64)
    tr.cuts.add(a, b, 0.3, lam0=0.5)
    tr.mu = torch.tensor([0.0, 0.2], dtype=F64)
    w, th1, th2 = tr.mask, _vec(tr.loc_net), _vec(tr.sen_net)
    eta = 0.05
    for _ in range(3):  # independent K-step lower-level GD on (w, theta1), same minibatch
        wv, tv = w.clone().requires_grad_(True), th1.clone().requires_grad_(True)
        gw, gt = torch.autograd.grad(F.mse_loss(_call(tr.loc_net, tv, _masked(x, wv)), p), [wv, tv])
        w, th1 = torch.clamp(w - eta * gw, 0, 1), th1 - eta * gt
    wv = w.clone().requires_grad_(True)
    tv2 = th2.clone().requires_grad_(True)
    gw, gt2 = torch.autograd.grad(F.cross_entropy(_call(tr.sen_net, tv2, _masked(x, wv)), m), [wv, tv2])
    g_lag = gw + 0.5 * a + (0.2 - 0.0)
    out = tr.step(x, p, m)
    assert out["n_cuts"] == 1.0
    torch.testing.assert_close(_vec(tr.loc_net), th1 - eta * 0.5 * b, atol=1e-13, rtol=0)
    torch.testing.assert_close(_vec(tr.sen_net), th2 - eta * gt2, atol=1e-13, rtol=0)
    torch.testing.assert_close(tr.mask, prox_binary(torch.clamp(w - eta * g_lag, 0, 1), eta, 1.0), atol=1e-13,
                               rtol=0)
    s_values = torch.stack([tr.n_min - w.sum(), w.sum() - tr.n_max])  # at the warm-started point
    torch.testing.assert_close(tr.mu, torch.clamp(torch.tensor([0.0, 0.2], dtype=F64) + 0.3 * s_values, 0, 10))
    assert tr.cuts.lam.tolist() == pytest.approx([min(max(0.5 + eta * float(a @ w + b @ th1 + 0.3), 0.0), 100.0)])


def test_penalty_mode_never_calls_the_prox(monkeypatch):
    calls = []
    real = spg_mibo.prox_binary

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(spg_mibo, "prox_binary", counting)
    tr, x, p, m = _tiny(rho_delay_steps=0)
    for _ in range(3):
        tr.step(x, p, m)
    assert len(calls) == 3  # the prox path is the one being patched

    def boom(*args, **kwargs):
        raise AssertionError("prox called in penalty mode")

    monkeypatch.setattr(spg_mibo, "prox_binary", boom)
    tr, x, p, m = _tiny(mask_update="penalty", rho_delay_steps=0)
    for _ in range(3):
        tr.step(x, p, m)
    single = SingleTaskTrainer(make_task_mlp(12, 2, (5,)).to(F64), 2, 3, "loc",
                               SPGMIBOConfig(profile="faithful", rho_delay_steps=0))
    w = single.mask
    wv = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(F.mse_loss(single.net(_masked(x, wv)), p), [wv])
    single.step(x, p)
    expected = torch.clamp(w - 0.05 * (gw + 0.05 * (1 - 2 * w)), 0, 1)  # SGD on L + lambda_p sum w (1 - w)
    torch.testing.assert_close(single.mask, expected, atol=1e-14, rtol=0)


def test_binarisation_schedule_delay_then_linear_ramp():
    tr, x, p, m = _tiny(rho=2.0, rho_delay_steps=3, rho_warmup_steps=2)
    assert [tr.step(x, p, m)["rho_t"] for _ in range(6)] == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]
    tr, x, p, m = _tiny(rho_delay_steps=2)
    assert [tr.step(x, p, m)["rho_t"] for _ in range(4)] == [0.0, 0.0, 1.0, 1.0]
    tr, x, p, m = _tiny(rho_delay_steps=0)
    assert tr.step(x, p, m)["rho_t"] == 1.0  # the paper: constant weight 1 from the first step


def test_l1_projection_and_sigmoid_options_keep_the_mask_valid():
    tr, x, p, m = _tiny(l1_projection=True, rho_delay_steps=0, eta_w=20.0)
    for _ in range(6):
        out = tr.step(x, p, m)
        assert tr.n_min - 1e-9 <= out["mask_l1"] <= tr.n_max + 1e-9
    for update in ("prox", "penalty"):
        tr, x, p, m = _tiny(mask_param="sigmoid", mask_update=update, rho_delay_steps=0, mask_init="logit_normal")
        for _ in range(4):
            tr.step(x, p, m)
            assert bool(((tr.mask > 0) & (tr.mask < 1)).all())
    tr.mask = torch.tensor([0.0, 1.0, 0.3, 0.7, 0.5, 0.2], dtype=F64)
    torch.testing.assert_close(tr.mask, torch.tensor([1e-6, 1 - 1e-6, 0.3, 0.7, 0.5, 0.2], dtype=F64))


# ---------------------------------------------------------------------------------------------------------------
# convergence proxy, state, prediction, end-to-end
# ---------------------------------------------------------------------------------------------------------------


def test_running_average_of_mask_steps_decays_on_a_convex_toy():
    """Theorem-1 proxy (digest Sec. 8): A_w(T) = mean ||w_{k+1} - w_k||^2, faithful SGD eta/sqrt(t), linear nets."""
    g = torch.Generator().manual_seed(0)
    n, n_sub, t_len = 256, 8, 2
    x = torch.randn(n, 1, 1, n_sub, t_len, generator=g)
    coef = torch.randn(n_sub * t_len, 2, generator=g)
    coef[: n_sub] = 0
    pos = x.reshape(n, -1) @ coef * 0.3
    sen = x.reshape(n, -1) @ torch.randn(n_sub * t_len, 1, generator=g) * 0.3
    torch.manual_seed(0)
    cfg = SPGMIBOConfig(profile="faithful", sensing_loss="mse", rho_delay_steps=0, inner_steps=1, batch_size=32)
    tr = SPGMIBOTrainer(make_task_mlp(n_sub * t_len, 2, ()), make_task_mlp(n_sub * t_len, 1, ()), 1, n_sub, cfg)
    steps = 3000
    avg = np.zeros((steps, 3))
    for k in range(steps):
        idx = torch.randint(0, n, (32,), generator=g)
        tr.step(x[idx], pos[idx], sen[idx])
        avg[k] = list(tr.running_averages().values())
    ts = np.unique(np.geomspace(100, steps, 20).astype(int))
    slope_w = np.polyfit(np.log(ts), np.log(avg[ts - 1, 0]), 1)[0]
    slope_u = np.polyfit(np.log(ts), np.log(avg[ts - 1, 1]), 1)[0]
    assert slope_w < -0.3, slope_w
    assert slope_u < 0 and avg[-1, 2] < avg[299, 2]


def test_state_dict_round_trip_reproduces_the_next_step_exactly():
    tr, x, p, m = _tiny(epsilon=0.0, rho_delay_steps=2, batch=16)
    for _ in range(4):
        tr.step(x, p, m)
    assert len(tr.cuts) > 0 and tr.t == 4
    state = copy.deepcopy(tr.state_dict(include_models=True))
    other, _, _, _ = _tiny(seed=9, epsilon=0.0, rho_delay_steps=2)
    other.load_state_dict(state)
    out_a, out_b = tr.step(x, p, m), other.step(x, p, m)
    assert out_a == out_b
    assert torch.equal(_vec(tr.loc_net), _vec(other.loc_net)) and torch.equal(_vec(tr.sen_net), _vec(other.sen_net))
    assert torch.equal(tr.mask, other.mask) and torch.equal(tr.mu, other.mu)
    assert torch.equal(tr.cuts.b, other.cuts.b) and torch.equal(tr.cuts.lam, other.cuts.lam)
    # without the models: load the client state into a trainer whose nets already hold the global weights
    local = tr.state_dict()
    assert "loc_net" not in local and set(local["cuts"]) == {"a", "b", "c", "lam", "lam_prev"}


def test_predict_uses_the_feasible_binary_mask_by_default():
    tr, x, _, _ = _tiny()
    tr.mask = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.2, 0.1], dtype=F64)  # 4 above 1/2, band (2, 3): top-3
    np.testing.assert_array_equal(tr.binary_mask.numpy(), [1, 1, 1, 0, 0, 0])
    loc, sen = tr.predict(x)
    xb = _masked(x, tr.binary_mask)
    torch.testing.assert_close(loc, tr.loc_net(xb))
    torch.testing.assert_close(sen, tr.sen_net(xb))
    loc_r, _ = tr.predict(x, binary=False)
    torch.testing.assert_close(loc_r, tr.loc_net(_masked(x, tr.mask)))


def test_default_config_reduces_both_losses_and_selects_the_informative_subcarriers():
    x, pos, act, informative = _toy(seed=0)
    torch.manual_seed(0)
    d_in = x[0].numel()
    tr = SPGMIBOTrainer(make_task_mlp(d_in, 2), make_task_mlp(d_in, 3), 2, 8, SPGMIBOConfig(), seed=0)
    hist = tr.fit(x, pos, act, epochs=40, shuffle_seed=0)
    assert len(hist) == 40 and hist[-1]["t"] == 320
    assert hist[-1]["loss_loc"] < 0.2 * hist[0]["loss_loc"]
    assert hist[-1]["loss_sen"] < 0.2 * hist[0]["loss_sen"]
    selected = tr.binary_mask.bool()
    base_rate = float(informative.float().mean())
    assert base_rate == 0.5 and float(informative[selected].float().mean()) >= 0.85
    assert hist[-1]["ifg"] < 0.05 and tr.n_min <= hist[-1]["mask_l1"] <= tr.n_max + 0.5
    assert {"A_w", "A_u", "A_v", "n_cuts", "ifg", "mask_l1"} <= set(hist[-1])


def test_single_task_trainer_learns_and_round_trips():
    x, pos, act, _ = _toy(n=256, seed=1)
    torch.manual_seed(1)
    d_in = x[0].numel()
    loc = SingleTaskTrainer(make_task_mlp(d_in, 2), 2, 8, "loc", seed=1)
    sen = SingleTaskTrainer(make_task_mlp(d_in, 3), 2, 8, "sen", seed=1)
    h_loc = loc.fit(x, pos, epochs=6, shuffle_seed=1)
    h_sen = sen.fit(x, act, epochs=6, shuffle_seed=1)
    assert h_loc[-1]["loss_loc"] < 0.5 * h_loc[0]["loss_loc"]
    assert h_sen[-1]["loss_sen"] < 0.5 * h_sen[0]["loss_sen"]
    assert loc.predict(x[:5]).shape == (5, 2) and sen.predict(x[:5]).shape == (5, 3)
    state = copy.deepcopy(loc.state_dict(include_models=True))
    twin = SingleTaskTrainer(make_task_mlp(d_in, 2), 2, 8, "loc", seed=5)
    twin.load_state_dict(state)
    assert loc.step(x[:32], pos[:32]) == twin.step(x[:32], pos[:32])
    with pytest.raises(ValueError, match="task"):
        SingleTaskTrainer(make_task_mlp(d_in, 2), 2, 8, "both")


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,field", [
    ({"profile": "fast"}, "profile"),
    ({"mask_update": "sgd"}, "mask_update"),
    ({"mask_param": "tanh"}, "mask_param"),
    ({"mask_init": "zeros"}, "mask_init"),
    ({"sensing_loss": "bce"}, "sensing_loss"),
    ({"prox_target": "nearest"}, "prox_target"),
    ({"eta": -0.1}, "eta"),
    ({"eta_w": -1.0}, "eta_w"),
    ({"theta_lr": float("nan")}, "theta_lr"),
    ({"rho": -1.0}, "rho"),
    ({"epsilon": -1e-4}, "epsilon"),
    ({"inner_steps": -1}, "inner_steps"),
    ({"inner_steps": 2.5}, "inner_steps"),
    ({"max_cuts": 0}, "max_cuts"),
    ({"batch_size": 0}, "batch_size"),
    ({"rho_delay_steps": -3}, "rho_delay_steps"),
    ({"n_min": 5, "n_max": 3}, "n_min"),
    ({"n_max": -2}, "n_max"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SPGMIBOConfig\.{field}") as err:
        SPGMIBOConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_config_profiles_resolve_their_steps():
    practical, faithful = SPGMIBOConfig(), SPGMIBOConfig.paper_literal()
    assert practical.eta_w_base == spg_mibo.PRACTICAL_ETA_W and practical.inner_lr_base == practical.theta_lr
    assert faithful.eta_w_base == faithful.eta == faithful.inner_lr_base == faithful.eta_mu_base == 0.05
    assert not faithful.warm_start and faithful.rho_delay_steps == 0 and faithful.rho == 1.0
    assert SPGMIBOConfig(eta_w=0.7, profile="faithful").eta_w_base == 0.7
    assert SPGMIBOConfig(n_min=3).budget(64) == (3, 32)
