"""Pieces of ncanalysis.stats checked against direct float64 computations."""

from __future__ import annotations

import numpy as np
import pytest

from ncanalysis import stats


def _geometry(centred_rows: np.ndarray, pinv_rtol: float) -> stats.SplitGeometry:
    num_classes = centred_rows.shape[0]
    counts = np.full(num_classes, 5, dtype=np.int64)
    return stats.split_geometry(
        stats.ClassSums(counts, (centred_rows + 3.0) * 5), pinv_rtol=pinv_rtol
    )


@pytest.mark.parametrize("pinv_rtol", [1e-10, 1e-4])
def test_coordinates_and_separation(pinv_rtol):
    rng = np.random.default_rng(11)
    # 9 classes in 20 dims; two directions of the means are 1e-3 of the others,
    # so that pinv_rtol=1e-4 drops them (their variance is 1e-6 of the top).
    means = rng.standard_normal((9, 20)) @ np.diag([1.0] * 6 + [1e-3] * 2 + [0.0] * 12)
    geometry = _geometry(means, pinv_rtol)
    # Equal in exact arithmetic; the eigenvectors of the 1e-6 directions carry
    # round-off of ~1e-16 / 1e-6 relative, hence the tolerance.
    np.testing.assert_allclose(
        geometry.coordinates, geometry.centred @ geometry.basis, rtol=0, atol=1e-10
    )
    assert geometry.rank == (8 if pinv_rtol == 1e-10 else 6)
    points = geometry.coordinates
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1)
    # A lower bound, and a tight one.
    assert np.all(geometry.separation <= nearest)
    assert np.all(geometry.separation >= 0.999 * nearest)


def test_unknown_global_mean_is_refused_not_replaced():
    sums = stats.ClassSums(np.full(3, 2, dtype=np.int64), np.eye(3))
    with pytest.raises(ValueError, match="global_mean"):
        stats.split_geometry(sums, global_mean="median")
