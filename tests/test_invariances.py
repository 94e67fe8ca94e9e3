"""Invariances of METRICS.md, property-tested with hypothesis on ``analyze_arrays``.

Each test compares the analyser with itself on transformed inputs (float64 GEMMs,
so that only float64 round-off separates the two runs):

- permuting the samples of each split changes nothing;
- relabelling classes (y -> perm[y], rows of W and entries of b moved with them)
  changes no scalar and permutes every per-class value;
- an orthogonal Q applied to every h and every row of W changes nothing;
- scaling h by a > 0 and b by a leaves NC1, the NC2/NC3 metrics, NCC mismatch and
  accuracy unchanged, and scales the mean norms and bias_collapse by a and the
  within-class variances by a^2;
- translating h by t, with b -> b - W t, changes nothing.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st


import reference as ref  # noqa: E402
import synthetic as syn  # noqa: E402

import ncanalysis  # noqa: E402

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RTOL = 1e-7

#: Metrics that do not change when h and b are scaled by a > 0.
SCALE_INVARIANT = (
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
    "nc1_trace_ratio",
    "cdnv",
    "etf_error_means",
    "etf_error_weights",
)

shapes = st.tuples(st.integers(2, 6), st.integers(1, 8))  # (C, d)
seeds = st.integers(0, 2**32 - 1)


def make_inputs(seed, num_classes, dim):
    """Train and test splits with 2..25 samples per class, W and b, all random."""
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.standard_normal((num_classes, dim)) + rng.standard_normal(dim)
    splits = {}
    for name in ("train", "test"):
        counts = rng.integers(2, 26, size=num_classes)
        y = syn.labels_from_counts(counts, rng)
        splits[name] = (means[y] + rng.standard_normal((y.size, dim)), y)
    weight = (means - means.mean(axis=0)) + rng.standard_normal((num_classes, dim))
    bias = rng.standard_normal(num_classes)
    return splits, weight, bias


def well_conditioned(splits, weight, bias):
    """Skip examples whose comparison would measure ill-conditioning, not the invariance."""
    for gap_logit, gap_ncc in ref.decision_margins(splits, weight, bias).values():
        if gap_logit < 1e-9 or gap_ncc < 1e-9:
            return False
    for x, y in splits.values():
        _, means, _ = ref.class_statistics(x, y, weight.shape[0])
        _, m_tilde = ref.centred_means(x, means)
        s = np.linalg.svd(m_tilde, compute_uv=False)
        kept = s[s**2 > 1e-10 * s[0] ** 2]
        if kept[-1] ** 2 < 1e-6 * s[0] ** 2:  # condition of Sigma_B's kept part > 1e6
            return False
    return True


def analyze(splits, weight, bias):
    return ncanalysis.analyze_arrays(splits, weight, bias, gemm_dtype="float64")


def values(ds):
    return {s: ref.dataset_split(ds, s) for s in ds["split"].values.tolist()}


def assert_same(a, b, *, names=None, rtol=RTOL, context=""):
    problems = []
    for split in a:
        for name in names or (ref.SCALAR_METRICS + ref.COUNT_METRICS):
            x, y = a[split][name], b[split][name]
            if not np.isclose(x, y, rtol=rtol, atol=1e-10):
                problems.append(f"[{split}] {name}: {x!r} vs {y!r}")
    assert not problems, context + "\n" + "\n".join(problems)


def assert_same_per_class(a, b, *, names, perm=None, factors=None, rtol=RTOL):
    for split in a:
        for name in names:
            x = np.asarray(a[split][name], dtype=np.float64)
            y = np.asarray(b[split][name], dtype=np.float64)
            if perm is not None:
                x = x[perm]  # new class perm[c] is old class c
            if factors and name in factors:
                y = y * factors[name]
            scale = np.max(np.abs(y)) if y.size else 0.0
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-10 * max(scale, 1e-300), err_msg=f"{split} {name}")


ALL_CLASS = ref.CLASS_FLOAT_METRICS + ref.CLASS_COUNT_METRICS


@SETTINGS
@given(seed=seeds, shape=shapes)
def test_permuting_samples(seed, shape):
    splits, w, b = make_inputs(seed, *shape)
    assume(well_conditioned(splits, w, b))
    rng = np.random.default_rng(seed + 1)
    permuted = {}
    for name, (x, y) in splits.items():
        order = rng.permutation(y.size)
        permuted[name] = (x[order], y[order])
    base, other = values(analyze(splits, w, b)), values(analyze(permuted, w, b))
    assert_same(other, base, context="permuted samples")
    assert_same_per_class(other, base, names=ALL_CLASS)


@SETTINGS
@given(seed=seeds, shape=shapes)
def test_relabelling_classes(seed, shape):
    splits, w, b = make_inputs(seed, *shape)
    assume(well_conditioned(splits, w, b))
    perm = np.random.default_rng(seed + 2).permutation(shape[0])
    w_new = np.empty_like(w)
    w_new[perm] = w
    b_new = np.empty_like(b)
    b_new[perm] = b
    relabelled = {name: (x, perm[y]) for name, (x, y) in splits.items()}
    base, other = values(analyze(splits, w, b)), values(analyze(relabelled, w_new, b_new))
    assert_same(other, base, context=f"relabelled by {perm}")
    assert_same_per_class(other, base, names=ALL_CLASS, perm=perm)


@SETTINGS
@given(seed=seeds, shape=shapes)
def test_orthogonal_map(seed, shape):
    splits, w, b = make_inputs(seed, *shape)
    assume(well_conditioned(splits, w, b))
    q = syn.random_orthonormal(shape[1], shape[1], np.random.default_rng(seed + 3))
    rotated = {name: (x @ q.T, y) for name, (x, y) in splits.items()}
    base, other = values(analyze(splits, w, b)), values(analyze(rotated, w @ q.T, b))
    assert_same(other, base, context="rotated")
    assert_same_per_class(other, base, names=ALL_CLASS)


@SETTINGS
@given(seed=seeds, shape=shapes, log_scale=st.floats(-3.0, 3.0))
def test_scaling(seed, shape, log_scale):
    splits, w, b = make_inputs(seed, *shape)
    assume(well_conditioned(splits, w, b))
    a = 10.0**log_scale
    scaled = {name: (a * x, y) for name, (x, y) in splits.items()}
    base, other = values(analyze(splits, w, b)), values(analyze(scaled, w, a * b))
    assert_same(other, base, names=SCALE_INVARIANT + ref.COUNT_METRICS, context=f"scaled by {a}")
    assert_same(other, {s: {"bias_collapse": a * v["bias_collapse"]} for s, v in base.items()},
                names=("bias_collapse",), context=f"bias_collapse scaled by {a}")
    assert_same_per_class(
        other,
        base,
        names=ALL_CLASS,
        factors={"class_mean_norm": a, "class_within_var": a * a},
    )


@SETTINGS
@given(seed=seeds, shape=shapes, t_scale=st.floats(0.0, 20.0))
def test_translation(seed, shape, t_scale):
    splits, w, b = make_inputs(seed, *shape)
    assume(well_conditioned(splits, w, b))
    t = t_scale * np.random.default_rng(seed + 4).standard_normal(shape[1])
    shifted = {name: (x + t, y) for name, (x, y) in splits.items()}
    base, other = values(analyze(splits, w, b)), values(analyze(shifted, w, b - w @ t))
    assert_same(other, base, context=f"translated by {t}")
    assert_same_per_class(other, base, names=ALL_CLASS)
