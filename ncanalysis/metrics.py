"""The Neural Collapse metrics, as pure functions of merged statistics.

No dask and no I/O here: the inputs are the small merged statistics of one split
(:class:`~ncanalysis.stats.SplitGeometry`, :class:`~ncanalysis.stats.ScatterSums`)
and the classifier.  Definitions follow ``METRICS.md`` (Papyan, Han & Donoho 2020,
and the companion metrics of Tirer et al. 2023, Galanti et al. 2022 and Zhu et
al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # numba loads with stats; the metrics themselves need only numpy
    from .stats import ScatterSums, SplitGeometry

__all__ = [
    "SCALAR_METRICS",
    "CLASS_METRICS",
    "INT_VARIABLES",
    "COUNT_VARIABLES",
    "split_metrics",
    "shape_metrics",
    "gram_matrix",
    "equinorm",
    "cosine_matrix",
    "equiangularity",
    "max_angle",
    "etf_error",
    "self_duality",
    "cdnv",
    "terminal_phase",
    "tpt_start_epoch",
    "tpt_stable_epoch",
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
INT_VARIABLES = (
    "n_samples",
    "nc1_rank",
    "n_classes_present",
    "class_count",
    "class_ncc_mismatch",
)

#: Per (epoch, split) int64 values besides the metrics.
COUNT_VARIABLES = ("n_samples", "nc1_rank", "n_classes_present")

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


def gram_matrix(vectors: np.ndarray) -> np.ndarray:
    """Inner products of all pairs of rows, (C, C) float64."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors @ vectors.T


def equinorm(gram: np.ndarray) -> float:
    """Std_c ||v_c|| / Avg_c ||v_c|| over the rows (population std), from their Gram matrix."""
    norms = np.sqrt(np.diag(gram))
    return float(norms.std() / norms.mean())


def cosine_matrix(gram: np.ndarray) -> np.ndarray:
    """Cosines between all pairs of rows, from their Gram matrix."""
    norms = np.sqrt(np.diag(gram))
    return gram / norms[:, None] / norms[None, :]


def equiangularity(cosines: np.ndarray) -> float:
    """Std over c != c' of the cosines between rows."""
    return float(_off_diagonal(cosines).std())


def max_angle(cosines: np.ndarray) -> float:
    """Avg over c != c' of |cos + 1/(C-1)|: distance from the simplex's maximal angle."""
    num = cosines.shape[0]
    return float(np.abs(_off_diagonal(cosines) + 1.0 / (num - 1)).mean())


def etf_error(gram: np.ndarray) -> float:
    """|| G/||G||_F - (I - 11^T/C)/sqrt(C-1) ||_F for the Gram matrix G of the rows."""
    num = gram.shape[0]
    target = (np.eye(num) - 1.0 / num) / np.sqrt(num - 1)
    return float(np.linalg.norm(gram / np.linalg.norm(gram) - target))


def self_duality(weight: np.ndarray, centred_means: np.ndarray) -> float:
    """|| W^T/||W||_F - M~/||M~||_F ||_F^2 (rows of both are classes)."""
    diff = weight / np.linalg.norm(weight) - centred_means / np.linalg.norm(centred_means)
    return float(np.sum(diff * diff))


def cdnv(gram: np.ndarray, within_var: np.ndarray) -> float:
    """Avg over c != c' of (s_c^2 + s_c'^2) / (2 ||mu_c - mu_c'||^2).

    Distances come from the Gram matrix of the centred means (shift invariant),
    which avoids cancelling a large common mean.
    """
    sq = np.diag(gram)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * gram
    np.fill_diagonal(dist2, 1.0)  # the diagonal is not used; keep the division clean
    ratio = (within_var[:, None] + within_var[None, :]) / (2.0 * dist2)
    return float(_off_diagonal(ratio).mean())


def shape_metrics(gram: np.ndarray, suffix: str) -> dict[str, float]:
    """Equinorm, equiangularity, max-angle and ETF error of a set of rows.

    ``suffix`` is "means" or "weights".  The weights' values are the same for
    every split of an epoch, so the engine computes them once from ``W W^T``.
    """
    cosines = cosine_matrix(gram)
    return {
        f"equinorm_{suffix}": equinorm(gram),
        f"equiangular_{suffix}": equiangularity(cosines),
        f"maxangle_{suffix}": max_angle(cosines),
        f"etf_error_{suffix}": etf_error(gram),
    }


def split_metrics(
    geometry: SplitGeometry,
    scatter: ScatterSums,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    ncc: bool = True,
    weight_shape: dict[str, float] | None = None,
) -> dict[str, float | int | np.ndarray]:
    """Every metric of one split from its merged statistics.

    A split that misses classes is analysed over the C' classes it has
    (METRICS.md, "Splits that miss classes"): the means-side metrics (nc1,
    nc1_trace_ratio, cdnv, the shape metrics of the means, self_duality) use
    only the present classes, and those rows of W for self_duality; accuracy,
    loss and ncc_mismatch use every sample and all C decisions; per-class
    values of absent classes are NaN (their counts 0).  With C' = 1 the metrics
    that need two classes or Sigma_B (all means-side ones) are NaN.

    Parameters
    ----------
    geometry : SplitGeometry
        Means, their Gram matrix and the Sigma_B spectrum of the split.
    scatter : ScatterSums
        Merged pass-2 statistics of the split.
    weight, bias : ndarray
        The classifier, (C, d) and (C,).
    ncc : bool
        Whether the NCC mismatch was computed (NaN / -1 otherwise).
    weight_shape : dict, optional
        ``shape_metrics(gram_matrix(weight), "weights")`` when the caller has it
        already (it is the same for every split of an epoch).

    Returns
    -------
    dict
        The names of :data:`SCALAR_METRICS`, :data:`CLASS_METRICS` and
        :data:`COUNT_VARIABLES`.
    """
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if weight_shape is None:
        weight_shape = shape_metrics(gram_matrix(weight), "weights")
    num_classes = geometry.counts.shape[0]
    present = geometry.present
    num_present = geometry.num_present
    num_samples = geometry.num_samples
    centred = geometry.centred[present]
    gram = geometry.centred_gram[np.ix_(present, present)]
    within_var = np.full(num_classes, np.nan)
    within_var[present] = scatter.sqnorm[present] / geometry.counts[present]
    trace_within = scatter.sqnorm.sum() / num_samples
    mismatch = scatter.ncc_mismatch.sum() / num_samples if ncc else np.nan
    class_nc1 = np.full(num_classes, np.nan)
    if num_present >= 2:
        class_nc1[present] = scatter.nc1[present] / num_samples / num_present
        means_side = {
            "nc1": float(class_nc1[present].sum()),
            "nc1_trace_ratio": float(trace_within / (np.trace(gram) / num_present)),
            "cdnv": cdnv(gram, within_var[present]),
            "self_duality": self_duality(weight[present], centred),
            **shape_metrics(gram, "means"),
        }
    else:
        # One class: no Sigma_B, no pairs, M~ = 0 (see docs/metrics.md).
        means_side = {name: np.nan for name in _MEANS_SIDE}
    class_mean_norm = np.full(num_classes, np.nan)
    class_mean_norm[present] = np.sqrt(np.diag(gram))
    values: dict[str, float | int | np.ndarray] = {
        **means_side,
        "ncc_mismatch": float(mismatch),
        "accuracy": float(scatter.correct.sum() / num_samples),
        "loss": float(scatter.loss.sum() / num_samples),
        "bias_collapse": float(np.linalg.norm(weight @ geometry.global_mean + bias)),
        "n_samples": num_samples,
        "nc1_rank": geometry.rank,
        "n_classes_present": num_present,
        "class_count": geometry.counts.astype(np.int64),
        "class_mean_norm": class_mean_norm,
        "class_weight_norm": np.linalg.norm(weight, axis=1),
        "class_nc1": class_nc1,
        "class_within_var": within_var,
        "class_ncc_mismatch": (
            scatter.ncc_mismatch.astype(np.int64) if ncc else np.full(num_classes, -1)
        ),
    }
    values.update(weight_shape)
    return values


def _train_accuracy_series(epochs: np.ndarray, train_accuracy: np.ndarray) -> tuple:
    epochs = np.asarray(epochs)
    accuracy = np.asarray(train_accuracy, dtype=np.float64)
    if epochs.shape != accuracy.shape or epochs.ndim != 1:
        raise ValueError(f"epochs {epochs.shape} and train_accuracy {accuracy.shape} must be "
                         "1-d arrays of the same length")
    return epochs, accuracy


def tpt_start_epoch(epochs: np.ndarray, train_accuracy: np.ndarray) -> int:
    """The first epoch whose train accuracy is exactly 1, or -1 (no such epoch).

    The start of the terminal phase of training in Papyan, Han & Donoho (2020).

    Parameters
    ----------
    epochs : array_like of int, shape (E,)
        The analysed epochs, in increasing order.
    train_accuracy : array_like of float, shape (E,)
        Train accuracy at each of ``epochs`` (NaN where not analysed).
    """
    epochs, accuracy = _train_accuracy_series(epochs, train_accuracy)
    reached = np.flatnonzero(accuracy == 1.0)
    return int(epochs[reached[0]]) if reached.size else -1


def terminal_phase(epochs: Sequence[int] | np.ndarray, splits: Sequence[str],
                   accuracy: np.ndarray) -> dict[str, int]:
    """The attributes ``tpt_start_epoch`` and ``tpt_stable_epoch`` of a results Dataset.

    Parameters
    ----------
    epochs : array_like of int, shape (E,)
        The analysed epochs, in increasing order.
    splits : sequence of str, length S
        The analysed splits; without "train" both attributes are -1.
    accuracy : array_like of float, shape (E, S)
        The ``accuracy`` variable (NaN where a split was not analysed).
    """
    if "train" not in list(splits):
        return {"tpt_start_epoch": -1, "tpt_stable_epoch": -1}
    train = np.asarray(accuracy)[:, list(splits).index("train")]
    numbers = np.asarray(epochs)
    return {"tpt_start_epoch": tpt_start_epoch(numbers, train),
            "tpt_stable_epoch": tpt_stable_epoch(numbers, train)}


def tpt_stable_epoch(epochs: np.ndarray, train_accuracy: np.ndarray) -> int:
    """The first epoch from which train accuracy stays exactly 1 to the end, or -1.

    The paper's start of the terminal phase (``tpt_start_epoch``) is the *first*
    epoch of train accuracy 1; SGD noise can still push a few training samples
    back across the boundary later.  This is the epoch after which that never
    happens again among the analysed epochs.

    Parameters
    ----------
    epochs : array_like of int, shape (E,)
        The analysed epochs, in increasing order.
    train_accuracy : array_like of float, shape (E,)
        Train accuracy at each of ``epochs``; NaN where the train split was not
        analysed (such an epoch neither breaks nor starts the stable stretch).

    Returns
    -------
    int
        The first epoch e with train accuracy 1 such that every analysed epoch
        from e on has train accuracy 1; -1 when the last analysed train accuracy
        is below 1 or there is none.
    """
    epochs, accuracy = _train_accuracy_series(epochs, train_accuracy)
    measured = np.flatnonzero(np.isfinite(accuracy))
    perfect = measured[accuracy[measured] == 1.0]
    below = measured[accuracy[measured] != 1.0]
    # The stable stretch starts at the first perfect epoch after the last imperfect one.
    after = perfect[perfect > below[-1]] if below.size else perfect
    return int(epochs[after[0]]) if after.size else -1


#: The metrics computed over the classes present in a split (NaN when C' = 1).
_MEANS_SIDE = (
    "nc1",
    "nc1_trace_ratio",
    "cdnv",
    "self_duality",
    "equinorm_means",
    "equiangular_means",
    "maxangle_means",
    "etf_error_means",
)
