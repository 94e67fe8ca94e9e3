"""Ground truths of METRICS.md, through ``ncanalysis.analyze_arrays``.

No reference implementation is involved: the expected numbers are analytic.
"""

from __future__ import annotations

import math
import os
import sys

import dask.array as da
import numpy as np
import pytest


import reference as ref  # noqa: E402
import synthetic as syn  # noqa: E402

import ncanalysis  # noqa: E402



def value(ds, name, split="train"):
    return ds[name].sel(split=split).values[0]


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "num_classes, dim, counts",
    [
        (2, 1, None),
        (4, 3, None),  # d = C - 1
        (5, 8, None),
        (10, 16, None),
        (6, 9, [2, 30, 5, 11, 1, 40]),  # imbalanced, a class of one sample
    ],
)
def test_exact_etf_gives_zeros(num_classes, dim, counts, gemm_dtype):
    p = syn.etf_problem(num_classes, dim, counts, scale=3.0, weight_scale=2.0, seed=num_classes)
    ds = ncanalysis.analyze_arrays(p.splits, p.weight, p.bias, gemm_dtype=gemm_dtype)
    for split in p.splits:
        for name in ref.ZERO_AT_COLLAPSE:
            v = float(value(ds, name, split))
            assert abs(v) < 1e-9, f"{split} {name} = {v!r}, expected 0 at exact collapse"
        assert float(value(ds, "ncc_mismatch", split)) == 0.0
        assert float(value(ds, "accuracy", split)) == 1.0
        np.testing.assert_array_equal(ds["class_ncc_mismatch"].sel(split=split).values[0], 0)
        np.testing.assert_allclose(ds["class_mean_norm"].sel(split=split).values[0], 3.0, rtol=1e-9)
        np.testing.assert_allclose(ds["class_weight_norm"].sel(split=split).values[0], 2.0, rtol=1e-9)
        assert np.all(np.abs(ds["class_nc1"].sel(split=split).values[0]) < 1e-9)
        assert np.all(np.abs(ds["class_within_var"].sel(split=split).values[0]) < 1e-9)
        assert int(value(ds, "nc1_rank", split)) == num_classes - 1
        # loss: logits 2*3*(1 for the own class, -1/(C-1) otherwise) = 6 and -6/(C-1)
        margin = 6.0 * (1 + 1 / (num_classes - 1))
        expected_loss = math.log1p((num_classes - 1) * math.exp(-margin))
        assert float(value(ds, "loss", split)) == pytest.approx(expected_loss, rel=1e-6)
    assert int(ds.attrs["etf_exists"]) == 1


def test_exact_etf_far_from_origin():
    # The same collapsed geometry shifted by t (b = -W t): still zeros (no cancellation
    # of an E[hh^T] - mu mu^T form; NCC distances taken after centring).
    p = syn.etf_problem(5, 8, seed=3)
    t = np.linspace(10.0, 50.0, 8)
    splits = {k: (x + t, y) for k, (x, y) in p.splits.items()}
    ds = ncanalysis.analyze_arrays(splits, p.weight, -p.weight @ t, gemm_dtype="float64")
    for name in ("nc1", "equinorm_means", "equiangular_means", "maxangle_means", "self_duality", "bias_collapse"):
        # h is stored to ~1e-16 * 50: residual spread ~1e-14 against means of norm 3
        assert abs(float(value(ds, name))) < 1e-9, name
    assert float(value(ds, "ncc_mismatch")) == 0.0
    assert float(value(ds, "accuracy")) == 1.0


def test_etf_means_with_random_weights():
    # Collapsed features, W not aligned: NC1 and the NC2-means metrics still 0,
    # the weight metrics and self-duality not.
    p = syn.etf_problem(4, 6, seed=1)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6))
    ds = ncanalysis.analyze_arrays(p.splits, w, None)
    assert abs(float(value(ds, "nc1"))) < 1e-9
    assert abs(float(value(ds, "equiangular_means"))) < 1e-9
    assert float(value(ds, "equiangular_weights")) > 1e-3
    assert float(value(ds, "self_duality")) > 1e-3


@pytest.mark.parametrize(
    "num_classes, dim, rho, sigma", [(3, 2, 1.0, 0.2), (4, 8, 2.0, 0.5), (10, 12, 1.0, 0.05)]
)
def test_planted_collapse_whitened_exact(num_classes, dim, rho, sigma):
    # Whitened noise: mu_c = rho m_c, Sigma_W = sigma^2 I exactly, so
    # nc1 = sigma^2 (C-1)^2 / (rho^2 C) to round-off (float32 GEMM: its accuracy).
    x, y, etf = syn.planted_collapse(num_classes, dim, 50, rho=rho, sigma=sigma, whiten=True, seed=2)
    expected = sigma**2 * (num_classes - 1) ** 2 / (rho**2 * num_classes)
    for gemm_dtype, rtol in (("float64", 1e-10), ("float32", 1e-6)):
        ds = ncanalysis.analyze_arrays({"train": (x, y)}, etf, None, gemm_dtype=gemm_dtype)
        assert float(value(ds, "nc1")) == pytest.approx(expected, rel=rtol), gemm_dtype
        assert float(value(ds, "nc1_trace_ratio")) == pytest.approx(dim * sigma**2 / rho**2, rel=rtol)
        np.testing.assert_allclose(ds["class_nc1"].values[0, 0], expected / num_classes, rtol=10 * rtol)
        np.testing.assert_allclose(ds["class_within_var"].values[0, 0], dim * sigma**2, rtol=rtol)
        assert int(value(ds, "nc1_rank")) == num_classes - 1


def test_planted_collapse_random_noise():
    num_classes, dim, n_per_class, rho, sigma = 4, 8, 5000, 1.0, 0.3
    x, y, etf = syn.planted_collapse(num_classes, dim, n_per_class, rho=rho, sigma=sigma, seed=5)
    xt, yt, _ = syn.planted_collapse(num_classes, dim, n_per_class, rho=rho, sigma=sigma, etf=etf, seed=6)
    ds = ncanalysis.analyze_arrays({"train": (x, y), "test": (xt, yt)}, etf, None)
    expected = sigma**2 * (num_classes - 1) ** 2 / (rho**2 * num_classes)
    n = num_classes * n_per_class
    tol = 6 * (math.sqrt(2.0 / (n * (num_classes - 1))) + (sigma / rho) / math.sqrt(n_per_class))
    for split in ("train", "test"):
        assert float(value(ds, "nc1", split)) == pytest.approx(expected, rel=tol), split
    # the test split's means are other noisy estimates of the same ETF: NCC with the
    # train means agrees with the network (W = m, b = 0) on almost every sample.
    assert float(value(ds, "ncc_mismatch", "test")) < 0.01


def test_no_etf_when_too_many_classes():
    p = syn.make_problem("no_etf_d5_C12")
    ds = ncanalysis.analyze_arrays(p.splits, p.weight, p.bias)
    assert int(ds.attrs["etf_exists"]) == 0
    assert int(value(ds, "nc1_rank")) == 5
    assert float(value(ds, "nc1")) > 0
    assert np.all(ds["class_nc1"].values >= 0)


# --------------------------------------------------------------- tpt_start_epoch


def test_tpt_start_epoch_when_train_accuracy_is_one():
    p = syn.etf_problem(4, 6, seed=2)
    ds = ncanalysis.analyze_arrays(p.splits, p.weight, p.bias, epoch=3)
    assert float(value(ds, "accuracy")) == 1.0
    assert int(ds.attrs["tpt_start_epoch"]) == 3  # the epoch number, not its position


def test_tpt_start_epoch_minus_one_when_not_reached():
    p = syn.make_problem("offset_d10_C5")  # train accuracy < 1
    ds = ncanalysis.analyze_arrays(p.splits, p.weight, p.bias, epoch=3)
    assert float(value(ds, "accuracy")) < 1.0
    assert int(ds.attrs["tpt_start_epoch"]) == -1


def test_tpt_depends_on_train_only():
    # test accuracy 1 but train accuracy < 1: no TPT.
    p = syn.etf_problem(4, 6, seed=4)
    x, y = p.splits["train"]
    y_wrong = y.copy()
    y_wrong[0] = (y[0] + 1) % 4  # one mislabelled train sample
    ds = ncanalysis.analyze_arrays({"train": (x, y_wrong), "test": p.splits["test"]}, p.weight, None, epoch=1)
    assert float(value(ds, "accuracy", "test")) == 1.0
    assert float(value(ds, "accuracy", "train")) < 1.0
    assert int(ds.attrs["tpt_start_epoch"]) == -1


def test_ground_truths_with_dask_inputs():
    p = syn.etf_problem(5, 7, [3, 9, 4, 12, 6], seed=9)
    splits = {
        k: (da.from_array(x, chunks=(4, x.shape[1])), da.from_array(y, chunks=4)) for k, (x, y) in p.splits.items()
    }
    ds = ncanalysis.analyze_arrays(splits, p.weight, p.bias)
    for name in ref.ZERO_AT_COLLAPSE:
        assert abs(float(value(ds, name))) < 1e-9, name
    np.testing.assert_array_equal(ds["class_count"].sel(split="train").values[0], [3, 9, 4, 12, 6])


# ---------------------------------------------------------------------- ties


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"])
def test_logit_ties_go_to_lowest_index(gemm_dtype):
    # Rows 1 and 2 of W are equal (and b = 0): every sample's logits of classes 1 and 2
    # tie exactly, so the network never predicts 2. Integer data: every logit is exact.
    x = np.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-2.0, 1.0], [2.0, 1.0], [3.0, -1.0], [1.0, 2.0]])
    y = np.array([0, 0, 1, 0, 2, 2, 1])
    w = np.array([[-1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    ds = ncanalysis.analyze_arrays({"train": (x, y)}, w, None, gemm_dtype=gemm_dtype)
    # logits (-x0, x0, x0): (0,0) -> all tie -> 0 (right); (-1,0) -> 0; (1,0) -> 1;
    # (-2,1) -> 0; (2,1) -> 1 (label 2: wrong); (3,-1) -> 1 (wrong); (1,2) -> 1
    assert float(value(ds, "accuracy")) == 5 / 7


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"])
def test_zero_features_without_bias_predict_class_zero(gemm_dtype):
    # Dead features (h = 0) and no bias: all logits are exactly 0 -> class 0.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 4)) + np.repeat(np.eye(3, 4) * 4, 10, axis=0)
    y = np.repeat(np.arange(3), 10)
    x[[0, 10, 20]] = 0.0  # one dead sample in each class
    w = np.eye(3, 4)
    ds = ncanalysis.analyze_arrays({"train": (x, y)}, w, None, gemm_dtype=gemm_dtype)
    logits = x @ w.T
    expected = np.argmax(logits, axis=1)  # numpy: ties -> lowest index
    assert np.all(expected[[0, 10, 20]] == 0)
    assert float(value(ds, "accuracy")) == pytest.approx(np.mean(expected == y), abs=1e-15)


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"])
def test_ncc_ties_go_to_lowest_index(gemm_dtype):
    # Train means (-1,0), (1,0), (0,3) (one sample each). The network always says 1
    # (b dominates a tiny W). Test samples and their nearest train mean:
    #   (-1,0) y0 -> 0 mismatch     (1,0) y1 -> 1 ok      (0,3) y2 -> 2 mismatch
    #   (-2,0) y0 -> 0 mismatch     (0,0) y0 -> TIE 0/1 (distance 1 each) -> 0 mismatch
    #   (2,0)  y1 -> 1 ok           (0,2) y2 -> 2 mismatch (0,4) y2 -> 2 mismatch
    # All inputs are small integers: the tie is exact in the data.
    train = (np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 3.0]]), np.array([0, 1, 2]))
    xt = np.array([[-1.0, 0], [1, 0], [0, 3], [-2, 0], [0, 0], [2, 0], [0, 2], [0, 4]])
    yt = np.array([0, 1, 2, 0, 0, 1, 2, 2])
    w = 1e-3 * np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = np.array([0.0, 1.0, 0.0])
    ds = ncanalysis.analyze_arrays({"train": train, "test": (xt, yt)}, w, b, gemm_dtype=gemm_dtype)
    got = ds["class_ncc_mismatch"].sel(split="test").values[0].tolist()
    assert got == [3, 0, 3], f"class_ncc_mismatch {got}: the tie at (0,0) must go to class 0"
    assert float(value(ds, "ncc_mismatch", "test")) == 6 / 8


# -------------------------------------------------------------- large logits


@pytest.mark.parametrize("gemm_dtype", ["float32", "float64"])
def test_loss_is_stable_with_huge_logits(gemm_dtype):
    # Logits of order 1e3: exp overflows unless the log-sum-exp is shifted. Samples
    # of class 0 placed at the class-1 centre are misclassified with margin
    # ~ 2 * 1000 * ||m||^2 (C/(C-1)); the others have loss exp(-huge) = 0.
    num_classes, dim = 3, 4
    etf = syn.simplex_etf(num_classes, dim, seed=1)
    y = np.repeat(np.arange(num_classes), 5)
    x = etf[y].copy()
    x[0] = etf[1]  # one sample of class 0 sitting on the class-1 centre
    w = 1000.0 * etf
    ds = ncanalysis.analyze_arrays({"train": (x, y)}, w, None, gemm_dtype=gemm_dtype)
    loss = float(value(ds, "loss"))
    # sample 0: logits 1000 * (cos(m0, m1), 1, cos(m2, m1)) = 1000 * (-1/2, 1, -1/2)
    expected = (1000 * 1.5 + math.log1p(2 * math.exp(-1500))) / y.size
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-6)
