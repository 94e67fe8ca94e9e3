"""Splits that miss classes (METRICS.md, "Version 2 additions / Splits that miss classes").

A split other than train that misses classes is analysed over the C' classes it
has: ``n_classes_present`` is recorded, the means-side metrics use only the
present classes, accuracy / loss / ncc_mismatch use every sample, all C logits
and all C train means, and per-class values of absent classes are NaN (counts
0).  The train split must hold every class.  Expected values come from the
independent float64 reference (tests/reference.py) or from hand computation.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import reference as ref  # noqa: E402
import synthetic as syn  # noqa: E402

import ncanalysis  # noqa: E402
from ncanalysis import results  # noqa: E402
from ncanalysis.errors import InputError  # noqa: E402
from ncanalysis.store import create_store  # noqa: E402

C, D = 6, 10
MEANS_SIDE = (
    "nc1",
    "nc1_trace_ratio",
    "cdnv",
    "equinorm_means",
    "equiangular_means",
    "maxangle_means",
    "etf_error_means",
    "self_duality",
)


def problem(seed: int = 3) -> syn.Problem:
    return syn.random_problem(C, D, [40] * C, [15] * C, seed=seed)


def drop_classes(split: tuple[np.ndarray, np.ndarray], classes) -> tuple[np.ndarray, np.ndarray]:
    x, y = split
    keep = ~np.isin(y, list(classes))
    return x[keep], y[keep]


def keep_classes(split: tuple[np.ndarray, np.ndarray], classes) -> tuple[np.ndarray, np.ndarray]:
    x, y = split
    keep = np.isin(y, list(classes))
    return x[keep], y[keep]


def assert_matches(ds, expected, *, context=""):
    problems = []
    for split in expected:
        for msg in ref.split_mismatches(ref.dataset_split(ds, split), expected[split],
                                        rtol=1e-6, atol=1e-12):
            problems.append(f"[{split}] {msg}")
    assert not problems, context + "\n" + "\n".join(problems)


def well_posed(splits, weight, bias):
    for split, (logit_gap, ncc_gap) in ref.decision_margins(splits, weight, bias).items():
        assert logit_gap > 1e-6 and ncc_gap > 1e-6, f"near-tie in test data, split {split}"


@pytest.mark.parametrize("global_mean", ["class", "sample"])
@pytest.mark.parametrize("missing", [(2,), (0, 3, 5)], ids=["one", "several"])
def test_split_missing_classes_matches_reference(missing, global_mean):
    p = problem()
    splits = {"train": p.splits["train"], "test": drop_classes(p.splits["test"], missing)}
    well_posed(splits, p.weight, p.bias)
    ds = ncanalysis.analyze_arrays(splits, p.weight, p.bias, global_mean=global_mean,
                                   gemm_dtype="float64", rows_per_block=7)
    expected = ref.reference_metrics(splits, p.weight, p.bias, global_mean=global_mean)
    assert expected["test"]["n_classes_present"] == C - len(missing)
    assert_matches(ds, expected, context=f"missing {missing}, global_mean={global_mean}")
    assert ds["n_classes_present"].dtype == np.int64
    assert ds["n_classes_present"].sel(split="train").item() == C
    assert ds["n_classes_present"].sel(split="test").item() == C - len(missing)
    assert ds["nc1_rank"].sel(split="test").item() == C - len(missing) - 1


def test_absent_classes_are_nan_and_train_is_unaffected():
    p = problem()
    missing = [1, 4]
    test = drop_classes(p.splits["test"], missing)
    ds = ncanalysis.analyze_arrays({"train": p.splits["train"], "test": test}, p.weight, p.bias)
    alone = ncanalysis.analyze_arrays({"train": p.splits["train"]}, p.weight, p.bias)
    t = ds.sel(split="test", epoch=0)
    for name in ("class_mean_norm", "class_nc1", "class_within_var"):
        values = t[name].values
        assert np.isnan(values[missing]).all(), name
        assert np.isfinite(np.delete(values, missing)).all(), name
    assert t["class_count"].values[missing].tolist() == [0, 0]
    assert t["class_ncc_mismatch"].values[missing].tolist() == [0, 0]
    # A property of W, the same on every split.
    np.testing.assert_array_equal(t["class_weight_norm"].values,
                                  np.linalg.norm(p.weight, axis=1))
    for name in ref.SCALAR_METRICS:
        assert np.isfinite(t[name].item()), name
    # The train split's values do not depend on the test split.
    for name in ref.SCALAR_METRICS + ref.COUNT_METRICS:
        a = ds[name].sel(split="train").item()
        b = alone[name].sel(split="train").item()
        assert a == b, name


def test_train_missing_a_class_is_a_clear_error():
    p = problem()
    splits = {"train": drop_classes(p.splits["train"], [4]), "test": p.splits["test"]}
    with pytest.raises(InputError) as info:
        ncanalysis.analyze_arrays(splits, p.weight, p.bias, epoch=7)
    message = str(info.value)
    for pattern in (r"epoch 7", r"split 'train'", r"\[4\]", r"train split must hold every class"):
        assert re.search(pattern, message), (pattern, message)


@pytest.mark.parametrize("global_mean", ["class", "sample"])
def test_one_class_present(global_mean):
    """C' = 1: no between-class spread; means-side metrics NaN, the rest defined."""
    p = problem()
    splits = {"train": p.splits["train"], "test": keep_classes(p.splits["test"], [3])}
    ds = ncanalysis.analyze_arrays(splits, p.weight, p.bias, global_mean=global_mean,
                                   gemm_dtype="float64")
    expected = ref.reference_metrics(splits, p.weight, p.bias, global_mean=global_mean)
    assert_matches(ds, expected, context="C' = 1")
    t = ds.sel(split="test", epoch=0)
    assert t["n_classes_present"].item() == 1
    assert t["nc1_rank"].item() == 0
    for name in MEANS_SIDE:
        assert np.isnan(t[name].item()), name
    for name in ("accuracy", "loss", "ncc_mismatch", "bias_collapse", "equinorm_weights"):
        assert np.isfinite(t[name].item()), name
    assert t["class_mean_norm"].values[3] == 0.0  # mu_G is the one class mean
    assert np.isfinite(t["class_within_var"].values[3])


def test_two_classes_present():
    """C' = 2: with mu_G the mean of the two means, they are opposite and of equal norm."""
    p = problem()
    splits = {"train": p.splits["train"], "test": keep_classes(p.splits["test"], [1, 4])}
    ds = ncanalysis.analyze_arrays(splits, p.weight, p.bias, gemm_dtype="float64")
    expected = ref.reference_metrics(splits, p.weight, p.bias)
    assert_matches(ds, expected, context="C' = 2")
    t = ds.sel(split="test", epoch=0)
    assert t["n_classes_present"].item() == 2
    assert t["nc1_rank"].item() == 1
    # Analytic: cos = -1 = -1/(C'-1), equal norms, Gram proportional to the 2-simplex.
    for name in ("equinorm_means", "equiangular_means", "maxangle_means", "etf_error_means"):
        assert abs(t[name].item()) < 1e-12, (name, t[name].item())
    assert t["nc1"].item() > 0


def test_relabelling_classes_with_a_split_missing_classes():
    p = problem(seed=5)
    splits = {"train": p.splits["train"], "test": drop_classes(p.splits["test"], [0, 2])}
    perm = np.random.default_rng(1).permutation(C)  # old class c becomes perm[c]
    weight = np.empty_like(p.weight)
    weight[perm] = p.weight
    bias = np.empty_like(p.bias)
    bias[perm] = p.bias
    relabelled = {s: (x, perm[y]) for s, (x, y) in splits.items()}
    a = ncanalysis.analyze_arrays(splits, p.weight, p.bias, gemm_dtype="float64")
    b = ncanalysis.analyze_arrays(relabelled, weight, bias, gemm_dtype="float64")
    for split in ("train", "test"):
        for name in ref.SCALAR_METRICS + ref.COUNT_METRICS:
            x, y = a[name].sel(split=split).item(), b[name].sel(split=split).item()
            assert np.isclose(x, y, rtol=1e-9, atol=1e-12), (split, name, x, y)
        for name in ref.CLASS_FLOAT_METRICS + ref.CLASS_COUNT_METRICS:
            x = a[name].sel(split=split, epoch=0).values
            y = b[name].sel(split=split, epoch=0).values[perm]
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=f"{split} {name}")


def ncc_example():
    """Hand-made data whose decisions differ if a split's absent classes were left out.

    Train means m0 = (0, 0), m1 = (10, 0), m2 = (0, 10) (four samples each, placed
    symmetrically).  Logits [5 - (x + y) / 100, x - 4, y - 2].  The test split misses class 2:

    ======== ===== ============ ============= ==================
    h        label logit argmax nearest train nearest of {m0,m1}
    ======== ===== ============ ============= ==================
    0.5, 0.5 0     0            0             0
    0, 8     0     2 (wrong)    2             0
    0, 6.5   0     0            2 (mismatch)  0
    10, 0.5  1     1            1             1
    9.5, 1   1     1            1             1
    ======== ===== ============ ============= ==================

    So accuracy 4/5 and ncc_mismatch 1/5 (class 0: one mismatch); decisions or
    NCC restricted to the present classes would give 1 and 0.
    """
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    x_train = np.concatenate([c + offsets for c in centres])
    y_train = np.repeat(np.arange(3), 4)
    x_test = np.array([[0.5, 0.5], [0.0, 8.0], [0.0, 6.5], [10.0, 0.5], [9.5, 1.0]])
    y_test = np.array([0, 0, 0, 1, 1])
    weight = np.array([[-0.01, -0.01], [1.0, 0.0], [0.0, 1.0]])
    bias = np.array([5.0, -4.0, -2.0])
    return {"train": (x_train, y_train), "test": (x_test, y_test)}, weight, bias


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"])
def test_ncc_and_decisions_use_all_classes(gemm_dtype):
    splits, weight, bias = ncc_example()
    ds = ncanalysis.analyze_arrays(splits, weight, bias, gemm_dtype=gemm_dtype)
    t = ds.sel(split="test", epoch=0)
    assert t["n_classes_present"].item() == 2
    assert t["accuracy"].item() == pytest.approx(0.8, abs=1e-15)
    assert t["ncc_mismatch"].item() == pytest.approx(0.2, abs=1e-15)
    assert t["class_ncc_mismatch"].values.tolist() == [1, 0, 0]
    expected = ref.reference_metrics(splits, weight, bias)
    assert expected["test"]["accuracy"] == pytest.approx(0.8)
    assert expected["test"]["ncc_mismatch"] == pytest.approx(0.2)
    assert t["loss"].item() == pytest.approx(expected["test"]["loss"], rel=1e-6)


def test_store_with_a_split_missing_classes(tmp_path):
    """analyze() on a store, and every results format keeps n_classes_present."""
    p = syn.random_problem(4, 8, [30] * 4, [12] * 4, seed=11)
    test = drop_classes(p.splits["test"], [2])
    splits = {"train": p.splits["train"], "test": test}
    path = tmp_path / "run.zarr"
    with create_store(path, num_classes=4, num_features=8, feature_dtype="float32",
                      chunk_rows=8) as writer:
        for epoch in (0, 1):
            ep = writer.begin_epoch(epoch)
            for name, (x, y) in splits.items():
                ep.write_split(name, x.astype(np.float32), y)
            ep.write_classifier(p.weight.astype(np.float32), p.bias.astype(np.float32))
            ep.finalize()
    ds = ncanalysis.analyze(path, gemm_dtype="float64")
    stored = {s: (x.astype(np.float32), y) for s, (x, y) in splits.items()}
    expected = ref.reference_metrics(stored, p.weight.astype(np.float32),
                                     p.bias.astype(np.float32))
    assert_matches(ds.sel(epoch=[1]), expected, context="store")
    np.testing.assert_array_equal(ds["n_classes_present"].values, [[4, 3], [4, 3]])
    for suffix in results.RESULTS_FORMATS:
        out = tmp_path / f"results{suffix}"
        results.save_results(ds, out)
        loaded = results.load_results(out)
        assert loaded["n_classes_present"].dtype == np.int64, suffix
        np.testing.assert_array_equal(
            loaded["n_classes_present"].transpose("epoch", "split").values, [[4, 3], [4, 3]],
            err_msg=suffix,
        )
    merged = results.merge_results(ds.sel(epoch=[0]), ds.sel(epoch=[1]))
    np.testing.assert_array_equal(merged["n_classes_present"].values, [[4, 3], [4, 3]])


def test_merge_with_results_made_before_n_classes_present():
    """Old results lack the variable; their analysed splits held every class."""
    p = problem()
    old = ncanalysis.analyze_arrays({"train": p.splits["train"]}, p.weight, p.bias, epoch=0)
    old = old.drop_vars("n_classes_present")
    splits = {"train": p.splits["train"], "test": drop_classes(p.splits["test"], [5])}
    new = ncanalysis.analyze_arrays(splits, p.weight, p.bias, epoch=1)
    merged = results.merge_results(old, new)
    assert merged["n_classes_present"].dtype == np.int64
    np.testing.assert_array_equal(
        merged["n_classes_present"].transpose("epoch", "split").values, [[C, -1], [C, C - 1]]
    )


def test_means_side_equals_the_problem_without_the_absent_classes():
    """The means-side values of a split missing classes are those of a C'-class problem.

    Drop the absent classes everywhere (labels renumbered, their rows of W and b
    removed): the split's means-side metrics and present classes' values must not
    change, while accuracy and ncc_mismatch may (they use all C classes).
    """
    p = problem(seed=8)
    missing = [0, 3]
    present = [c for c in range(C) if c not in missing]
    renumber = np.full(C, -1)
    renumber[present] = np.arange(len(present))
    test = drop_classes(p.splits["test"], missing)
    full = ncanalysis.analyze_arrays({"train": p.splits["train"], "test": test},
                                     p.weight, p.bias, gemm_dtype="float64")
    x_train, y_train = drop_classes(p.splits["train"], missing)
    small = ncanalysis.analyze_arrays(
        {"train": (x_train, renumber[y_train]), "test": (test[0], renumber[test[1]])},
        p.weight[present], p.bias[present], gemm_dtype="float64",
    )
    a, b = full.sel(split="test", epoch=0), small.sel(split="test", epoch=0)
    for name in MEANS_SIDE + ("nc1_rank", "n_classes_present"):
        assert np.isclose(a[name].item(), b[name].item(), rtol=1e-9, atol=1e-13), name
    for name in ("class_mean_norm", "class_nc1", "class_within_var", "class_count"):
        np.testing.assert_allclose(a[name].values[present], b[name].values, rtol=1e-9,
                                   atol=1e-13, err_msg=name)
