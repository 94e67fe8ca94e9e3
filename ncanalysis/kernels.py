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
    "ncc_mismatch",
]

_jit = numba.njit(nogil=True, cache=True, fastmath=False)

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
def class_residuals(features, table, labels, means, residuals, class_sqnorm):  # pragma: no cover
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
    """
    for i in range(features.shape[0]):
        c = labels[i]
        acc = 0.0
        for j in range(features.shape[1]):
            e = np.float64(_value(features[i, j], table)) - means[c, j]
            residuals[i, j] = e
            acc += e * e
        class_sqnorm[c] += acc


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
    class_correct,
    class_loss,
    decisions,
    logits,
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

    Ties in the network's decision go to the lowest class index.

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
    class_correct : ndarray, shape (C,), int64, updated in place
    decisions : ndarray, shape (B,), int64, written with argmax of the logits
    logits : ndarray, shape (C,), float64, scratch space for one row
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
        # Logits: argmax (first on ties) and a cross-entropy that keeps its digits
        # near zero loss: log(sum exp(l - m)) = log1p(sum over the non-max terms).
        best = 0
        top = -np.inf
        for k in range(n_classes):
            v = np.float64(products[i, logit_start + k]) + logit_offsets[c, k]
            logits[k] = v
            if v > top:
                top = v
                best = k
        # The max term contributes exactly 1: leave it out and let log1p keep
        # the digits of a tiny remainder.
        logits[best] = -np.inf
        rest = 0.0
        for k in range(n_classes):
            rest += np.exp(logits[k] - top)
        own = top if c == best else logits[c]
        class_loss[c] += (top - own) + np.log1p(rest)
        decisions[i] = best
        if best == c:
            class_correct[c] += 1


@_jit
def ncc_mismatch(scores, mean_sqnorms, labels, decisions, class_mismatch):  # pragma: no cover
    """Count rows whose nearest class centre differs from the network's decision.

    ``scores[i, c] = <p_i, m_c>`` for the projected centred feature p_i and the
    projected centred train mean m_c, so ``||p_i - m_c||^2 = ||p_i||^2 +
    ||m_c||^2 - 2 scores[i, c]``; the first term is the same for every class and
    is left out.  Ties go to the lowest class index.

    Parameters
    ----------
    scores : ndarray, shape (B, C)
    mean_sqnorms : ndarray, shape (C,), float64
    labels, decisions : ndarray, shape (B,)
    class_mismatch : ndarray, shape (C,), int64, updated in place (by true class)
    """
    for i in range(scores.shape[0]):
        best = 0
        low = mean_sqnorms[0] - 2.0 * np.float64(scores[i, 0])
        for c in range(1, scores.shape[1]):
            v = mean_sqnorms[c] - 2.0 * np.float64(scores[i, c])
            if v < low:
                low = v
                best = c
        if best != decisions[i]:
            class_mismatch[labels[i]] += 1
