"""Numba kernels for the per-block statistics.

Every kernel is serial and releases the GIL (``nogil=True``): dask supplies the
parallelism by running several blocks at once, and numba's own parallel layer
aborts when it is entered from dask's threads.  Feature inputs are float32 or
float64 blocks, or float16 blocks viewed as ``uint16`` bits: numba has no
float16, and numpy's float16 -> float32 cast costs an extra pass over memory, so
the kernels decode the bits through :data:`FLOAT16_TABLE` (exact) as they read.
Every sum is accumulated in float64.

The kernels return the first offending row (or -1) instead of raising, so that
the caller can name the epoch, split and absolute row in its error message.
Decisions (argmax of the logits, nearest class centre) go to the lowest class
index on ties; rows too close to call after float32 or projected arithmetic are
flagged and decided again exactly by :func:`exact_decisions`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

__all__ = [
    "FLOAT16_TABLE",
    "kernel_input",
    "class_sums",
    "class_residuals",
    "scatter_logits",
    "ncc_decisions",
    "exact_decisions",
]

_jit = numba.njit(nogil=True, cache=True, fastmath=False)

# Below this, exp(x) is exactly 0.0 in float64.
_EXP_UNDERFLOW = -746.0

#: The float32 value of every float16 bit pattern (256 KiB, stays in cache).
FLOAT16_TABLE = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(
    np.float32
)


def kernel_input(block: np.ndarray) -> np.ndarray:
    """A block as the kernels take it: float16 as its uint16 bits, else float32/float64."""
    block = np.asarray(block)
    if block.dtype == np.float16:
        return np.ascontiguousarray(block).view(np.uint16)
    dtype = np.float64 if block.dtype == np.float64 else np.float32
    return np.ascontiguousarray(block, dtype=dtype)


def _value(x, table):  # pragma: no cover - replaced by the overload in compiled code
    """The float value of one stored element (float16 bits are decoded)."""
    return table[x] if isinstance(x, np.uint16) else x


@overload(_value, inline="always")
def _value_overload(x, table):
    if isinstance(x, types.Integer):
        return lambda x, table: table[x]
    return lambda x, table: x


@_jit
def class_sums(features, table, labels, counts, sums):  # pragma: no cover - compiled
    """Add each row of ``features`` to the float64 sum of its class.

    Parameters
    ----------
    features : ndarray, shape (B, d), float32, float64 or uint16 (float16 bits)
    table : ndarray, :data:`FLOAT16_TABLE`
    labels : ndarray, shape (B,), integer
    counts : ndarray, shape (C,), int64, updated in place
    sums : ndarray, shape (C, d), float64, updated in place

    Returns
    -------
    bad_label_row, bad_value_row : int
        Index of the first row whose label is outside ``0..C-1`` and of the first
        row holding NaN or inf, or -1 when there is none.  Rows found bad are not
        added.
    """
    n_classes = counts.shape[0]
    n_features = features.shape[1]
    bad_label = -1
    bad_value = -1
    for i in range(features.shape[0]):
        c = labels[i]
        if c < 0 or c >= n_classes:
            if bad_label < 0:
                bad_label = i
            continue
        finite = True
        for j in range(n_features):
            x = _value(features[i, j], table)
            if not np.isfinite(x):
                finite = False
                break
        if not finite:
            if bad_value < 0:
                bad_value = i
            continue
        counts[c] += 1
        for j in range(n_features):
            sums[c, j] += _value(features[i, j], table)
    return bad_label, bad_value


@_jit
def class_residuals(
    features, table, labels, means, residuals, class_sqnorm, row_sqnorm
):  # pragma: no cover - compiled
    """Subtract each row's class mean in float64 and store the residual.

    The subtraction happens in float64 before the residual is cast to the GEMM
    dtype of ``residuals``: late in training the residual is 1e-3 to 1e-4 of the
    feature norm, and subtracting after a low-precision product would cancel.

    Parameters
    ----------
    features : ndarray, shape (B, d), float32, float64 or uint16 (float16 bits)
    table : ndarray, :data:`FLOAT16_TABLE`
    labels : ndarray, shape (B,), integer in ``0..C-1``
    means : ndarray, shape (C, d), float64
    residuals : ndarray, shape (B, d), float32 or float64, written
    class_sqnorm : ndarray, shape (C,), float64, updated in place with the
        squared norms of the float64 residuals
    row_sqnorm : ndarray, shape (B,), float64, written with each row's squared
        residual norm (it bounds the round-off of the row's logits)
    """
    for i in range(features.shape[0]):
        c = labels[i]
        acc = 0.0
        for j in range(features.shape[1]):
            e = np.float64(_value(features[i, j], table)) - means[c, j]
            residuals[i, j] = e
            acc += e * e
        class_sqnorm[c] += acc
        row_sqnorm[i] = acc


@_jit
def scatter_logits(
    products,
    labels,
    inv_eigenvalues,
    ncc_start,
    ncc_offsets,
    projected,
    logit_start,
    logit_offsets,
    class_nc1,
    class_loss,
    decisions,
    logits,
    row_sqnorm,
    weight_norm,
    tie_scale,
    recheck,
):  # pragma: no cover - compiled
    """Turn one block's GEMM output into NC1 terms, NCC inputs and logit decisions.

    ``products`` holds, per row, the residual times ``[U_s | U_train | W^T]``
    (the ``U_train`` part is absent on the train split, where it equals
    ``U_s``).  Adding the per-class offsets restores the full quantities:

    - columns ``0..r-1``: projections R of the residual onto the split's own
      between-class basis; ``sum_k R_k^2 / lambda_k`` is the row's NC1 term;
    - columns ``ncc_start..ncc_start+r_t-1`` plus ``ncc_offsets[y]``: the row's
      centred feature projected onto the train basis (written to ``projected``);
    - columns ``logit_start..`` plus ``logit_offsets[y]``: the logits W h + b.

    Parameters
    ----------
    products : ndarray, shape (B, K), float32 or float64
    labels : ndarray, shape (B,)
    inv_eigenvalues : ndarray, shape (r,), float64
    ncc_start : int
    ncc_offsets : ndarray, shape (C, r_t), float64 (r_t may be 0)
    projected : ndarray, shape (B, r_t), written
    logit_start : int
    logit_offsets : ndarray, shape (C, C), float64
    class_nc1, class_loss : ndarray, shape (C,), float64, updated in place
    decisions : ndarray, shape (B,), int64, written with argmax of the logits
        (ties to the lowest index)
    logits : ndarray, shape (C,), float64, scratch space for one row
    row_sqnorm : ndarray, shape (B,), squared residual norms
    weight_norm : float, max_c ||w_c||
    tie_scale : float
        Relative round-off bound: a row whose two largest logits are closer
        than ``tie_scale * (||residual|| max_c ||w_c|| + |top|)`` is flagged
        in ``recheck`` for an exact float64 decision.
    recheck : ndarray, shape (B,), bool, set where a decision is too close to call
    """
    rank = inv_eigenvalues.shape[0]
    n_proj = ncc_offsets.shape[1]
    n_classes = logit_offsets.shape[1]
    for i in range(products.shape[0]):
        c = labels[i]
        q = 0.0
        for k in range(rank):
            r = np.float64(products[i, k])
            q += r * r * inv_eigenvalues[k]
        class_nc1[c] += q
        for k in range(n_proj):
            projected[i, k] = products[i, ncc_start + k] + ncc_offsets[c, k]
        best = 0
        top = -np.inf
        second = -np.inf
        for k in range(n_classes):
            v = np.float64(products[i, logit_start + k]) + logit_offsets[c, k]
            logits[k] = v
            if v > top:
                second = top
                top = v
                best = k
            elif v > second:
                second = v
        if top - second <= tie_scale * (np.sqrt(row_sqnorm[i]) * weight_norm + abs(top)):
            recheck[i] = True
        # Cross-entropy that keeps its digits near zero loss: the max term of
        # sum exp(l - top) is exactly 1, so leave it out and use log1p.
        own = logits[c]
        logits[best] = -np.inf
        rest = 0.0
        for k in range(n_classes):
            gap = logits[k] - top
            # exp underflows to exactly 0 below -745.2; glibc's underflow path is
            # 5x slower than a normal exp, and late in training most gaps are there.
            if gap > _EXP_UNDERFLOW:
                rest += np.exp(gap)
        class_loss[c] += (top - own) + np.log1p(rest)
        decisions[i] = best


@_jit
def ncc_decisions(scores, mean_sqnorms, projected, tie_scale, nearest, recheck):  # pragma: no cover
    """Nearest train class centre of each row, from projected inner products.

    ``scores[i, c] = <p_i, m_c>`` for the projected centred feature p_i and the
    projected centred train mean m_c, so ``||p_i - m_c||^2 = ||p_i||^2 +
    ||m_c||^2 - 2 scores[i, c]``; the first term is the same for every class and
    is left out.  Ties go to the lowest class index.

    Parameters
    ----------
    scores : ndarray, shape (B, C)
    mean_sqnorms : ndarray, shape (C,), float64
    projected : ndarray, shape (B, r_t), the p_i (for the round-off bound)
    tie_scale : float
        A row whose two smallest distances are closer than ``tie_scale *
        (||p_i|| + max_c ||m_c||)^2`` is flagged in ``recheck``.
    nearest : ndarray, shape (B,), int64, written
    recheck : ndarray, shape (B,), bool, set where the decision is too close to call
    """
    largest = 0.0
    for c in range(mean_sqnorms.shape[0]):
        largest = max(largest, mean_sqnorms[c])
    for i in range(scores.shape[0]):
        best = 0
        low = np.inf
        second = np.inf
        for c in range(scores.shape[1]):
            v = mean_sqnorms[c] - 2.0 * np.float64(scores[i, c])
            if v < low:
                second = low
                low = v
                best = c
            elif v < second:
                second = v
        psq = 0.0
        for k in range(projected.shape[1]):
            psq += np.float64(projected[i, k]) ** 2
        size = np.sqrt(psq) + np.sqrt(largest)
        if second - low <= tie_scale * size * size:
            recheck[i] = True
        nearest[i] = best


@_jit
def exact_decisions(features, weight, bias, train_means, decisions, nearest):  # pragma: no cover
    """Both decisions of a few rows, directly in float64 (ties to the lowest index).

    Used for the rows that the fast path flagged as too close to call: logits
    ``<w_c, h> + b_c`` and squared distances ``||h - mu_c||^2`` summed term by
    term, so that mathematically equal values come out equal.

    Parameters
    ----------
    features : ndarray, shape (k, d), float64
    weight : ndarray, shape (C, d), float64
    bias : ndarray, shape (C,), float64
    train_means : ndarray, shape (C, d), float64, or shape (0, d) to skip NCC
    decisions, nearest : ndarray, shape (k,), int64, written
    """
    for i in range(features.shape[0]):
        best = 0
        top = -np.inf
        for c in range(weight.shape[0]):
            v = 0.0
            for j in range(features.shape[1]):
                v += weight[c, j] * features[i, j]
            v += bias[c]
            if v > top:
                top = v
                best = c
        decisions[i] = best
        best = 0
        low = np.inf
        for c in range(train_means.shape[0]):
            v = 0.0
            for j in range(features.shape[1]):
                diff = features[i, j] - train_means[c, j]
                v += diff * diff
            if v < low:
                low = v
                best = c
        nearest[i] = best
