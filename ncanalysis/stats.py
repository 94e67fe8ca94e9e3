"""Sufficient statistics of one split, computed block by block and merged exactly.

Two passes over the features of a split:

1. :func:`block_class_sums` -> :class:`ClassSums` (class counts and float64 class
   sums).  Merged sums give the class means, and from them :func:`split_geometry`
   builds the between-class geometry: the eigendecomposition of the C x C Gram
   matrix of the centred means and an orthonormal basis of their span.
2. :func:`block_scatter` -> :class:`ScatterSums` (per-class NC1 terms, squared
   residual norms, correct decisions, cross-entropy and NCC mismatches), using a
   :class:`BlockPlan` made by :func:`block_plan` from the geometry of the split,
   the geometry of the train split of the same epoch and the classifier.

Every partial is a small dataclass whose ``+`` adds it to another: merging is
exact up to float64 round-off, so results do not depend on the chunking.  The
per-block arithmetic is numpy and BLAS on float32/float64 arrays plus the numba
kernels of :mod:`ncanalysis.kernels`; an array-module swap (GPU) would replace
these functions only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import kernels
from .errors import InputError
from .options import GEMM_DTYPES, GLOBAL_MEAN_CHOICES

__all__ = [
    "ClassSums",
    "SplitGeometry",
    "BlockPlan",
    "ScatterSums",
    "block_class_sums",
    "split_geometry",
    "block_plan",
    "block_scatter",
    "GLOBAL_MEAN_CHOICES",
    "GEMM_DTYPES",
]

# The choices are the options' (checked once, by AnalysisOptions); re-exported here.

# Relative round-off bounds of the fast decisions, by GEMM dtype: closer calls
# are decided again exactly (about 100 and 5000 units in the last place).
_TIE_SCALE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# Rows handled at once inside a block: bounds the temporaries of one task
# (residual, GEMM output, NCC scores) whatever the dask chunk size.
_SUB_BLOCK_ROWS = 4096


def _where(context: str, row: int) -> str:
    return f"{context}, row {row}" if context else f"row {row}"


@dataclass
class ClassSums:
    """Pass-1 statistics: samples per class and float64 class sums."""

    counts: np.ndarray  # (C,) int64
    sums: np.ndarray  # (C, d) float64

    def __add__(self, other: ClassSums) -> ClassSums:
        return ClassSums(self.counts + other.counts, self.sums + other.sums)


def block_class_sums(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    first_row: int = 0,
    context: str = "",
) -> ClassSums:
    """Class counts and sums of one block.

    Parameters
    ----------
    features : ndarray, shape (B, d)
        float16, float32 or float64; float16 is decoded exactly inside the kernel.
    labels : ndarray, shape (B,)
    num_classes : int
    first_row : int
        Row number of the block's first row in its split, for error messages.
    context : str
        Where the block comes from ("epoch 3, split 'train'"), for error messages.

    Raises
    ------
    InputError
        A label outside ``0..C-1`` or a NaN/inf feature, naming the row.
    """
    labs = np.ascontiguousarray(labels, dtype=np.int64)
    if features.ndim != 2 or labs.shape != (features.shape[0],):
        raise InputError(
            f"{context}: labels block has shape {labs.shape}, features block {features.shape}"
        )
    counts = np.zeros(num_classes, dtype=np.int64)
    sums = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
    for start in range(0, features.shape[0], _SUB_BLOCK_ROWS):
        stop = start + _SUB_BLOCK_ROWS
        bad_label, bad_value = kernels.class_sums(
            kernels.kernel_input(features[start:stop]),
            labs[start:stop],
            counts,
            sums,
        )
        if bad_label >= 0:
            row = start + bad_label
            raise InputError(
                f"{_where(context, first_row + row)}: label {labs[row]} is outside "
                f"0..{num_classes - 1}"
            )
        if bad_value >= 0:
            raise InputError(
                f"{_where(context, first_row + start + bad_value)}: features hold NaN or inf"
            )
    return ClassSums(counts, sums)


@dataclass
class SplitGeometry:
    """Class means of a split and the spectrum of its between-class covariance.

    ``basis`` (d x r) is orthonormal and spans the centred means; ``eigenvalues``
    (r,) are the nonzero eigenvalues of Sigma_B = M~ M~^T / C' kept above
    ``pinv_rtol`` times the largest, so that Sigma_B^+ = basis diag(1/eig) basis^T.
    ``coordinates`` are the centred means in that basis, ``centred @ basis``.
    Only the C' classes present in the split (``present``) enter; the rows of
    ``means``, ``centred``, ``coordinates`` and ``separation`` of absent
    classes, and their rows and columns of ``centred_gram``, are NaN.
    """

    counts: np.ndarray  # (C,) int64
    means: np.ndarray  # (C, d) float64
    global_mean: np.ndarray  # (d,) float64
    centred: np.ndarray  # (C, d) float64: rows mu_c - mu_G (M~ transposed)
    centred_gram: np.ndarray  # (C, C) float64: centred @ centred.T
    eigenvalues: np.ndarray  # (r,) kept eigenvalues of Sigma_B, descending
    basis: np.ndarray  # (d, r)
    coordinates: np.ndarray  # (C, r) float64
    separation: np.ndarray  # (C,) lower bound of min_c' ||coordinates[c] - coordinates[c']||

    @property
    def rank(self) -> int:
        """Number of eigenpairs kept for the pseudo-inverse."""
        return int(self.eigenvalues.shape[0])

    @property
    def num_samples(self) -> int:
        """N, the number of samples of the split."""
        return int(self.counts.sum())

    @property
    def present(self) -> np.ndarray:
        """(C,) bool: the classes with at least one sample in the split."""
        return self.counts > 0

    @property
    def num_present(self) -> int:
        """C', the number of classes present in the split."""
        return int(np.count_nonzero(self.counts))


def split_geometry(
    sums: ClassSums,
    *,
    global_mean: str = "class",
    pinv_rtol: float = 1e-10,
    context: str = "",
    require_all: bool = False,
) -> SplitGeometry:
    """Means, centred means and the pseudo-inverse spectrum of Sigma_B.

    Only the C' classes present in the split (n_c > 0) enter: mu_G is the mean
    of their means (or of all samples, ``global_mean="sample"``) and Sigma_B =
    M~ M~^T / C' over them (METRICS.md, "Splits that miss classes").  The
    spectrum comes from the C' x C' Gram matrix ``M~^T M~ / C'`` in float64,
    whose nonzero eigenvalues are those of Sigma_B; unit eigenvectors of Sigma_B
    are ``u_k = M~ v_k / sqrt(C' lambda_k)``.  Rows (and Gram rows and columns)
    of absent classes are NaN.  With C' = 1 there is no between-class spread:
    the spectrum is empty (rank 0) and the metrics that need two classes are NaN.

    Parameters
    ----------
    sums : ClassSums
        The merged pass-1 statistics of the split.
    global_mean : {"class", "sample"}
    pinv_rtol : float
        Relative tolerance of the kept eigenvalues.
    context : str
        Source, epoch and split, for error messages.
    require_all : bool
        Every class must have a sample (the train split: its means define NCC).

    Raises
    ------
    InputError
        A class without samples when ``require_all``, a split without samples,
        or present classes (two or more) whose means are all equal.
    """
    counts = sums.counts
    present = counts > 0
    absent = np.flatnonzero(~present)
    if require_all and absent.size:
        raise InputError(
            f"{context}: class(es) {absent.tolist()} have no samples; the train split must "
            "hold every class (its class means define the NCC rule)"
        )
    num_present = int(present.sum())
    if num_present == 0:
        raise InputError(f"{context}: the split has no samples")
    num_classes, dim = sums.sums.shape
    means = np.full((num_classes, dim), np.nan)
    means[present] = sums.sums[present] / counts[present, None]
    # AnalysisOptions checked global_mean for users; a direct caller gets no fallback.
    if global_mean == "sample":
        mu_g = sums.sums.sum(axis=0) / counts.sum()
    elif global_mean == "class":
        mu_g = means[present].mean(axis=0)
    else:
        raise InputError(f"{context}: global_mean must be 'class' or 'sample', not {global_mean!r}")
    centred = means - mu_g
    centred_present = centred[present]
    gram_present = centred_present @ centred_present.T
    centred_gram = np.full((num_classes, num_classes), np.nan)
    centred_gram[np.ix_(present, present)] = gram_present
    eigenvalues, eigenvectors = np.linalg.eigh(gram_present / num_present)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    top = eigenvalues[0]
    if num_present == 1:
        # One class: mu_G is its mean (either definition), Sigma_B = 0 and NC1 is undefined.
        keep = np.zeros(1, dtype=bool)
    elif not top > 0:
        raise InputError(f"{context}: all class means are equal; Sigma_B is zero")
    else:
        keep = eigenvalues > pinv_rtol * top
    kept_values, kept_vectors = eigenvalues[keep], eigenvectors[:, keep]
    scale = np.sqrt(num_present * kept_values)
    basis = centred_present.T @ (kept_vectors / scale)
    # centred @ basis = C' * gram @ V / sqrt(C' lambda) = V sqrt(C' lambda): no GEMM.
    coordinates = np.full((num_classes, kept_values.shape[0]), np.nan)
    coordinates[present] = kept_vectors * scale
    separation = np.full(num_classes, np.nan)
    separation[present] = _separation(
        gram_present, num_present * np.abs(eigenvalues[~keep]).sum(), dim
    )
    return SplitGeometry(
        counts=counts,
        means=means,
        global_mean=mu_g,
        centred=centred,
        centred_gram=centred_gram,
        eigenvalues=kept_values,
        basis=basis,
        coordinates=coordinates,
        separation=separation,
    )


def _separation(gram: np.ndarray, dropped: float, dim: int) -> np.ndarray:
    """For each class, a lower bound of the distance from its projected centred mean to the others.

    Squared distances come from the Gram matrix of the centred means; the bound
    subtracts that formula's worst-case float64 round-off and the most that the
    eigen-directions left out of the basis (total ``dropped`` = C times their
    eigenvalues) can add to a squared distance, so it never exceeds the distance
    between the rows of ``coordinates``.
    """
    sqnorms = np.diag(gram)
    sqdist = sqnorms[:, None] + sqnorms[None, :] - 2.0 * gram
    np.fill_diagonal(sqdist, np.inf)
    slack = 4.0 * (dim + 2) * np.finfo(np.float64).eps * sqnorms.max() + 4.0 * dropped
    return np.sqrt(np.maximum(sqdist.min(axis=1) - slack, 0.0))


@dataclass
class BlockPlan:
    """Everything a pass-2 block needs, computed once per split and epoch.

    ``products = residual @ projection``, with ``projection = [U_s | U_train | W^T]``
    (the ``U_train`` columns are absent on the train split, whose NCC frame is its
    own ``U_s``, and when NCC is off).
    """

    means: np.ndarray  # (C, d) float64, the split's class means
    projection: np.ndarray  # (d, K) in the GEMM dtype
    inv_eigenvalues: np.ndarray  # (r,)
    ncc_start: int
    ncc_offsets: np.ndarray  # (C, r_t) float64: (mu_c - mu_G^train) U_train
    train_means_projected: np.ndarray  # (C, r_t) in the GEMM dtype
    train_means_sqnorm: np.ndarray  # (C,) float64
    train_separation: np.ndarray  # (C,) float64: a lower bound of min_c' ||m_c - m_c'||
    logit_start: int
    logit_offsets: np.ndarray  # (C, C) float64: W mu_c + b
    weight: np.ndarray  # (C, d) float64, for exact decisions of close calls
    bias: np.ndarray  # (C,) float64
    train_means: np.ndarray  # (C, d) float64, or (0, d) without NCC
    gemm_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    # Per-thread temporaries of block_scatter, reused from block to block.
    scratch: dict = field(default_factory=dict, repr=False, compare=False)
    #: max_c ||w_c||, the scale of the logit round-off bound: once per plan, not per block.
    weight_norm: float = field(init=False)

    def __post_init__(self) -> None:
        self.weight_norm = float(np.sqrt(np.einsum("ij,ij->i", self.weight, self.weight).max()))

    @property
    def ncc(self) -> bool:
        """Whether this plan computes the NCC decisions."""
        return self.ncc_offsets.shape[1] > 0

    def buffer(self, name: str, rows: int, columns: int) -> np.ndarray:
        """A (rows, columns) array in the GEMM dtype, this thread's own, reused across blocks.

        Fresh 30-50 MB temporaries per block cost the kernel's zeroing of new
        pages (~5 ms each here).  They live as long as the plan: one epoch.
        """
        key = (threading.get_ident(), name)
        array = self.scratch.get(key)
        if array is None or array.shape[0] < rows or array.shape[1] != columns:
            array = self.scratch[key] = np.empty((rows, columns), dtype=self.gemm_dtype)
        return array[:rows]

    def __getstate__(self) -> dict[str, Any]:
        # Scratch arrays stay in the process and thread that made them.
        return {**self.__dict__, "scratch": {}}


def block_plan(
    geometry: SplitGeometry,
    train: SplitGeometry | None,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    gemm_dtype: str = "float32",
    is_train: bool = False,
) -> BlockPlan:
    """Build the pass-2 plan of a split.

    Parameters
    ----------
    geometry : SplitGeometry
        The split's own geometry (residuals and NC1).
    train : SplitGeometry or None
        The train split's geometry of the same epoch (NCC); None turns NCC off.
    weight, bias : ndarray
        The classifier, (C, d) and (C,).
    gemm_dtype : {"float32", "float64"}
    is_train : bool
        True when ``geometry`` is the train split itself: its basis then serves
        both NC1 and NCC and the GEMM is one basis narrower.
    """
    dtype = np.dtype(gemm_dtype)
    # Absent classes have NaN means; no sample carries their label, so their rows
    # of the per-class offsets are never read: zeros keep the plan finite.
    means = np.where(geometry.present[:, None], geometry.means, 0.0)
    weight64 = np.asarray(weight, dtype=np.float64)
    bias64 = np.asarray(bias, dtype=np.float64)
    blocks = [geometry.basis]
    rank = geometry.rank
    if train is None:
        ncc_start, ncc_basis = rank, np.zeros((weight64.shape[1], 0))
        train_means = np.zeros((0, weight64.shape[1]))
        train_centred_proj = np.zeros((weight64.shape[0], 0))
        ncc_offsets = np.zeros((weight64.shape[0], 0))
    else:
        ncc_basis = train.basis
        train_means = train.means
        if is_train:
            ncc_start = 0
        else:
            ncc_start = rank
            blocks.append(ncc_basis)
        # Projected centred train means, M~_train^T U_train.
        train_centred_proj = train.coordinates
        ncc_offsets = (
            train.coordinates if is_train else (means - train.global_mean) @ ncc_basis
        )
    logit_start = sum(b.shape[1] for b in blocks)
    blocks.append(weight64.T)
    projection = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=dtype)
    return BlockPlan(
        means=means,
        projection=projection,
        inv_eigenvalues=1.0 / geometry.eigenvalues,
        ncc_start=ncc_start,
        ncc_offsets=np.ascontiguousarray(ncc_offsets),
        train_means_projected=np.ascontiguousarray(train_centred_proj, dtype=dtype),
        train_means_sqnorm=np.einsum("ij,ij->i", train_centred_proj, train_centred_proj),
        train_separation=np.zeros(0) if train is None else train.separation,
        logit_start=logit_start,
        logit_offsets=np.ascontiguousarray(means @ weight64.T + bias64),
        weight=np.ascontiguousarray(weight64),
        bias=bias64,
        train_means=np.ascontiguousarray(train_means),
        gemm_dtype=dtype,
    )


@dataclass
class ScatterSums:
    """Pass-2 statistics, per class (by true label)."""

    nc1: np.ndarray  # (C,) sum of (h - mu_y)^T Sigma_B^+ (h - mu_y)
    sqnorm: np.ndarray  # (C,) sum of ||h - mu_y||^2
    correct: np.ndarray  # (C,) int64, argmax of logits == label
    loss: np.ndarray  # (C,) sum of cross-entropy
    ncc_mismatch: np.ndarray  # (C,) int64, argmax of logits != nearest train centre

    def __add__(self, other: ScatterSums) -> ScatterSums:
        return ScatterSums(
            self.nc1 + other.nc1,
            self.sqnorm + other.sqnorm,
            self.correct + other.correct,
            self.loss + other.loss,
            self.ncc_mismatch + other.ncc_mismatch,
        )


def block_scatter(features: np.ndarray, labels: np.ndarray, plan: BlockPlan) -> ScatterSums:
    """Pass-2 statistics of one block (labels already validated in pass 1).

    Per sub-block of rows: residual in float64 cast to the GEMM dtype (numba),
    one GEMM with ``[U_s | U_train | W^T]``, the NC1 terms, logit decisions and
    loss (numba), then the NCC decisions; rows whose decisions are too close to
    call in that arithmetic are decided again exactly in float64.
    """
    labs = np.ascontiguousarray(labels, dtype=np.int64)
    num_classes, dim = plan.means.shape
    nc1 = np.zeros(num_classes)
    sqnorm = np.zeros(num_classes)
    loss = np.zeros(num_classes)
    correct = np.zeros(num_classes, dtype=np.int64)
    mismatch = np.zeros(num_classes, dtype=np.int64)
    n_proj = plan.ncc_offsets.shape[1]
    logits_row = np.empty(num_classes)
    tie_scale = _TIE_SCALE[plan.gemm_dtype]
    for start in range(0, features.shape[0], _SUB_BLOCK_ROWS):
        # Per sub-block: a task holds the stored block plus small temporaries.
        sub = kernels.kernel_input(features[start : start + _SUB_BLOCK_ROWS])
        sub_labels = labs[start : start + _SUB_BLOCK_ROWS]
        rows = sub.shape[0]
        residuals = plan.buffer("residuals", rows, dim)
        row_sqnorm = np.empty(rows)
        kernels.class_residuals(sub, sub_labels, plan.means, residuals, sqnorm, row_sqnorm)
        products = np.matmul(
            residuals, plan.projection, out=plan.buffer("products", rows, plan.projection.shape[1])
        )
        projected = plan.buffer("projected", rows, n_proj)
        projected_sqnorm = np.empty(rows)
        centre_sqdist = np.empty(rows)
        decisions = np.empty(rows, dtype=np.int64)
        recheck = np.zeros(rows, dtype=np.bool_)
        kernels.scatter_logits(
            products,
            sub_labels,
            row_sqnorm,
            kernels.ScatterPlan(
                inv_eigenvalues=plan.inv_eigenvalues,
                ncc_start=plan.ncc_start,
                ncc_offsets=plan.ncc_offsets,
                train_means_projected=plan.train_means_projected,
                logit_start=plan.logit_start,
                logit_offsets=plan.logit_offsets,
                weight_norm=plan.weight_norm,
                tie_scale=tie_scale,
            ),
            kernels.ScatterOutputs(
                projected=projected,
                projected_sqnorm=projected_sqnorm,
                centre_sqdist=centre_sqdist,
                decisions=decisions,
                recheck=recheck,
                class_nc1=nc1,
                class_loss=loss,
                logits=logits_row,
            ),
        )
        nearest = np.empty(rows, dtype=np.int64)
        if plan.ncc:
            _ncc_decisions(plan, sub_labels, projected, projected_sqnorm, centre_sqdist,
                           tie_scale, nearest, recheck)
        close = np.flatnonzero(recheck)
        if close.size:
            exact = np.empty((2, close.size), dtype=np.int64)
            raw = np.asarray(features[start : start + _SUB_BLOCK_ROWS][close], dtype=np.float64)
            kernels.exact_decisions(
                raw, plan.weight, plan.bias, plan.train_means, exact[0], exact[1]
            )
            decisions[close] = exact[0]
            if plan.ncc:
                nearest[close] = exact[1]
        correct += np.bincount(sub_labels[decisions == sub_labels], minlength=num_classes)
        if plan.ncc:
            mismatch += np.bincount(sub_labels[decisions != nearest], minlength=num_classes)
    return ScatterSums(nc1=nc1, sqnorm=sqnorm, correct=correct, loss=loss, ncc_mismatch=mismatch)


def _ncc_decisions(
    plan: BlockPlan,
    labels: np.ndarray,
    projected: np.ndarray,
    projected_sqnorm: np.ndarray,
    centre_sqdist: np.ndarray,
    tie_scale: float,
    nearest: np.ndarray,
    recheck: np.ndarray,
) -> None:
    """Nearest train class centre of every row, into ``nearest``.

    A row whose own class centre m_y is closer than half the separation s_y of
    m_y from every other centre has m_y as its nearest centre (triangle
    inequality: ||p - m_c||^2 - ||p - m_y||^2 >= s_y (s_y - 2 ||p - m_y||)).
    Late in training that is almost every row, and it saves the (rows x r_t) @
    (r_t x C) scores product; the margin is the same round-off bound that flags
    close calls below.  The other rows get all their scores.
    """
    separation = plan.train_separation[labels]
    size = np.sqrt(projected_sqnorm) + np.sqrt(plan.train_means_sqnorm.max())
    sure = separation * (separation - 2.0 * np.sqrt(centre_sqdist)) > tie_scale * size * size
    nearest[:] = labels
    unsure = np.flatnonzero(~sure)
    if unsure.size:
        scores = projected[unsure] @ plan.train_means_projected.T
        found = np.empty(unsure.size, dtype=np.int64)
        close = np.zeros(unsure.size, dtype=np.bool_)
        kernels.ncc_decisions(
            scores, plan.train_means_sqnorm, projected_sqnorm[unsure], tie_scale, found, close
        )
        nearest[unsure] = found
        recheck[unsure] |= close
