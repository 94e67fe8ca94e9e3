"""Numba kernel pieces checked directly against numpy/libm."""

from __future__ import annotations

import numba
import numpy as np
import pytest

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
