"""Numba kernels for the per-block statistics.

Every kernel is serial and releases the GIL (``nogil=True``): dask supplies the
parallelism by running several blocks at once, and numba's own parallel layer
aborts when it is entered from dask's threads.  Feature inputs are float32 or
float64 blocks, or float16 blocks viewed as ``uint16`` bits: numba has no
float16 type, and numpy's float16 -> float32 cast costs an extra pass over
memory, so the kernels convert the bits as they read, with LLVM's half-precision
extension (one F16C instruction per 8 values on x86; exact).
Every sum is accumulated in float64.

The kernels return the first offending row (or -1) instead of raising, so that
the caller can name the epoch, split and absolute row in its error message.
Decisions (argmax of the logits, nearest class centre) go to the lowest class
index on ties; rows too close to call after float32 or projected arithmetic are
flagged and decided again exactly by :func:`exact_decisions`.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

__all__ = [
    "kernel_input",
    "class_sums",
    "class_residuals",
    "ScatterPlan",
    "ScatterOutputs",
    "scatter_logits",
    "ncc_decisions",
    "exact_decisions",
]

_jit = numba.njit(nogil=True, cache=True, fastmath=False)
# For loops that only add up many terms: letting LLVM reorder the sum is what
# lets it vectorise them; the result changes at float64 round-off only.
_jit_sum = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})

# exp(x) for x <= 0, see _exp_nonpositive: Cody-Waite split of ln 2 and 1/k!.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
# Below this, exp(x) is 0.0 in float64 (the smallest subnormal is exp(-744.4)).
_EXP_UNDERFLOW = -745.5


def kernel_input(block: np.ndarray) -> np.ndarray:
    """A block as the kernels take it: float16 as its uint16 bits, else float32/float64."""
    block = np.asarray(block)
    if block.dtype == np.float16:
        return np.ascontiguousarray(block).view(np.uint16)
    dtype = np.float64 if block.dtype == np.float64 else np.float32
    return np.ascontiguousarray(block, dtype=dtype)


@intrinsic
def _float16_bits_to_float32(typingctx, bits):
    """The float32 value of float16 bits (exact; NaN and inf preserved)."""
    # numba's stubs omit Integer.bitwidth, set in its __init__.
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 16):  # type: ignore[attr-defined]
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


def _value(x):  # pragma: no cover - replaced by the overload in compiled code
    """The float value of one stored element (float16 bits are decoded)."""


@overload(_value, inline="always")
def _value_overload(x):
    if isinstance(x, types.Integer):
        # numba's stubs type an @intrinsic as taking typingctx too; compiled code omits it.
        return lambda x: _float16_bits_to_float32(x)  # type: ignore[call-arg]
    return lambda x: x


def _not_finite(x):  # pragma: no cover - replaced by the overload in compiled code
    """Whether one stored element is NaN or inf."""


@overload(_not_finite, inline="always")
def _not_finite_overload(x):
    if isinstance(x, types.Integer):
        # float16 bits: all-ones exponent.  A branch-free test that vectorises.
        return lambda x: (x & 0x7C00) == 0x7C00
    return lambda x: not np.isfinite(x)


@numba.njit(inline="always")
def _pow2(k):  # pragma: no cover - compiled
    """2.0**k for -1022 <= k <= 1023, built from its exponent bits."""
    return np.int64((k + 1023) << 52).view(np.float64)


@numba.njit(inline="always")
def _exp_nonpositive(x):  # pragma: no cover - compiled
    """exp(x) for x <= 0 (and -inf) within 1 ulp, in straight-line code.

    libm's exp is a call that stops the loop around it from vectorising (5.5 ns
    per element here, against 2 ns for this one).  x = k ln 2 + r with
    |r| <= ln(2)/2, exp(r) by its Taylor series to r^13 (truncation below
    4e-18), and 2^k applied as two normal powers of two so that results down to
    the subnormal range come out right.
    """
    x = max(x, _EXP_UNDERFLOW)
    k_float = np.floor(x * _INV_LN2 + 0.5)
    r = (x - k_float * _LN2_HI) - k_float * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    k = np.int64(k_float)
    half = k >> 1
    return p * _pow2(half) * _pow2(k - half)


@_jit
def class_sums(features, labels, counts, sums):  # pragma: no cover - compiled
    """Add each row of ``features`` to the float64 sum of its class.

    Parameters
    ----------
    features : ndarray, shape (B, d), float32, float64 or uint16 (float16 bits)
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
        bad = False
        for j in range(n_features):
            bad |= _not_finite(features[i, j])
        if bad:
            if bad_value < 0:
                bad_value = i
            continue
        counts[c] += 1
        for j in range(n_features):
            sums[c, j] += _value(features[i, j])
    return bad_label, bad_value


@_jit_sum
def class_residuals(
    features, labels, means, residuals, class_sqnorm, row_sqnorm
):  # pragma: no cover - compiled
    """Subtract each row's class mean in float64 and store the residual.

    The subtraction happens in float64 before the residual is cast to the GEMM
    dtype of ``residuals``: late in training the residual is 1e-3 to 1e-4 of the
    feature norm, and subtracting after a low-precision product would cancel.

    Features are finite here (pass 1 rejects NaN and inf); a NaN that got
    through anyway makes the row's and its class's squared norms NaN.

    Parameters
    ----------
    features : ndarray, shape (B, d), float32, float64 or uint16 (float16 bits)
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
            e = np.float64(_value(features[i, j])) - means[c, j]
            residuals[i, j] = e
            acc += e * e
        class_sqnorm[c] += acc
        row_sqnorm[i] = acc


class ScatterPlan(NamedTuple):
    """The read-only inputs of :func:`scatter_logits`, fixed for a split and epoch.

    A named tuple is a numba type of its own (one field per attribute, read
    without overhead in compiled code), so the kernel takes one argument here
    instead of eight.

    Attributes
    ----------
    inv_eigenvalues : ndarray, shape (r,), float64
        1 / lambda_k of the kept eigenpairs of the split's Sigma_B.
    ncc_start : int
        First column of the train-basis projections in ``products``.
    ncc_offsets : ndarray, shape (C, r_t), float64 (r_t may be 0)
        Added to a row's train-basis projections by its label.
    train_means_projected : ndarray, shape (C, r_t)
        The projected centred train means m_c.
    logit_start : int
        First column of the logits in ``products``.
    logit_offsets : ndarray, shape (C, C), float64
        Added to a row's logit columns by its label (``W mu_y + b``).
    weight_norm : float
        max_c ||w_c||.
    tie_scale : float
        Relative round-off bound: a row whose two largest logits are closer
        than ``tie_scale * (||residual|| max_c ||w_c|| + |top|)`` is flagged
        for an exact float64 decision.
    """

    inv_eigenvalues: np.ndarray
    ncc_start: int
    ncc_offsets: np.ndarray
    train_means_projected: np.ndarray
    logit_start: int
    logit_offsets: np.ndarray
    weight_norm: float
    tie_scale: float


class ScatterOutputs(NamedTuple):
    """The arrays that :func:`scatter_logits` writes or adds to (B rows, C classes).

    Attributes
    ----------
    projected : ndarray, shape (B, r_t), written
        Each row's centred feature projected onto the train basis, p.
    projected_sqnorm, centre_sqdist : ndarray, shape (B,), float64, written
        ||p||^2 and ||p - m_y||^2.
    decisions : ndarray, shape (B,), int64, written
        Argmax of the logits (ties to the lowest index).
    recheck : ndarray, shape (B,), bool
        Set where a decision is too close to call (never cleared).
    class_nc1, class_loss : ndarray, shape (C,), float64, added to
        NC1 terms and cross-entropy, by true label.
    logits : ndarray, shape (C,), float64
        Scratch space for one row.
    """

    projected: np.ndarray
    projected_sqnorm: np.ndarray
    centre_sqdist: np.ndarray
    decisions: np.ndarray
    recheck: np.ndarray
    class_nc1: np.ndarray
    class_loss: np.ndarray
    logits: np.ndarray


@_jit_sum
def scatter_logits(products, labels, row_sqnorm, plan, out):  # pragma: no cover - compiled
    """Turn one block's GEMM output into NC1 terms, NCC inputs and logit decisions.

    ``products`` holds, per row, the residual times ``[U_s | U_train | W^T]``
    (the ``U_train`` part is absent on the train split, where it equals
    ``U_s``).  Adding the per-class offsets restores the full quantities:

    - columns ``0..r-1``: projections R of the residual onto the split's own
      between-class basis; ``sum_k R_k^2 / lambda_k`` is the row's NC1 term;
    - columns ``ncc_start..ncc_start+r_t-1`` plus ``ncc_offsets[y]``: the row's
      centred feature p projected onto the train basis (written to
      ``out.projected``), with ||p||^2 and the squared distance ||p - m_y||^2
      to its own projected train class centre (for the NCC shortcut of the caller);
    - columns ``logit_start..`` plus ``logit_offsets[y]``: the logits W h + b.

    Inputs are finite (pass 1 rejects NaN and inf features, the engine checks
    the classifier); a NaN that got through anyway turns the class's NC1 and
    loss sums into NaN rather than vanishing.

    Parameters
    ----------
    products : ndarray, shape (B, K), float32 or float64
    labels : ndarray, shape (B,), integer in ``0..C-1``
    row_sqnorm : ndarray, shape (B,), squared residual norms (for the round-off bound)
    plan : ScatterPlan
    out : ScatterOutputs
    """
    inv_eigenvalues = plan.inv_eigenvalues
    ncc_start = plan.ncc_start
    ncc_offsets = plan.ncc_offsets
    train_means_projected = plan.train_means_projected
    logit_start = plan.logit_start
    logit_offsets = plan.logit_offsets
    weight_norm = plan.weight_norm
    tie_scale = plan.tie_scale
    projected = out.projected
    projected_sqnorm = out.projected_sqnorm
    centre_sqdist = out.centre_sqdist
    decisions = out.decisions
    recheck = out.recheck
    class_nc1 = out.class_nc1
    class_loss = out.class_loss
    logits = out.logits
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
        p_sq = 0.0
        e_sq = 0.0
        for k in range(n_proj):
            p = products[i, ncc_start + k] + ncc_offsets[c, k]
            projected[i, k] = p
            e = p - train_means_projected[c, k]
            p_sq += p * p
            e_sq += e * e
        projected_sqnorm[i] = p_sq
        centre_sqdist[i] = e_sq
        for k in range(n_classes):
            logits[k] = np.float64(products[i, logit_start + k]) + logit_offsets[c, k]
        best = 0
        top = logits[0]
        second = -np.inf
        for k in range(1, n_classes):
            v = logits[k]
            if v > top:  # strict: ties go to the lowest index
                second = top
                top = v
                best = k
            elif v > second:
                second = v
        # Cross-entropy that keeps its digits near zero loss: the max term of
        # sum exp(l - top) is exactly 1, so leave it out and use log1p.
        # (This loop vectorises only with nothing but the sum in it.)
        own = logits[c]
        logits[best] = -np.inf
        rest = 0.0
        for k in range(n_classes):
            rest += _exp_nonpositive(logits[k] - top)
        if top - second <= tie_scale * (np.sqrt(row_sqnorm[i]) * weight_norm + abs(top)):
            recheck[i] = True
        class_loss[c] += (top - own) + np.log1p(rest)
        decisions[i] = best


@_jit
def ncc_decisions(
    scores, mean_sqnorms, projected_sqnorm, tie_scale, nearest, recheck
):  # pragma: no cover - compiled
    """Nearest train class centre of each row, from projected inner products.

    ``scores[i, c] = <p_i, m_c>`` for the projected centred feature p_i and the
    projected centred train mean m_c, so ``||p_i - m_c||^2 = ||p_i||^2 +
    ||m_c||^2 - 2 scores[i, c]``; the first term is the same for every class and
    is left out.  Ties go to the lowest class index.  Inputs are finite (pass 1
    checks the features, the engine the classifier); NaN is not looked for here.

    Parameters
    ----------
    scores : ndarray, shape (B, C)
    mean_sqnorms : ndarray, shape (C,), float64
    projected_sqnorm : ndarray, shape (B,), the ||p_i||^2 (for the round-off bound)
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
        size = np.sqrt(projected_sqnorm[i]) + np.sqrt(largest)
        if second - low <= tie_scale * size * size:
            recheck[i] = True
        nearest[i] = best


@_jit
def exact_decisions(features, weight, bias, train_means, decisions, nearest):  # pragma: no cover
    """Both decisions of a few rows, directly in float64 (ties to the lowest index).

    Used for the rows that the fast path flagged as too close to call: logits
    ``<w_c, h> + b_c`` and squared distances ``||h - mu_c||^2`` summed term by
    term, so that mathematically equal values come out equal.
    Inputs are finite, as for :func:`ncc_decisions`.

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
