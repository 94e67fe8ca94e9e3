"""Seeded synthetic data for the numerical tests of ncanalysis.

Every generator takes an explicit ``seed`` and returns plain float64 numpy
arrays; tests convert them to float32 or dask themselves.

A *problem* is a :class:`Problem`: splits ``{"train": (X, y), "test": (Xt, yt)}``,
a classifier ``weight`` (C, d) and ``bias`` (C,), and what the tests may expect
of it (the rank of Sigma_B).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Problem",
    "random_orthonormal",
    "simplex_etf",
    "labels_from_counts",
    "etf_problem",
    "planted_collapse",
    "random_problem",
    "near_collapsed_problem",
    "low_rank_problem",
    "PROBLEMS",
    "make_problem",
]


@dataclass
class Problem:
    """Splits, classifier and expectations of one synthetic test case."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    weight: np.ndarray
    bias: np.ndarray
    expected_rank: int
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def num_features(self) -> int:
        return self.weight.shape[1]


def random_orthonormal(dim: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A (dim, k) matrix with orthonormal columns, k <= dim (Haar-like via QR)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, k)))
    return q * np.sign(np.diag(r))


def simplex_etf(num_classes: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """C unit vectors in R^dim forming a simplex ETF (rows), randomly rotated.

    Needs ``dim >= C - 1``. Pairwise cosines are -1/(C-1) and the rows sum to 0.
    """
    if dim < num_classes - 1:
        raise ValueError("a simplex ETF of C vectors needs dim >= C-1")
    rng = np.random.default_rng(seed)
    c = num_classes
    centred = np.sqrt(c / (c - 1)) * (np.eye(c) - np.ones((c, c)) / c)  # rows in R^C, in 1^perp
    # Orthonormal basis of 1^perp in R^C: last C-1 columns of a QR of [1, I].
    basis, _ = np.linalg.qr(np.column_stack([np.ones(c), np.eye(c)[:, : c - 1]]))
    basis = basis[:, 1:]  # (C, C-1), columns orthogonal to 1
    coords = centred @ basis  # (C, C-1): the ETF in R^{C-1}
    embed = random_orthonormal(dim, c - 1, rng)  # (dim, C-1)
    etf = coords @ embed.T
    return etf / np.linalg.norm(etf, axis=1, keepdims=True)


def labels_from_counts(counts, rng: np.random.Generator) -> np.ndarray:
    """Shuffled int64 labels with ``counts[c]`` samples of class c."""
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    return rng.permutation(labels)


def etf_problem(
    num_classes: int = 4,
    dim: int = 6,
    counts=None,
    *,
    scale: float = 3.0,
    weight_scale: float = 2.0,
    seed: int = 0,
) -> Problem:
    """Exact collapse: h_i = scale * m_{y_i}, W = weight_scale * M~^T / scale, b = 0.

    Zero within-class spread, simplex ETF means (mu_G = 0 with the class-mean
    global mean, whatever the counts), W proportional to M~^T.
    """
    rng = np.random.default_rng(seed)
    if counts is None:
        counts = [20] * num_classes
    etf = simplex_etf(num_classes, dim, seed=seed)
    splits = {}
    for name, cnt in (("train", counts), ("test", [max(1, n // 2) for n in counts])):
        y = labels_from_counts(cnt, rng)
        splits[name] = (scale * etf[y], y)
    return Problem(
        splits=splits,
        weight=weight_scale * etf,
        bias=np.zeros(num_classes),
        expected_rank=num_classes - 1,
        description=f"exact ETF C={num_classes} d={dim}",
        extra={"etf": etf},
    )


def planted_collapse(
    num_classes: int,
    dim: int,
    n_per_class: int,
    *,
    rho: float = 1.0,
    sigma: float = 0.1,
    whiten: bool = False,
    etf: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h = rho * m_y + sigma * z with m a unit simplex ETF, balanced classes.

    With ``whiten=True`` the noise of every class is made exactly zero-mean with
    exactly identity population covariance (needs ``n_per_class > dim``), so that
    mu_c = rho m_c and Sigma_W = sigma^2 I hold to round-off and
    nc1 = sigma^2 (C-1)^2 / (rho^2 C) exactly.

    ``etf`` (C, dim) gives the unit simplex ETF to use (e.g. the same for a train
    and a test split); by default one is drawn from ``seed + 1``.

    Returns
    -------
    features : (C * n_per_class, dim)
    labels : (C * n_per_class,)
    etf : (C, dim) the unit simplex ETF m.
    """
    rng = np.random.default_rng(seed)
    if etf is None:
        etf = simplex_etf(num_classes, dim, seed=seed + 1)
    labels = labels_from_counts([n_per_class] * num_classes, rng)
    noise = rng.standard_normal((labels.size, dim))
    if whiten:
        if n_per_class <= dim:
            raise ValueError("whitening needs n_per_class > dim")
        for c in range(num_classes):
            z = noise[labels == c]
            z = z - z.mean(axis=0)
            cov = z.T @ z / z.shape[0]
            chol = np.linalg.cholesky(cov)
            noise[labels == c] = np.linalg.solve(chol, z.T).T
    features = rho * etf[labels] + sigma * noise
    return features, labels, etf


def random_problem(
    num_classes: int,
    dim: int,
    train_counts,
    test_counts,
    *,
    spread: float = 1.0,
    offset: float = 0.0,
    seed: int = 0,
) -> Problem:
    """Gaussian classes around random means, random W and b.

    Means ~ N(0, I), within-class noise ~ spread * N(0, I) with an anisotropic
    scale per feature, a common offset vector of norm ``offset``; W is a noisy
    multiple of the centred means (so that accuracy is neither 0 nor 1), b random.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((num_classes, dim))
    common = rng.standard_normal(dim)
    common *= offset / np.linalg.norm(common)
    feature_scale = rng.uniform(0.5, 1.5, size=dim)

    def draw(counts):
        y = labels_from_counts(counts, rng)
        x = common + means[y] + spread * feature_scale * rng.standard_normal((y.size, dim))
        return x, y

    splits = {"train": draw(train_counts), "test": draw(test_counts)}
    centred = means - means.mean(axis=0)
    weight = 1.5 * centred + 0.7 * rng.standard_normal((num_classes, dim))
    bias = 0.5 * rng.standard_normal(num_classes) - weight @ common
    return Problem(
        splits=splits,
        weight=weight,
        bias=bias,
        expected_rank=min(num_classes - 1, dim),
        description=f"random C={num_classes} d={dim}",
    )


def near_collapsed_problem(
    num_classes: int = 6,
    dim: int = 10,
    n_per_class: int = 60,
    *,
    relative_spread: float = 1e-4,
    offset: float = 5.0,
    seed: int = 0,
) -> Problem:
    """Late-training-like data: within-class spread ``relative_spread`` of the mean norm.

    Class means = offset vector (norm ``offset``, positive entries as after a
    ReLU) + random directions of norm about 1 (not an ETF, so the NC2/NC3
    metrics are not ~0). Every sample's residual h_i - mu_c has norm about
    ``relative_spread * ||mu_c||``. W is close to, not equal to, M~^T, so the
    logit margins are a few units.
    """
    rng = np.random.default_rng(seed)
    common = np.abs(rng.standard_normal(dim))
    common *= offset / np.linalg.norm(common)
    directions = rng.standard_normal((num_classes, dim)) / np.sqrt(dim)
    means = common + directions
    mean_norm = float(np.mean(np.linalg.norm(means, axis=1)))
    noise_scale = relative_spread * mean_norm / np.sqrt(dim)

    def draw(counts, factor):
        y = labels_from_counts(counts, rng)
        x = means[y] + factor * noise_scale * rng.standard_normal((y.size, dim))
        return x, y

    splits = {
        "train": draw([n_per_class] * num_classes, 1.0),
        "test": draw([max(2, n_per_class // 2)] * num_classes, 2.0),
    }
    centred = means - means.mean(axis=0)
    weight = 4.0 * centred + 0.3 * rng.standard_normal((num_classes, dim))
    bias = -weight @ common + 0.1 * rng.standard_normal(num_classes)
    return Problem(
        splits=splits,
        weight=weight,
        bias=bias,
        expected_rank=min(num_classes - 1, dim),
        description=f"near-collapsed spread {relative_spread:g} C={num_classes} d={dim}",
    )


def low_rank_problem(
    num_classes: int = 6,
    dim: int = 10,
    rank: int = 3,
    *,
    leak: float = 0.0,
    n_per_class: int = 50,
    seed: int = 0,
) -> Problem:
    """Class means in a ``rank``-dimensional subspace, plus a ``leak`` outside it.

    Sigma_B has ``rank`` eigenvalues of order 1 and, when ``leak > 0``, further
    eigenvalues of order ``leak**2``: far below ``pinv_rtol * max`` for
    ``leak = 1e-6`` (dropped: relative 1e-12 < 1e-10), above it for
    ``leak = 1e-3`` (kept: relative 1e-6). ``expected_rank`` assumes the default
    tolerance 1e-10.
    """
    rng = np.random.default_rng(seed)
    basis = random_orthonormal(dim, rank, rng)
    coefficients = rng.standard_normal((num_classes, rank))
    means = coefficients @ basis.T
    means += leak * rng.standard_normal((num_classes, dim))

    def draw(counts):
        # Noise made exactly zero-mean within each class, so that the sample class
        # means are the planted low-rank means (to round-off).
        y = labels_from_counts(counts, rng)
        noise = 0.3 * rng.standard_normal((y.size, dim))
        for c in range(num_classes):
            noise[y == c] -= noise[y == c].mean(axis=0)
        return means[y] + noise, y

    splits = {"train": draw([n_per_class] * num_classes), "test": draw([n_per_class // 2] * num_classes)}
    weight = 2.0 * (means - means.mean(axis=0)) + 0.5 * rng.standard_normal((num_classes, dim))
    bias = 0.2 * rng.standard_normal(num_classes)
    if leak == 0.0 or leak**2 < 1e-10:
        expected = rank
    else:
        expected = min(num_classes - 1, dim)
    return Problem(
        splits=splits,
        weight=weight,
        bias=bias,
        expected_rank=expected,
        description=f"means of rank {rank} + leak {leak:g}",
    )


def _imbalanced_counts(num_classes: int, seed: int, low: int = 3, high: int = 150) -> list[int]:
    rng = np.random.default_rng(seed + 1000)
    return [int(n) for n in np.geomspace(high, low, num_classes).round().astype(int)[rng.permutation(num_classes)]]


#: Named problems used by the comparison tests (name -> factory).
PROBLEMS = {
    # d >= C: an ETF exists.
    "balanced_d16_C4": lambda: random_problem(4, 16, [150] * 4, [80] * 4, seed=1),
    # d = C - 1: the smallest dimension with an ETF.
    "balanced_d5_C6": lambda: random_problem(6, 5, [100] * 6, [40] * 6, seed=2),
    # C > d + 1 (no ETF), d < C - 1.
    "no_etf_d5_C12": lambda: random_problem(12, 5, [60] * 12, [25] * 12, seed=3),
    "no_etf_d3_C7": lambda: random_problem(7, 3, [50] * 7, [20] * 7, seed=4),
    # two classes
    "two_classes_d4": lambda: random_problem(2, 4, [70, 130], [30, 20], seed=5),
    # imbalanced, including a class of one sample in the test split
    "imbalanced_d12_C8": lambda: random_problem(
        8, 12, _imbalanced_counts(8, 6), [1, 5, 9, 2, 30, 4, 7, 11], offset=4.0, seed=6
    ),
    # far from the origin: cancellation in E[hh^T] - mu mu^T
    "offset_d10_C5": lambda: random_problem(5, 10, [90, 40, 120, 60, 75], [30] * 5, spread=0.5, offset=50.0, seed=7),
    # confidently classified: logits of size ~100, loss ~1e-3 (float32 GEMM rounding shows)
    "confident_d64_C40": lambda: random_problem(40, 64, [12] * 40, [6] * 40, seed=13),
    # late training: spread 1e-4 of the mean norm
    "near_collapsed_d10_C6": lambda: near_collapsed_problem(6, 10, 60, seed=8),
    "near_collapsed_d4_C9": lambda: near_collapsed_problem(9, 4, 40, seed=9),
    # rank-deficient Sigma_B: round-off directions dropped, small genuine ones kept
    "low_rank_exact": lambda: low_rank_problem(6, 10, 3, leak=0.0, seed=10),
    "low_rank_leak_dropped": lambda: low_rank_problem(6, 10, 3, leak=1e-7, seed=11),
    "low_rank_leak_kept": lambda: low_rank_problem(6, 10, 3, leak=1e-3, seed=12),
}


def make_problem(name: str) -> Problem:
    """Build the named problem of :data:`PROBLEMS`."""
    return PROBLEMS[name]()
