"""Pure numpy parts of BCD joint clustering + last-layer aggregation (paper 000; digest 000-bcd-qos.md).

The relaxed objective (paper eq. 7), for N cells, C_max columns, assignment
matrix A (rows on the probability simplex), per-cell losses ``L[i, c]`` of the
cluster heads, and D the graph Laplacian of the Bhattacharyya kernel between
the cells' QoS Gaussians::

    F(A, Theta) = sum_c a_c^T l_c + lam * sum_c a_c^T D a_c + beta * ||A||_*

Block 2 (the assignment step) takes ``Z = A - eta * (L + 2 lam D A)`` and then

- "paper" mode: singular-value soft thresholding with ``tau = beta * eta``
  followed by a row-wise Euclidean projection onto the simplex (Alg. 1);
- "theory" mode: the exact proximal step of ``tau ||.||_* + simplex``
  computed by the Dykstra-like proximal algorithm, for which the objective
  cannot increase with safe steps (Lemma 3).

Also here: the kernel and Laplacian, hard clusters (argmax, lowest index on
ties), the exhaustive optimal partition of the original problem by dynamic
programming over subsets (for the optimality gap), the paper's parameter count,
and a plain-numpy reference loop of the whole algorithm on linear heads over
fixed features, used to check the Flower strategy and to tune (lam, beta, eta).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def bhattacharyya_kernel(means: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficients between Gaussians (the paper's Hellinger kernel, digest Sec. 3.4).

    ``k(N_i, N_j) = det(S_i)^(1/4) det(S_j)^(1/4) / det(S)^(1/2) * exp(-(mu_i - mu_j)^T S^{-1} (mu_i - mu_j) / 8)``
    with ``S = (S_i + S_j) / 2``; symmetric, 1 on the diagonal, in (0, 1].

    Raises
    ------
    ValueError
        If a covariance is not positive definite.
    """
    means, covs = np.asarray(means, float), np.asarray(covs, float)
    try:
        np.linalg.cholesky(covs)
    except np.linalg.LinAlgError:
        bad = [i for i, c in enumerate(covs) if np.any(np.linalg.eigvalsh(c) <= 0)]
        raise ValueError(f"covariance of cell(s) {bad} is not positive definite") from None
    _, logdet = np.linalg.slogdet(covs)
    s = (covs[:, None] + covs[None, :]) / 2
    _, logdet_s = np.linalg.slogdet(s)
    diff = means[:, None, :] - means[None, :, :]
    maha = np.einsum("ijk,ijk->ij", diff, np.linalg.solve(s, diff[..., None])[..., 0])
    k = np.exp((logdet[:, None] + logdet[None, :]) / 4 - logdet_s / 2 - maha / 8)
    return (k + k.T) / 2


def laplacian(kernel: np.ndarray) -> np.ndarray:
    """Graph Laplacian ``D = diag(K 1) - K`` (positive semi-definite for a non-negative K)."""
    return np.diag(kernel.sum(1)) - kernel


def svt(z: np.ndarray, tau: float) -> np.ndarray:
    """Singular-value soft thresholding: ``U max(S - tau, 0) V^T``, the prox of ``tau ||.||_*``."""
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    return (u * np.maximum(s - tau, 0.0)) @ vt


def project_rows_to_simplex(z: np.ndarray) -> np.ndarray:
    """Euclidean projection of every row onto the probability simplex (sort-based, Duchi et al. 2008)."""
    z = np.atleast_2d(np.asarray(z, float))
    n, k = z.shape
    u = -np.sort(-z, axis=1)
    css = np.cumsum(u, axis=1) - 1
    idx = np.arange(1, k + 1)
    rho = np.count_nonzero(u - css / idx > 0, axis=1)
    theta = css[np.arange(n), rho - 1] / rho
    return np.maximum(z - theta[:, None], 0.0)


def prox_nuclear_simplex(z: np.ndarray, tau: float, iterations: int = 500, tol: float = 1e-12) -> np.ndarray:
    """``argmin_A 1/2 ||A - z||^2 + tau ||A||_*`` with every row of A on the simplex.

    The Dykstra-like proximal algorithm (Bauschke & Combettes) alternating the
    two proxes with correction terms; it converges to the prox of the sum.
    """
    x = np.asarray(z, float).copy()
    p = np.zeros_like(x)
    q = np.zeros_like(x)
    for _ in range(iterations):
        y = svt(x + p, tau)
        p = x + p - y
        x_new = project_rows_to_simplex(y + q)
        q = y + q - x_new
        if np.max(np.abs(x_new - x)) < tol:
            return x_new
        x = x_new
    return x


def nuclear_norm(a: np.ndarray) -> float:
    """Sum of singular values."""
    return float(np.linalg.svd(a, compute_uv=False).sum())


def objective(a: np.ndarray, losses: np.ndarray, d: np.ndarray, lam: float, beta: float) -> float:
    """The relaxed objective F(A, Theta) (paper eq. 7) given the heads' losses ``losses[i, c]``."""
    return float(np.sum(a * losses) + lam * np.trace(a.T @ d @ a) + beta * nuclear_norm(a))


def assignment_gradient(a: np.ndarray, losses: np.ndarray, d: np.ndarray, lam: float) -> np.ndarray:
    """``dF/dA`` of the smooth part: ``L + 2 lam D A`` (row i is what cell i needs)."""
    return losses + 2 * lam * d @ a


def block2(a: np.ndarray, losses: np.ndarray, d: np.ndarray, lam: float, beta: float, eta: float,
           mode: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """One assignment step; returns ``(Z, A_new)``.

    ``Z = A - eta (L + 2 lam D A)``; "paper": ``A_new = rows-to-simplex(SVT(Z, beta eta))``;
    "theory": the exact prox of ``beta eta ||.||_* + simplex`` at Z.
    """
    z = a - eta * assignment_gradient(a, losses, d, lam)
    return z, assignment_step(z, beta, eta, mode)


def assignment_step(z: np.ndarray, beta: float, eta: float, mode: str = "paper") -> np.ndarray:
    """The server's part of Block 2 on the stacked row updates Z (see :func:`block2`)."""
    if mode == "paper":
        return project_rows_to_simplex(svt(z, beta * eta))
    if mode == "theory":
        return prox_nuclear_simplex(z, beta * eta)
    raise ValueError(f"mode must be 'paper' or 'theory', not '{mode}'")


def hard_clusters(a: np.ndarray) -> np.ndarray:
    """Hard cluster of every row: argmax, lowest index on ties."""
    return np.argmax(a, axis=1)


def cluster_sizes(labels: np.ndarray, num_columns: int) -> np.ndarray:
    """Number of rows in each column's cluster."""
    return np.bincount(labels, minlength=num_columns)


def initial_assignment(num_cells: int, num_columns: int, initial_clusters: int, seed: int) -> np.ndarray:
    """One-hot A0 whose labels are drawn uniformly from ``initial_clusters`` random columns (digest Sec. 4.5)."""
    rng = np.random.default_rng([seed, 41])
    columns = rng.choice(num_columns, size=min(initial_clusters, num_columns), replace=False)
    labels = rng.choice(columns, size=num_cells)
    a = np.zeros((num_cells, num_columns))
    a[np.arange(num_cells), labels] = 1.0
    return a


def row_entropy(a: np.ndarray) -> np.ndarray:
    """Entropy of every row (near ``log C_max`` means a near-uniform, undecided row)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(a > 0, a * np.log(a), 0.0), axis=1)


def optimal_partition(subset_cost: Callable[[int], float], n: int) -> tuple[float, list[list[int]]]:
    """Exact minimum of ``sum over blocks S of subset_cost(S)`` over all set partitions of n items.

    Dynamic programming over bitmasks: ``best(M) = min over S in M containing M's lowest item of
    cost(S) + best(M - S)``; for n = 12, 4,095 subset costs and about 3^12 transitions.
    """
    full = (1 << n) - 1
    cost = np.array([subset_cost(s) if s else 0.0 for s in range(full + 1)])
    best = np.full(full + 1, np.inf)
    choice = np.zeros(full + 1, dtype=np.int64)
    best[0] = 0.0
    for mask in range(1, full + 1):
        low = mask & -mask
        rest = mask ^ low
        sub = rest
        while True:
            s = sub | low
            value = cost[s] + best[mask ^ s]
            if value < best[mask]:
                best[mask], choice[mask] = value, s
            if sub == 0:
                break
            sub = (sub - 1) & rest
    blocks, mask = [], full
    while mask:
        s = int(choice[mask])
        blocks.append([i for i in range(n) if s >> i & 1])
        mask ^= s
    return float(best[full]), blocks


def param_count(p: int, m: int, hidden: tuple[int, ...] = (256, 256, 128)) -> tuple[int, int]:
    """Parameters of the MLP ``p -> hidden -> m`` and of its last layer (weights and biases).

    The paper's numbers: ``param_count(30, 12) == (108172, 1548)``.
    """
    sizes = (p, *hidden, m)
    total = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    return total, (hidden[-1] + 1) * m


@dataclass
class ReferenceResult:
    """History of :func:`reference_bcd`."""

    objective: list[float] = field(default_factory=list)
    num_clusters: list[int] = field(default_factory=list)
    assignments: list[np.ndarray] = field(default_factory=list)
    heads: np.ndarray | None = None


def head_losses(features: list[np.ndarray], targets: list[np.ndarray], heads: np.ndarray) -> np.ndarray:
    """Mean squared error of every cell (rows) under every head (columns); ``heads`` is (C, q, m)."""
    return np.array([[np.mean((f @ h - y) ** 2) for h in heads] for f, y in zip(features, targets)])


def reference_bcd(features: list[np.ndarray], targets: list[np.ndarray], d: np.ndarray, heads0: np.ndarray,
                  a0: np.ndarray, lam: float, beta: float, eta: float, iterations: int,
                  mode: str = "theory") -> ReferenceResult:
    """Plain-numpy BCD on linear heads over fixed features (cell i: ``features[i] @ head ~ targets[i]``).

    Theory mode: Block 1 is one exact gradient step of F in every head,
    ``theta_c -= (1/L_c) sum_i a_ic grad l_i(theta_c)`` with ``L_c = sum_i a_ic L_i`` and
    ``L_i = 2 lambda_max(Phi_i^T Phi_i) / (n_i m)``; Block 2 is the exact prox.
    Paper mode: Block 1 is one such step per cell on its hard cluster's head,
    averaged uniformly over the cluster's cells (eq. 10); Block 2 is SVT then
    projection. ``F(A_k, Theta_k)`` is recorded after each iteration.
    """
    heads, a = heads0.astype(float).copy(), a0.astype(float).copy()
    m = targets[0].shape[1]
    lips = np.array([2 * np.linalg.eigvalsh(f.T @ f)[-1] / (len(f) * m) for f in features])
    result = ReferenceResult()
    for _ in range(iterations):
        grads = [[2 * f.T @ (f @ h - y) / (len(f) * m) for h in heads] for f, y in zip(features, targets)]
        if mode == "theory":
            for c in range(len(heads)):
                weight = a[:, c]
                lc = weight @ lips
                if lc > 0:
                    heads[c] = heads[c] - sum(w * g[c] for w, g in zip(weight, grads)) / lc
        else:
            labels = hard_clusters(a)
            for c in np.unique(labels):
                members = np.flatnonzero(labels == c)
                heads[c] = np.mean([heads[c] - grads[i][c] / lips[i] for i in members], axis=0)
        losses = head_losses(features, targets, heads)
        _, a = block2(a, losses, d, lam, beta, eta, mode)
        result.objective.append(objective(a, losses, d, lam, beta))
        result.num_clusters.append(int(np.count_nonzero(cluster_sizes(hard_clusters(a), a.shape[1]))))
        result.assignments.append(a.copy())
    result.heads = heads
    return result
