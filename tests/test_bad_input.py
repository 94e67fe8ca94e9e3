"""Bad inputs to ``analyze_arrays`` raise :class:`ncanalysis.errors.InputError`.

Each message must say where (the split, or the array: weight / bias) and what
(the problem) -- checked with loose, case-insensitive patterns so that wording
can change but the information cannot disappear.
"""

from __future__ import annotations

import os
import re
import sys

import dask.array as da
import numpy as np
import pytest


import synthetic as syn  # noqa: E402

import ncanalysis  # noqa: E402
from ncanalysis.errors import InputError  # noqa: E402

C, D = 4, 6
SPLIT = "held_out"  # an unusual split name, so that finding it in a message means something


def good_inputs():
    p = syn.random_problem(C, D, [20] * C, [10] * C, seed=0)
    splits = {"train": p.splits["train"], SPLIT: p.splits["test"]}
    return splits, p.weight.copy(), p.bias.copy()


def raises_input_error(splits, weight, bias, *patterns, **kwargs):
    """Call analyze_arrays, expect InputError, check every regex pattern is in the message."""
    with pytest.raises(InputError) as info:
        ncanalysis.analyze_arrays(splits, weight, bias, **kwargs)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message, flags=re.IGNORECASE), (
            f"message {message!r} does not match {pattern!r}"
        )
    return message


def test_inputs_used_here_are_good():
    splits, w, b = good_inputs()
    ncanalysis.analyze_arrays(splits, w, b)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)
    assert issubclass(InputError, ncanalysis.NCAnalysisError)


# ------------------------------------------------------------------- labels


def test_class_without_samples_in_a_split():
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    keep = y != 2
    splits[SPLIT] = (x[keep], y[keep])
    # Not an error since METRICS.md v2: analysed over its classes (tests/test_missing_classes.py).
    ds = ncanalysis.analyze_arrays(splits, w, b)
    assert int(ds["n_classes_present"].sel(split=SPLIT).item()) == C - 1


def test_class_without_samples_in_train():
    splits, w, b = good_inputs()
    x, y = splits["train"]
    keep = y != 0
    splits["train"] = (x[keep], y[keep])
    raises_input_error(splits, w, b, r"train", r"class", r"\b0\b")


@pytest.mark.parametrize("bad_label", [C, C + 7, -1])
def test_label_out_of_range(bad_label):
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    y = y.copy()
    y[3] = bad_label
    splits[SPLIT] = (x, y)
    raises_input_error(splits, w, b, SPLIT, r"label", re.escape(str(bad_label)))


def test_label_out_of_range_in_dask_labels():
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    y = y.copy()
    y[-1] = C
    splits[SPLIT] = (da.from_array(x, chunks=(7, D)), da.from_array(y, chunks=7))
    raises_input_error(splits, w, b, SPLIT, r"label")


# ---------------------------------------------------------- non-finite values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(bad):
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    x = x.copy()
    x[5, 2] = bad
    splits[SPLIT] = (x, y)
    raises_input_error(splits, w, b, SPLIT, r"nan|inf|finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_in_dask_array(bad):
    splits, w, b = good_inputs()
    x, y = splits["train"]
    x = x.copy()
    x[-1, 0] = bad  # in the last chunk
    splits["train"] = (da.from_array(x, chunks=(16, D)), y)
    raises_input_error(splits, w, b, r"train", r"nan|inf|finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float16_features(bad):
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    x = x.astype(np.float16)
    x[0, 0] = bad
    splits[SPLIT] = (x, y)
    raises_input_error(splits, w, b, SPLIT, r"nan|inf|finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight(bad):
    splits, w, b = good_inputs()
    w[1, 3] = bad
    raises_input_error(splits, w, b, r"weight|\bW\b", r"nan|inf|finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_bias(bad):
    splits, w, b = good_inputs()
    b[2] = bad
    raises_input_error(splits, w, b, r"bias|\bb\b", r"nan|inf|finite")


# ------------------------------------------------------------------- shapes


def test_weight_feature_dimension_mismatch():
    splits, w, b = good_inputs()
    w = np.hstack([w, np.ones((C, 1))])
    raises_input_error(splits, w, b, r"weight|\bW\b|feature", rf"\b{D}\b|\b{D + 1}\b|shape|dimension")


def test_features_dimension_differs_between_splits():
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    splits[SPLIT] = (x[:, :-1], y)
    raises_input_error(splits, w, b, SPLIT, rf"\b{D}\b|\b{D - 1}\b|shape|dimension|feature")


def test_bias_length_mismatch():
    splits, w, b = good_inputs()
    raises_input_error(splits, w, np.zeros(C + 1), r"bias|\bb\b", rf"\b{C}\b|\b{C + 1}\b|shape|length")


def test_bias_not_one_dimensional():
    splits, w, b = good_inputs()
    raises_input_error(splits, w, b.reshape(C, 1, 1), r"bias|\bb\b")


def test_weight_not_two_dimensional():
    splits, w, b = good_inputs()
    raises_input_error(splits, w.reshape(-1), b, r"weight|\bW\b")


def test_features_not_two_dimensional():
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    splits[SPLIT] = (x.reshape(-1), y)
    raises_input_error(splits, w, b, SPLIT, r"shape|2-D|dimension")


def test_labels_length_mismatch():
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    splits[SPLIT] = (x, y[:-1])
    raises_input_error(splits, w, b, SPLIT, r"label|length|shape|sample")


def test_labels_not_one_dimensional():
    splits, w, b = good_inputs()
    x, y = splits[SPLIT]
    splits[SPLIT] = (x, y.reshape(-1, 1).repeat(2, axis=1))
    raises_input_error(splits, w, b, SPLIT, r"label")


def test_empty_split():
    splits, w, b = good_inputs()
    splits[SPLIT] = (np.zeros((0, D)), np.zeros(0, dtype=np.int64))
    raises_input_error(splits, w, b, SPLIT)


def test_fewer_than_two_classes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, D))
    y = np.zeros(10, dtype=np.int64)
    raises_input_error(
        {"train": (x, y)}, rng.standard_normal((1, D)), np.zeros(1), r"class|\bC\b|rows", r"\b2\b|\b1\b|at least"
    )


# ---------------------------------------------------------------------- NCC


def test_ncc_without_train_split():
    splits, w, b = good_inputs()
    del splits["train"]
    raises_input_error(splits, w, b, r"train", r"ncc|nearest|NC4")


def test_ncc_false_without_train_split_works():
    splits, w, b = good_inputs()
    del splits["train"]
    ds = ncanalysis.analyze_arrays(splits, w, b, ncc=False)
    assert ds["split"].values.tolist() == [SPLIT]
    assert np.isfinite(float(ds["nc1"].sel(split=SPLIT).values[0]))
    assert np.isfinite(float(ds["accuracy"].sel(split=SPLIT).values[0]))
