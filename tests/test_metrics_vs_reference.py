"""``ncanalysis.analyze_arrays`` against the independent float64 reference.

Every variable of the result Dataset (docs/dev/contract.md) is compared with
tests/reference.py to a relative tolerance of 1e-6 (an absolute floor of 1e-12
only for values that are ~0 in exact arithmetic; NC1-like quantities that are
small near collapse are compared relatively), integer counts exactly, over:
several (N, d, C) shapes including C > d + 1 (no simplex ETF) and d < C - 1,
imbalanced classes, global_mean="sample", data far from the origin, data with a
within-class spread of 1e-4 of the mean norm, rank-deficient Sigma_B, float64
and float32 inputs, numpy and dask inputs with several chunkings, and both
gemm dtypes.
"""

from __future__ import annotations

import os
import sys

import dask.array as da
import numpy as np
import pytest


import reference as ref  # noqa: E402
import synthetic as syn  # noqa: E402

import ncanalysis  # noqa: E402

RTOL = 1e-6
ATOL = 1e-12
ALL_PROBLEMS = sorted(syn.PROBLEMS)
GEMM_DTYPES = ("float32", "float64")

_PROBLEM_CACHE: dict[str, syn.Problem] = {}


def problem(name: str) -> syn.Problem:
    if name not in _PROBLEM_CACHE:
        _PROBLEM_CACHE[name] = syn.make_problem(name)
    return _PROBLEM_CACHE[name]


def check_well_posed(splits, weight, bias):
    """The discrete metrics are comparable only if no decision is within round-off of a tie."""
    for split, (logit_gap, ncc_gap) in ref.decision_margins(splits, weight, bias).items():
        assert logit_gap > 1e-5 and ncc_gap > 1e-5, (
            f"test data has near-ties in split {split}: logit gap {logit_gap:.2g}, NCC gap {ncc_gap:.2g}"
        )


def assert_matches_reference(ds, expected, *, rtol=RTOL, atol=ATOL, allowance=None, context=""):
    assert set(ds["split"].values.tolist()) == set(expected)
    problems = []
    for split in expected:
        extra = {"loss": allowance[split]} if allowance else None
        for msg in ref.split_mismatches(
            ref.dataset_split(ds, split), expected[split], rtol=rtol, atol=atol, allowance=extra
        ):
            problems.append(f"[{split}] {msg}")
    assert not problems, f"{context}: analyze_arrays disagrees with the reference:\n" + "\n".join(problems)


def run_and_compare(splits, weight, bias, *, global_mean="class", pinv_rtol=1e-10, gemm_dtype="float64",
                    reference_splits=None, reference_weight=None, reference_bias=None, context="", **kwargs):
    ds = ncanalysis.analyze_arrays(
        splits, weight, bias, global_mean=global_mean, pinv_rtol=pinv_rtol, gemm_dtype=gemm_dtype, **kwargs
    )
    args = (
        reference_splits if reference_splits is not None else splits,
        reference_weight if reference_weight is not None else weight,
        reference_bias if reference_bias is not None else bias,
    )
    expected = ref.reference_metrics(*args, global_mean=global_mean, pinv_rtol=pinv_rtol)
    assert_matches_reference(ds, expected, context=context)
    return ds, expected


# ----------------------------------------------------------------- numpy float64


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES)
@pytest.mark.parametrize("name", ALL_PROBLEMS)
def test_matches_reference(name, gemm_dtype):
    p = problem(name)
    check_well_posed(p.splits, p.weight, p.bias)
    ds, _ = run_and_compare(p.splits, p.weight, p.bias, gemm_dtype=gemm_dtype, context=f"{name} gemm {gemm_dtype}")
    # attributes
    c, d = p.num_classes, p.num_features
    assert int(ds.attrs["num_classes"]) == c
    assert int(ds.attrs["num_features"]) == d
    assert int(ds.attrs["etf_exists"]) == int(c <= d + 1)
    assert ds.attrs["gemm_dtype"] == gemm_dtype
    assert ds.attrs["accumulation_dtype"] == "float64"
    assert ds.attrs["global_mean"] == "class"
    assert float(ds.attrs["pinv_rtol"]) == 1e-10
    assert ds.attrs["ncc_reference_split"] == "train"
    for split in p.splits:
        assert int(ds["nc1_rank"].sel(split=split).values[0]) == p.expected_rank, split


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES)
@pytest.mark.parametrize("name", ["imbalanced_d12_C8", "offset_d10_C5", "near_collapsed_d10_C6", "no_etf_d5_C12"])
def test_matches_reference_sample_global_mean(name, gemm_dtype):
    p = problem(name)
    ds, _ = run_and_compare(
        p.splits, p.weight, p.bias, global_mean="sample", gemm_dtype=gemm_dtype, context=f"{name} sample mean"
    )
    assert ds.attrs["global_mean"] == "sample"
    if name == "imbalanced_d12_C8":
        # on imbalanced data the option must change the numbers
        default = ncanalysis.analyze_arrays(p.splits, p.weight, p.bias, gemm_dtype=gemm_dtype)
        a = float(ds["nc1"].sel(split="train").values[0])
        b = float(default["nc1"].sel(split="train").values[0])
        assert abs(a - b) > 1e-3 * b


@pytest.mark.parametrize("pinv_rtol, rank", [(1e-10, 5), (1e-3, 3)])
def test_pinv_rtol_is_used_and_recorded(pinv_rtol, rank):
    # Sigma_B has 3 eigenvalues O(1) and 2 of relative size ~1e-6.
    p = problem("low_rank_leak_kept")
    ds, expected = run_and_compare(p.splits, p.weight, p.bias, pinv_rtol=pinv_rtol, context=f"pinv_rtol {pinv_rtol}")
    assert float(ds.attrs["pinv_rtol"]) == pinv_rtol
    assert expected["train"]["nc1_rank"] == rank
    np.testing.assert_array_equal(ds["nc1_rank"].values[0], [rank, rank])


def test_bias_none_means_zero():
    p = problem("balanced_d16_C4")
    ds = ncanalysis.analyze_arrays(p.splits, p.weight, None, gemm_dtype="float64")
    expected = ref.reference_metrics(p.splits, p.weight, np.zeros(p.num_classes))
    assert_matches_reference(ds, expected, context="bias None")


def test_single_split_and_other_names():
    p = problem("imbalanced_d12_C8")
    splits = {"train": p.splits["train"], "valid-2": p.splits["test"], "extra": p.splits["test"]}
    ds, _ = run_and_compare(splits, p.weight, p.bias, context="three splits")
    only = {"train": p.splits["train"]}
    run_and_compare(only, p.weight, p.bias, context="train only")


def test_epoch_coordinate():
    p = problem("two_classes_d4")
    ds = ncanalysis.analyze_arrays(p.splits, p.weight, p.bias, epoch=17)
    assert ds["epoch"].values.tolist() == [17]
    assert ds["class"].values.tolist() == [0, 1]
    expected = ref.reference_metrics(p.splits, p.weight, p.bias)
    for split in expected:
        assert not ref.split_mismatches(ref.dataset_split(ds, split, epoch=17), expected[split])


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES)
def test_loss_with_large_logits(gemm_dtype):
    # 30 well-separated classes in d = 96: logits of several hundred, losses 6e-9 (train)
    # and 2e-14 (test). The loss of a confident sample is ~exp(-margin), so its relative
    # error is the absolute error of the logits: ~eps32 * |z| with float32 GEMMs
    # (observed 4.7e-6), float64 round-off with float64 GEMMs. float64: every metric
    # to 1e-6 (the loss digits must survive: log1p, not log(1 + s)). float32: every
    # metric to 1e-6 except loss, held to the float32 logit budget of
    # reference.float32_logit_loss_allowance (a worst-case bound, ~1e-3 relative here).
    p = syn.random_problem(30, 96, [12] * 30, [6] * 30, seed=1)
    check_well_posed(p.splits, p.weight, p.bias)
    ds = ncanalysis.analyze_arrays(p.splits, p.weight, p.bias, gemm_dtype=gemm_dtype)
    expected = ref.reference_metrics(p.splits, p.weight, p.bias)
    allowance = None
    if gemm_dtype == "float32":
        allowance = ref.float32_logit_loss_allowance(p.splits, p.weight, p.bias)
    assert_matches_reference(ds, expected, allowance=allowance, context=f"large logits gemm {gemm_dtype}")


# ----------------------------------------------------------------- float32 inputs


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES)
@pytest.mark.parametrize(
    "name", ["balanced_d16_C4", "no_etf_d5_C12", "imbalanced_d12_C8", "offset_d10_C5", "near_collapsed_d10_C6"]
)
def test_float32_inputs(name, gemm_dtype):
    # The reference sees exactly the float32 values, upcast: the analyser must not
    # lose more than that (its accumulation is float64 whatever the storage).
    p = problem(name)
    splits32 = {k: (x.astype(np.float32), y.astype(np.int32)) for k, (x, y) in p.splits.items()}
    w32, b32 = p.weight.astype(np.float32), p.bias.astype(np.float32)
    check_well_posed(splits32, w32, b32)
    run_and_compare(splits32, w32, b32, gemm_dtype=gemm_dtype, context=f"{name} float32 gemm {gemm_dtype}")


@pytest.mark.parametrize("name", ["balanced_d16_C4", "two_classes_d4"])
def test_float16_features(name):
    # float16 storage is allowed (computation never in float16): the reference sees
    # the float16 values upcast.
    p = problem(name)
    splits16 = {k: (x.astype(np.float16), y) for k, (x, y) in p.splits.items()}
    check_well_posed(splits16, p.weight, p.bias)
    run_and_compare(splits16, p.weight, p.bias, context=f"{name} float16")


# -------------------------------------------------------------- dask and chunking


CHUNKINGS = [7, 64, None]  # rows per chunk; None: one chunk


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES)
@pytest.mark.parametrize("name", ["imbalanced_d12_C8", "near_collapsed_d10_C6", "low_rank_leak_kept", "no_etf_d5_C12"])
def test_dask_inputs_do_not_depend_on_chunking(name, gemm_dtype):
    p = problem(name)
    expected = ref.reference_metrics(p.splits, p.weight, p.bias)
    results = []
    for rows in CHUNKINGS:
        splits = {}
        for k, (x, y) in p.splits.items():
            chunk = rows or x.shape[0]
            splits[k] = (da.from_array(x, chunks=(chunk, x.shape[1])), da.from_array(y, chunks=chunk))
        ds = ncanalysis.analyze_arrays(splits, p.weight, p.bias, gemm_dtype=gemm_dtype)
        assert_matches_reference(ds, expected, context=f"{name} dask chunks {rows} gemm {gemm_dtype}")
        results.append(ds)
    # irregular chunks, numpy labels
    splits = {}
    for k, (x, y) in p.splits.items():
        n = x.shape[0]
        sizes = (n // 3, 1, n - n // 3 - 1)
        splits[k] = (da.from_array(x, chunks=(sizes, x.shape[1])), y)
    results.append(ncanalysis.analyze_arrays(splits, p.weight, p.bias, gemm_dtype=gemm_dtype))
    # numpy with rows_per_block
    results.append(ncanalysis.analyze_arrays(p.splits, p.weight, p.bias, gemm_dtype=gemm_dtype, rows_per_block=13))
    first = {s: ref.dataset_split(results[0], s) for s in p.splits}
    # With float64 GEMMs, chunking may only change float64 round-off (amplified by the
    # conditioning of Sigma_B in the rank-deficient case). With float32 GEMMs the BLAS
    # may round a row differently depending on the block's shape (observed: 2e-8
    # relative on class_nc1), so only the float32-GEMM accuracy can be asked for.
    rtol = 1e-9 if gemm_dtype == "float64" else RTOL
    for i, ds in enumerate(results[1:], 1):
        for s in p.splits:
            msgs = ref.split_mismatches(ref.dataset_split(ds, s), first[s], rtol=rtol, atol=1e-14)
            assert not msgs, f"{name}: chunking #{i} changes the results of {s}:\n" + "\n".join(msgs)


def test_dask_float32_features_and_weight():
    p = problem("offset_d10_C5")
    splits = {
        k: (da.from_array(x.astype(np.float32), chunks=(50, x.shape[1])), y) for k, (x, y) in p.splits.items()
    }
    ref_splits = {k: (x.astype(np.float32), y) for k, (x, y) in p.splits.items()}
    run_and_compare(splits, p.weight.astype(np.float32), p.bias, gemm_dtype="float32",
                    reference_splits=ref_splits, context="dask float32")


def test_scheduler_does_not_matter():
    p = problem("imbalanced_d12_C8")
    splits = {k: (da.from_array(x, chunks=(40, x.shape[1])), y) for k, (x, y) in p.splits.items()}
    a = ncanalysis.analyze_arrays(splits, p.weight, p.bias, scheduler="synchronous", gemm_dtype="float64")
    b = ncanalysis.analyze_arrays(splits, p.weight, p.bias, scheduler="threads", gemm_dtype="float64")
    for s in p.splits:
        msgs = ref.split_mismatches(ref.dataset_split(b, s), ref.dataset_split(a, s), rtol=1e-10, atol=1e-14)
        assert not msgs, "\n".join(msgs)


# ---------------------------------------------------------- no train: ncc=False


def test_without_train_and_ncc_false():
    p = problem("imbalanced_d12_C8")
    splits = {"test": p.splits["test"]}
    ds = ncanalysis.analyze_arrays(splits, p.weight, p.bias, ncc=False, gemm_dtype="float64")
    expected = ref.reference_metrics(splits, p.weight, p.bias)
    msgs = ref.split_mismatches(
        ref.dataset_split(ds, "test"), expected["test"], skip=("ncc_mismatch", "class_ncc_mismatch")
    )
    assert not msgs, "\n".join(msgs)


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES)
def test_ncc_shortcut_and_full_scores_agree_with_reference(gemm_dtype, monkeypatch):
    """Rows settled by the separation bound and rows scored in full, in one run.

    sigma is chosen so that roughly half the rows lie within half the separation
    of their own train centre; W is a noisy copy of the means so that the
    network and NCC disagree on some rows.
    """
    from ncanalysis import kernels, stats

    num_classes, dim = 12, 24
    etf = syn.simplex_etf(num_classes, dim, seed=5)
    x, y, _ = syn.planted_collapse(num_classes, dim, 150, sigma=0.2, etf=etf, seed=6)
    xt, yt, _ = syn.planted_collapse(num_classes, dim, 60, sigma=0.3, etf=etf, seed=7)
    rng = np.random.default_rng(8)
    weight = etf + 0.6 * rng.standard_normal(etf.shape)
    bias = 0.1 * rng.standard_normal(num_classes)
    splits = {"train": (x, y), "test": (xt, yt)}
    check_well_posed(splits, weight, bias)

    scored = []
    full_scores = kernels.ncc_decisions

    def counting(scores, *args):
        scored.append(scores.shape[0])
        return full_scores(scores, *args)

    monkeypatch.setattr(kernels, "ncc_decisions", counting)
    # In-process threads: the patched kernel must be the one that runs.
    ds, expected = run_and_compare(
        splits, weight, bias, gemm_dtype=gemm_dtype, context="ncc shortcut", scheduler="threads"
    )
    total = y.size + yt.size
    assert 0.1 * total < sum(scored) < 0.9 * total, f"rows scored in full: {sum(scored)} of {total}"
    assert 0 < int(ds["class_ncc_mismatch"].sum()) < total

    # With no separation bound every row is scored in full: same numbers.
    scored.clear()
    monkeypatch.setattr(stats, "_separation", lambda gram, dropped, dim: np.zeros(gram.shape[0]))
    run_and_compare(
        splits, weight, bias, gemm_dtype=gemm_dtype, context="ncc full scores only",
        scheduler="threads",
    )
    assert sum(scored) == total
