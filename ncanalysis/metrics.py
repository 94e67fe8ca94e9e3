"""The Neural Collapse metrics, as pure functions of merged statistics.

No dask and no I/O here: the inputs are the small merged statistics of one split
(:class:`~ncanalysis.stats.SplitGeometry`, :class:`~ncanalysis.stats.ScatterSums`)
and the classifier.  Definitions follow ``METRICS.md`` (Papyan, Han & Donoho 2020,
and the companion metrics of Tirer et al. 2023, Galanti et al. 2022 and Zhu et
al. 2021).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # numba loads with stats; the metrics themselves need only numpy
    from .stats import ScatterSums, SplitGeometry

__all__ = [
    "SCALAR_METRICS",
    "CLASS_METRICS",
    "INT_VARIABLES",
    "split_metrics",
    "equinorm",
    "cosine_matrix",
    "equiangularity",
    "max_angle",
    "etf_error",
    "self_duality",
    "cdnv",
]

#: Per (epoch, split) values, in the order of METRICS.md.
SCALAR_METRICS = (
    "nc1",
    "equinorm_means",
    "equinorm_weights",
    "equiangular_means",
    "equiangular_weights",
    "maxangle_means",
    "maxangle_weights",
    "self_duality",
    "ncc_mismatch",
    "accuracy",
    "loss",
    "nc1_trace_ratio",
    "cdnv",
    "etf_error_means",
    "etf_error_weights",
    "bias_collapse",
)

#: Variables stored as int64 (missing values are -1, not NaN).
INT_VARIABLES = ("n_samples", "nc1_rank", "class_count", "class_ncc_mismatch")

#: Per (epoch, split, class) values.
CLASS_METRICS = (
    "class_count",
    "class_mean_norm",
    "class_weight_norm",
    "class_nc1",
    "class_within_var",
    "class_ncc_mismatch",
)


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """All entries with row != column (ordered pairs c != c')."""
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


def equinorm(vectors: np.ndarray) -> float:
    """Std_c ||v_c|| / Avg_c ||v_c|| over the rows (population std)."""
    norms = np.linalg.norm(vectors, axis=1)
    return float(norms.std() / norms.mean())


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Cosines between all pairs of rows."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T


def equiangularity(vectors: np.ndarray) -> float:
    """Std over c != c' of the cosines between rows."""
    return float(_off_diagonal(cosine_matrix(vectors)).std())


def max_angle(vectors: np.ndarray) -> float:
    """Avg over c != c' of |cos + 1/(C-1)|: distance from the simplex's maximal angle."""
    num = vectors.shape[0]
    return float(np.abs(_off_diagonal(cosine_matrix(vectors)) + 1.0 / (num - 1)).mean())


def etf_error(vectors: np.ndarray) -> float:
    """|| G/||G||_F - (I - 11^T/C)/sqrt(C-1) ||_F with G the Gram matrix of the rows."""
    num = vectors.shape[0]
    gram = vectors @ vectors.T
    target = (np.eye(num) - 1.0 / num) / np.sqrt(num - 1)
    return float(np.linalg.norm(gram / np.linalg.norm(gram) - target))


def self_duality(weight: np.ndarray, centred_means: np.ndarray) -> float:
    """|| W^T/||W||_F - M~/||M~||_F ||_F^2 (rows of both are classes)."""
    diff = weight / np.linalg.norm(weight) - centred_means / np.linalg.norm(centred_means)
    return float(np.sum(diff * diff))


def cdnv(centred_means: np.ndarray, within_var: np.ndarray) -> float:
    """Avg over c != c' of (s_c^2 + s_c'^2) / (2 ||mu_c - mu_c'||^2).

    Distances come from the Gram matrix of the centred means (shift invariant),
    which avoids cancelling a large common mean.
    """
    gram = centred_means @ centred_means.T
    sq = np.diag(gram)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * gram
    ratio = (within_var[:, None] + within_var[None, :]) / (2.0 * _off_diagonal_safe(dist2))
    return float(_off_diagonal(ratio).mean())


def _off_diagonal_safe(dist2: np.ndarray) -> np.ndarray:
    """Distances with the (unused) diagonal set to 1, so the division is clean."""
    out = dist2.copy()
    np.fill_diagonal(out, 1.0)
    return out


def split_metrics(
    geometry: SplitGeometry,
    scatter: ScatterSums,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    ncc: bool = True,
) -> dict[str, float | int | np.ndarray]:
    """Every metric of one split from its merged statistics.

    Parameters
    ----------
    geometry : SplitGeometry
        Means and the Sigma_B spectrum of the split.
    scatter : ScatterSums
        Merged pass-2 statistics of the split.
    weight, bias : ndarray
        The classifier, (C, d) and (C,).
    ncc : bool
        Whether the NCC mismatch was computed (NaN / -1 otherwise).

    Returns
    -------
    dict
        The names of :data:`SCALAR_METRICS` and :data:`CLASS_METRICS` plus
        ``n_samples`` and ``nc1_rank``.
    """
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    num_classes = geometry.counts.shape[0]
    num_samples = geometry.num_samples
    centred = geometry.centred
    within_var = scatter.sqnorm / geometry.counts
    class_nc1 = scatter.nc1 / num_samples / num_classes
    trace_within = scatter.sqnorm.sum() / num_samples
    trace_between = np.einsum("ij,ij->", centred, centred) / num_classes
    mismatch = scatter.ncc_mismatch.sum() / num_samples if ncc else np.nan
    return {
        "nc1": float(class_nc1.sum()),
        "equinorm_means": equinorm(centred),
        "equinorm_weights": equinorm(weight),
        "equiangular_means": equiangularity(centred),
        "equiangular_weights": equiangularity(weight),
        "maxangle_means": max_angle(centred),
        "maxangle_weights": max_angle(weight),
        "self_duality": self_duality(weight, centred),
        "ncc_mismatch": float(mismatch),
        "accuracy": float(scatter.correct.sum() / num_samples),
        "loss": float(scatter.loss.sum() / num_samples),
        "nc1_trace_ratio": float(trace_within / trace_between),
        "cdnv": cdnv(centred, within_var),
        "etf_error_means": etf_error(centred),
        "etf_error_weights": etf_error(weight),
        "bias_collapse": float(np.linalg.norm(weight @ geometry.global_mean + bias)),
        "n_samples": num_samples,
        "nc1_rank": geometry.rank,
        "class_count": geometry.counts.astype(np.int64),
        "class_mean_norm": np.linalg.norm(centred, axis=1),
        "class_weight_norm": np.linalg.norm(weight, axis=1),
        "class_nc1": class_nc1,
        "class_within_var": within_var,
        "class_ncc_mismatch": (
            scatter.ncc_mismatch.astype(np.int64) if ncc else np.full(num_classes, -1)
        ),
    }
