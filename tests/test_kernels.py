"""The numba kernels checked directly against numpy, libm and float64 references."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ncanalysis import kernels


@numba.njit
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = kernels._exp_nonpositive(x[i])


@pytest.fixture(scope="module")
def exp_grid() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            -np.linspace(0.0, 750.0, 300_001),
            -rng.uniform(0.0, 1.0, 50_000),
            -rng.exponential(40.0, 50_000),
            -np.logspace(-300, 0, 1_000),
            [0.0, -0.0, -np.log(2.0), -708.4, -744.4, -745.1, -745.6, -1e300, -np.inf],
        ]
    )
    out = np.empty_like(x)
    _exp_all(x, out)
    return x, out


def test_exp_within_one_ulp_in_the_normal_range(exp_grid):
    x, got = exp_grid
    want = np.exp(x)
    normal = want >= np.finfo(np.float64).tiny
    ulps = np.abs(got[normal] - want[normal]) / np.spacing(want[normal])
    assert ulps.max() <= 1.0


def test_exp_subnormal_range_and_underflow(exp_grid):
    x, got = exp_grid
    want = np.exp(x)
    small = want < np.finfo(np.float64).tiny
    # Subnormal results may differ by one unit of the smallest subnormal.
    assert np.abs(got[small] - want[small]).max() <= 5e-324
    assert np.all(got[x == 0.0] == 1.0)
    assert got[x < -746.0].max() == 0.0


@numba.njit
def _decode_all(bits, out, bad):
    for i in range(bits.shape[0]):
        out[i] = kernels._value(bits[i])
        bad[i] = kernels._not_finite(bits[i])


def test_float16_decoding_is_exact_for_every_bit_pattern():
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    got = np.empty(bits.size, dtype=np.float32)
    bad = np.empty(bits.size, dtype=np.bool_)
    _decode_all(bits, got, bad)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.array_equal(bad, ~np.isfinite(want))


# ---------------------------------------------------------------------------
# The per-block kernels against small float64 numpy computations.
#
# Each reference below is written from the kernel's contract (its docstring and
# METRICS.md), not from its loops: float64 numpy on the decoded inputs, numpy's
# argmax/argmin for "ties go to the lowest class index".  Integer-valued data
# makes every sum exact in float64, so ties are exact ties and decisions can be
# compared for equality.

FEATURE_DTYPES = (np.float16, np.float32, np.float64)


def ref_class_sums(features, labels, num_classes):
    """Counts and float64 sums over the rows with a valid label and finite values."""
    values = np.asarray(features, dtype=np.float64)
    good = (labels >= 0) & (labels < num_classes) & np.isfinite(values).all(axis=1)
    counts = np.zeros(num_classes, dtype=np.int64)
    sums = np.zeros((num_classes, values.shape[1]))
    for c in range(num_classes):
        rows = good & (labels == c)
        counts[c] = rows.sum()
        sums[c] = values[rows].sum(axis=0)
    return counts, sums


def first_true(mask) -> int:
    found = np.flatnonzero(mask)
    return int(found[0]) if found.size else -1


def run_class_sums(features, labels, num_classes, counts=None, sums=None):
    counts = np.zeros(num_classes, dtype=np.int64) if counts is None else counts
    sums = np.zeros((num_classes, features.shape[1])) if sums is None else sums
    bad = kernels.class_sums(
        kernels.kernel_input(features), np.asarray(labels, dtype=np.int64), counts, sums
    )
    return bad, counts, sums


@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
def test_class_sums_match_float64_sums(dtype):
    rng = np.random.default_rng(1)
    features = (rng.normal(size=(300, 7)) * 50).astype(dtype)
    labels = rng.integers(0, 5, 300)
    bad, counts, sums = run_class_sums(features, labels, 5)
    want_counts, want_sums = ref_class_sums(features, labels, 5)
    assert bad == (-1, -1)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-14, atol=0)


def test_class_sums_decode_float16_exactly():
    # Every float16 is an integer multiple of 2**-24, and these sums stay below
    # 2**29: the float64 sum of the decoded values is exact, whatever the order.
    values = np.array([65504.0, 6.0e-8, -3.0e-5, 1.0009765625, -65504.0, 0.333251953125])
    features = np.resize(values, (12, 6)).astype(np.float16)
    labels = np.arange(12) % 3
    _, _, sums = run_class_sums(features, labels, 3)
    want = np.zeros((3, 6))
    for i in range(12):
        want[labels[i]] += features[i].astype(np.float64)
    np.testing.assert_array_equal(sums, want)


def test_class_sums_add_to_what_is_there():
    """The caller passes the same accumulators for every sub-block of a block."""
    rng = np.random.default_rng(2)
    features = rng.normal(size=(50, 3))
    labels = rng.integers(0, 4, 50)
    _, counts, sums = run_class_sums(features[:20], labels[:20], 4)
    run_class_sums(features[20:], labels[20:], 4, counts, sums)
    want_counts, want_sums = ref_class_sums(features, labels, 4)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-14)


@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_class_sums_report_first_non_finite_row_and_skip_bad_rows(dtype, bad_value):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(40, 4)).astype(dtype)
    labels = rng.integers(0, 3, 40)
    features[[7, 21], [2, 0]] = bad_value
    labels[[11, 30]] = [3, -1]  # outside 0..2
    bad, counts, sums = run_class_sums(features, labels, 3)
    assert bad == (11, 7)
    want_counts, want_sums = ref_class_sums(features, labels, 3)
    assert want_counts.sum() == 36  # the reference left the 4 bad rows out too
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-14)


@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
def test_class_sums_empty_and_single_row_blocks(dtype):
    bad, counts, sums = run_class_sums(np.zeros((0, 5), dtype=dtype), np.zeros(0), 3)
    assert bad == (-1, -1)
    assert not counts.any() and not sums.any()
    row = np.array([[1.5, -2.0, 0.25, 8.0, 0.0]], dtype=dtype)
    bad, counts, sums = run_class_sums(row, np.array([2]), 3)
    assert bad == (-1, -1)
    np.testing.assert_array_equal(counts, [0, 0, 1])
    np.testing.assert_array_equal(sums, [[0.0] * 5, [0.0] * 5, row[0].astype(np.float64)])


@st.composite
def class_sums_blocks(draw):
    dtype = draw(st.sampled_from(FEATURE_DTYPES))
    rows = draw(st.integers(0, 30))
    dim = draw(st.integers(1, 5))
    num_classes = draw(st.integers(1, 4))
    features = draw(arrays(dtype, (rows, dim), elements=st.floats(
        -1e4, 1e4, allow_nan=False, width=np.dtype(dtype).itemsize * 8)))
    labels = draw(arrays(np.int64, rows, elements=st.integers(-1, num_classes)))
    poison = draw(arrays(np.bool_, (rows, dim)))
    features[poison] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return features, labels, num_classes


@given(class_sums_blocks())
@settings(max_examples=150, deadline=None)
def test_class_sums_property(block):
    features, labels, num_classes = block
    bad, counts, sums = run_class_sums(features, labels, num_classes)
    want_counts, want_sums = ref_class_sums(features, labels, num_classes)
    assert bad[0] == first_true((labels < 0) | (labels >= num_classes))
    # A row with a bad label is skipped before its values are looked at.
    label_ok = (labels >= 0) & (labels < num_classes)
    assert bad[1] == first_true(label_ok & ~np.isfinite(features.astype(np.float64)).all(axis=1))
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-13, atol=1e-9)


def ref_residuals(features, labels, means):
    """The float64 residuals h - mu_y and their squared norms."""
    residuals = np.asarray(features, dtype=np.float64) - means[labels]
    return residuals, (residuals**2).sum(axis=1)


def run_class_residuals(features, labels, means, out_dtype, class_sqnorm=None):
    rows = features.shape[0]
    residuals = np.full((rows, means.shape[1]), np.nan, dtype=out_dtype)
    row_sqnorm = np.full(rows, np.nan)
    class_sqnorm = np.zeros(means.shape[0]) if class_sqnorm is None else class_sqnorm
    kernels.class_residuals(kernels.kernel_input(features), np.asarray(labels, dtype=np.int64),
                            means, residuals, class_sqnorm, row_sqnorm)
    return residuals, class_sqnorm, row_sqnorm


@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_class_residuals_match_float64_residuals(dtype, out_dtype):
    rng = np.random.default_rng(4)
    means = rng.normal(size=(4, 9)) * 10
    labels = rng.integers(0, 4, 200)
    features = (means[labels] + rng.normal(size=(200, 9))).astype(dtype)
    before = np.array([1.0, 2.0, 0.0, 3.0])  # the caller's running per-class sums
    residuals, class_sqnorm, row_sqnorm = run_class_residuals(
        features, labels, means, out_dtype, before.copy())
    want, want_rows = ref_residuals(features, labels, means)
    # Subtracted in float64, then cast once: equal to the cast of the exact difference.
    np.testing.assert_array_equal(residuals, want.astype(out_dtype))
    np.testing.assert_allclose(row_sqnorm, want_rows, rtol=1e-13)
    want_class = before + np.bincount(labels, weights=want_rows, minlength=4)
    np.testing.assert_allclose(class_sqnorm, want_class, rtol=1e-13)


def test_class_residuals_subtract_before_the_cast():
    """Late-training residuals are far below the float32 spacing of the features."""
    features = np.full((3, 4), 1000.0, dtype=np.float32)
    means = np.full((1, 4), 1000.0 + 1e-5)  # not a float32 number; spacing at 1000 is 6e-5
    residuals, class_sqnorm, row_sqnorm = run_class_residuals(
        features, np.zeros(3), means, np.float32)
    np.testing.assert_allclose(residuals, -1e-5, rtol=1e-6)
    np.testing.assert_allclose(row_sqnorm, 4e-10, rtol=1e-6)
    np.testing.assert_allclose(class_sqnorm, [1.2e-9], rtol=1e-6)


def test_class_residuals_propagate_nan():
    """Pass 1 rejects NaN features; one that reached pass 2 must not vanish from the sums."""
    features = np.ones((3, 2))
    features[1, 1] = np.nan
    residuals, class_sqnorm, row_sqnorm = run_class_residuals(
        features, np.array([0, 1, 0]), np.zeros((2, 2)), np.float64)
    assert np.isnan(residuals[1, 1]) and np.isnan(row_sqnorm[1]) and np.isnan(class_sqnorm[1])
    np.testing.assert_array_equal(class_sqnorm[0], 4.0)


@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
def test_class_residuals_empty_and_single_row_blocks(dtype):
    means = np.array([[1.0, 2.0], [-1.0, 0.5]])
    residuals, class_sqnorm, row_sqnorm = run_class_residuals(
        np.zeros((0, 2), dtype=dtype), np.zeros(0), means, np.float64, np.array([5.0, 6.0]))
    assert residuals.shape == (0, 2) and row_sqnorm.shape == (0,)
    np.testing.assert_array_equal(class_sqnorm, [5.0, 6.0])
    residuals, class_sqnorm, row_sqnorm = run_class_residuals(
        np.array([[0.5, 2.5]], dtype=dtype), np.array([1]), means, np.float64)
    np.testing.assert_array_equal(residuals, [[1.5, 2.0]])
    np.testing.assert_array_equal(row_sqnorm, [6.25])
    np.testing.assert_array_equal(class_sqnorm, [0.0, 6.25])


# scatter_logits: ``products`` = [NC1 projections | train-basis projections | logits]
# minus the per-class offsets; the reference adds the offsets back and computes each
# output from its definition.

def make_scatter_case(rng, rows, num_classes, rank, n_proj, *, ncc_start=None,
                      dtype=np.float64, integer=False):
    """A random GEMM output and plan; ``integer`` makes every value a small integer."""
    ncc_start = rank if ncc_start is None else ncc_start
    logit_start = max(rank, ncc_start + n_proj)
    width = logit_start + num_classes

    def draw(*shape):
        values = rng.integers(-3, 4, shape) if integer else rng.normal(size=shape) * 3
        return values.astype(np.float64)

    return dict(
        products=draw(rows, width).astype(dtype),
        labels=rng.integers(0, num_classes, rows).astype(np.int64),
        row_sqnorm=rng.uniform(0.5, 2.0, rows),
        plan=kernels.ScatterPlan(
            inv_eigenvalues=rng.uniform(0.25, 4.0, rank),
            ncc_start=ncc_start,
            ncc_offsets=draw(num_classes, n_proj),
            train_means_projected=draw(num_classes, n_proj).astype(dtype),
            logit_start=logit_start,
            logit_offsets=draw(num_classes, num_classes),
            weight_norm=1.5,
            tie_scale=1e-12,
        ),
    )


def run_scatter(case, nc1=None, loss=None, recheck=None):
    products, plan = case["products"], case["plan"]
    rows, num_classes = products.shape[0], plan.logit_offsets.shape[0]
    n_proj = plan.ncc_offsets.shape[1]
    out = kernels.ScatterOutputs(
        projected=np.full((rows, n_proj), np.nan, dtype=products.dtype),
        projected_sqnorm=np.full(rows, np.nan),
        centre_sqdist=np.full(rows, np.nan),
        decisions=np.full(rows, -7, dtype=np.int64),
        recheck=np.zeros(rows, dtype=np.bool_) if recheck is None else recheck,
        class_nc1=np.zeros(num_classes) if nc1 is None else nc1,
        class_loss=np.zeros(num_classes) if loss is None else loss,
        logits=np.empty(num_classes),
    )
    kernels.scatter_logits(products, case["labels"], case["row_sqnorm"], plan, out)
    return out


def ref_scatter(case):
    """Every output of scatter_logits from its definition, in float64."""
    plan, labels = case["plan"], case["labels"]
    products = case["products"].astype(np.float64)
    num_classes, rank = plan.logit_offsets.shape[0], plan.inv_eigenvalues.shape[0]
    n_proj = plan.ncc_offsets.shape[1]
    nc1_terms = (products[:, :rank] ** 2 * plan.inv_eigenvalues).sum(axis=1)
    projected = (products[:, plan.ncc_start:plan.ncc_start + n_proj]
                 + plan.ncc_offsets[labels])
    centre = plan.train_means_projected.astype(np.float64)[labels]
    logits = (products[:, plan.logit_start:plan.logit_start + num_classes]
              + plan.logit_offsets[labels])
    rows = np.arange(labels.size)
    # log-sum-exp by numpy's own pairwise logaddexp (a different route from the kernel's).
    loss_terms = np.logaddexp.reduce(logits, axis=1) - logits[rows, labels]
    ordered = -np.sort(-logits, axis=1)
    gap = ordered[:, 0] - ordered[:, 1] if num_classes > 1 else np.full(labels.size, np.inf)
    bound = plan.tie_scale * (np.sqrt(case["row_sqnorm"]) * plan.weight_norm
                              + np.abs(ordered[:, 0]))
    return dict(
        class_nc1=np.bincount(labels, weights=nc1_terms, minlength=num_classes),
        projected=projected,
        projected_sqnorm=(projected**2).sum(axis=1),
        centre_sqdist=((projected - centre) ** 2).sum(axis=1),
        decisions=np.argmax(logits, axis=1),  # numpy: first maximum
        class_loss=np.bincount(labels, weights=loss_terms, minlength=num_classes),
        recheck=gap <= bound,
    )


def assert_scatter_matches(case, out, rtol=1e-12, nc1=0.0, loss=0.0):
    want = ref_scatter(case)
    np.testing.assert_array_equal(out.decisions, want["decisions"])
    np.testing.assert_array_equal(out.recheck, want["recheck"])
    np.testing.assert_allclose(out.projected, want["projected"].astype(out.projected.dtype),
                               rtol=rtol)
    for name in ("projected_sqnorm", "centre_sqdist"):
        np.testing.assert_allclose(getattr(out, name), want[name], rtol=rtol, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(out.class_nc1, nc1 + want["class_nc1"], rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(out.class_loss, loss + want["class_loss"], rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["test split", "train split", "no ncc"])
def test_scatter_logits_match_definitions(dtype, layout):
    rng = np.random.default_rng(5)
    rank, n_proj = 4, {"test split": 3, "train split": 4, "no ncc": 0}[layout]
    case = make_scatter_case(rng, 150, 5, rank, n_proj, dtype=dtype,
                             ncc_start=0 if layout == "train split" else None)
    nc1, loss = np.array([1.0, 0.0, 2.0, 0.5, 3.0]), np.array([0.25, 1.0, 0.0, 4.0, 2.0])
    out = run_scatter(case, nc1.copy(), loss.copy())
    assert_scatter_matches(case, out, rtol=1e-12, nc1=nc1, loss=loss)
    if layout == "no ncc":
        assert not out.projected_sqnorm.any() and not out.centre_sqdist.any()


def test_scatter_logits_ties_go_to_the_lowest_index_and_are_flagged():
    rng = np.random.default_rng(6)
    case = make_scatter_case(rng, 4, 4, 2, 0)
    case["labels"][:] = 0
    case["plan"] = case["plan"]._replace(logit_offsets=np.zeros((4, 4)), tie_scale=0.0)
    logits = np.array([[1.0, 3.0, 3.0, 2.0],
                       [5.0, 5.0, 5.0, 5.0],
                       [-1.0, -2.0, 0.0, 0.0],
                       [0.0, 2.0, 1.0, 2.0 - 2.0**-40]])
    case["products"][:, case["plan"].logit_start:] = logits
    out = run_scatter(case)
    np.testing.assert_array_equal(out.decisions, [1, 0, 2, 1])
    # An exact tie is too close to call even with a zero round-off bound.
    np.testing.assert_array_equal(out.recheck, [True, True, True, False])


def test_scatter_logits_flag_close_calls_and_never_clear_flags():
    rng = np.random.default_rng(7)
    case = make_scatter_case(rng, 3, 3, 2, 2)
    case["labels"][:] = 0
    case["row_sqnorm"][:] = 1.0
    plan = case["plan"] = case["plan"]._replace(
        logit_offsets=np.zeros((3, 3)), tie_scale=1e-3, weight_norm=2.0)
    # top 10: bound 1e-3 * (1 * 2 + 10) = 0.012.
    case["products"][:, plan.logit_start:] = [[10.0, 10.0 - 0.011, 0.0],
                                              [10.0, 10.0 - 0.013, 0.0],
                                              [10.0, 10.0 - 0.013, 0.0]]
    recheck = np.array([False, False, True])
    out = run_scatter(case, recheck=recheck)
    np.testing.assert_array_equal(out.recheck, [True, False, True])


def test_scatter_logits_keep_the_digits_of_a_tiny_loss():
    rng = np.random.default_rng(8)
    case = make_scatter_case(rng, 2, 2, 1, 0)
    case["labels"][:] = [0, 1]
    case["plan"] = case["plan"]._replace(logit_offsets=np.zeros((2, 2)))
    case["products"][:, case["plan"].logit_start:] = [[0.0, -40.0], [-700.0, 0.0]]
    out = run_scatter(case)
    # loss = log(1 + e^-40) = e^-40 - e^-80/2 + ...; e^-700 underflows nothing in float64.
    np.testing.assert_allclose(out.class_loss, [np.exp(-40.0), np.exp(-700.0)], rtol=1e-15)


def test_scatter_logits_propagate_nan():
    """A NaN GEMM output turns its class's NC1 and loss sums into NaN, not a number."""
    rng = np.random.default_rng(9)
    case = make_scatter_case(rng, 6, 3, 2, 2)
    case["labels"][:] = [0, 1, 2, 0, 1, 2]
    start = case["plan"].logit_start
    case["products"][1, 0] = np.nan  # an NC1 projection of a class-1 row
    case["products"][2, start + 0] = np.nan  # a logit other than its own (class 2)
    out = run_scatter(case)
    assert np.isnan(out.class_nc1[1]) and np.isfinite(out.class_nc1[[0, 2]]).all()
    assert np.isnan(out.class_loss[2]) and np.isfinite(out.class_loss[[0, 1]]).all()


def test_scatter_logits_empty_and_single_row_blocks():
    rng = np.random.default_rng(10)
    empty = make_scatter_case(rng, 0, 3, 2, 2)
    out = run_scatter(empty, np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    np.testing.assert_array_equal(out.class_nc1, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(out.class_loss, [4.0, 5.0, 6.0])
    single = make_scatter_case(rng, 1, 3, 2, 2)
    assert_scatter_matches(single, run_scatter(single))


@given(rows=st.integers(0, 12), num_classes=st.integers(2, 6), rank=st.integers(1, 4),
       n_proj=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_scatter_logits_integer_data_property(rows, num_classes, rank, n_proj, seed):
    """Small integers: exact logits, so many exact ties, and decisions compare exactly."""
    case = make_scatter_case(np.random.default_rng(seed), rows, num_classes, rank, n_proj,
                             integer=True)
    assert_scatter_matches(case, run_scatter(case), rtol=1e-12)


def ref_ncc(scores, mean_sqnorms, projected_sqnorm, tie_scale):
    distance = mean_sqnorms[None, :] - 2.0 * scores.astype(np.float64)  # ||p - m_c||^2 - ||p||^2
    ordered = np.sort(distance, axis=1)
    gap = (ordered[:, 1] - ordered[:, 0]) if scores.shape[1] > 1 else np.inf
    size = np.sqrt(projected_sqnorm) + np.sqrt(mean_sqnorms.max())
    return np.argmin(distance, axis=1), gap <= tie_scale * size**2


def run_ncc(scores, mean_sqnorms, projected_sqnorm, tie_scale, recheck=None):
    rows = scores.shape[0]
    nearest = np.full(rows, -7, dtype=np.int64)
    recheck = np.zeros(rows, dtype=np.bool_) if recheck is None else recheck
    kernels.ncc_decisions(scores, mean_sqnorms, projected_sqnorm, tie_scale, nearest, recheck)
    return nearest, recheck


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ncc_decisions_match_nearest_centre(dtype):
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(6, 5))
    points = rng.normal(size=(300, 5))
    scores = (points @ centres.T).astype(dtype)
    nearest, recheck = run_ncc(scores, (centres**2).sum(1), (points**2).sum(1), 1e-5)
    want, want_recheck = ref_ncc(scores, (centres**2).sum(1), (points**2).sum(1), 1e-5)
    np.testing.assert_array_equal(nearest, want)
    np.testing.assert_array_equal(recheck, want_recheck)
    # Where the call is clear, it is the nearest centre by direct distances too.
    direct = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest[~recheck], direct[~recheck])


def test_ncc_decisions_ties_go_to_the_lowest_index_and_are_flagged():
    mean_sqnorms = np.array([4.0, 2.0, 2.0, 6.0])
    # distances - ||p||^2 = mean_sqnorms - 2 scores:
    scores = np.array([[1.0, 1.0, 1.0, 3.0],  # [2, 0, 0, 0]: three-way tie at 1
                       [2.0, 1.0, 1.0, 3.0],  # [0, 0, 0, 0]: all equal
                       [0.0, 0.0, 0.5, 0.0]])  # [4, 2, 1, 6]: class 2, clear
    nearest, recheck = run_ncc(scores, mean_sqnorms, np.ones(3), 0.0)
    np.testing.assert_array_equal(nearest, [1, 0, 2])
    np.testing.assert_array_equal(recheck, [True, True, False])


def test_ncc_decisions_empty_single_row_and_kept_flags():
    nearest, recheck = run_ncc(np.zeros((0, 3)), np.ones(3), np.zeros(0), 1e-5)
    assert nearest.shape == recheck.shape == (0,)
    nearest, recheck = run_ncc(np.array([[0.0, 3.0, 1.0]]), np.array([1.0, 1.0, 1.0]),
                               np.array([9.0]), 1e-5, recheck=np.array([True]))
    np.testing.assert_array_equal(nearest, [1])
    np.testing.assert_array_equal(recheck, [True])  # set by the logits: never cleared


@given(rows=st.integers(0, 15), num_classes=st.integers(1, 6), seed=st.integers(0, 2**32 - 1),
       tie_scale=st.sampled_from([0.0, 1e-5, 0.1]))
@settings(max_examples=100, deadline=None)
def test_ncc_decisions_integer_data_property(rows, num_classes, seed, tie_scale):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-2, 3, (rows, num_classes)).astype(np.float64)
    mean_sqnorms = rng.integers(0, 5, num_classes).astype(np.float64)
    projected_sqnorm = rng.integers(0, 5, rows).astype(np.float64)
    nearest, recheck = run_ncc(scores, mean_sqnorms, projected_sqnorm, tie_scale)
    want, want_recheck = ref_ncc(scores, mean_sqnorms, projected_sqnorm, tie_scale)
    np.testing.assert_array_equal(nearest, want)
    np.testing.assert_array_equal(recheck, want_recheck)


def ref_exact(features, weight, bias, train_means):
    decisions = np.argmax(features @ weight.T + bias, axis=1)
    if train_means.shape[0] == 0:
        return decisions, None
    distance = ((features[:, None, :] - train_means[None, :, :]) ** 2).sum(axis=2)
    return decisions, np.argmin(distance, axis=1)


def run_exact(features, weight, bias, train_means):
    decisions = np.full(features.shape[0], -7, dtype=np.int64)
    nearest = np.full(features.shape[0], -7, dtype=np.int64)
    kernels.exact_decisions(features, weight, bias, train_means, decisions, nearest)
    return decisions, nearest


def test_exact_decisions_match_float64_argmax_and_argmin():
    rng = np.random.default_rng(12)
    weight, bias, means = rng.normal(size=(7, 10)), rng.normal(size=7), rng.normal(size=(7, 10))
    features = rng.normal(size=(200, 10))
    decisions, nearest = run_exact(features, weight, bias, means)
    want, want_nearest = ref_exact(features, weight, bias, means)
    np.testing.assert_array_equal(decisions, want)
    np.testing.assert_array_equal(nearest, want_nearest)


def test_exact_decisions_break_mathematical_ties_to_the_lowest_index():
    rng = np.random.default_rng(13)
    w, offset = rng.normal(size=16), rng.normal(size=16)
    # Classes 1 and 3 share a row and a bias: their logits are the same number.
    weight = np.stack([-w, w, 0.5 * w, w])
    bias = np.array([0.0, 0.3, 0.0, 0.3])
    # Classes 2 and 3 mirror each other about the origin: each term of their squared
    # distances to the origin is the same number, so the sums are equal too.
    means = np.stack([3 * offset, 5 * offset, offset, -offset])
    features = np.stack([w, np.zeros(16)])
    decisions, nearest = run_exact(features, weight, bias, means)
    # Row 0: logits [-|w|^2, |w|^2 + 0.3, |w|^2 / 2, |w|^2 + 0.3]; row 1: the biases.
    np.testing.assert_array_equal(decisions, [1, 1])
    np.testing.assert_array_equal(nearest[1], 2)


def test_exact_decisions_without_ncc_and_on_empty_blocks():
    rng = np.random.default_rng(14)
    weight, bias = rng.normal(size=(3, 4)), rng.normal(size=3)
    features = rng.normal(size=(5, 4))
    decisions, _ = run_exact(features, weight, bias, np.zeros((0, 4)))
    np.testing.assert_array_equal(decisions, ref_exact(features, weight, bias, np.zeros((0, 4)))[0])
    decisions, nearest = run_exact(np.zeros((0, 4)), weight, bias, np.zeros((3, 4)))
    assert decisions.shape == nearest.shape == (0,)
    decisions, nearest = run_exact(features[:1], weight, bias, features[[3, 0, 0]])
    np.testing.assert_array_equal(nearest, [1])


@given(rows=st.integers(0, 10), num_classes=st.integers(1, 5), dim=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_exact_decisions_integer_data_property(rows, num_classes, dim, seed):
    rng = np.random.default_rng(seed)

    def small(*shape):
        return rng.integers(-2, 3, shape).astype(np.float64)

    features, weight, bias, means = (small(rows, dim), small(num_classes, dim),
                                     small(num_classes), small(num_classes, dim))
    decisions, nearest = run_exact(features, weight, bias, means)
    want, want_nearest = ref_exact(features, weight, bias, means)
    np.testing.assert_array_equal(decisions, want)
    np.testing.assert_array_equal(nearest, want_nearest)
