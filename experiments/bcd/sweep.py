"""Validation sweep of BCD-QoS's unreported knobs (lambda, beta, eta) on the plain-numpy reference loop.

    python experiments/bcd/sweep.py results/suite-bcd/vehicular-qos/bcd-qos-s0

Takes the frozen base of a finished BCD-QoS run, caches every cell's penultimate features, fits the
global head in closed form as Theta0, and runs the reference BCD (paper mode: one gradient step per cell
on its hard cluster's head, uniform per-cluster averaging, SVT then simplex projection) for every
(lambda, beta, eta) of the digest's grid (Sec. 4.5: lambda and beta relative to the mean loss). Each
setting is scored by the validation MSE of the cells under their final cluster heads refitted in closed
form on the cluster's training data. Prints a table and the best setting.
"""

import argparse
import itertools
from pathlib import Path

import numpy as np
from analysis import head_design, load  # the sibling script: same frozen-base features

from fedsim import bcd


def cell_features(run_dir: Path):
    config, _, arrays = load(run_dir)
    fed, design = head_design(config, arrays, splits=("train", "val"))
    d = bcd.laplacian(bcd.bhattacharyya_kernel(fed.means, fed.covs))
    return config, design, d, fed.regimes


def refit(feats, targets, members, ridge=1e-6):
    g = sum(feats[i].T @ feats[i] / len(feats[i]) for i in members)
    b = sum(feats[i].T @ targets[i] / len(feats[i]) for i in members)
    return np.linalg.solve(g + ridge * np.eye(len(g)), b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    config, data, d, regimes = cell_features(Path(args.run_dir))
    (tr_f, tr_y), (va_f, va_y) = data["train"], data["val"]
    head0 = refit(tr_f, tr_y, range(12))
    mean_loss = float(np.mean(bcd.head_losses(tr_f, tr_y, head0[None])))
    a0 = bcd.initial_assignment(12, 12, config.bcd_initial_clusters, config.seed)
    rows = []
    for lam_rel, beta_rel, eta in itertools.product((0, 1e-3, 1e-2, 1e-1), (0, 0.01, 0.05, 0.1), (5.0, 20.0, 80.0)):
        lam, beta = lam_rel * mean_loss, beta_rel * mean_loss
        result = bcd.reference_bcd(tr_f, tr_y, d, np.repeat(head0[None], 12, axis=0), a0, lam, beta, eta,
                                   args.iterations, mode="paper")
        labels = bcd.hard_clusters(result.assignments[-1])
        heads = {c: refit(tr_f, tr_y, np.flatnonzero(labels == c)) for c in np.unique(labels)}
        val = float(np.mean([np.mean((va_f[i] @ heads[labels[i]] - va_y[i]) ** 2) for i in range(12)]))
        from sklearn.metrics import adjusted_rand_score

        rows.append((val, lam, beta, eta, result.num_clusters[-1], adjusted_rand_score(regimes, labels)))
        print(f"[{len(rows)}/48] lambda {lam:.4g} beta {beta:.4g} eta {eta:g}: validation MSE {val:.4f}, "
              f"{result.num_clusters[-1]} clusters", flush=True)
    rows.sort()
    local = float(np.mean([np.mean((va_f[i] @ refit(tr_f, tr_y, [i]) - va_y[i]) ** 2) for i in range(12)]))
    glob = float(np.mean([np.mean((va_f[i] @ head0 - va_y[i]) ** 2) for i in range(12)]))
    print(f"mean training loss of the global head: {mean_loss:.4f}; validation MSE: global head {glob:.4f}, "
          f"per-cell heads {local:.4f}")
    print("| validation MSE | lambda | beta | eta | clusters | ARI vs regimes |")
    print("|---|---|---|---|---|---|")
    for val, lam, beta, eta, c, score in rows[:12]:
        print(f"| {val:.4f} | {lam:.4g} | {beta:.4g} | {eta:g} | {c} | {score:.2f} |")
    print(f"best: lambda={rows[0][1]:.4g} beta={rows[0][2]:.4g} eta={rows[0][3]:g}")


if __name__ == "__main__":
    main()
