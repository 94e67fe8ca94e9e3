"""Independent, in-memory float64 reference for the metrics of ``METRICS.md``.

This module is deliberately written only from the definitions in ``METRICS.md``
and does not look at how :mod:`ncanalysis` computes anything. It favours being
obviously right over being fast: every covariance is formed explicitly as a
``d x d`` matrix, class statistics are computed with explicit loops over
classes, and the pseudo-inverse of Sigma_B is taken from an eigendecomposition
of the ``d x d`` matrix itself (the analyser uses the ``C x C`` Gram matrix of
the centred means instead; the two routes have the same nonzero spectrum, so
the same relative tolerance keeps the same eigenpairs unless a genuine
eigenvalue sits within round-off of the threshold). Keep ``d`` modest (a few
hundred at most) when using it.

The names of the returned values are those of the variables of the result
Dataset described in ``docs/dev/contract.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "SCALAR_METRICS",
    "COUNT_METRICS",
    "CLASS_FLOAT_METRICS",
    "CLASS_COUNT_METRICS",
    "class_statistics",
    "centred_means",
    "within_class_covariance",
    "between_class_covariance",
    "psd_pseudo_inverse",
    "pair_values",
    "cosine_matrix",
    "etf_error",
    "cross_entropy",
    "mean_cross_entropy",
    "network_predictions",
    "nearest_class_centre",
    "reference_metrics",
]

#: Float metrics with dimensions (epoch, split).
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

#: Integer metrics with dimensions (epoch, split).
COUNT_METRICS = ("n_samples", "nc1_rank", "n_classes_present")

#: Float metrics with dimensions (epoch, split, class).
CLASS_FLOAT_METRICS = (
    "class_mean_norm",
    "class_weight_norm",
    "class_nc1",
    "class_within_var",
)

#: Integer metrics with dimensions (epoch, split, class).
CLASS_COUNT_METRICS = ("class_count", "class_ncc_mismatch")


#: Metrics that are exactly 0 on an exact simplex ETF with W proportional to M~^T and b = 0.
ZERO_AT_COLLAPSE = (
    "nc1",
    "equinorm_means",
    "equinorm_weights",
    "equiangular_means",
    "equiangular_weights",
    "maxangle_means",
    "maxangle_weights",
    "self_duality",
    "ncc_mismatch",
)

def _float64_matrix(array: Any, name: str) -> np.ndarray:
    """Return ``array`` as a float64 numpy array (dask arrays are computed)."""
    if hasattr(array, "compute"):
        array = array.compute()
    out = np.asarray(array, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {out.shape}")
    return out


def _labels(array: Any) -> np.ndarray:
    """Return labels as a 1-D int64 numpy array (dask arrays are computed)."""
    if hasattr(array, "compute"):
        array = array.compute()
    return np.asarray(array).astype(np.int64).reshape(-1)


def class_statistics(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class counts, class means and within-class variances, one class at a time.

    A class without samples gets count 0 and NaN mean and variance (METRICS.md,
    "Splits that miss classes").

    Parameters
    ----------
    features : ndarray, shape (N, d), float64
    labels : ndarray, shape (N,), int
    num_classes : int
        C.

    Returns
    -------
    counts : ndarray, shape (C,), int64
        n_c.
    means : ndarray, shape (C, d)
        mu_c = (1/n_c) sum_{y_i=c} h_i (row c is mu_c).
    within_var : ndarray, shape (C,)
        s_c^2 = (1/n_c) sum_{y_i=c} ||h_i - mu_c||^2.
    """
    d = features.shape[1]
    counts = np.zeros(num_classes, dtype=np.int64)
    means = np.zeros((num_classes, d))
    within_var = np.zeros(num_classes)
    for c in range(num_classes):
        members = features[labels == c]
        if members.shape[0] == 0:
            means[c] = np.nan
            within_var[c] = np.nan
            continue
        counts[c] = members.shape[0]
        means[c] = members.mean(axis=0)
        residuals = members - means[c]
        within_var[c] = np.mean(np.sum(residuals**2, axis=1))
    return counts, means, within_var


def centred_means(
    features: np.ndarray, means: np.ndarray, global_mean: str = "class"
) -> tuple[np.ndarray, np.ndarray]:
    """Global mean mu_G and the centred-means matrix M~ (d x C).

    Only the classes present (rows of ``means`` that are not NaN) define mu_G
    with ``"class"``; the columns of absent classes are NaN.

    Parameters
    ----------
    features : ndarray, shape (N, d)
    means : ndarray, shape (C, d)
        Class means, one per row.
    global_mean : {"class", "sample"}
        ``"class"``: mu_G = (1/C) sum_c mu_c (the default of METRICS.md);
        ``"sample"``: mu_G = (1/N) sum_i h_i.

    Returns
    -------
    mu_g : ndarray, shape (d,)
    m_tilde : ndarray, shape (d, C)
        Column c is mu_c - mu_G.
    """
    if global_mean == "class":
        present = [c for c in range(means.shape[0]) if not np.isnan(means[c]).any()]
        mu_g = sum(means[c] for c in present) / len(present)
    elif global_mean == "sample":
        mu_g = features.mean(axis=0)
    else:
        raise ValueError(f"unknown global_mean {global_mean!r}")
    m_tilde = np.stack([means[c] - mu_g for c in range(means.shape[0])], axis=1)
    return mu_g, m_tilde


def within_class_covariance(
    features: np.ndarray, labels: np.ndarray, means: np.ndarray
) -> np.ndarray:
    """Pooled within-class covariance, explicitly as a d x d matrix.

    Sigma_W = (1/N) sum_i (h_i - mu_{y_i}) (h_i - mu_{y_i})^T, formed from the
    residuals (never as E[h h^T] - mu mu^T).
    """
    residuals = features - means[labels]
    return residuals.T @ residuals / features.shape[0]


def between_class_covariance(m_tilde: np.ndarray) -> np.ndarray:
    """Between-class covariance Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T (d x d)."""
    num_classes = m_tilde.shape[1]
    sigma_b = sum(np.outer(m_tilde[:, c], m_tilde[:, c]) for c in range(num_classes))
    return sigma_b / num_classes


def psd_pseudo_inverse(matrix: np.ndarray, rtol: float) -> tuple[np.ndarray, int]:
    """Pseudo-inverse of a symmetric positive semi-definite matrix by ``eigh``.

    Eigenvalues ``lambda > rtol * max(lambda)`` are kept; the others (round-off
    and genuinely tiny directions alike) are treated as zero.

    Parameters
    ----------
    matrix : ndarray, shape (d, d)
        Symmetric PSD matrix (Sigma_B here).
    rtol : float
        Relative tolerance, with respect to the largest eigenvalue.

    Returns
    -------
    pinv : ndarray, shape (d, d)
        sum_k u_k u_k^T / lambda_k over the kept eigenpairs.
    rank : int
        Number of eigenpairs kept.
    """
    symmetric = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
    largest = eigenvalues.max() if eigenvalues.size else 0.0
    if not largest > 0:
        return np.zeros_like(matrix), 0
    keep = eigenvalues > rtol * largest
    kept_vectors = eigenvectors[:, keep]
    pinv = kept_vectors @ np.diag(1.0 / eigenvalues[keep]) @ kept_vectors.T
    return pinv, int(keep.sum())


def pair_values(matrix: np.ndarray) -> np.ndarray:
    """Entries (c, c') of a C x C matrix over all ordered pairs c != c'."""
    num_classes = matrix.shape[0]
    return np.array(
        [matrix[c, k] for c in range(num_classes) for k in range(num_classes) if c != k]
    )


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Cosine of the angle between every pair of rows of ``vectors`` (C x C)."""
    num = vectors.shape[0]
    out = np.empty((num, num))
    for a in range(num):
        for b in range(num):
            out[a, b] = vectors[a] @ vectors[b] / (
                np.linalg.norm(vectors[a]) * np.linalg.norm(vectors[b])
            )
    return out


def _std_over_avg(values: np.ndarray) -> float:
    """Population Std divided by Avg."""
    return float(np.std(values, ddof=0) / np.mean(values))


def _maxangle(cosines: np.ndarray) -> float:
    """Avg_{c != c'} |cos(c,c') + 1/(C-1)|."""
    num_classes = cosines.shape[0]
    return float(np.mean(np.abs(pair_values(cosines) + 1.0 / (num_classes - 1))))


def etf_error(gram: np.ndarray) -> float:
    """|| G/||G||_F - (I - 11^T/C)/sqrt(C-1) ||_F for a C x C Gram matrix G."""
    num_classes = gram.shape[0]
    target = (np.eye(num_classes) - np.ones((num_classes, num_classes)) / num_classes) / np.sqrt(
        num_classes - 1
    )
    return float(np.linalg.norm(gram / np.linalg.norm(gram, "fro") - target, "fro"))


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the logits against the labels (see :func:`cross_entropy`)."""
    return float(np.mean(cross_entropy(logits, labels)))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy, stable for huge logits and accurate for tiny losses.

    loss_i = log sum_c exp(z_ic) - z_{i, y_i}. With m_i = max_c z_ic at class k_i
    and s_i = sum_{c != k_i} exp(z_ic - m_i) (every term <= 1: no overflow),

        loss_i = (m_i - z_{i, y_i}) + log1p(s_i).

    ``log1p`` keeps the digits of a confident sample's loss (~s_i, e.g. 1e-14),
    which ``log(1 + s_i)`` = ``log(sum exp(z - m))`` would round away.
    """
    rows = np.arange(logits.shape[0])
    top = np.argmax(logits, axis=1)
    shift = logits[rows, top]
    terms = np.exp(logits - shift[:, None])
    terms[rows, top] = 0.0
    others = terms.sum(axis=1)
    picked = logits[rows, labels]
    return (shift - picked) + np.log1p(others)


def network_predictions(logits: np.ndarray) -> np.ndarray:
    """argmax_c of the logits; ties go to the lowest class index (numpy's rule)."""
    return np.argmax(logits, axis=1)


def nearest_class_centre(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """argmin_c ||h_i - mu_c||; ties go to the lowest class index.

    Distances are taken directly from the differences h_i - mu_c in float64
    (no expansion into ||h||^2 - 2 h.mu + ||mu||^2, which would cancel).
    """
    distances = np.stack(
        [np.linalg.norm(features - centres[c], axis=1) for c in range(centres.shape[0])],
        axis=1,
    )
    return np.argmin(distances, axis=1)


def reference_metrics(
    splits: Mapping[str, tuple[Any, Any]],
    weight: Any,
    bias: Any = None,
    *,
    global_mean: str = "class",
    pinv_rtol: float = 1e-10,
    ncc_reference: str = "train",
) -> dict[str, dict[str, Any]]:
    """Every metric of METRICS.md, per split, in float64.

    Parameters
    ----------
    splits : mapping of str to (features, labels)
        ``features`` (N, d) and ``labels`` (N,) per split; numpy or dask.
    weight : array_like, shape (C, d)
        Classifier weights W (row c is w_c).
    bias : array_like, shape (C,), optional
        Classifier bias b; zeros when None.
    global_mean : {"class", "sample"}
        Definition of mu_G.
    pinv_rtol : float
        Relative eigenvalue tolerance of the pseudo-inverse of Sigma_B.
        A split other than ``ncc_reference`` may miss classes: its means-side
        metrics use only the C' classes it has (``n_classes_present``), NaN when
        C' = 1, and the per-class values of absent classes are NaN (counts 0).
    ncc_reference : str
        Split whose class means define the nearest-class-centre rule (NC4).
        When it is absent, ``ncc_mismatch`` is NaN and ``class_ncc_mismatch``
        is -1.

    Returns
    -------
    dict
        ``{split: {name: value}}`` with every name of :data:`SCALAR_METRICS`
        (float), :data:`COUNT_METRICS` (int), and :data:`CLASS_FLOAT_METRICS`
        and :data:`CLASS_COUNT_METRICS` (arrays of length C).
    """
    w = _float64_matrix(weight, "weight")
    num_classes = w.shape[0]
    b = np.zeros(num_classes) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    if num_classes < 2:
        raise ValueError("need at least 2 classes")

    data = {
        name: (_float64_matrix(features, f"features of {name}"), _labels(labels))
        for name, (features, labels) in splits.items()
    }

    ncc_centres = None
    if ncc_reference in data:
        ref_features, ref_labels = data[ncc_reference]
        ref_counts, ncc_centres, _ = class_statistics(ref_features, ref_labels, num_classes)
        if (ref_counts == 0).any():
            raise ValueError(f"the {ncc_reference!r} split misses classes")

    # Quantities that depend on W only.
    weight_norms = np.array([np.linalg.norm(w[c]) for c in range(num_classes)])
    cos_w = cosine_matrix(w)
    nan = float("nan")

    results: dict[str, dict[str, Any]] = {}
    for name, (h, y) in data.items():
        n = h.shape[0]
        counts, means, within_var = class_statistics(h, y, num_classes)
        # Only the C' classes present in the split enter the means-side metrics.
        present = [c for c in range(num_classes) if counts[c] > 0]
        c_present = len(present)
        mu_g, m_tilde = centred_means(h, means, global_mean)
        m_present = m_tilde[:, present]

        sigma_w = within_class_covariance(h, y, means)
        sigma_b = between_class_covariance(m_present)  # (1/C') sum over present classes
        sigma_b_pinv, rank = psd_pseudo_inverse(sigma_b, pinv_rtol)

        # NC1 and its per-class shares (absent classes: NaN).
        class_nc1 = np.full(num_classes, np.nan)
        mean_norms = np.full(num_classes, np.nan)
        for c in present:
            mean_norms[c] = np.linalg.norm(m_tilde[:, c])
            if c_present >= 2:  # NC1 needs Sigma_B, i.e. two classes
                residuals = h[y == c] - means[c]
                quad = np.einsum("id,de,ie->i", residuals, sigma_b_pinv, residuals)
                class_nc1[c] = quad.sum() / n / c_present

        # Network decision, accuracy, loss: every sample, all C classes.
        logits = h @ w.T + b
        predictions = network_predictions(logits)
        accuracy = float(np.mean(predictions == y))
        loss = mean_cross_entropy(logits, y)

        # NC4 with the reference split's class means (all C of them).
        if ncc_centres is not None:
            mismatch = nearest_class_centre(h, ncc_centres) != predictions
            ncc_mismatch = float(np.mean(mismatch))
            class_ncc = np.array(
                [int(np.sum(mismatch[y == c])) for c in range(num_classes)], dtype=np.int64
            )
        else:
            ncc_mismatch = float("nan")
            class_ncc = np.full(num_classes, -1, dtype=np.int64)

        if c_present >= 2:
            mean_norms_present = mean_norms[present]
            cos_mu = cosine_matrix(m_present.T)
            w_present = w[present]
            cdnv_pairs = [
                (within_var[c] + within_var[k]) / (2.0 * np.sum((means[c] - means[k]) ** 2))
                for c in present
                for k in present
                if c != k
            ]
            means_side = {
                "nc1": float(np.trace(sigma_w @ sigma_b_pinv) / c_present),
                "equinorm_means": _std_over_avg(mean_norms_present),
                "equiangular_means": float(np.std(pair_values(cos_mu), ddof=0)),
                "maxangle_means": _maxangle(cos_mu),
                "self_duality": float(
                    np.linalg.norm(
                        w_present.T / np.linalg.norm(w_present, "fro")
                        - m_present / np.linalg.norm(m_present, "fro"),
                        "fro",
                    )
                    ** 2
                ),
                "nc1_trace_ratio": float(np.trace(sigma_w) / np.trace(sigma_b)),
                "cdnv": float(np.mean(cdnv_pairs)),
                "etf_error_means": etf_error(m_present.T @ m_present),
            }
        else:
            # One class: Sigma_B = 0, no pairs, M~ = 0: these are undefined.
            means_side = dict.fromkeys(
                ("nc1", "equinorm_means", "equiangular_means", "maxangle_means",
                 "self_duality", "nc1_trace_ratio", "cdnv", "etf_error_means"),
                nan,
            )

        results[name] = {
            **means_side,
            "equinorm_weights": _std_over_avg(weight_norms),
            "equiangular_weights": float(np.std(pair_values(cos_w), ddof=0)),
            "maxangle_weights": _maxangle(cos_w),
            "ncc_mismatch": ncc_mismatch,
            "accuracy": accuracy,
            "loss": loss,
            "etf_error_weights": etf_error(w @ w.T),
            "bias_collapse": float(np.linalg.norm(w @ mu_g + b)),
            "n_samples": int(n),
            "nc1_rank": int(rank),
            "n_classes_present": int(c_present),
            "class_count": counts,
            "class_mean_norm": mean_norms,
            "class_weight_norm": weight_norms.copy(),
            "class_nc1": class_nc1,
            "class_within_var": within_var,
            "class_ncc_mismatch": class_ncc,
        }
    return results


# ---------------------------------------------------------------------------
# Comparison helpers for the tests (not part of the definitions above).

#: Metrics that are small by nature near collapse: compared relatively, with no
#: absolute floor of their own (a floor proportional to the split's value is used
#: for the per-class ones, see :func:`assert_split_matches`).
RELATIVE_ONLY = ("nc1", "nc1_trace_ratio", "cdnv")


def dataset_split(ds: Any, split: str, epoch: int | None = None) -> dict[str, Any]:
    """Values of one (epoch, split) of a result Dataset, shaped like :func:`reference_metrics`."""
    if epoch is None:
        epoch = int(ds["epoch"].values[0])
    out: dict[str, Any] = {}
    for name in SCALAR_METRICS:
        out[name] = float(ds[name].sel(epoch=epoch, split=split).values)
    for name in COUNT_METRICS:
        out[name] = int(ds[name].sel(epoch=epoch, split=split).values)
    for name in CLASS_FLOAT_METRICS + CLASS_COUNT_METRICS:
        da = ds[name].sel(epoch=epoch, split=split).transpose("class")
        out[name] = np.asarray(da.values)
    return out


def split_mismatches(
    actual: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-12,
    skip: tuple[str, ...] = (),
    allowance: Mapping[str, float] | None = None,
) -> list[str]:
    """Every disagreement between two per-split dicts, described with the numbers.

    Float metrics: ``|a - e| <= atol + rtol |e|`` (``atol`` is the absolute
    floor for values that are ~0; :data:`RELATIVE_ONLY` metrics get none, and
    ``class_nc1`` / ``class_within_var`` get ``atol`` times their split total).
    ``accuracy`` and ``ncc_mismatch`` are fractions of counts: they must agree to
    1e-12. Integer metrics must be identical. NaN must match NaN.
    ``allowance`` adds a documented absolute error budget to named scalar
    metrics (see :func:`float32_logit_loss_allowance`).
    """
    allowance = dict(allowance or {})
    problems: list[str] = []
    for name in SCALAR_METRICS:
        if name in skip:
            continue
        a, e = actual[name], expected[name]
        if np.isnan(e) or np.isnan(a):
            if not (np.isnan(e) and np.isnan(a)):
                problems.append(f"{name}: got {a!r}, reference {e!r}")
            continue
        if name in ("accuracy", "ncc_mismatch"):
            tol = 1e-12
        elif name in RELATIVE_ONLY:
            tol = rtol * abs(e)
        else:
            tol = atol + rtol * abs(e)
        tol += allowance.get(name, 0.0)
        if not abs(a - e) <= tol:
            rel = abs(a - e) / abs(e) if e != 0 else float("inf")
            problems.append(f"{name}: got {a!r}, reference {e!r} (abs err {abs(a - e):.3g}, rel err {rel:.3g})")
    for name in COUNT_METRICS:
        if name not in skip and int(actual[name]) != int(expected[name]):
            problems.append(f"{name}: got {actual[name]}, reference {expected[name]}")
    for name in CLASS_COUNT_METRICS:
        if name not in skip and not np.array_equal(np.asarray(actual[name]), np.asarray(expected[name])):
            got, want = np.asarray(actual[name]).tolist(), np.asarray(expected[name]).tolist()
            problems.append(f"{name}: got {got}, reference {want}")
    for name in CLASS_FLOAT_METRICS:
        if name in skip:
            continue
        a = np.asarray(actual[name], dtype=np.float64)
        e = np.asarray(expected[name], dtype=np.float64)
        if a.shape != e.shape:
            problems.append(f"{name}: shape {a.shape}, reference {e.shape}")
            continue
        if not np.array_equal(np.isnan(a), np.isnan(e)):
            problems.append(
                f"{name}: NaN at classes {np.flatnonzero(np.isnan(a)).tolist()}, reference "
                f"{np.flatnonzero(np.isnan(e)).tolist()}"
            )
            continue
        floor = atol * float(np.nansum(np.abs(e))) if name in ("class_nc1", "class_within_var") else atol
        err = np.abs(a - e)
        bad = ~(err <= floor + rtol * np.abs(e)) & ~np.isnan(e)
        if bad.any():
            relative = err / np.maximum(np.abs(e), 1e-300)
            worst = int(np.argmax(np.where(bad, relative, 0)))
            problems.append(
                f"{name}: classes {np.flatnonzero(bad).tolist()} differ; worst class {worst}: "
                f"got {float(a[worst])!r}, reference {float(e[worst])!r} (rel err {relative[worst]:.3g})"
            )
    return problems


def decision_margins(
    splits: Mapping[str, tuple[Any, Any]], weight: Any, bias: Any = None, ncc_reference: str = "train"
) -> dict[str, tuple[float, float]]:
    """Smallest relative gaps of the two decision rules, per split.

    Returns ``{split: (logit_gap, ncc_gap)}``: the smallest gap between the
    largest and second-largest logit, divided by the largest |logit| of the
    split, and the same for the two smallest NCC distances (divided by the
    largest distance). A comparison of ``accuracy`` or ``ncc_mismatch`` between
    two implementations is well posed only when these are far above round-off.
    """
    w = _float64_matrix(weight, "weight")
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    data = {k: (_float64_matrix(x, k), _labels(y)) for k, (x, y) in splits.items()}
    centres = None
    if ncc_reference in data:
        _, centres, _ = class_statistics(*data[ncc_reference], w.shape[0])
    out = {}
    for name, (h, _) in data.items():
        logits = np.sort(h @ w.T + b, axis=1)
        logit_gap = float(np.min(logits[:, -1] - logits[:, -2]) / np.max(np.abs(logits)))
        ncc_gap = float("inf")
        if centres is not None:
            dist = np.sort(
                np.stack([np.linalg.norm(h - centres[c], axis=1) for c in range(w.shape[0])], axis=1),
                axis=1,
            )
            ncc_gap = float(np.min(dist[:, 1] - dist[:, 0]) / np.max(dist))
        out[name] = (logit_gap, ncc_gap)
    return out


def float32_logit_loss_allowance(
    splits: Mapping[str, tuple[Any, Any]],
    weight: Any,
    bias: Any = None,
    *,
    global_mean: str = "class",
) -> dict[str, float]:
    """Absolute error budget of the mean cross-entropy when logits come from a float32 GEMM.

    A float32 GEMM of the centred features (h_i - mu_G) with W perturbs each logit
    by at most about ``delta_i = 2 sqrt(d) eps32 max_c ||w_c|| ||h_i - mu_G||``
    (the shift W mu_G + b can be added in float64). Since
    d loss_i = sum_c (p_ic - [c = y_i]) dz_ic, ``|d loss_i| <= 2 (1 - p_{i y_i}) delta_i``,
    and the budget of the mean is the mean of these. It is small next to the
    loss unless the logits are large (|z| ~ 100 gives ~1e-5 relative).
    """
    eps32 = float(np.finfo(np.float32).eps)
    w = _float64_matrix(weight, "weight")
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    out = {}
    for name, (features, labels) in splits.items():
        h, y = _float64_matrix(features, name), _labels(labels)
        _, means, _ = class_statistics(h, y, w.shape[0])
        mu_g, _ = centred_means(h, means, global_mean)
        # 1 - p_{i y_i} = 1 - exp(-loss_i), accurately for tiny losses
        miss = -np.expm1(-cross_entropy(h @ w.T + b, y))
        delta = 2.0 * np.sqrt(w.shape[1]) * eps32 * np.linalg.norm(w, axis=1).max() * np.linalg.norm(h - mu_g, axis=1)
        out[name] = float(np.mean(2.0 * miss * delta))
    return out
