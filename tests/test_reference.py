"""Tests of the float64 reference itself (tests/reference.py), against ground truths.

The reference is trusted by the other test files only because these pass: exact
simplex ETFs, planted collapse, examples worked out by hand in the comments, and
cross-checks with independent numpy routines.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest


import reference as ref  # noqa: E402
import synthetic as syn  # noqa: E402



# --------------------------------------------------------------------------- ETF


@pytest.mark.parametrize("num_classes, dim", [(2, 1), (3, 2), (4, 4), (5, 12), (10, 9), (10, 30)])
def test_simplex_etf_generator(num_classes, dim):
    etf = syn.simplex_etf(num_classes, dim, seed=num_classes + dim)
    assert etf.shape == (num_classes, dim)
    np.testing.assert_allclose(np.linalg.norm(etf, axis=1), 1.0, atol=1e-14)
    cos = etf @ etf.T
    off = cos[~np.eye(num_classes, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (num_classes - 1), atol=1e-14)
    # sum_c m_c m_c^T = C/(C-1) P, P the projector onto span(m).
    span = np.linalg.svd(etf.T, full_matrices=False)[0][:, : num_classes - 1]
    projector = span @ span.T
    np.testing.assert_allclose(etf.T @ etf, num_classes / (num_classes - 1) * projector, atol=1e-13)


@pytest.mark.parametrize(
    "num_classes, dim, counts",
    [
        (2, 3, None),
        (4, 3, None),  # d = C - 1
        (4, 6, None),
        (7, 20, None),
        (5, 8, [3, 40, 7, 1, 19]),  # imbalanced: the class-mean mu_G keeps it collapsed
    ],
)
def test_reference_exact_etf_gives_zeros(num_classes, dim, counts):
    problem = syn.etf_problem(num_classes, dim, counts, seed=dim)
    results = ref.reference_metrics(problem.splits, problem.weight, problem.bias)
    for split, values in results.items():
        for name in ref.ZERO_AT_COLLAPSE:
            assert abs(values[name]) < 1e-12, (split, name, values[name])
        assert values["accuracy"] == 1.0
        assert values["nc1_rank"] == num_classes - 1
        assert values["etf_error_means"] < 1e-12
        assert values["etf_error_weights"] < 1e-12
        assert values["bias_collapse"] < 1e-12
        assert values["cdnv"] < 1e-24
        assert values["nc1_trace_ratio"] < 1e-24
        np.testing.assert_array_equal(values["class_ncc_mismatch"], 0)
        np.testing.assert_allclose(values["class_mean_norm"], 3.0, rtol=1e-13)
        np.testing.assert_allclose(values["class_weight_norm"], 2.0, rtol=1e-13)


def test_reference_etf_cosines():
    # Away from collapse of the features, the weights still form an ETF:
    # maxangle and equiangular of W are 0, and cos_w = -1/(C-1) is what they measure.
    num_classes, dim = 6, 9
    etf = syn.simplex_etf(num_classes, dim, seed=3)
    cos = ref.cosine_matrix(etf)
    np.testing.assert_allclose(ref.pair_values(cos), -1.0 / (num_classes - 1), atol=1e-14)
    rng = np.random.default_rng(0)
    y = syn.labels_from_counts([10] * num_classes, rng)
    x = rng.standard_normal((y.size, dim))
    res = ref.reference_metrics({"train": (x, y)}, 5.0 * etf)["train"]
    assert res["equiangular_weights"] < 1e-14
    assert res["maxangle_weights"] < 1e-14
    assert res["equinorm_weights"] < 1e-14
    assert res["etf_error_weights"] < 1e-14
    assert res["nc1"] > 0.1


# ------------------------------------------------------------------ planted collapse


@pytest.mark.parametrize(
    "num_classes, dim, rho, sigma",
    [(3, 2, 1.0, 0.1), (4, 8, 2.0, 0.5), (10, 12, 1.0, 0.05), (5, 4, 0.3, 1.0)],
)
def test_reference_planted_collapse_whitened_is_exact(num_classes, dim, rho, sigma):
    # Noise whitened per class: mu_c = rho m_c and Sigma_W = sigma^2 I exactly,
    # so nc1 = sigma^2 (C-1)^2 / (rho^2 C) to round-off.
    x, y, etf = syn.planted_collapse(num_classes, dim, 40, rho=rho, sigma=sigma, whiten=True, seed=1)
    res = ref.reference_metrics({"train": (x, y)}, etf)["train"]
    expected = sigma**2 * (num_classes - 1) ** 2 / (rho**2 * num_classes)
    assert res["nc1"] == pytest.approx(expected, rel=1e-10)
    # Tr(Sigma_W) = d sigma^2, Tr(Sigma_B) = rho^2 Tr(P)/(C-1) = rho^2
    assert res["nc1_trace_ratio"] == pytest.approx(dim * sigma**2 / rho**2, rel=1e-10)
    # s_c^2 = d sigma^2, ||mu_c - mu_c'||^2 = 2 rho^2 (1 + 1/(C-1)) = 2 rho^2 C/(C-1)
    expected_cdnv = (2 * dim * sigma**2) / (2 * 2 * rho**2 * num_classes / (num_classes - 1))
    assert res["cdnv"] == pytest.approx(expected_cdnv, rel=1e-10)
    np.testing.assert_allclose(res["class_within_var"], dim * sigma**2, rtol=1e-10)
    # balanced classes with equal spread: every class has an equal share
    np.testing.assert_allclose(res["class_nc1"], expected / num_classes, rtol=1e-9)
    assert res["equinorm_means"] < 1e-12 and res["maxangle_means"] < 1e-12
    assert res["self_duality"] < 1e-24


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_planted_collapse_random_noise(seed):
    num_classes, dim, n_per_class, rho, sigma = 4, 8, 5000, 1.0, 0.3
    x, y, etf = syn.planted_collapse(num_classes, dim, n_per_class, rho=rho, sigma=sigma, seed=seed)
    res = ref.reference_metrics({"train": (x, y)}, etf)["train"]
    expected = sigma**2 * (num_classes - 1) ** 2 / (rho**2 * num_classes)
    n = num_classes * n_per_class
    # Finite-sample error: chi^2 fluctuation of the projected Sigma_W over N (C-1)
    # degrees of freedom, and mean noise of order sigma/sqrt(n_c) in Sigma_B;
    # six standard errors of each (a wrong factor C vs C-1 is a 33% error).
    tol = 6 * (math.sqrt(2.0 / (n * (num_classes - 1))) + (sigma / rho) / math.sqrt(n_per_class))
    assert res["nc1"] == pytest.approx(expected, rel=tol)
    assert res["nc1_rank"] == num_classes - 1


# --------------------------------------------------------------- examples by hand


def _hand_split():
    # class 0: (0,0), (2,0)        -> mu_0 = (1,0), s_0^2 = 1
    # class 1: (0,2), (0,4), (0,6) -> mu_1 = (0,4), s_1^2 = 8/3
    x = np.array([[0.0, 2.0], [2.0, 0.0], [0.0, 6.0], [0.0, 0.0], [0.0, 4.0]])
    y = np.array([1, 0, 1, 0, 1])
    return x, y


def test_reference_hand_example_class_mean():
    x, y = _hand_split()
    w = np.array([[2.0, 0.0], [0.0, 1.0]])
    b = np.array([0.0, 0.5])
    res = ref.reference_metrics({"train": (x, y)}, w, b)["train"]

    # mu_G = (0.5, 2); M~ columns v=(0.5,-2) and -v; ||v||^2 = 4.25
    # Sigma_B = v v^T (eigenvalue 4.25), Sigma_B^+ = v v^T / 4.25^2
    # Sigma_W = (1/5) diag(1+1, 4+0+4) = diag(0.4, 1.6)
    # Tr(Sigma_W Sigma_B^+) = v^T Sigma_W v / 4.25^2 = (0.25*0.4 + 4*1.6) / 18.0625
    tr = (0.25 * 0.4 + 4 * 1.6) / 4.25**2
    assert res["nc1"] == pytest.approx(tr / 2, rel=1e-14)
    assert res["nc1_rank"] == 1
    # shares: class 0 residuals (-1,0),(1,0): (r.v)^2 = 0.25 each
    #         class 1 residuals (0,-2),(0,0),(0,2): (r.v)^2 = 16, 0, 16
    share0 = (0.25 + 0.25) / 4.25**2 / 5 / 2
    share1 = (16 + 16) / 4.25**2 / 5 / 2
    np.testing.assert_allclose(res["class_nc1"], [share0, share1], rtol=1e-14)
    assert res["nc1_trace_ratio"] == pytest.approx(2.0 / 4.25, rel=1e-14)
    # ||mu_0 - mu_1||^2 = 1 + 16 = 17; both ordered pairs: (1 + 8/3) / 34
    assert res["cdnv"] == pytest.approx((1 + 8 / 3) / 34, rel=1e-14)
    np.testing.assert_allclose(res["class_within_var"], [1.0, 8 / 3], rtol=1e-14)
    np.testing.assert_array_equal(res["class_count"], [2, 3])
    np.testing.assert_allclose(res["class_mean_norm"], [math.sqrt(4.25)] * 2, rtol=1e-14)
    # C = 2: the centred means are opposite, cos = -1 = -1/(C-1)
    assert abs(res["equinorm_means"]) < 1e-15
    assert abs(res["equiangular_means"]) < 1e-15
    assert abs(res["maxangle_means"]) < 1e-15
    assert res["etf_error_means"] < 1e-15
    # W: norms 2 and 1 -> std 0.5 / avg 1.5; cos_w = 0 -> maxangle |0 + 1| = 1
    assert res["equinorm_weights"] == pytest.approx(1 / 3, rel=1e-14)
    assert res["equiangular_weights"] == 0.0
    assert res["maxangle_weights"] == pytest.approx(1.0, rel=1e-14)
    np.testing.assert_allclose(res["class_weight_norm"], [2.0, 1.0], rtol=1e-14)
    # G = W W^T = diag(4, 1), ||G|| = sqrt(17); target [[.5,-.5],[-.5,.5]]
    s17 = math.sqrt(17)
    etf_w = math.sqrt((4 / s17 - 0.5) ** 2 + (1 / s17 - 0.5) ** 2 + 2 * 0.25)
    assert res["etf_error_weights"] == pytest.approx(etf_w, rel=1e-14)
    # ||W^T/sqrt5 - M~/sqrt8.5||^2 = 1 + 1 - 2 <W^T, M~>/sqrt(42.5), <W^T, M~> = 2*0.5 + 1*2 = 3
    assert res["self_duality"] == pytest.approx(2 - 6 / math.sqrt(42.5), rel=1e-13)
    # W mu_G + b = (1, 2) + (0, 0.5)
    assert res["bias_collapse"] == pytest.approx(math.sqrt(1 + 2.5**2), rel=1e-14)
    # logits: (0,2)->(0,2.5) y1 ok; (2,0)->(4,0.5) y0 ok; (0,6)->(0,6.5) ok;
    #         (0,0)->(0,0.5) y0 wrong; (0,4)->(0,4.5) ok
    assert res["accuracy"] == pytest.approx(4 / 5, abs=0)
    losses = [
        math.log(1 + math.exp(2.5)) - 2.5,
        math.log(math.exp(4) + math.exp(0.5)) - 4,
        math.log(1 + math.exp(6.5)) - 6.5,
        math.log(1 + math.exp(0.5)) - 0,
        math.log(1 + math.exp(4.5)) - 4.5,
    ]
    assert res["loss"] == pytest.approx(sum(losses) / 5, rel=1e-14)
    # NCC: (0,0) is nearest mu_0 (distance 1 vs 4) but the network says 1: one
    # mismatch, in class 0; every other sample agrees.
    assert res["ncc_mismatch"] == pytest.approx(1 / 5, abs=0)
    np.testing.assert_array_equal(res["class_ncc_mismatch"], [1, 0])
    assert res["n_samples"] == 5


def test_reference_hand_example_sample_mean():
    x, y = _hand_split()
    w = np.array([[2.0, 0.0], [0.0, 1.0]])
    res = ref.reference_metrics({"train": (x, y)}, w, global_mean="sample")["train"]
    # mu_G = (2/5, 12/5); M~ columns (0.6,-2.4) = 1.5 u and (-0.4, 1.6) = -u, u = (0.4,-1.6)
    # ||u||^2 = 2.72; Sigma_B = (2.25 + 1)/2 u u^T = 1.625 u u^T, eigenvalue 1.625*2.72
    # Tr(Sigma_W Sigma_B^+) = u^T Sigma_W u / (||u||^2 * 1.625 * 2.72)
    u_sw_u = 0.16 * 0.4 + 2.56 * 1.6
    tr = u_sw_u / (2.72 * 1.625 * 2.72)
    assert res["nc1"] == pytest.approx(tr / 2, rel=1e-13)
    # norms 1.5|u| and |u|: std 0.25|u| / avg 1.25|u| = 0.2
    assert res["equinorm_means"] == pytest.approx(0.2, rel=1e-13)
    np.testing.assert_allclose(
        res["class_mean_norm"], [1.5 * math.sqrt(2.72), math.sqrt(2.72)], rtol=1e-14
    )
    assert res["nc1_trace_ratio"] == pytest.approx(2.0 / (1.625 * 2.72), rel=1e-13)
    # bias_collapse uses this mu_G: W mu_G = (0.8, 2.4)
    assert res["bias_collapse"] == pytest.approx(math.hypot(0.8, 2.4), rel=1e-14)
    # cdnv does not depend on mu_G
    assert res["cdnv"] == pytest.approx((1 + 8 / 3) / 34, rel=1e-14)


def test_reference_hand_example_one_dimension():
    # d = 1, C = 2: class 0 at {0, 2}, class 1 at {5, 7}. mu = 1, 6; mu_G = 3.5
    # Sigma_B = 2.5^2 = 6.25, Sigma_W = 1, nc1 = (1/6.25)/2 = 0.08
    x = np.array([[0.0], [2.0], [5.0], [7.0]])
    y = np.array([0, 0, 1, 1])
    res = ref.reference_metrics({"train": (x, y)}, np.array([[-1.0], [1.0]]), np.array([3.5, -3.5]))
    res = res["train"]
    assert res["nc1"] == pytest.approx(0.08, rel=1e-14)
    assert res["nc1_rank"] == 1
    # W mu_G + b = (-3.5 + 3.5, 3.5 - 3.5) = 0
    assert res["bias_collapse"] == 0.0
    assert res["accuracy"] == 1.0
    assert res["self_duality"] < 1e-30


def test_reference_hand_example_weight_angles():
    # W rows e1, e2, e1+e2: cos over ordered pairs {0, 0, s, s, s, s}, s = 1/sqrt2
    s = 1 / math.sqrt(2)
    w = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 4)
    x = rng.standard_normal((12, 3))
    res = ref.reference_metrics({"train": (x, y)}, w)["train"]
    # mean 2s/3, mean of squares 1/3 -> std sqrt(1/3 - 2/9) = 1/3
    assert res["equiangular_weights"] == pytest.approx(1 / 3, rel=1e-14)
    # |0 + 1/2| twice and |s + 1/2| four times
    assert res["maxangle_weights"] == pytest.approx((2 * 0.5 + 4 * (s + 0.5)) / 6, rel=1e-14)
    norms = np.array([1, 1, math.sqrt(2)])
    expected = math.sqrt(np.mean(norms**2) - np.mean(norms) ** 2) / np.mean(norms)
    assert res["equinorm_weights"] == pytest.approx(expected, rel=1e-13)


def test_reference_ties_go_to_lowest_index():
    # Both rules tie exactly on the sample at 0: the network's logits are equal
    # (W rows equal at h=0, b=0) and 0 is equidistant from the train means -1 and 1.
    x = np.array([[-1.0], [-1.0], [1.0], [1.0], [0.0]])
    y = np.array([0, 0, 1, 1, 1])
    w = np.array([[-1.0], [1.0]])
    res = ref.reference_metrics({"train": (x, y)}, w)["train"]
    # means -1 and 2/3 -> 0 is nearer class 1: not a tie for NCC here; logits (0, 0) tie -> 0
    assert res["accuracy"] == pytest.approx(4 / 5, abs=0)
    np.testing.assert_array_equal(
        ref.nearest_class_centre(np.array([[0.0]]), np.array([[-1.0], [1.0]])), [0]
    )
    np.testing.assert_array_equal(ref.network_predictions(np.array([[0.0, 0.0, 0.0]])), [0])
    np.testing.assert_array_equal(ref.network_predictions(np.array([[0.0, 1.0, 1.0]])), [1])
    np.testing.assert_array_equal(
        ref.nearest_class_centre(np.array([[0.0, 0.0]]), np.array([[5.0, 0], [0, 1.0], [1.0, 0]])),
        [1],
    )
    # a sample with both rules tied (-> both 0) is no mismatch
    xt = np.array([[0.0], [0.0]])
    with np.errstate(invalid="ignore", divide="ignore"):  # the test means coincide: NC2 is 0/0
        res = ref.reference_metrics(
            {"train": (np.array([[-1.0], [1.0]]), np.array([0, 1])), "test": (xt, np.array([0, 1]))},
            np.array([[1.0], [1.0]]),
        )
    assert res["test"]["ncc_mismatch"] == 0.0


def test_reference_ncc_uses_train_means():
    # train means -1 and +1; test means -1 and 9. The test sample at 3.9 is nearest
    # the train mean of class 1 (NCC -> 1), though nearer its own split's mean of
    # class 0 than of class 1 (|3.9+1| = 4.9 < |3.9-9| = 5.1).
    train = (np.array([[-1.0], [1.0]]), np.array([0, 1]))
    test = (np.array([[-1.0], [3.9], [14.1]]), np.array([0, 1, 1]))
    w = np.array([[-1.0], [1.0]])
    b = np.array([0.0, 0.0])
    res = ref.reference_metrics({"train": train, "test": test}, w, b)
    # network: -1 -> class 0, 3.9 -> 1, 14.1 -> 1; NCC with train means: 0, 1, 1
    assert res["test"]["ncc_mismatch"] == 0.0
    # if the network says class 0 for 3.9 (bias), that is a mismatch against NCC = 1
    res = ref.reference_metrics({"train": train, "test": test}, w, np.array([8.0, 0.0]))
    assert res["test"]["ncc_mismatch"] == pytest.approx(1 / 3, abs=0)
    np.testing.assert_array_equal(res["test"]["class_ncc_mismatch"], [0, 1])
    # without train, NCC is undefined
    res = ref.reference_metrics({"test": test}, w, b)
    assert math.isnan(res["test"]["ncc_mismatch"])
    np.testing.assert_array_equal(res["test"]["class_ncc_mismatch"], [-1, -1])


def test_reference_loss_keeps_tiny_losses():
    # loss = log(1 + e^-50) = 1.9e-22 (log1p); log(sum exp(z - max)) would give exactly 0,
    # and for e^-32 ~ 1.3e-14 it would be off by ~1%.
    logits = np.array([[50.0, 0.0], [0.0, 32.0, -5.0]][0:1])
    assert ref.mean_cross_entropy(logits, np.array([0])) == pytest.approx(math.exp(-50), rel=1e-14)
    logits = np.array([[0.0, 32.0, -5.0]])
    expected = math.log1p(math.exp(-32) + math.exp(-37))
    assert ref.mean_cross_entropy(logits, np.array([1])) == pytest.approx(expected, rel=1e-14)
    # a wrong label: the margin plus the same small term
    assert ref.mean_cross_entropy(logits, np.array([2])) == pytest.approx(37 + expected, rel=1e-14)


def test_reference_loss_is_stable():
    # logits (1000, 0) with label 0: loss log(1 + e^-1000) ~ e^-1000 = 0 in float64;
    # label 1: loss 1000. A naive exp would overflow.
    logits = np.array([[1000.0, 0.0], [1000.0, 0.0], [-800.0, -801.0]])
    loss = ref.mean_cross_entropy(logits, np.array([0, 1, 1]))
    assert loss == pytest.approx((0 + 1000 + (1 + math.log1p(math.exp(-1)))) / 3, rel=1e-14)


# ---------------------------------------------------------- internal consistency


@pytest.mark.parametrize("name", sorted(syn.PROBLEMS))
def test_reference_consistency(name):
    problem = syn.make_problem(name)
    results = ref.reference_metrics(problem.splits, problem.weight, problem.bias)
    for split, res in results.items():
        x, y = problem.splits[split]
        # class shares sum to nc1
        assert res["class_nc1"].sum() == pytest.approx(res["nc1"], rel=1e-10)
        assert res["nc1"] >= 0 and np.all(res["class_nc1"] >= 0)
        assert res["nc1_rank"] == problem.expected_rank
        assert res["class_count"].sum() == res["n_samples"] == y.size
        # Sigma_W pooled over N = sum_c n_c s_c^2 / N in trace
        counts, means, within = ref.class_statistics(x, y, problem.num_classes)
        sigma_w = ref.within_class_covariance(x, y, means)
        assert np.trace(sigma_w) == pytest.approx(np.sum(counts * within) / y.size, rel=1e-12)
        # numpy's own pinv (SVD route, same relative cut) gives the same nc1
        _, m_tilde = ref.centred_means(x, means)
        sigma_b = ref.between_class_covariance(m_tilde)
        np.testing.assert_allclose(sigma_b, m_tilde @ m_tilde.T / problem.num_classes, atol=1e-14)
        pinv_np = np.linalg.pinv(sigma_b, rtol=1e-10, hermitian=True)
        assert np.trace(sigma_w @ pinv_np) / problem.num_classes == pytest.approx(res["nc1"], rel=1e-7)


@pytest.mark.parametrize("name", sorted(syn.PROBLEMS))
def test_reference_d_by_d_and_gram_spectra_agree(name):
    # The analyser takes the spectrum of Sigma_B from the C x C Gram M~^T M~ / C; the
    # reference from the d x d Sigma_B. Their nonzero eigenvalues agree, and with the
    # same relative cut they keep the same number of eigenpairs on these problems
    # (round-off eigenvalues are ~1e-16 of the largest in both, far below 1e-10).
    problem = syn.make_problem(name)
    for x, y in problem.splits.values():
        _, means, _ = ref.class_statistics(x, y, problem.num_classes)
        _, m_tilde = ref.centred_means(x, means)
        c = problem.num_classes
        big = np.sort(np.linalg.eigvalsh(m_tilde @ m_tilde.T / c))[::-1]
        small = np.sort(np.linalg.eigvalsh(m_tilde.T @ m_tilde / c))[::-1]
        top = big[0]
        kept_big = big[big > 1e-10 * top]
        kept_small = small[small > 1e-10 * top]
        assert kept_big.size == kept_small.size == problem.expected_rank
        np.testing.assert_allclose(kept_big, kept_small, rtol=1e-8)
        # the largest dropped eigenvalue is far from the cut, in both routes
        for spectrum in (big, small):
            dropped = spectrum[spectrum <= 1e-10 * top]
            if dropped.size:
                assert np.max(np.abs(dropped)) < 1e-12 * top


def test_reference_pinv_rtol_is_relative_to_largest_eigenvalue():
    problem = syn.make_problem("low_rank_leak_kept")  # 3 eigenvalues O(1), 2 of O(1e-6)
    kept = ref.reference_metrics(problem.splits, problem.weight, problem.bias, pinv_rtol=1e-10)
    dropped = ref.reference_metrics(problem.splits, problem.weight, problem.bias, pinv_rtol=1e-3)
    assert kept["train"]["nc1_rank"] == 5
    assert dropped["train"]["nc1_rank"] == 3
    assert dropped["train"]["nc1"] < kept["train"]["nc1"] / 100
    # scaling the features scales every eigenvalue: the rank kept does not change
    scaled = {k: (1e-6 * x, y) for k, (x, y) in problem.splits.items()}
    res = ref.reference_metrics(scaled, problem.weight, problem.bias, pinv_rtol=1e-3)
    assert res["train"]["nc1_rank"] == 3
    assert res["train"]["nc1"] == pytest.approx(dropped["train"]["nc1"], rel=1e-9)


def test_reference_sample_mean_equals_class_mean_when_balanced():
    problem = syn.make_problem("balanced_d16_C4")
    a = ref.reference_metrics(problem.splits, problem.weight, problem.bias)
    b = ref.reference_metrics(problem.splits, problem.weight, problem.bias, global_mean="sample")
    for split in a:
        for name in ref.SCALAR_METRICS + ref.CLASS_FLOAT_METRICS:
            np.testing.assert_allclose(b[split][name], a[split][name], rtol=1e-10, err_msg=name)


def test_reference_sample_mean_differs_when_imbalanced():
    problem = syn.make_problem("imbalanced_d12_C8")
    a = ref.reference_metrics(problem.splits, problem.weight, problem.bias)["train"]
    b = ref.reference_metrics(problem.splits, problem.weight, problem.bias, global_mean="sample")["train"]
    assert abs(a["nc1"] - b["nc1"]) > 1e-3 * a["nc1"]
    assert b["nc1_rank"] == a["nc1_rank"] == 7  # rank still C - 1
    # unaffected by mu_G
    for name in ("cdnv", "accuracy", "loss", "ncc_mismatch", "class_within_var"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-12)


def test_reference_no_cancellation_far_from_origin():
    # Shifting every feature by a vector of norm 1e6 (b -> b - W t) changes nothing
    # beyond the digits lost to representing h itself (1e6 * 1e-16 vs a spread of 1e-4).
    problem = syn.make_problem("near_collapsed_d10_C6")
    t = np.full(problem.num_features, 1e6 / math.sqrt(problem.num_features))
    base = ref.reference_metrics(problem.splits, problem.weight, problem.bias)
    shifted = ref.reference_metrics(
        {k: (x + t, y) for k, (x, y) in problem.splits.items()},
        problem.weight,
        problem.bias - problem.weight @ t,
    )
    for name in ("nc1", "nc1_trace_ratio", "cdnv", "equinorm_means", "maxangle_means"):
        assert shifted["train"][name] == pytest.approx(base["train"][name], rel=1e-3), name


@pytest.mark.parametrize("seed", range(4))
def test_reference_invariances(seed):
    problem = syn.make_problem("imbalanced_d12_C8")
    rng = np.random.default_rng(seed)
    c, d = problem.num_classes, problem.num_features
    base = ref.reference_metrics(problem.splits, problem.weight, problem.bias)

    # rotation of h and of the rows of W
    q = syn.random_orthonormal(d, d, rng)
    rotated = ref.reference_metrics(
        {k: (x @ q.T, y) for k, (x, y) in problem.splits.items()}, problem.weight @ q.T, problem.bias
    )
    # relabelling: class c becomes perm[c]
    perm = rng.permutation(c)
    w_perm = np.empty_like(problem.weight)
    w_perm[perm] = problem.weight
    b_perm = np.empty_like(problem.bias)
    b_perm[perm] = problem.bias
    relabelled = ref.reference_metrics(
        {k: (x, perm[y]) for k, (x, y) in problem.splits.items()}, w_perm, b_perm
    )
    for split in base:
        for name in ref.SCALAR_METRICS:
            assert rotated[split][name] == pytest.approx(base[split][name], rel=1e-9, abs=1e-12), name
            assert relabelled[split][name] == pytest.approx(base[split][name], rel=1e-9, abs=1e-12), name
        for name in ref.CLASS_FLOAT_METRICS + ref.CLASS_COUNT_METRICS:
            np.testing.assert_allclose(relabelled[split][name][perm], base[split][name], rtol=1e-9)
