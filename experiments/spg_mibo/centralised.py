"""SPG-MIBO's centralised experiments (paper 001, Table II/III and Figs. 6-8 analogues) on synthetic CSI, no Flower.

Run:  python experiments/spg_mibo/centralised.py -o results/spg-centralised [--seeds 0 1 2] [--epochs 10]
          [--folds 1] [--workers 2] [--parts main lambda diag synergy] [--quick]

Extension (more seeds for some parts; runs already in an earlier runs.json are reused, all are reported together):
      python experiments/spg_mibo/centralised.py -o results/spg-centralised-more \
          --reuse results/spg-centralised/runs.json --seeds 0 1 2 3 4 5 6 7 --parts main synergy \
          --synergy decomposition interf50 --only loc_only sen_only spg penalty penalty_nullsen ...

Writes ``report.md`` (the tables), ``results.json`` (compact: summaries, mean curves, masks) and ``runs.json``
(every run with its per-epoch history) and PNGs into the output folder:

- ``fig6_loss_joint_vs_single.png``: training loss per epoch, SPG-MIBO against Loc-Only / Sen-Only, one panel per
  task, plus the held-out test loss (bottom row), mean +- std over seeds x folds;
- ``fig7_spgd_vs_penalty.png``: SPG-MIBO (prox) against Penalty-MIBO (SGD-penalty) training losses and the
  integrality gap per epoch;
- ``fig8_rx1_weights.png``: the 32 relaxed weights of link 0 (RX1) after training, SPGD against SGD-penalty, the
  ground-truth interfered block shaded;
- ``diag_convergence.png``: digest Sec. 8 running averages ``A_w, A_u, A_v`` on log-log axes with a slope -1/2
  reference, cuts over time and ``||w||_1`` against ``[N_min, N_max]``, for the faithful-profile runs (E5);
- ``synergy_*.png``: the synergy investigation (equal compute, epsilon, regimes).

Protocol (digest Secs. 7, 9 A17; choices where the paper is silent are listed in ``CENTRALISED.md``): per seed
one room (``env_seed = seed``, sample seed = seed), 6000 samples, M = 32, T = 16; positions divided by the room
size (x / 4, y / 3); ``--folds 1`` (default): one 20 % hold-out, ``--folds 5``: 5-fold cross-validation (test =
one fold, 20 %); 10 % of the training part is the validation split, features are standardised with the moments of the
remaining 90 %; every method trains ``--epochs`` epochs and is scored on the test fold at the epoch with the best
validation loss of each task (localisation MSE, sensing cross-entropy), with the binary feasible mask (A22). All
methods of one (seed, fold) share the data split, the network initialisations, the mask initialisation and the
minibatch order, so their differences are paired.

Parts: ``main`` (Loc-Only, Sen-Only, SPG-MIBO, Penalty-MIBO, SPG-MIBO paper-literal: Table III, Table II, Figs.
6-8, selection precision), ``lambda`` (Penalty-MIBO with lambda_p in {0.01, 0.05, 0.1, 1} on the first seed),
``diag`` (faithful-profile runs of ``--diag-steps`` steps: paper-literal and faithful with warm start),
``synergy`` (the investigation of why joint training does or does not help; 1 fold per seed).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fedsim.data.csi import CSIRoom, feature_moments, make_csi_dataset, standardise  # noqa: E402
from fedsim.spg_mibo import SingleTaskTrainer, SPGMIBOConfig, SPGMIBOTrainer, apply_mask, make_task_mlp  # noqa: E402

N_SAMPLES = 6000
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
PAPER = {"loc_only": 0.34, "spg_loc": 0.27, "sen_only": 0.13, "spg_sen": 0.09, "ifg_spg": 0.041, "ifg_pen": 0.116}
METHODS = {
    "loc_only": "Loc-Only",
    "sen_only": "Sen-Only",
    "spg": "SPG-MIBO",
    "penalty": "Penalty-MIBO",
    "spg_literal": "SPG-MIBO (paper-literal)",
}
LAMBDAS = (0.01, 0.05, 0.1, 1.0)
STEP_KEYS = ("dw_sq", "grad_u_sq", "grad_v_sq", "n_cuts", "cut_added", "mask_l1", "ifg", "J", "loss_loc", "loss_sen",
             "soft_precision")
EPSILONS = (1e-6, 1e-4, 1e-2, 1e9)  # 1e9 stands for eps = inf (the config needs a finite value): no cut, ever


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


def _init_worker() -> None:
    torch.set_num_threads(1)


@lru_cache(maxsize=4)
def _dataset(n_samples: int, seed: int, room_items: tuple):
    """The raw data set of one seed (room ``env_seed = seed``, samples ``seed``), cached per process."""
    return make_csi_dataset(n_samples, room=CSIRoom(**dict(room_items)), env_seed=seed, seed=seed)


def split_indices(n: int, seed: int, fold: int, n_folds: int, train_size: int | None = None) -> dict[str, np.ndarray]:
    """Test / validation / fit indices of one fold.

    ``n_folds >= 2``: the test split is fold ``fold`` of a seeded permutation cut into ``n_folds`` parts;
    ``n_folds = 1``: the first 20 % of that permutation. The validation split is the first 10 % of the rest (in
    permutation order), the fit split the remainder, optionally cut to its first ``train_size`` samples.
    """
    order = np.random.default_rng([seed, 20261]).permutation(n)
    if n_folds >= 2:
        parts = np.array_split(order, n_folds)
        test, rest = parts[fold], np.concatenate([p for i, p in enumerate(parts) if i != fold])
    else:
        n_test = int(round(TEST_FRACTION * n))
        test, rest = order[:n_test], order[n_test:]
    n_val = int(round(VAL_FRACTION * len(rest)))
    fit = rest[n_val:]
    if train_size is not None:
        fit = fit[: int(train_size)]
    return {"test": test, "val": rest[:n_val], "fit": fit}


def fold_data(spec: dict) -> dict:
    """Standardised tensors of one (seed, fold) and the ground truth."""
    room = tuple(sorted(spec.get("room", {}).items()))
    ds = _dataset(spec.get("n_samples", N_SAMPLES), spec["seed"], room)
    idx = split_indices(len(ds), spec["seed"], spec["fold"], spec["n_folds"], spec.get("train_size"))
    mean, std = feature_moments(ds.features[idx["fit"]])
    size = np.array([ds.room.width, ds.room.height])
    out = {"informative": ds.informative.reshape(-1).copy(), "room_size": size, "n_pair": ds.n_pair,
           "n_sub": ds.room.n_subcarriers}
    for part, rows in idx.items():
        out[part] = (torch.from_numpy(standardise(ds.features[rows], mean, std)),
                     torch.from_numpy((ds.position[rows] / size).astype(np.float32)),
                     torch.from_numpy(ds.activity[rows].astype(np.int64)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------


def loc_metrics(pred: torch.Tensor, pos: torch.Tensor, size: np.ndarray) -> dict[str, float]:
    """MSE on normalised coordinates, mean and median Euclidean error in metres."""
    err = np.linalg.norm((pred - pos).numpy() * size, axis=1)
    return {"loc_mse": float(F.mse_loss(pred, pos)), "loc_mean_m": float(err.mean()),
            "loc_median_m": float(np.median(err))}


def sen_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, cross-entropy and the MSE of the class probabilities (Brier score / n_classes)."""
    prob = torch.softmax(logits, 1)
    onehot = F.one_hot(y, logits.shape[1]).to(prob.dtype)
    return {"sen_acc": float((logits.argmax(1) == y).float().mean()), "sen_ce": float(F.cross_entropy(logits, y)),
            "sen_mse": float(F.mse_loss(prob, onehot))}


def _seed_of(spec: dict, salt: int) -> int:
    return int(spec["seed"]) * 1000 + int(spec["fold"]) * 10 + salt


def _config(spec: dict) -> SPGMIBOConfig:
    overrides = dict(spec.get("config", {}))
    return SPGMIBOConfig.paper_literal(**overrides) if spec.get("literal") else SPGMIBOConfig(**overrides)


def _net(spec: dict, d_in: int, out: int, salt: int) -> torch.nn.Module:
    torch.manual_seed(_seed_of(spec, salt))
    return make_task_mlp(d_in, out, tuple(spec.get("hidden", (128, 64))))


def _fixed_mask(kind: str, informative: np.ndarray, spec: dict, n_max: int) -> torch.Tensor:
    if kind == "ones":
        return torch.ones(informative.size)
    if kind == "oracle":
        return torch.from_numpy(informative.astype(np.float32))
    rng = np.random.default_rng(_seed_of(spec, 7))  # "random": n_max subcarriers drawn uniformly
    w = np.zeros(informative.size, dtype=np.float32)
    w[rng.choice(informative.size, n_max, replace=False)] = 1.0
    return torch.from_numpy(w)


def run(spec: dict) -> dict:
    """Train one method on one (seed, fold) and score it every epoch on the validation and test splits.

    ``spec`` keys: ``method`` (``loc``, ``sen`` or ``joint``), ``seed``, ``fold``, ``n_folds``, ``epochs``;
    optional ``config`` (SPGMIBOConfig overrides), ``literal`` (start from :meth:`SPGMIBOConfig.paper_literal`),
    ``mask_update`` (single-task: ``penalty`` or ``prox``), ``repeat`` (steps per minibatch, single-task only),
    ``fixed_mask`` (``ones``, ``oracle`` or ``random``: the mask is set and never moves), ``null`` (joint only,
    ``loc`` or ``sen``: that task's output layer is zero and frozen, so it exerts no gradient on anything and
    the other task runs alone through the SPG-MIBO pipeline), ``n_samples``,
    ``train_size``, ``room`` (CSIRoom overrides), ``hidden``, ``record_steps`` (keep every step's diagnostics),
    ``tag`` (free label). Returns the spec, the per-epoch history, the test metrics at the best validation
    epoch of each task (``selected``) and at the last epoch (``last``), the final relaxed mask, its precision
    against the informative subcarriers and the wall time.
    """
    start = time.monotonic()
    data = fold_data(spec)
    x_fit, pos_fit, y_fit = data["fit"]
    n_pair, n_sub, size = data["n_pair"], data["n_sub"], data["room_size"]
    d_in = x_fit[0].numel()
    config = _config(spec)
    method = spec["method"]
    if method == "joint":
        nets = {"loc": _net(spec, d_in, 2, 1), "sen": _net(spec, d_in, 3, 2)}
        if spec.get("null"):  # a task that exerts no gradient: its output layer is zero and frozen
            last = nets[spec["null"]][-1]
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)
            last.requires_grad_(False)
        trainer = SPGMIBOTrainer(nets["loc"], nets["sen"], n_pair, n_sub, config, seed=_seed_of(spec, 3))
    else:
        if spec.get("fixed_mask"):  # eta_w = 0: the mask never moves; the band is the whole cube
            config = SPGMIBOConfig(**{**config.to_dict(), "eta_w": 0.0, "n_min": 0, "n_max": n_pair * n_sub})
        trainer = SingleTaskTrainer(_net(spec, d_in, 2 if method == "loc" else 3, 1 if method == "loc" else 2),
                                    n_pair, n_sub, method, config, mask_update=spec.get("mask_update", "penalty"),
                                    seed=_seed_of(spec, 3))
        if spec.get("fixed_mask"):
            trainer.mask = _fixed_mask(spec["fixed_mask"], data["informative"], spec, _config(spec).budget(
                n_pair * n_sub)[1])
    tasks = ("loc", "sen") if method == "joint" else (method,)
    informative = data["informative"]
    repeat = int(spec.get("repeat", 1))
    shuffle = torch.Generator().manual_seed(_seed_of(spec, 5))
    history, steps, probes = [], [], []
    if spec.get("grad_probe"):
        probes.append(mask_gradients(trainer, method, data, informative))
    for epoch in range(int(spec["epochs"])):
        tic = time.monotonic()
        rows = []
        for idx in torch.split(torch.randperm(len(x_fit), generator=shuffle), config.batch_size):
            for _ in range(repeat):
                if method == "joint":
                    rows.append(trainer.step(x_fit[idx], pos_fit[idx], y_fit[idx]))
                else:
                    rows.append(trainer.step(x_fit[idx], pos_fit[idx] if method == "loc" else y_fit[idx]))
                if spec.get("record_steps"):  # share of the relaxed mask's mass on informative subcarriers
                    w = trainer.mask.double().numpy()
                    rows[-1]["soft_precision"] = float(w[informative].sum() / max(w.sum(), 1e-12))
                if spec.get("grad_probe") and trainer.t in PROBE_STEPS:
                    probes.append(mask_gradients(trainer, method, data, informative))
        row = {"epoch": epoch + 1, "t": trainer.t, "seconds": time.monotonic() - tic}
        for key in ("loss_loc", "loss_sen", "J", "n_cuts", "cut_added"):
            if key in rows[0]:
                row[f"train_{key}" if key.startswith("loss") else key] = float(np.mean([r[key] for r in rows]))
        mask = trainer.mask
        binary = trainer.binary_mask.numpy() > 0.5
        row.update(ifg=rows[-1]["ifg"], mask_l1=float(mask.double().sum()), selected=int(binary.sum()),
                   precision=float(informative[binary].mean()) if binary.any() else float("nan"),
                   recall=float(binary[informative].mean()), **trainer.running_averages())
        for part in ("val", "test"):
            x, pos, y = data[part]
            out = trainer.predict(x)
            loc_out, sen_out = out if method == "joint" else (out, out)
            if "loc" in tasks:
                row.update({f"{part}_{k}": v for k, v in loc_metrics(loc_out, pos, size).items()})
            if "sen" in tasks:
                row.update({f"{part}_{k}": v for k, v in sen_metrics(sen_out, y).items()})
        history.append(row)
        if spec.get("record_steps"):
            steps += [{k: r[k] for k in STEP_KEYS if k in r} for r in rows]
    selected, last = {}, {}
    for task, key in (("loc", "val_loc_mse"), ("sen", "val_sen_ce")):
        if task not in tasks:
            continue
        best = min(history, key=lambda r: r[key])
        keys = [k for k in best if k.startswith(f"test_{task}_")]
        selected.update({k[5:]: best[k] for k in keys}, **{f"{task}_epoch": best["epoch"]})
        last.update({k[5:]: history[-1][k] for k in keys})
    result = {"spec": spec, "history": history, "selected": selected, "last": last,
              "mask": [round(float(v), 5) for v in trainer.mask], "informative": informative.tolist(),
              "budget": [trainer.n_min, trainer.n_max],
              "seconds": time.monotonic() - start}
    if steps:
        result["steps"] = steps
    if probes:
        result["grad_probe"] = probes
    return result


PROBE_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 400, 675)
PROBE_SIZE = 512


def mask_gradients(trainer, method: str, data: dict, informative: np.ndarray) -> dict[str, float]:
    """Gradient of each task's loss with respect to the (relaxed) mask on the first 512 fit samples, at the
    trainer's current point: its norm, the informative share of the half-of-the-informative-count subcarriers that
    a descent step pushes up most, and its mean over informative and over interfered subcarriers."""
    x, pos, y = (t[:PROBE_SIZE] for t in data["fit"])
    out = {"t": trainer.t}
    nets = {"loc": trainer.loc_net, "sen": trainer.sen_net} if method == "joint" else {method: trainer.net}
    for task, net in nets.items():
        w = trainer.mask.requires_grad_(True)
        logits = net(apply_mask(x, w, data["n_pair"], data["n_sub"]))
        loss = F.mse_loss(logits, pos) if task == "loc" else F.cross_entropy(logits, y)
        g = torch.autograd.grad(loss, w)[0].double().numpy()
        up = np.argsort(g, kind="stable")[: int(informative.sum()) // 2]  # pushed up most by a descent step
        out.update({f"{task}_norm": float(np.linalg.norm(g)), f"{task}_up_precision": float(informative[up].mean()),
                    f"{task}_mean_informative": float(g[informative].mean()),
                    f"{task}_mean_interfered": float(g[~informative].mean()) if (~informative).any() else 0.0})
    return out


# ---------------------------------------------------------------------------------------------------------------
# the experiment plan
# ---------------------------------------------------------------------------------------------------------------

MAIN = {
    "loc_only": {"method": "loc"},
    "sen_only": {"method": "sen"},
    "spg": {"method": "joint"},
    "penalty": {"method": "joint", "config": {"mask_update": "penalty"}},
    "spg_literal": {"method": "joint", "literal": True},
}
DIAG = {
    "literal": ("paper-literal (faithful profile, theta1 via cuts only)", {"method": "joint", "literal": True}),
    "faithful_warm": ("faithful profile with warm start", {"method": "joint", "literal": True,
                                                           "config": {"warm_start": True}}),
}
DECOMPOSITION = {
    "spg_nullsen": ("SPG-MIBO, sensing task switched off (loc alone through the joint pipeline)",
                    {"method": "joint", "null": "sen"}),
    "penalty_nullsen": ("Penalty-MIBO, sensing task switched off", {"method": "joint", "null": "sen",
                                                                     "config": {"mask_update": "penalty"}}),
    "spg_nullloc": ("SPG-MIBO, localisation task switched off (sen alone through the joint pipeline)",
                    {"method": "joint", "null": "loc"}),
    "penalty_nullsen_k1": ("Penalty-MIBO, sensing switched off, K = 1", {"method": "joint", "null": "sen",
                                                                          "config": {"mask_update": "penalty",
                                                                                     "inner_steps": 1}}),
    "spg_k1": ("SPG-MIBO with K = 1 inner step (equal loc steps to Loc-Only)",
               {"method": "joint", "config": {"inner_steps": 1}}),
    "penalty_k1": ("Penalty-MIBO with K = 1", {"method": "joint", "config": {"mask_update": "penalty",
                                                                             "inner_steps": 1}}),
    "loc_delay300": ("Loc-Only with the penalty delayed to step 300", {"method": "loc",
                                                                      "config": {"rho_delay_steps": 300}}),
    "loc_x3": ("Loc-Only with 3 steps per minibatch (equal loc steps to SPG-MIBO K = 3)",
               {"method": "loc", "repeat": 3}),
    "loc_ones": ("Loc-Only, fixed all-ones mask (no selection)", {"method": "loc", "fixed_mask": "ones"}),
    "loc_oracle": ("Loc-Only, fixed oracle mask (exactly the informative subcarriers)",
                   {"method": "loc", "fixed_mask": "oracle"}),
    "sen_ones": ("Sen-Only, fixed all-ones mask", {"method": "sen", "fixed_mask": "ones"}),
    "sen_oracle": ("Sen-Only, fixed oracle mask", {"method": "sen", "fixed_mask": "oracle"}),
}
REGIMES = {
    "interf50": ("half of each link's subcarriers interfered (informative = 32 = N_max)",
                 {"room": {"interference_fraction": 0.5}},
                 ("loc_only", "sen_only", "spg", "penalty", "spg_nullsen", "penalty_nullsen", "loc_oracle",
                  "sen_oracle")),
    "budget8": ("tight budget N_min = 4, N_max = 8 (default interference)", {"config": {"n_min": 4, "n_max": 8}},
                ("loc_only", "sen_only", "spg", "spg_feasible", "penalty", "penalty_nullsen")),
    "train500": ("500 training samples, epochs scaled to the same number of steps as the default (validation and "
                 "test unchanged)", {"train_size": 500},
                 ("loc_only", "sen_only", "spg", "penalty", "penalty_nullsen", "loc_oracle", "sen_oracle")),
}
SYNERGY_PARTS = ("decomposition", "epsilon", *REGIMES)
EXTRA = {"spg_feasible": ("SPG-MIBO with the prox towards the nearest feasible binary vector (prox_target=feasible)",
                          {"method": "joint", "config": {"prox_target": "feasible"}})}


def _variant(name: str) -> dict:
    return MAIN.get(name) or {**DECOMPOSITION, **EXTRA}[name][1]


def _merge(base: dict, extra: dict) -> dict:
    out = {**base, **extra}
    out["config"] = {**base.get("config", {}), **extra.get("config", {})}
    out["room"] = {**base.get("room", {}), **extra.get("room", {})}
    return out


def build_specs(args: argparse.Namespace) -> list[dict]:
    """Every run of the requested parts (see the module docstring)."""
    common = {"n_samples": args.samples, "epochs": args.epochs, "n_folds": args.folds, "record_steps": True}
    specs = []
    folds = range(args.folds) if args.folds >= 2 else (0,)
    first = args.seeds[0]
    need_main = "main" in args.parts or "lambda" in args.parts or (
        "synergy" in args.parts and bool({"decomposition", "epsilon"} & set(args.synergy)))
    for seed in args.seeds:
        for fold in folds:
            if need_main and ("main" in args.parts or fold == 0):
                specs += [_merge({**common, "part": "main", "name": k, "seed": seed, "fold": fold}, v)
                          for k, v in MAIN.items() if "main" in args.parts or k != "spg_literal"]
    if "lambda" in args.parts:
        specs += [_merge({**common, "part": "lambda", "name": f"lambda={lam:g}", "seed": first, "fold": 0},
                         {"method": "joint", "config": {"mask_update": "penalty", "penalty_lambda": lam}})
                  for lam in LAMBDAS if lam != SPGMIBOConfig().penalty_lambda]
    n_fit = len(split_indices(args.samples, first, 0, args.folds)["fit"])
    if "diag" in args.parts:
        epochs = math.ceil(args.diag_steps / math.ceil(n_fit / SPGMIBOConfig().batch_size))
        specs += [_merge({**common, "epochs": epochs, "part": "diag", "name": k, "seed": first, "fold": 0}, v)
                  for k, (_, v) in DIAG.items()]
    if "synergy" in args.parts:
        for seed in args.seeds:
            base = {**common, "seed": seed, "fold": 0}
            if "decomposition" in args.synergy:
                specs += [_merge({**base, "part": "decomposition", "name": k}, v)
                          for k, (_, v) in DECOMPOSITION.items()]
            if "epsilon" in args.synergy:
                specs += [_merge({**base, "part": "epsilon", "name": f"eps={eps:g}"},
                                 {"method": "joint", "config": {"epsilon": eps}})
                          for eps in EPSILONS if eps != SPGMIBOConfig().epsilon]
            for regime, (_, extra, names) in REGIMES.items():
                if regime not in args.synergy:
                    continue
                extra = dict(extra)
                if "train_size" in extra:  # as many steps as the default: epochs x fit size / train size
                    if args.quick:
                        extra["train_size"] = 300
                    extra["epochs"] = math.ceil(args.epochs * n_fit / extra["train_size"])
                specs += [_merge(_merge({**base, "part": f"regime:{regime}", "name": k}, extra), _variant(k))
                          for k in names]
    for spec in specs:
        if spec["part"] in ("main", "decomposition") or spec["part"].startswith("regime"):
            spec["grad_probe"] = spec["fold"] == 0 and spec["name"] in ("loc_only", "sen_only", "spg", "penalty")
    if args.only:
        specs = [spec for spec in specs if spec["name"] in args.only]
    return specs


def _cost(spec: dict) -> float:
    """Rough relative cost, to start the long runs first."""
    per_epoch = {"loc": 1.0, "sen": 2.0, "joint": 4.0}[spec["method"]] * spec.get("repeat", 1)
    return per_epoch * spec["epochs"] * min(1.0, (spec.get("train_size") or 4320) / 4320)


# ---------------------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------------------


def pick(results: list[dict], part: str, name: str) -> list[dict]:
    """The runs of one (part, name), sorted by (seed, fold)."""
    runs = [r for r in results if r["spec"]["part"] == part and r["spec"]["name"] == name]
    return sorted(runs, key=lambda r: (r["spec"]["seed"], r["spec"]["fold"]))


def value(run_: dict, metric: str, where: str = "selected") -> float:
    """A test metric at the selected epoch (``selected``) or the last epoch (``last``), or a last-epoch history
    field (``history``)."""
    if where == "history":
        return float(run_["history"][-1][metric])
    return float(run_[where][metric])


def seed_means(runs: list[dict], metric: str, where: str = "selected") -> dict[int, float]:
    """Mean over folds of a metric, per seed."""
    out: dict[int, list[float]] = {}
    for r in runs:
        out.setdefault(r["spec"]["seed"], []).append(value(r, metric, where))
    return {s: float(np.mean(v)) for s, v in out.items()}


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def paired(runs_a: list[dict], runs_b: list[dict], metric: str, relative: bool = False,
           where: str = "selected") -> dict:
    """Paired difference ``a - b`` (or ``(a - b) / b``) over the common (seed, fold) keys: per-seed means, then
    mean and standard error over seeds (and over all runs)."""
    b = {(r["spec"]["seed"], r["spec"]["fold"]): value(r, metric, where) for r in runs_b}
    per_run = {}
    for r in runs_a:
        key = (r["spec"]["seed"], r["spec"]["fold"])
        if key in b:
            d = value(r, metric, where) - b[key]
            per_run[key] = d / b[key] if relative else d
    per_seed: dict[int, list[float]] = {}
    for (seed, _), d in per_run.items():
        per_seed.setdefault(seed, []).append(d)
    seeds = [float(np.mean(v)) for v in per_seed.values()]
    m, s, n = mean_std(seeds) if seeds else (float("nan"), float("nan"), 0)
    runs_m, runs_s, runs_n = mean_std(per_run.values()) if per_run else (float("nan"), float("nan"), 0)
    return {"mean": m, "se": s / math.sqrt(n) if n > 1 else float("nan"), "n_seeds": n, "per_seed": seeds,
            "runs_mean": runs_m, "runs_se": runs_s / math.sqrt(runs_n) if runs_n > 1 else float("nan"),
            "n_runs": runs_n}


def verdict(d: dict, better: str) -> str:
    """``holds`` if the mean difference is in the ``better`` direction (``lower``/``higher``) by more than one SE,
    ``reversed`` if it is in the other direction by more than one SE, else ``no difference``."""
    if not np.isfinite(d["se"]):
        return "n/a (1 seed)"
    sign = -1.0 if better == "lower" else 1.0
    if sign * d["mean"] > d["se"]:
        return "holds"
    if -sign * d["mean"] > d["se"]:
        return "reversed"
    return "within 1 SE"


# ---------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------


def _curve(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and standard deviation of a history field over runs."""
    n = min(len(r["history"]) for r in runs)
    values = np.array([[r["history"][e][key] for e in range(n)] for r in runs], dtype=float)
    return np.arange(1, n + 1), values.mean(0), values.std(0)


def _band(ax, runs: list[dict], key: str, label: str, style: str) -> None:
    if not runs or key not in runs[0]["history"][0]:
        return
    x, m, s = _curve(runs, key)
    line = ax.plot(x, m, style, label=label, marker="o", ms=3)[0]
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)


def plot_fig6(results: list[dict], path: Path) -> None:
    """Training loss (top) and held-out test loss (bottom) per epoch, joint against single-task."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    rows = (("train_loss_loc", "train_loss_sen", "training loss (minibatch mean)"),
            ("test_loc_mse", "test_sen_ce", "test loss"))
    for row, (loc_key, sen_key, what) in enumerate(rows):
        for col, (task, key, single) in enumerate((("localisation (MSE, normalised)", loc_key, "loc_only"),
                                                   ("sensing (cross-entropy)", sen_key, "sen_only"))):
            ax = axes[row, col]
            _band(ax, pick(results, "main", single), key, METHODS[single], "C0--")
            _band(ax, pick(results, "main", "spg"), key, "SPG-MIBO (joint)", "C3-")
            _band(ax, pick(results, "main", "penalty"), key, "Penalty-MIBO (joint)", "C2-")
            ax.set_title(f"{task}: {what}", fontsize=9)
            ax.set_xlabel("epoch")
            if col == 0:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_fig7(results: list[dict], path: Path) -> None:
    """SPGD (prox) against SGD-penalty: both training losses and the integrality gap per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    spg, pen = pick(results, "main", "spg"), pick(results, "main", "penalty")
    for ax, key, title in ((axes[0], "train_loss_loc", "localisation training loss"),
                           (axes[1], "train_loss_sen", "sensing training loss"),
                           (axes[2], "ifg", "integrality gap (IFG, eq. 25) of the relaxed mask")):
        _band(ax, spg, key, "SPGD (SPG-MIBO)", "C3-")
        _band(ax, pen, key, "SGD-penalty (Penalty-MIBO, lambda_p = 0.05)", "C2--")
        if key == "ifg":
            for i, lam in enumerate(LAMBDAS):
                runs = pick(results, "lambda", f"lambda={lam:g}")
                if runs:
                    _band(ax, runs, key, f"penalty lambda_p = {lam:g} (seed {runs[0]['spec']['seed']})",
                          f"C{4 + i}:")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_fig8(results: list[dict], path: Path, link: int = 0) -> None:
    """The relaxed weights of one link's subcarriers after training, SPGD against SGD-penalty."""
    runs = [pick(results, "main", name)[0] for name in ("spg", "penalty") if pick(results, "main", name)]
    if not runs:
        return
    lit = pick(results, "main", "spg_literal")
    runs += lit[:1]
    informative = np.asarray(runs[0]["informative"], dtype=bool)
    m = len(informative) // 2
    fig, ax = plt.subplots(figsize=(10, 3.4))
    width = 0.8 / len(runs)
    labels = {"spg": "SPGD (SPG-MIBO)", "penalty": "SGD-penalty (Penalty-MIBO)", "spg_literal": "SPGD paper-literal"}
    for i, r in enumerate(runs):
        w = np.asarray(r["mask"])[link * m:(link + 1) * m]
        ax.bar(np.arange(m) + (i - (len(runs) - 1) / 2) * width, w, width, label=labels[r["spec"]["name"]],
               color=f"C{(3, 2, 1)[i]}")
    for j in np.flatnonzero(~informative[link * m:(link + 1) * m]):
        ax.axvspan(j - 0.5, j + 0.5, color="0.8", zorder=0)
    ax.set_xlabel(f"subcarrier of link {link} (RX1); grey = ground-truth interfered block")
    ax.set_ylabel("relaxed weight w")
    ax.set_title(f"seed {runs[0]['spec']['seed']}, fold {runs[0]['spec']['fold']}, after "
                 f"{runs[0]['spec']['epochs']} epochs", fontsize=9)
    ax.set_xlim(-0.7, m - 0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def running_averages(steps: list[dict]) -> dict[str, np.ndarray]:
    """``A_w(T), A_u(T), A_v(T)``: running means of the three stationarity proxies over steps 1..T."""
    t = np.arange(1, len(steps) + 1)
    out = {"t": t}
    for name, key in (("A_w", "dw_sq"), ("A_u", "grad_u_sq"), ("A_v", "grad_v_sq")):
        out[name] = np.cumsum([s[key] for s in steps]) / t
    return out


def loglog_slope(t: np.ndarray, a: np.ndarray, t0: int) -> float:
    """Least-squares slope of log A against log T on 50 log-spaced points of ``[t0, T]``."""
    if len(t) <= t0 + 2:
        return float("nan")
    idx = np.unique(np.geomspace(t0, len(t), 50).astype(int) - 1)
    y = np.log(np.maximum(a[idx], 1e-300))
    return float(np.polyfit(np.log(t[idx]), y, 1)[0])


def plot_diag(results: list[dict], path: Path) -> None:
    """Digest Sec. 8 diagnostics of the faithful-profile runs (E5)."""
    runs = [(k, pick(results, "diag", k)) for k in DIAG]
    runs = [(k, r[0]) for k, r in runs if r]
    if not runs:
        return
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.4 * len(runs)), squeeze=False)
    for row, (name, r) in enumerate(runs):
        ra = running_averages(r["steps"])
        t = ra["t"]
        ax = axes[row, 0]
        for i, key in enumerate(("A_w", "A_u", "A_v")):
            a = ra[key]
            if np.all(a > 0):
                ax.loglog(t, a, f"C{i}", label=f"{key} (slope {loglog_slope(t, a, 100):+.2f} over T >= 100)")
                ax.loglog(t, a[99] * np.sqrt(100 / t) if len(t) > 100 else a[0] / np.sqrt(t), f"C{i}:", lw=0.8)
        ax.set_title(f"{DIAG[name][0]}: running averages (dotted: slope -1/2)", fontsize=8)
        ax.set_xlabel("step T")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        ax = axes[row, 1]
        ax.plot(t, [s["n_cuts"] for s in r["steps"]], "C1", lw=0.8, label="cuts in the pool")
        ax.plot(t, np.cumsum([s["cut_added"] for s in r["steps"]]) / t, "C2", lw=0.8,
                label="share of steps that added a cut")
        ax.set_xlabel("step")
        ax.set_title("cutting planes", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax = axes[row, 2]
        n_min, n_max = r["budget"]
        ax.axhspan(n_min, n_max, color="C2", alpha=0.15, label=f"[N_min, N_max] = [{n_min}, {n_max}]")
        ax.plot(t, [s["mask_l1"] for s in r["steps"]], "C0", lw=0.8, label="||w||_1")
        ax.set_xlabel("step")
        ax.set_title("mask L1 norm", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mask_dynamics(results: list[dict], path: Path, first: int = 400) -> None:
    """``||w||_1`` and the informative share of the relaxed mask over the first steps (first seed)."""
    names = [("main", "loc_only"), ("main", "sen_only"), ("main", "spg"), ("main", "penalty"),
             ("decomposition", "spg_nullsen"), ("decomposition", "penalty_nullsen"),
             ("decomposition", "spg_nullloc")]
    colors = {"loc_only": "C0", "sen_only": "C1", "spg": "C3", "penalty": "C2", "spg_nullsen": "C4",
              "penalty_nullsen": "C5", "spg_nullloc": "C6"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    seed = None
    for part, name in names:
        runs = [r for r in pick(results, part, name) if r["spec"]["fold"] == 0 and "steps" in r]
        if not runs:
            continue
        seed = runs[0]["spec"]["seed"]
        steps = runs[0]["steps"][:first]
        label = METHODS.get(name) or name
        style = "--" if "null" in name else "-"
        axes[0].plot([s["mask_l1"] for s in steps], style, color=colors[name], lw=1, label=label)
        axes[1].plot([s["soft_precision"] for s in steps], style, color=colors[name], lw=1, label=label)
    delay = SPGMIBOConfig().rho_delay_steps
    for ax, title in zip(axes, ("||w||_1 (band 21..32 shaded)", "informative share sum(w * inf) / sum(w)")):
        ax.axvline(delay, color="0.5", lw=0.8, ls=":")
        ax.set_title(f"seed {seed}: {title}; dotted: G / penalty switched on", fontsize=8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].axhspan(21, 32, color="C2", alpha=0.1)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_effects(rows: list[tuple[str, dict, dict]], path: Path) -> None:
    """Relative change of the test localisation MSE and sensing cross-entropy against the single-task baselines,
    mean +- SE over seeds, per variant (``rows``: label, loc diff, sen diff)."""
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.2))
    y = np.arange(len(rows))
    for key, offset, color, label in ((1, -0.18, "C0", "localisation MSE"), (2, 0.18, "C3", "sensing cross-entropy")):
        means = [100 * r[key]["mean"] if r[key] else np.nan for r in rows]
        ses = [100 * r[key]["se"] if r[key] else np.nan for r in rows]
        ax.barh(y + offset, means, 0.34, xerr=ses, color=color, alpha=0.75, label=label)
    limit = 80.0
    for i, r in enumerate(rows):
        for key, offset in ((1, -0.18), (2, 0.18)):
            if r[key] and abs(100 * r[key]["mean"]) > limit:
                ax.text(np.sign(r[key]["mean"]) * limit * 0.98, i + offset, f"{100 * r[key]['mean']:+.0f} %",
                        fontsize=6, va="center", ha="right" if r[key]["mean"] > 0 else "left")
    ax.set_xlim(-limit, limit)
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(-20.6, color="C0", ls=":", lw=1, label="paper: loc -21 %")
    ax.axvline(-30.8, color="C3", ls=":", lw=1, label="paper: sen MSE -31 %")
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("change against the single-task baseline of the same setting [%] (negative = better)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------

LOC_COLS = (("loc_mse", "loc MSE (norm.)", 4), ("loc_mean_m", "mean err [m]", 3), ("loc_median_m", "median err [m]", 3))
SEN_COLS = (("sen_acc", "sen accuracy", 3), ("sen_ce", "sen cross-entropy", 3), ("sen_mse", "sen prob-MSE", 4))


def _fmt(stats: tuple[float, float, int], digits: int) -> str:
    m, s, n = stats
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def _cells(runs: list[dict], cols, where: str = "selected") -> list[str]:
    out = []
    for key, _, digits in cols:
        if runs and key in runs[0][where]:
            out.append(_fmt(mean_std(seed_means(runs, key, where).values()), digits))
        else:
            out.append("")
    return out


def _diff(d: dict, digits: int = 1, scale: float = 100.0, unit: str = " %") -> str:
    if not d or d["n_seeds"] == 0:
        return ""
    se = f" ± {scale * d['se']:.{digits}f}" if np.isfinite(d["se"]) else ""
    return f"{scale * d['mean']:+.{digits}f}{se}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _joint_diffs(results: list[dict], part_j: str, name_j: str, part_s: str = "main") -> dict:
    """Paired differences of a joint run against Loc-Only / Sen-Only of ``part_s``."""
    joint = pick(results, part_j, name_j)
    loc, sen = pick(results, part_s, "loc_only"), pick(results, part_s, "sen_only")
    out = {}
    if joint and "loc_mse" in joint[0]["selected"] and loc:
        out["loc_mse"] = paired(joint, loc, "loc_mse", relative=True)
        out["loc_mean_m"] = paired(joint, loc, "loc_mean_m")
    if joint and "sen_ce" in joint[0]["selected"] and sen:
        out["sen_acc"] = paired(joint, sen, "sen_acc")
        out["sen_ce"] = paired(joint, sen, "sen_ce", relative=True)
        out["sen_mse"] = paired(joint, sen, "sen_mse", relative=True)
    return out


def _diff_row(label: str, d: dict) -> list[str]:
    def cell(key, better, **kw):
        if key not in d:
            return ""
        return f"{_diff(d[key], **kw)} ({verdict(d[key], better)})"
    return [label, cell("loc_mse", "lower"), cell("loc_mean_m", "lower", digits=3, scale=1.0, unit=" m"),
            cell("sen_acc", "higher", digits=1, unit=" pts"), cell("sen_ce", "lower"), cell("sen_mse", "lower")]


DIFF_HEADER = ["joint - single-task (paired)", "loc MSE (paper -20.6 %)", "loc mean err", "sen accuracy",
               "sen CE", "sen prob-MSE (paper -30.8 %)"]


def _precision_cells(runs: list[dict]) -> list[str]:
    h = [r["history"][-1] for r in runs]
    return [_fmt(mean_std(x["precision"] for x in h), 3), _fmt(mean_std(x["recall"] for x in h), 3),
            _fmt(mean_std(x["selected"] for x in h), 1), _fmt(mean_std(x["ifg"] for x in h), 3)]


def report(results: list[dict], args: argparse.Namespace, wall: float) -> str:
    """The markdown report (tables; the figures are separate files)."""
    lines = [f"# SPG-MIBO centralised analogues (synthetic CSI), {datetime_now()}", "",
             f"Command: `python experiments/spg_mibo/centralised.py {' '.join(args.argv)}`  ",
             f"Wall time {wall / 60:.1f} min with {args.workers} worker(s) for the {len(results) - args.reused} runs "
             f"made by this command ({args.reused} taken from {[str(p) for p in args.reuse]}); sum of the run times "
             f"of all {len(results)} runs {sum(r['seconds'] for r in results) / 60:.1f} min.  ",
             f"Protocol: seeds {args.seeds} (room env_seed = seed), {args.samples} samples, "
             f"{f'{args.folds}-fold CV' if args.folds >= 2 else '20 % hold-out test split'}, 10 % of the training "
             f"part for validation, {args.epochs} epochs, test metrics at the best validation epoch of each task, "
             "binary feasible mask. ± is the standard deviation over seeds (of the per-seed fold means); paired "
             "differences are mean ± standard error over seeds, with the digest's verdict "
             "(holds = better by more than one SE).", ""]
    main_runs = {k: pick(results, "main", k) for k in MAIN}
    if main_runs["spg"]:
        base_rate = float(np.mean(main_runs["spg"][0]["informative"]))
        lines += ["## Table III analogue (test split)", ""]
        header = ["method"] + [c[1] for c in LOC_COLS + SEN_COLS] + ["paper, Simulation MSE"]
        paper = {"loc_only": "0.34", "sen_only": "0.13", "spg": "loc 0.27 / sen 0.09"}
        rows = [[f"{METHODS[k]} ({len({r['spec']['seed'] for r in v})} seeds)"] + _cells(v, LOC_COLS)
                + _cells(v, SEN_COLS) + [paper.get(k, "")] for k, v in main_runs.items() if v]
        lines += _table(header, rows)
        lines += ["", "Paired differences against the single-task baselines (same split, initialisation and minibatch "
                  "order; relative for MSE / CE):", ""]
        rows = [_diff_row(METHODS[k], _joint_diffs(results, "main", k)) for k in ("spg", "penalty", "spg_literal")
                if main_runs[k]]
        lines += _table(DIFF_HEADER, rows)
        if args.folds >= 2:
            d = _joint_diffs(results, "main", "spg")
            lines += ["", "Over all seed x fold runs (SE over runs, folds are not independent): SPG-MIBO loc MSE "
                      f"{100 * d['loc_mse']['runs_mean']:+.1f} ± {100 * d['loc_mse']['runs_se']:.1f} %, sen CE "
                      f"{100 * d['sen_ce']['runs_mean']:+.1f} ± {100 * d['sen_ce']['runs_se']:.1f} %, sen accuracy "
                      f"{100 * d['sen_acc']['runs_mean']:+.1f} ± {100 * d['sen_acc']['runs_se']:.1f} pts "
                      f"(n = {d['loc_mse']['n_runs']})."]
        lines += ["", "Last-epoch test metrics (no early stopping):", ""]
        rows = [[METHODS[k]] + _cells(v, LOC_COLS, "last") + _cells(v, SEN_COLS, "last") for k, v in main_runs.items()
                if v]
        lines += _table(["method"] + [c[1] for c in LOC_COLS + SEN_COLS], rows)

        lines += ["", "## Table II analogue: integrality gap of the relaxed mask after the last epoch", ""]
        spg_ifg = mean_std(r["history"][-1]["ifg"] for r in main_runs["spg"])
        rows = []
        for k in ("spg", "penalty", "spg_literal"):
            if not main_runs[k]:
                continue
            last = np.array([r["history"][-1]["ifg"] for r in main_runs[k]])
            rows.append([METHODS[k], _fmt(mean_std(last), 4), f"{np.median(last):.4f}",
                         f"{int((last > 0.05).sum())} / {len(last)}",
                         " / ".join(f"{np.median([r['history'][e]['ifg'] for r in main_runs[k]]):.3f}"
                                    for e in range(min(len(r["history"]) for r in main_runs[k]))),
                         {"spg": "0.041", "penalty": "0.116"}.get(k, "")])
        lines += _table(["method", "IFG (last epoch), mean ± std", "median", "runs with IFG > 0.05",
                         "IFG per epoch (median over runs)", "paper"], rows)
        pen_ifg = mean_std(r["history"][-1]["ifg"] for r in main_runs["penalty"]) if main_runs["penalty"] else None
        if pen_ifg:
            lines += ["", f"Ratio penalty / SPG at the last epoch: {pen_ifg[0] / max(spg_ifg[0], 1e-12):.2f} "
                      "(paper 2.8)."]
        sweep = [("0.05 (main)", [r for r in main_runs["penalty"] if r["spec"]["seed"] == args.seeds[0]
                                  and r["spec"]["fold"] == 0])]
        sweep += [(f"{lam:g}", pick(results, "lambda", f"lambda={lam:g}")) for lam in LAMBDAS if lam != 0.05]
        sweep = [(k, v) for k, v in sweep if v]
        if len(sweep) > 1:
            spg0 = [r for r in main_runs["spg"] if r["spec"]["seed"] == args.seeds[0] and r["spec"]["fold"] == 0]
            lines += ["", f"Penalty-MIBO lambda_p sweep (seed {args.seeds[0]}, fold 0):", ""]
            rows = []
            for label, runs in [("SPG-MIBO (prox)", spg0)] + [(f"Penalty lambda_p = {k}", v) for k, v in sweep]:
                h = runs[0]["history"]
                rows.append([label] + [f"{h[e]['ifg']:.3f}" if e < len(h) else "" for e in (0, 1, 2)]
                            + [f"{h[-1]['ifg']:.4f}", f"{runs[0]['selected'].get('loc_mean_m', float('nan')):.3f}",
                               f"{runs[0]['selected'].get('sen_acc', float('nan')):.3f}",
                               f"{h[-1]['precision']:.2f} ({h[-1]['selected']})"])
            lines += _table(["run", "IFG ep 1", "IFG ep 2", "IFG ep 3", "IFG last", "loc mean err [m]",
                             "sen accuracy", "precision (selected)"], rows)

        lines += ["", f"## Selection precision of the binary mask (base rate {base_rate:.3f} = informative share)", ""]
        rows = [[METHODS[k]] + _precision_cells(v) for k, v in main_runs.items() if v]
        lines += _table(["method", "precision", "recall", "selected", "IFG"], rows)

    diag = [(k, pick(results, "diag", k)) for k in DIAG]
    diag = [(k, v[0]) for k, v in diag if v]
    if diag:
        lines += ["", "## Sec. 8 diagnostics, faithful profile (E5)", ""]
        rows = []
        for k, r in diag:
            ra = running_averages(r["steps"])
            t = ra["t"]
            st = r["steps"]
            l1 = np.array([s["mask_l1"] for s in st])
            n_min, n_max = r["budget"]
            rows.append([DIAG[k][0], str(len(st))] + [f"{loglog_slope(t, ra[a], 100):+.2f}" for a in ("A_w", "A_u",
                                                                                                       "A_v")]
                        + [f"{np.mean([s['cut_added'] for s in st]):.2f}", f"{np.mean([s['n_cuts'] for s in st]):.1f}",
                           f"{np.mean((l1 >= n_min - 0.5) & (l1 <= n_max + 0.5)):.2f}", f"{l1[-1]:.1f}",
                           f"{st[-1]['ifg']:.3f}", f"{r['selected']['loc_mean_m']:.3f}",
                           f"{r['selected']['sen_acc']:.3f}", f"{r['history'][-1]['precision']:.2f}"])
        lines += _table(["run", "steps T", "slope A_w", "slope A_u", "slope A_v", "share of steps adding a cut",
                         "mean cuts", "share of steps with ||w||_1 in band (±0.5)", "final ||w||_1", "final IFG",
                         "loc mean err [m]", "sen accuracy", "precision"], rows)
        lines += ["", "Slopes: least squares of log A(T) on log T over T in [100, T_end]; O(1/sqrt(T)) is -0.5."]

    if any(r["spec"]["part"] in ("decomposition", "epsilon") or r["spec"]["part"].startswith("regime")
           for r in results):
        lines += synergy_report(results)
    return "\n".join(lines) + "\n"


def _variant_row(label: str, runs: list[dict], loc_ref: list[dict], sen_ref: list[dict]) -> list[str]:
    sel = runs[0]["selected"]
    loc = ("loc_mse" in sel and loc_ref and paired(runs, loc_ref, "loc_mse", relative=True)) or None
    sen = ("sen_ce" in sel and sen_ref and paired(runs, sen_ref, "sen_ce", relative=True)) or None
    acc = ("sen_acc" in sel and sen_ref and paired(runs, sen_ref, "sen_acc")) or None
    return [label, _cells(runs, LOC_COLS[:2])[0] if "loc_mse" in sel else "",
            _cells(runs, LOC_COLS[1:2])[0] if "loc_mse" in sel else "",
            f"{_diff(loc)} ({verdict(loc, 'lower')})" if loc else "",
            _cells(runs, SEN_COLS[:1])[0] if "sen_acc" in sel else "",
            f"{_diff(acc, unit=' pts')} ({verdict(acc, 'higher')})" if acc else "",
            f"{_diff(sen)} ({verdict(sen, 'lower')})" if sen else ""] + _precision_cells(runs)[:3]


VARIANT_HEADER = ["variant", "loc MSE", "loc mean err [m]", "loc MSE vs Loc-Only", "sen accuracy",
                  "sen acc vs Sen-Only", "sen CE vs Sen-Only", "precision", "recall", "selected"]


def synergy_rows(results: list[dict]) -> list[tuple[str, list[dict], list[dict], list[dict]]]:
    """(label, runs, Loc-Only reference, Sen-Only reference) of every synergy variant, fold 0 only."""
    def fold0(runs):
        return [r for r in runs if r["spec"]["fold"] == 0]
    loc_ref, sen_ref = fold0(pick(results, "main", "loc_only")), fold0(pick(results, "main", "sen_only"))
    rows = [(METHODS[k], fold0(pick(results, "main", k)), loc_ref, sen_ref) for k in ("spg", "penalty",
                                                                                      "spg_literal")]
    rows += [(f"{k}: {label}", pick(results, "decomposition", k), loc_ref, sen_ref)
             for k, (label, _) in DECOMPOSITION.items()]
    rows += [(f"SPG-MIBO eps = {'inf (1e9)' if eps > 1 else f'{eps:g}'}",
              fold0(pick(results, "main", "spg")) if eps == SPGMIBOConfig().epsilon
              else pick(results, "epsilon", f"eps={eps:g}"), loc_ref, sen_ref) for eps in EPSILONS]
    for regime, (_, _, names) in REGIMES.items():
        part = f"regime:{regime}"
        ref_l, ref_s = pick(results, part, "loc_only"), pick(results, part, "sen_only")
        rows += [(f"[{regime}] {METHODS.get(k) or k}", pick(results, part, k), ref_l, ref_s) for k in names]
    return [r for r in rows if r[1]]


def probe_report(results: list[dict]) -> list[str]:
    """Mask gradients of each task along training (fold 0, mean over seeds)."""
    lines = []
    for part, title in (("main", "default room"), ("regime:interf50", "interf50")):
        blocks = []
        for name in ("spg", "loc_only", "sen_only"):
            runs = [r for r in pick(results, part, name) if r.get("grad_probe")]
            if runs:
                blocks.append((name, runs))
        if not blocks:
            continue
        steps = [p["t"] for p in blocks[0][1][0]["grad_probe"]]
        header = ["run: gradient of", "quantity"] + [f"t={t}" for t in steps]
        rows = []
        for name, runs in blocks:
            for task in ("loc", "sen"):
                if f"{task}_norm" not in runs[0]["grad_probe"][0]:
                    continue
                n = min(len(r["grad_probe"]) for r in runs)

                def avg(fn, runs=runs, n=n):
                    return [float(np.mean([fn(r["grad_probe"][i]) for r in runs])) for i in range(n)]
                label = f"{METHODS[name]}: {'L_loc (MSE)' if task == 'loc' else 'L_sen (CE)'}"
                rows.append([label, "norm"] + [f"{v:.4f}" for v in avg(lambda q, k=task: q[f"{k}_norm"])])
                rows.append([label, "informative share of the most pushed-up half"]
                            + [f"{v:.2f}" for v in avg(lambda q, k=task: q[f"{k}_up_precision"])])
        base = np.mean(blocks[0][1][0]["informative"])
        lines += ["", f"Mask gradients along training ({title}, fold 0, mean over seeds; probe batch: the first "
                  f"{PROBE_SIZE} fit samples). 'Most pushed-up half': the informative-count / 2 subcarriers with the "
                  f"most negative gradient; its informative share is {base:.2f} for a gradient that carries no "
                  "selection information:", ""]
        lines += _table(header, rows)
    return lines


CLEAN_PAIRS = (  # (task, joint run, the same pipeline with the other task switched off, what the pair isolates)
    ("loc", "penalty", "penalty_nullsen", "Penalty-MIBO K=3 vs the same without sensing"),
    ("loc", "penalty_k1", "penalty_nullsen_k1", "Penalty-MIBO K=1 vs the same without sensing"),
    ("loc", "spg", "spg_nullsen", "SPG-MIBO vs the same without sensing (prox trap below N_min)"),
    ("sen", "penalty", "sen_only", "Penalty-MIBO vs Sen-Only (= the same pipeline without localisation)"),
    ("sen", "spg", "spg_nullloc", "SPG-MIBO vs the same without localisation"),
)


def _find(results: list[dict], part: str, name: str) -> list[dict]:
    """Runs of ``name`` in a regime part, or in the default room (main / decomposition), fold 0."""
    if part != "default":
        return pick(results, part, name)
    runs = pick(results, "main", name) or pick(results, "decomposition", name)
    return [r for r in runs if r["spec"]["fold"] == 0]


def clean_synergy(results: list[dict]) -> list[str]:
    """Joint training against the same pipeline with the other task switched off: the only difference is whether
    the other task's gradient reaches the shared mask."""
    rows = []
    for part in ["default"] + [f"regime:{k}" for k in REGIMES]:
        for task, joint, alone, label in CLEAN_PAIRS:
            a, b = _find(results, part, joint), _find(results, part, alone)
            if not a or not b:
                continue
            metrics = (("loc_mse", "lower", True), ("loc_mean_m", "lower", False)) if task == "loc" else (
                ("sen_ce", "lower", True), ("sen_acc", "higher", False))
            cells = []
            for metric, better, relative in metrics:
                d = paired(a, b, metric, relative=relative)
                unit = " %" if relative else (" m" if metric == "loc_mean_m" else " pts")
                scale = 1.0 if metric == "loc_mean_m" else 100.0
                cells.append(f"{_diff(d, digits=3 if metric == 'loc_mean_m' else 1, scale=scale, unit=unit)} "
                             f"({verdict(d, better)}, n={d['n_seeds']})")
            rows.append([part.replace("regime:", ""), label] + cells)
    if not rows:
        return []
    lines = ["", "Synergy proper: joint training against the same pipeline with the other task switched off (its "
             "output layer zero and frozen: it sends no gradient to the shared mask). Localisation rows give loc "
             "MSE / mean error, sensing rows CE / accuracy:", ""]
    return lines + _table(["setting", "pair", "MSE or CE (relative)", "metres or accuracy points"], rows)


def synergy_report(results: list[dict]) -> list[str]:
    """The synergy section of the report: every variant against the single-task baselines, the clean pairs and
    the gradient probe."""
    lines = ["", "## Synergy investigation (fold 0 of every seed; paired against the single-task baselines of the "
             "same setting)", ""]
    rows = synergy_rows(results)
    lines += _table(VARIANT_HEADER, [_variant_row(*r) for r in rows])
    lines += ["", "Regimes:", ""] + [f"- `{k}`: {label}" for k, (label, _, _) in REGIMES.items()]
    lines += clean_synergy(results)
    lines += probe_report(results)
    eps_rows = [(label, runs) for label, runs, *_ in rows if label.startswith("SPG-MIBO eps")]
    if eps_rows:
        lines += ["", "Cuts per epsilon (last epoch, mean over seeds): " + "; ".join(
            f"{label.split('= ')[1]}: {np.mean([r['history'][-1].get('n_cuts', 0) for r in runs]):.1f} cuts in the "
            f"pool, {np.mean([r['history'][-1].get('cut_added', 0) for r in runs]):.2f} added per step"
            for label, runs in eps_rows)]
    return lines


def datetime_now() -> str:
    """Local time, for the report header."""
    return time.strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------------------------------------------------------
# outputs and the command line
# ---------------------------------------------------------------------------------------------------------------

HISTORY_KEYS = ("epoch", "t", "train_loss_loc", "train_loss_sen", "test_loc_mse", "test_loc_mean_m", "test_sen_acc",
                "test_sen_ce", "val_loc_mse", "val_sen_ce", "ifg", "mask_l1", "selected", "precision", "n_cuts")


def _round(x, digits: int = 5):
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v, digits) for v in x]
    return x


def _thin(rows: list, keep: int) -> list:
    """At most ``keep`` rows, evenly spaced, always with the last."""
    if len(rows) <= keep:
        return rows
    idx = sorted(set(np.linspace(0, len(rows) - 1, keep).round().astype(int).tolist()))
    return [rows[i] for i in idx]


def compact(results: list[dict], args: argparse.Namespace, wall: float) -> dict:
    """What ``results.json`` keeps: every run's spec, selected/last metrics, a reduced history and its final mask;
    log-spaced running averages of the diagnostic runs; the first 400 steps of the mask dynamics of the first seed."""
    runs = []
    for r in results:
        spec = {k: v for k, v in r["spec"].items() if k != "record_steps" and v not in ({}, None)}
        item = {"spec": spec, "selected": r["selected"], "last": r["last"], "seconds": r["seconds"],
                "budget": r["budget"], "mask": r["mask"],
                "history": [{k: h[k] for k in HISTORY_KEYS if k in h} for h in _thin(r["history"], 12)]}
        if r["spec"]["part"] == "diag" and "steps" in r:
            ra = running_averages(r["steps"])
            idx = np.unique(np.geomspace(1, len(ra["t"]), 120).astype(int) - 1)
            item["running"] = {k: v[idx].tolist() for k, v in ra.items()}
            item["history"] = [{k: h[k] for k in HISTORY_KEYS if k in h} for h in r["history"]]
            item["steps_sampled"] = [{k: r["steps"][i][k] for k in ("n_cuts", "mask_l1", "ifg")} for i in idx]
        elif (r["spec"]["seed"] == args.seeds[0] and r["spec"]["fold"] == 0 and "steps" in r
              and r["spec"]["part"] in ("main", "decomposition")):
            item["first_steps"] = {k: [round(s[k], 4) for s in r["steps"][:300]] for k in ("mask_l1",
                                                                                           "soft_precision")}
        runs.append(item)
    informative = {}
    for r in results:
        key = f"seed={r['spec']['seed']} room={json.dumps(r['spec'].get('room', {}), sort_keys=True)}"
        informative[key] = "".join("1" if v else "0" for v in r["informative"])
    return _round({"argv": args.argv, "wall_s": wall, "paper": PAPER, "informative": informative, "runs": runs})


def effect_rows(results: list[dict]) -> list[tuple[str, dict | None, dict | None]]:
    """(label, loc MSE difference, sensing CE difference) of every synergy variant except the references."""
    out = []
    for label, runs, loc_ref, sen_ref in synergy_rows(results):
        sel = runs[0]["selected"]
        loc = paired(runs, loc_ref, "loc_mse", relative=True) if "loc_mse" in sel and loc_ref else None
        sen = paired(runs, sen_ref, "sen_ce", relative=True) if "sen_ce" in sel and sen_ref else None
        if "null" in runs[0]["spec"] and runs[0]["spec"]["null"] == "loc":
            loc = None
        if "null" in runs[0]["spec"] and runs[0]["spec"]["null"] == "sen":
            sen = None
        if runs[0]["spec"]["name"] in ("loc_only", "sen_only"):  # the references themselves
            continue
        out.append((label.split(":")[0] if ":" in label else label, loc, sen))
    return out


def _spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring); ``--quick`` shrinks the plan to a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("results/spg-centralised"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--folds", type=int, default=1, help="1: one 20 %% hold-out split; >= 2: K-fold CV")
    parser.add_argument("--samples", type=int, default=N_SAMPLES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--diag-steps", type=int, default=3000, help="steps of the faithful-profile runs (E5)")
    parser.add_argument("--parts", nargs="+", default=["main", "lambda", "diag", "synergy"],
                        choices=["main", "lambda", "diag", "synergy"])
    parser.add_argument("--synergy", nargs="+", default=list(SYNERGY_PARTS), choices=SYNERGY_PARTS,
                        help="which studies of the synergy part to run")
    parser.add_argument("--only", nargs="+", help="run only the specs with these names (e.g. loc_only spg)")
    parser.add_argument("--reuse", type=Path, nargs="+", default=[],
                        help="runs.json files of earlier runs: identical specs are taken from them, not rerun, and "
                             "everything is reported together")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1500 samples, 2 epochs, seed 0, 150 diagnostic steps")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    args.argv = raw
    if args.quick:
        args.samples, args.epochs, args.seeds, args.diag_steps = 1500, 2, [args.seeds[0]], 150
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the plan (reusing identical runs from ``--reuse``) and write runs.json, results.json, PNGs, report.md."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    specs = sorted(build_specs(args), key=_cost, reverse=True)
    old = {}
    for path in args.reuse:
        for r in json.loads(path.read_text()):
            old.setdefault(_spec_key(r["spec"]), r)
    results = [old.pop(_spec_key(spec)) for spec in specs if _spec_key(spec) in old]
    results += list(old.values())  # earlier runs outside this plan are reported too
    args.reused = reused = len(results)
    specs = [spec for spec in specs if _spec_key(spec) not in {_spec_key(r["spec"]) for r in results}]
    print(f"{len(specs)} runs on {args.workers} worker(s); {reused} taken from {args.reuse}", flush=True)
    start = time.monotonic()
    with mp.get_context("spawn").Pool(args.workers, initializer=_init_worker) as pool:
        for done, r in enumerate(pool.imap_unordered(run, specs), 1):
            results.append(r)
            s = r["spec"]
            print(f"[{done}/{len(specs)} {(time.monotonic() - start) / 60:5.1f} min] {s['part']}:{s['name']} "
                  f"seed {s['seed']} fold {s['fold']}: {r['seconds']:.0f} s "
                  + " ".join(f"{k}={v:.4g}" for k, v in r["selected"].items()), flush=True)
    wall = time.monotonic() - start
    (args.out / "runs.json").write_text(json.dumps(_round(results, 7)))
    (args.out / "results.json").write_text(json.dumps(compact(results, args, wall)))
    plot_fig6(results, args.out / "fig6_loss_joint_vs_single.png")
    plot_fig7(results, args.out / "fig7_spgd_vs_penalty.png")
    plot_fig8(results, args.out / "fig8_rx1_weights.png")
    plot_diag(results, args.out / "diag_convergence.png")
    plot_mask_dynamics(results, args.out / "synergy_mask_dynamics.png")
    plot_effects(effect_rows(results), args.out / "synergy_effects.png")
    text = report(results, args, wall)
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
