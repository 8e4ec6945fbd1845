"""Online hybrid model/data-driven learning of any-to-any (A2A) path-loss maps (paper 004), in pure numpy.

The path loss of a link between two points is ``pl = pl0 + 10 delta log10(d/d0) + s`` where the shadowing
``s = w^T f`` projects a spatial loss field (SLF) ``f in R^P`` through a window ``w in R^P``. The
model-based window is the normalised Fresnel ellipse (paper eq. 3); the hybrid learner corrects it, per
batch of links, with an RBF kernel expansion ``w_t = K_t alpha_t`` kept in l2-balls of radius ``r`` around
the model (paper Sec. III). Equation numbers, symbols and "A.." items refer to the digest
``reference/004-pathloss.md``, which corrects the paper's typos; this module follows the corrected forms:

- f-step (eq. 19, A3): one forward-backward (ISTA) iteration on the running surrogate
  ``(f^T A_bar f - 2 b^T f + c) / (2n) + lambda2/2 |f|^2 + lambda1 |f|_1`` with the step ``(1-eps)/L_g``,
  ``L_g = lambda_max(A_bar)/n + lambda2``. ``A_bar f`` is computed as ``A_prev f + W^T (W f)`` so an
  inner iteration costs O(P^2 + MP); ``lambda_max(A_prev)`` is tracked by warm-started power iterations
  (an estimate from below; the eps margin absorbs the residual and ISTA converges for any step < 2/L).
- alpha-step (eq. 21, A4, A5): one projected-gradient iteration on
  ``1/2 |s - A_f K alpha|^2 + lambda3/2 |alpha|^2`` with the step ``mu (1-eps)/L_k``,
  ``L_k = |K|_2^2 |f|^2 + lambda3`` (the paper's ``|f|^2 + lambda3`` ignores K), projected onto the
  product of balls of radius r around the centres ``a_t`` with ``K_t a_t = vec(W_model)`` (A1).
- Order (A8): the f-step comes FIRST in every inner iteration and alpha starts at the centre. The printed
  order (alpha-step first, with f = 0 at t = 1) is ``order="literal"``; it DIVERGES: with f = 0 the first
  safe alpha step is ``(1-eps)/lambda3`` and shrinks every window to ``eps`` times the model, f blows up to
  compensate and the bilinear scale ambiguity is never undone (digest Sec. 4.3). Only the order is literal:
  the f-step keeps the corrected formulas (the printed b/(2t), threshold lambda1 and L_g without 1/t are not
  reproduced). After the inner loop the statistics absorb the window of the last alpha iterate.

The kernel (A13): the paper's sigma = 1e-4 m makes ``K_t`` (MP x MP, 550 GB dense at P = 2184, M = 120)
a near 0/1 "tie" matrix. ``kernel="rbf"`` computes it exactly, up to entries below 1e-16 that are dropped,
as a sparse matrix found by a sorted sweep over Phi = [phi1, phi2]; Phi's first coordinate is constant
within a link block, so only links of (almost) equal length can interact. Exact ties (symmetric pixels,
equal link lengths) give entries 1, but some pairs are near-ties (|dPhi| ~ sigma) with intermediate values
that a rounded-key tie hash would get wrong. The ball centres ``a_t = K_t^+ vec(W_model)`` and ``|K_t|_2``
come from the small diagonal blocks of K_t (its connected components). ``kernel="identity"`` is the
sigma -> 0 limit (K = I, alpha = w), which adapts the window about ``|K|_2^2`` (~1000x) faster.

Unseen links (and seen ones, once their batch is gone) are predicted with the model window: the learned
windows are kernel expansions centred on one batch's Phi, which vanish elsewhere at sigma = 1e-4 (A14).

The window is parametrised as ``w_t = w_model + K_t (alpha_t - a_t)``, which equals ``K_t alpha_t`` because
``K_t a_t = w_model``, but keeps the model window bit-for-bit when the correction is zero: at r = 0 the
hybrid therefore coincides EXACTLY with the model-based baseline (``learn_window=False``).

Hyper-parameter defaults are the paper's synthetic (Madrid) values (digest Sec. 4.4): lambda1 = 4e-4,
lambda2 = 1e-5, lambda3 = 2.2e-4, sigma = 1e-4 m, M = 120; and the digest's fills for what the paper does
not give (A7): eps = 0.1, N = 10 inner iterations, f_1 = 0, alpha initialised at the ball centre,
mu = 1 (the full safe step; choose it with :func:`select_alpha_step`), eta = 0.1499 m.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

ETA = 0.1499
"""Wavelength [m] in the ellipse criterion of the synthetic experiment (2 GHz)."""

KERNEL_TOLERANCE = 1e-16
"""Kernel entries below this are dropped: the sparse product is exact to double precision."""

_MAX_KERNEL_PAIRS = 30_000_000


# ---------------------------------------------------------------------------------------------------------
# geometry and the model window


def link_geometry(tx_xy: np.ndarray, rx_xy: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kernel inputs of a batch of links.

    Parameters
    ----------
    tx_xy, rx_xy : ndarray, shape (M, 2)
        End points of the links in metres.
    centres : ndarray, shape (P, 2)
        Pixel centres in metres.

    Returns
    -------
    phi1 : ndarray, shape (M,)
        Link lengths ``|x_i - x_j|``.
    phi2 : ndarray, shape (M, P)
        Path lengths via each pixel centre, ``|x_p - x_i| + |x_p - x_j|``.
    """
    tx_xy, rx_xy = np.asarray(tx_xy, float), np.asarray(rx_xy, float)
    phi1 = np.hypot(*(tx_xy - rx_xy).T)
    to_tx = np.hypot(centres[None, :, 0] - tx_xy[:, None, 0], centres[None, :, 1] - tx_xy[:, None, 1])
    to_rx = np.hypot(centres[None, :, 0] - rx_xy[:, None, 0], centres[None, :, 1] - rx_xy[:, None, 1])
    return phi1, to_tx + to_rx


def ellipse_window(phi1: np.ndarray, phi2: np.ndarray, eta: float = ETA) -> np.ndarray:
    """The normalised elliptical window (paper eq. 3): ``1/sqrt(phi1)`` inside the ellipse, 0 outside.

    A pixel is inside when ``phi2 <= phi1 + eta/2``; the pixels of both end points always are.

    Parameters
    ----------
    phi1 : ndarray, shape (M,)
        Link lengths (> 0).
    phi2 : ndarray, shape (M, P)
        Path lengths via the pixel centres.
    eta : float
        Wavelength [m].

    Returns
    -------
    ndarray, shape (M, P)
        The window rows ``w_i``.
    """
    inside = phi2 <= phi1[:, None] + eta / 2
    return np.where(inside, 1.0 / np.sqrt(phi1)[:, None], 0.0)


def model_window(tx_xy: np.ndarray, rx_xy: np.ndarray, centres: np.ndarray, eta: float = ETA) -> np.ndarray:
    """Rows ``w_i in R^P`` of the elliptical model window for a batch of links, shape (M, P)."""
    return ellipse_window(*link_geometry(tx_xy, rx_xy, centres), eta=eta)


# ---------------------------------------------------------------------------------------------------------
# proximal pieces


def soft_threshold(x: np.ndarray, threshold: float) -> np.ndarray:
    """``sign(x) * max(|x| - threshold, 0)``, the prox of ``threshold * |.|_1``."""
    return np.sign(x) * np.maximum(np.abs(x) - threshold, 0.0)


def project_rows_to_balls(x: np.ndarray, radius: float, centres: np.ndarray | None = None) -> np.ndarray:
    """Project every row of ``x`` onto the l2-ball of ``radius`` around the same row of ``centres``.

    The projection onto a product of balls is the row-wise projection (paper eq. 6); a row already at its
    centre is returned unchanged.

    Parameters
    ----------
    x : ndarray, shape (M, P)
    radius : float
        r >= 0; r = 0 returns the centres.
    centres : ndarray, shape (M, P), optional
        Ball centres; zero by default.
    """
    offset = x if centres is None else x - centres
    norms = np.linalg.norm(offset, axis=1, keepdims=True)
    scale = np.minimum(1.0, radius / np.where(norms > 0, norms, 1.0))
    projected = offset * scale
    return projected if centres is None else centres + projected


# ---------------------------------------------------------------------------------------------------------
# the RBF kernel over Phi


def rbf_kernel_matrix(phi1: np.ndarray, phi2: np.ndarray, sigma: float) -> sp.csr_matrix:
    """The kernel matrix ``K_t`` of a batch over ``Phi_q = [phi1_m, phi2_{m,p}]``, ``q = m P + p``, sparse.

    ``[K]_{q,q'} = exp(-|Phi_q - Phi_q'|^2 / (2 sigma^2))``; entries below :data:`KERNEL_TOLERANCE` are
    dropped, so ``K @ v`` equals the dense product to double precision. Links are grouped by length
    (chains of lengths closer than the kernel reach); inside a group a sorted sweep over ``phi2`` finds the
    pairs within reach, so the cost is O(MP log(MP)) plus the number of interacting pairs.

    Raises
    ------
    ValueError
        If sigma is so wide that K would have more than 3e7 off-diagonal entries (use
        ``kernel="identity"`` or a smaller sigma).
    """
    num_links, num_pixels = phi2.shape
    reach = sigma * np.sqrt(2 * np.log(1 / KERNEL_TOLERANCE))
    by_length = np.argsort(phi1, kind="stable")
    group = np.empty(num_links, dtype=int)
    group[by_length] = np.concatenate([[0], np.cumsum(np.diff(phi1[by_length]) > reach)])
    offset = phi2.min()
    span = phi2.max() - offset + 2 * reach + 1.0
    key = (group[:, None] * span + (phi2 - offset)).ravel()
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    n = key.size
    stop = np.searchsorted(sorted_key, sorted_key + reach, side="right")
    counts = stop - np.arange(n) - 1
    total = int(counts.sum())
    if total > _MAX_KERNEL_PAIRS:
        raise ValueError(f"sigma={sigma:g} m couples {total} pairs of kernel centres; the sparse RBF kernel is "
                         "meant for sigma much smaller than the spacing of Phi (use kernel='identity')")
    first = np.repeat(np.arange(n), counts)
    second = first + 1 + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    qi, qj = order[first], order[second]
    delta1 = phi1[qi // num_pixels] - phi1[qj // num_pixels]
    delta2 = phi2.ravel()[qi] - phi2.ravel()[qj]
    values = np.exp(-(delta1**2 + delta2**2) / (2 * sigma**2))
    keep = values >= KERNEL_TOLERANCE
    qi, qj, values = qi[keep], qj[keep], values[keep]
    rows = np.concatenate([qi, qj, np.arange(n)])
    cols = np.concatenate([qj, qi, np.arange(n)])
    data = np.concatenate([values, values, np.ones(n)])
    return sp.csr_matrix((data, (rows, cols)), shape=(n, n))


def dense_rbf_kernel(phi1: np.ndarray, phi2: np.ndarray, sigma: float) -> np.ndarray:
    """The full MP x MP kernel matrix, for tests on tiny cases only."""
    points = np.column_stack([np.repeat(phi1, phi2.shape[1]), phi2.ravel()])
    sq = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return np.exp(-sq / (2 * sigma**2))


def kernel_centres(kernel: sp.csr_matrix, window: np.ndarray, rcond: float = 1e-10) -> tuple[np.ndarray, float]:
    """Ball centres ``a = K^+ vec(W_model)`` and the spectral norm ``|K|_2`` (digest A1, A5).

    K is block diagonal over the connected components of its sparsity graph (tie classes for a small
    sigma); every block is pseudo-inverted exactly, batched by block size.

    Parameters
    ----------
    kernel : sparse matrix, shape (MP, MP)
    window : ndarray, shape (M, P)
        The model window of the batch.
    rcond : float
        Eigenvalues below ``rcond * largest`` of a block are treated as zero (min-norm solution).

    Returns
    -------
    centres : ndarray, shape (M, P)
    norm : float
    """
    w = window.ravel()
    num_components, label = connected_components(kernel, directed=False)
    size = np.bincount(label)
    centres, norm = w.copy(), 1.0  # singletons: K_qq = 1
    if size.max() == 1:
        return centres.reshape(window.shape), norm
    # rank every non-singleton component among the components of its size, then work size by size
    components = np.flatnonzero(size > 1)
    components = components[np.argsort(size[components], kind="stable")]
    sizes, first = np.unique(size[components], return_index=True)
    rank = np.zeros(num_components, dtype=int)
    rank[components] = np.arange(components.size) - np.repeat(first, np.diff(np.append(first, components.size)))
    members = np.flatnonzero(size[label] > 1)
    members = members[np.argsort(size[label[members]], kind="stable")]
    local = np.empty_like(label)
    by_component = np.argsort(label, kind="stable")
    local[by_component] = np.arange(label.size) - (np.cumsum(size) - size)[label[by_component]]
    coo = kernel.tocoo()
    entries = np.flatnonzero(size[label[coo.row]] > 1)
    entries = entries[np.argsort(size[label[coo.row[entries]]], kind="stable")]
    member_stop = np.searchsorted(size[label[members]], sizes, side="right")
    entry_stop = np.searchsorted(size[label[coo.row[entries]]], sizes, side="right")
    member_start, entry_start = np.append(0, member_stop[:-1]), np.append(0, entry_stop[:-1])
    for block_size, m0, m1, e0, e1 in zip(sizes, member_start, member_stop, entry_start, entry_stop):
        group_members, group_entries = members[m0:m1], entries[e0:e1]
        row, col = coo.row[group_entries], coo.col[group_entries]
        count = (m1 - m0) // block_size
        index = np.empty((count, block_size), dtype=int)
        index[rank[label[group_members]], local[group_members]] = group_members
        blocks = np.zeros((count, block_size, block_size))
        blocks[rank[label[row]], local[row], local[col]] = coo.data[group_entries]
        eigenvalues, eigenvectors = np.linalg.eigh(blocks)
        norm = max(norm, float(eigenvalues.max()))
        cut = rcond * eigenvalues[:, -1:]
        inverse = np.where(eigenvalues > cut, 1.0 / np.where(eigenvalues > cut, eigenvalues, 1.0), 0.0)
        coefficients = np.einsum("kji,kj->ki", eigenvectors, w[index]) * inverse
        centres[index] = np.einsum("kij,kj->ki", eigenvectors, coefficients)
    return centres.reshape(window.shape), norm


@dataclass(frozen=True)
class BatchKernel:
    """The kernel of one batch: ``K_t`` (None for the identity), its centres ``a_t`` and ``|K_t|_2``."""

    matrix: sp.csr_matrix | None
    centres: np.ndarray
    norm: float

    @classmethod
    def build(cls, phi1: np.ndarray, phi2: np.ndarray, window: np.ndarray, kind: str, sigma: float) -> BatchKernel:
        """Build the kernel of kind ``"rbf"`` or ``"identity"`` for a batch."""
        if kind == "identity":
            return cls(None, window, 1.0)
        matrix = rbf_kernel_matrix(phi1, phi2, sigma)
        centres, norm = kernel_centres(matrix, window)
        return cls(matrix, centres, norm)

    def apply(self, coefficients: np.ndarray) -> np.ndarray:
        """``K_t`` times coefficients of shape (M, P), reshaped to (M, P)."""
        if self.matrix is None:
            return coefficients
        return (self.matrix @ coefficients.ravel()).reshape(coefficients.shape)


# ---------------------------------------------------------------------------------------------------------
# the f-step (elastic net on sufficient statistics)


def elastic_net_objective(f: np.ndarray, A_bar: np.ndarray, b: np.ndarray, n: float, lambda1: float,
                          lambda2: float, c: float = 0.0) -> float:
    """``(f^T A_bar f - 2 b^T f + c) / (2n) + lambda2/2 |f|^2 + lambda1 |f|_1`` (digest eq. 13)."""
    return float((f @ (A_bar @ f) - 2 * b @ f + c) / (2 * n) + 0.5 * lambda2 * f @ f + lambda1 * np.abs(f).sum())


def largest_eigenvalue(matrix: np.ndarray) -> float:
    """``lambda_max`` of a symmetric PSD matrix, to ~1e-10 relative (Lanczos for big matrices)."""
    if matrix.shape[0] <= 500:
        return float(np.linalg.eigvalsh(matrix)[-1])
    from scipy.sparse.linalg import eigsh

    return float(eigsh(matrix, k=1, which="LA", tol=1e-10, return_eigenvectors=False)[0])


def solve_elastic_net(A_bar: np.ndarray, b: np.ndarray, n: float, lambda1: float, lambda2: float,
                      f0: np.ndarray | None = None, iterations: int = 500, eps: float = 0.1,
                      lipschitz: float | None = None) -> np.ndarray:
    """Minimise the elastic-net surrogate given the sufficient statistics, by forward-backward (ISTA).

    This is the server step of FedStats (digest Sec. 8): the clients' ``A_bar``, ``b``, ``n`` are summed
    and the SLF is re-solved from them.

    Parameters
    ----------
    A_bar : ndarray, shape (P, P)
        ``sum W^T W`` over all measured links (symmetric PSD).
    b : ndarray, shape (P,)
        ``sum W^T s_hat``.
    n : float
        Number of time steps the statistics summarise (the paper's t, in batches of the reference size).
    lambda1, lambda2 : float
        l1 and l2 weights.
    f0 : ndarray, shape (P,), optional
        Warm start (zero by default).
    iterations : int
        ISTA iterations with the step ``(1-eps)/L_g``.
    eps : float
        Step safety margin in (0, 1).
    lipschitz : float, optional
        ``L_g`` if known; otherwise ``lambda_max(A_bar)/n + lambda2`` is computed.

    Returns
    -------
    ndarray, shape (P,)
    """
    _check_positive(n=n)
    f = np.zeros(b.shape) if f0 is None else np.array(f0, dtype=float)
    lipschitz = largest_eigenvalue(A_bar) / n + lambda2 if lipschitz is None else lipschitz
    step = (1 - eps) / lipschitz
    for _ in range(iterations):
        gradient = (A_bar @ f - b) / n + lambda2 * f
        f = soft_threshold(f - step * gradient, step * lambda1)
    return f


# ---------------------------------------------------------------------------------------------------------
# log-distance part


def log_distance_stats(d: np.ndarray, pl: np.ndarray, d0: float = 1.0) -> np.ndarray:
    """Additive statistics of the log-distance fit ``pl = pl0 + 10 delta log10(d/d0)``.

    Returns
    -------
    ndarray, shape (2, 3)
        ``[X^T X | X^T pl]`` with rows ``x = [1, 10 log10(d/d0)]``; statistics of disjoint samples add up.
    """
    d, pl = np.asarray(d, float), np.asarray(pl, float)
    if d.shape != pl.shape or (d <= 0).any() or not (np.isfinite(d).all() and np.isfinite(pl).all()):
        raise ValueError("log_distance_stats needs finite distances > 0 and path losses of the same shape")
    x = np.column_stack([np.ones_like(d), 10 * np.log10(d / d0)])
    return np.column_stack([x.T @ x, x.T @ pl])


def solve_log_distance(stats: np.ndarray) -> tuple[float, float]:
    """``(pl0, delta)`` from summed :func:`log_distance_stats` (2 x 2 normal equations).

    Raises
    ------
    ValueError
        If the distances do not determine the fit (fewer than two distinct distances).
    """
    gram, moment = stats[:, :2], stats[:, 2]
    if np.linalg.cond(gram) > 1e12:
        raise ValueError("the log-distance fit needs at least two distinct link distances")
    pl0, delta = np.linalg.solve(gram, moment)
    return float(pl0), float(delta)


# ---------------------------------------------------------------------------------------------------------
# the online learner


class OnlinePathLossLearner:
    """Online hybrid learner of the SLF and the per-batch windows (Algorithm 1 with the digest's fixes).

    Parameters
    ----------
    centres : ndarray, shape (P, 2)
        Pixel centres in metres; a point belongs to the pixel of the nearest centre.
    lambda1, lambda2, lambda3 : float
        Elastic-net l1, l2 weights on f and ridge weight on alpha (paper's synthetic values by default).
    r : float
        Radius of the balls around the model window; 0 gives the model-based baseline exactly.
    sigma : float
        RBF kernel width in metres (paper: 1e-4); ignored by ``kernel="identity"``.
    mu : float
        alpha step as a fraction of the safe maximum ``(1-eps)/L_k``, in (0, 1]; the paper never states it
        and it decides how fast the window adapts (digest Sec. 4.3). Choose it with
        :func:`select_alpha_step`.
    inner_iterations : int
        N, inner iterations per time step.
    order : {"f-first", "literal"}
        ``"f-first"`` (default) runs the f-step before the alpha-step in each inner iteration;
        ``"literal"`` is the paper's printed order, which diverges (see the module docstring).
    kernel : {"rbf", "identity"}
        Exact sparse RBF kernel, or its sigma -> 0 limit K = I.
    learn_window : bool
        False gives the model-based baseline: the window stays the ellipse and no alpha-step runs.
    eps : float
        Step safety margin in (0, 1).
    eta : float
        Wavelength of the ellipse criterion in metres.
    alpha_init : {"centre", "random"}
        alpha at the ball centre, or uniform in the ball (the paper's "random init").
    ridge_anchor : {"zero", "centre"}
        The ridge ``lambda3/2 |alpha - anchor|^2`` pulls alpha to 0 (paper) or to the ball centre.
    reference_batch_size : int
        The M the lambdas are calibrated for: a batch of M_t links counts as ``M_t / reference_batch_size``
        time steps in ``n``, so statistics of small federated batches add up to the centralised ones.
    blas_threads : int or None
        BLAS threads during :meth:`partial_fit` (None: leave the process setting). The products are
        memory-bound; on a shared 2-core box a multi-threaded OpenBLAS made a step 10x slower than one thread.
    random_state : int or None
        Seed of the random alpha initialisation.
    """

    def __init__(self, centres: np.ndarray, lambda1: float = 4e-4, lambda2: float = 1e-5, lambda3: float = 2.2e-4,
                 r: float = 0.1, sigma: float = 1e-4, mu: float = 1.0, inner_iterations: int = 10,
                 order: str = "f-first", kernel: str = "rbf", learn_window: bool = True, eps: float = 0.1,
                 eta: float = ETA, alpha_init: str = "centre", ridge_anchor: str = "zero",
                 reference_batch_size: int = 120, blas_threads: int | None = 1,
                 random_state: int | None = 0) -> None:
        centres = np.asarray(centres, dtype=float)
        if centres.ndim != 2 or centres.shape[1] != 2 or centres.shape[0] < 2 or not np.isfinite(centres).all():
            raise ValueError(f"centres must be a finite (P, 2) array with P >= 2, got shape {centres.shape}")
        _check_nonnegative(lambda1=lambda1, lambda2=lambda2, lambda3=lambda3, r=r)
        _check_positive(sigma=sigma, mu=mu, eta=eta, inner_iterations=inner_iterations,
                        reference_batch_size=reference_batch_size)
        if mu > 1:
            raise ValueError(f"mu is a fraction of the safe alpha step and must be in (0, 1], got {mu}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        _check_choice(order=(order, ("f-first", "literal")), kernel=(kernel, ("rbf", "identity")),
                      alpha_init=(alpha_init, ("centre", "random")), ridge_anchor=(ridge_anchor, ("zero", "centre")))
        self.centres = centres
        self.lambda1, self.lambda2, self.lambda3 = lambda1, lambda2, lambda3
        self.r, self.sigma, self.mu, self.eps, self.eta = r, sigma, mu, eps, eta
        self.inner_iterations, self.order, self.kernel = int(inner_iterations), order, kernel
        self.learn_window, self.alpha_init, self.ridge_anchor = learn_window, alpha_init, ridge_anchor
        self.reference_batch_size = reference_batch_size
        self.blas_threads = blas_threads
        self.random_state = random_state
        num_pixels = centres.shape[0]
        self.slf_ = np.zeros(num_pixels)
        self.A_bar_ = np.zeros((num_pixels, num_pixels))
        self.b_ = np.zeros(num_pixels)
        self.n_, self.c_, self.alpha_penalty_ = 0.0, 0.0, 0.0
        self.steps_ = 0
        self.last_window_ = np.zeros((0, num_pixels))
        self.last_kept_ = np.zeros(0, dtype=bool)
        self.last_alpha_ = self.last_ball_centres_ = np.zeros((0, num_pixels))
        self._power_vector = np.ones(num_pixels) / np.sqrt(num_pixels)
        self._lambda_max = 0.0
        self._rng = np.random.default_rng(random_state)
        self._tree = cKDTree(centres)

    # -- public API ------------------------------------------------------------------------------------

    @property
    def num_pixels(self) -> int:
        """P, the number of pixels."""
        return self.centres.shape[0]

    @property
    def slf(self) -> np.ndarray:
        """The current SLF estimate f, shape (P,)."""
        return self.slf_

    def set_slf(self, f: np.ndarray) -> None:
        """Replace the SLF estimate (e.g. by the federated server's), keeping the statistics."""
        f = np.asarray(f, dtype=float)
        if f.shape != (self.num_pixels,) or not np.isfinite(f).all():
            raise ValueError(f"the SLF must be a finite array of shape ({self.num_pixels},), got {f.shape}")
        self.slf_ = f.copy()

    def stats(self) -> dict[str, np.ndarray | float]:
        """Sufficient statistics ``A_bar = sum W^T W``, ``b = sum W^T s``, ``n`` (time steps), ``c = sum s^2``.

        They are additive over batches and learners; the surrogate's minimiser depends on the data only
        through them (see :func:`solve_elastic_net`). The arrays are copies.
        """
        return {"A_bar": self.A_bar_.copy(), "b": self.b_.copy(), "n": self.n_, "c": self.c_}

    def objective(self, include_alpha_penalty: bool = False) -> float:
        """The running surrogate cost ``h_t(f)`` at the current f (paper eq. 12, digest eq. 13); 0 before fitting.

        Parameters
        ----------
        include_alpha_penalty : bool
            Add the constant ``(1/n) sum_tau lambda3/2 |alpha_tau|^2`` so that the cost majorises the true
            empirical cost (digest Sec. 5, caveats). Off by default, so the hybrid at r = 0 and the baseline
            report the same cost.
        """
        if self.n_ == 0:
            return 0.0
        cost = elastic_net_objective(self.slf_, self.A_bar_, self.b_, self.n_, self.lambda1, self.lambda2, self.c_)
        return cost + (self.alpha_penalty_ / self.n_ if include_alpha_penalty else 0.0)

    def partial_fit(self, tx_xy: np.ndarray, rx_xy: np.ndarray, s_hat: np.ndarray) -> OnlinePathLossLearner:
        """One time step t on a batch of shadowing measurements.

        Links with a non-finite coordinate or measurement, or with both ends in the same pixel, are skipped
        with a warning. Afterwards ``last_kept_`` marks the links used, ``last_window_`` holds their learned
        window ``W_t`` (M_kept, P), and (hybrid only) ``last_alpha_`` and ``last_ball_centres_`` hold
        ``alpha_t`` and the ball centres ``a_t``.

        Parameters
        ----------
        tx_xy, rx_xy : ndarray, shape (M, 2)
            Link end points in metres.
        s_hat : ndarray, shape (M,)
            Measured shadowing.

        Raises
        ------
        ValueError
            On mismatched shapes or if no link of the batch is usable.
        """
        tx_xy, rx_xy, s_hat, kept = self._clean_batch(tx_xy, rx_xy, s_hat)
        if self.blas_threads is None:
            self._step(tx_xy, rx_xy, s_hat)
        else:
            with threadpool_limits(self.blas_threads, user_api="blas"):
                self._step(tx_xy, rx_xy, s_hat)
        self.last_kept_ = kept
        return self

    # -- one time step ---------------------------------------------------------------------------------

    def _step(self, tx_xy: np.ndarray, rx_xy: np.ndarray, s_hat: np.ndarray) -> None:
        phi1, phi2 = link_geometry(tx_xy, rx_xy, self.centres)
        window = ellipse_window(phi1, phi2, self.eta)
        n = self.n_ + s_hat.size / self.reference_batch_size
        if self.learn_window:
            kernel = BatchKernel.build(phi1, phi2, window, self.kernel, self.sigma)
            window, alpha = self._alternate(kernel, window, s_hat, n)
            self.alpha_penalty_ += 0.5 * self.lambda3 * float((alpha**2).sum())
            self.last_alpha_, self.last_ball_centres_ = alpha, kernel.centres
        else:
            gram_top = _top_gram_eigenvalue(window)
            for _ in range(self.inner_iterations):
                self.slf_ = self._f_step(window, s_hat, n, gram_top)
        self._absorb(window, s_hat, n)
        self.last_window_ = window
        self.steps_ += 1

    def predict_shadowing(self, tx_xy: np.ndarray, rx_xy: np.ndarray) -> np.ndarray:
        """Shadowing ``w_model(x_i, x_j)^T f`` of any links, shape (M,).

        Learned windows are batch-specific kernel expansions that vanish away from their centres, so unseen
        links use the model window (digest A14); the hybrid helps through a better f.

        Raises
        ------
        ValueError
            If a link has a non-finite coordinate or both ends in the same pixel.
        """
        tx_xy, rx_xy = self._check_links(tx_xy, rx_xy)
        bad = self._bad_links(tx_xy, rx_xy)
        if bad.any():
            raise ValueError(f"link {int(np.argmax(bad))} has a non-finite end or both ends in the same pixel")
        return _rowwise_dot_chunked(tx_xy, rx_xy, self.centres, self.eta, self.slf_)

    def predict_path_loss(self, tx_xy: np.ndarray, rx_xy: np.ndarray, pl0: float, delta: float,
                          d0: float = 1.0) -> np.ndarray:
        """Path loss ``pl0 + 10 delta log10(d/d0) + s`` [dB] of any links, shape (M,)."""
        shadowing = self.predict_shadowing(tx_xy, rx_xy)
        distance = np.hypot(*(np.asarray(tx_xy, float) - np.asarray(rx_xy, float)).T)
        return pl0 + 10 * delta * np.log10(distance / d0) + shadowing

    def _alternate(self, kernel: BatchKernel, model: np.ndarray, s_hat: np.ndarray,
                   n: float) -> tuple[np.ndarray, np.ndarray]:
        """Inner iterations of Algorithm 1; returns the learned window and alpha."""
        correction = self._initial_correction(model.shape)  # alpha - a
        window = model + kernel.apply(correction)
        for _ in range(self.inner_iterations):
            if self.order == "literal":
                correction = self._alpha_step(kernel, correction, window, s_hat)
                window = model + kernel.apply(correction)
            self.slf_ = self._f_step(window, s_hat, n, _top_gram_eigenvalue(window))
            if self.order == "f-first":
                correction = self._alpha_step(kernel, correction, window, s_hat)
                window = model + kernel.apply(correction)
        return window, kernel.centres + correction

    def _initial_correction(self, shape: tuple[int, int]) -> np.ndarray:
        if self.alpha_init == "centre" or self.r == 0:
            return np.zeros(shape)
        direction = self._rng.standard_normal(shape)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        radius = self.r * self._rng.random((shape[0], 1)) ** (1 / shape[1])
        return radius * direction

    def _f_step(self, window: np.ndarray, s_hat: np.ndarray, n: float, gram_top: float) -> np.ndarray:
        """One ISTA iteration on the surrogate with the current batch's window added to the statistics.

        ``L_g <= (lambda_max(A_prev) + lambda_max(W W^T)) / n + lambda2`` (Weyl), with ``gram_top`` the
        second eigenvalue, of an M x M matrix (an SVD of the M x P window would dominate the step).
        """
        f = self.slf_
        lipschitz = (self._lambda_max + gram_top) / n + self.lambda2
        step = (1 - self.eps) / lipschitz
        gradient = (self.A_bar_ @ f + window.T @ (window @ f - s_hat) - self.b_) / n + self.lambda2 * f
        return soft_threshold(f - step * gradient, step * self.lambda1)

    def _alpha_step(self, kernel: BatchKernel, correction: np.ndarray, window: np.ndarray,
                    s_hat: np.ndarray) -> np.ndarray:
        """One projected-gradient iteration on alpha, written in terms of ``correction = alpha - a``."""
        f = self.slf_
        lipschitz = kernel.norm**2 * float(f @ f) + self.lambda3
        if lipschitz == 0:
            return correction
        residual = s_hat - window @ f
        ridge = correction if self.ridge_anchor == "centre" else kernel.centres + correction
        gradient = -kernel.apply(np.outer(residual, f)) + self.lambda3 * ridge
        step = self.mu * (1 - self.eps) / lipschitz
        return project_rows_to_balls(correction - step * gradient, self.r)

    def _absorb(self, window: np.ndarray, s_hat: np.ndarray, n: float) -> None:
        """Add the batch to the sufficient statistics and refresh the lambda_max estimate."""
        self.A_bar_ += window.T @ window
        self.b_ += window.T @ s_hat
        self.c_ += float(s_hat @ s_hat)
        self.n_ = n
        vector = self._power_vector
        for _ in range(3):
            vector = self.A_bar_ @ vector
            norm = np.linalg.norm(vector)
            if norm == 0:
                return
            vector /= norm
        self._power_vector = vector
        self._lambda_max = float(vector @ (self.A_bar_ @ vector))

    # -- input checks ----------------------------------------------------------------------------------

    @staticmethod
    def _check_links(tx_xy: np.ndarray, rx_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tx_xy, rx_xy = np.atleast_2d(np.asarray(tx_xy, float)), np.atleast_2d(np.asarray(rx_xy, float))
        if tx_xy.shape != rx_xy.shape or tx_xy.shape[1:] != (2,):
            raise ValueError(f"tx_xy and rx_xy must both have shape (M, 2), got {tx_xy.shape} and {rx_xy.shape}")
        return tx_xy, rx_xy

    def _bad_links(self, tx_xy: np.ndarray, rx_xy: np.ndarray) -> np.ndarray:
        finite = np.isfinite(tx_xy).all(1) & np.isfinite(rx_xy).all(1)
        same_pixel = np.zeros(len(tx_xy), dtype=bool)
        if finite.any():
            _, pixel_tx = self._tree.query(tx_xy[finite])
            _, pixel_rx = self._tree.query(rx_xy[finite])
            same_pixel[finite] = pixel_tx == pixel_rx
        return ~finite | same_pixel

    def _clean_batch(self, tx_xy, rx_xy, s_hat) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        tx_xy, rx_xy = self._check_links(tx_xy, rx_xy)
        s_hat = np.atleast_1d(np.asarray(s_hat, float))
        if s_hat.shape != (len(tx_xy),):
            raise ValueError(f"s_hat must have shape ({len(tx_xy)},), got {s_hat.shape}")
        nan_measurement = ~np.isfinite(s_hat)
        bad_link = self._bad_links(tx_xy, rx_xy)
        kept = ~(nan_measurement | bad_link)
        if not kept.all():
            warnings.warn(f"skipping {int((~kept).sum())} of {kept.size} links: {int(nan_measurement.sum())} with "
                          f"a non-finite measurement, {int(bad_link.sum())} with a non-finite end or both ends in "
                          "the same pixel", stacklevel=3)
        if not kept.any():
            raise ValueError("no usable link in the batch (non-finite measurements or both ends in one pixel)")
        return tx_xy[kept], rx_xy[kept], s_hat[kept], kept


# ---------------------------------------------------------------------------------------------------------
# choosing the alpha step


def nmse(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Normalised squared error ``|estimate - truth|^2 / |truth|^2``."""
    truth = np.asarray(truth, float)
    return float(((np.asarray(estimate, float) - truth) ** 2).sum() / (truth**2).sum())


def select_alpha_step(batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      validation: tuple[np.ndarray, np.ndarray, np.ndarray], centres: np.ndarray,
                      candidates: Sequence[float] = (1.0, 0.3, 0.1, 0.03),
                      **learner_kwargs) -> tuple[float, dict[float, float]]:
    """Choose the alpha step ``mu`` by the held-out shadowing error (the paper tuned its lambdas by CV).

    Parameters
    ----------
    batches : sequence of (tx_xy, rx_xy, s_hat)
        The training stream, one batch per time step.
    validation : (tx_xy, rx_xy, s_hat)
        Held-out links, never used for training.
    centres : ndarray, shape (P, 2)
    candidates : sequence of float
        Values of ``mu`` to try (the digest's sweep by default).
    **learner_kwargs
        Other arguments of :class:`OnlinePathLossLearner`.

    Returns
    -------
    best : float
        The candidate with the lowest held-out NMSE of the shadowing.
    scores : dict
        Held-out NMSE per candidate.
    """
    scores = {}
    for mu in candidates:
        learner = OnlinePathLossLearner(centres, mu=mu, **learner_kwargs)
        for tx_xy, rx_xy, s_hat in batches:
            learner.partial_fit(tx_xy, rx_xy, s_hat)
        scores[mu] = nmse(learner.predict_shadowing(validation[0], validation[1]), validation[2])
    return min(scores, key=scores.get), scores


# ---------------------------------------------------------------------------------------------------------
# helpers


def _rowwise_dot_chunked(tx_xy, rx_xy, centres, eta, f, chunk: int = 1024) -> np.ndarray:
    """``model_window(links) @ f`` in chunks, so predicting many links does not hold an (M, P) array."""
    out = np.empty(len(tx_xy))
    for start in range(0, len(tx_xy), chunk):
        stop = start + chunk
        out[start:stop] = model_window(tx_xy[start:stop], rx_xy[start:stop], centres, eta) @ f
    return out


def _top_gram_eigenvalue(window: np.ndarray) -> float:
    """``lambda_max(W W^T) = lambda_max(W^T W)``."""
    return float(np.linalg.eigvalsh(window @ window.T)[-1])


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_choice(**choices: tuple[str, tuple[str, ...]]) -> None:
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
