"""AnalysisOptions: one object, checked once, recorded once, parsed once (issue 12)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import ncanalysis
from ncanalysis import engine
from ncanalysis.errors import IncompleteEpochError, InputError, StoreFormatError
from ncanalysis.options import ALL_SPLITS, AnalysisOptions, settings_of
from ncanalysis.results import merge_results, plan_resume
from ncanalysis.store import create_store
from ncanalysis.store.reader import Store

# ------------------------------------------------------------------ checking


@pytest.mark.parametrize(("field", "value"), [
    ("global_mean", "median"),
    ("gemm_dtype", "float16"),
    ("pinv_rtol", 0.0),
    ("pinv_rtol", 1.0),
    ("pinv_rtol", float("nan")),
    ("pinv_rtol", "1e-10"),
    ("pinv_rtol", True),
    ("ncc", "yes"),
    ("progress", 1.5),
    ("rows_per_block", 0),
    ("rows_per_block", -4),
    ("rows_per_block", True),
    ("rows_per_block", 2.5),
    ("splits", "train"),
    ("splits", []),
    ("splits", ["train", ""]),
])
def test_bad_values_are_refused_naming_option_and_value(field, value):
    with pytest.raises(InputError, match=field) as caught:
        AnalysisOptions(**{field: value})
    assert repr(value) in str(caught.value) or field == "splits"


def test_values_are_normalised_and_frozen():
    options = AnalysisOptions(pinv_rtol=np.float32(0.5), rows_per_block=np.int64(8),
                              splits=["test", "train", "test"], ncc=np.bool_(False))
    assert options.pinv_rtol == 0.5 and type(options.pinv_rtol) is float
    assert options.rows_per_block == 8 and type(options.rows_per_block) is int
    assert options.splits == ("test", "train") and options.ncc is False
    with pytest.raises(AttributeError):
        options.global_mean = "sample"  # type: ignore[misc]
    with pytest.raises(InputError, match="gemm_dtype"):
        options.replace(gemm_dtype="int8")


def test_every_entry_point_checks_through_the_options(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 3))
    y = np.arange(12) % 3
    w = np.eye(3)
    with pytest.raises(InputError, match="pinv_rtol"):
        ncanalysis.analyze_arrays({"train": (x, y)}, w, pinv_rtol=2.0)
    with pytest.raises(InputError, match="options must be an AnalysisOptions"):
        ncanalysis.analyze_arrays({"train": (x, y)}, w, options={"ncc": False})
    with pytest.raises(InputError, match="global_mean"):
        ncanalysis.analyze(tmp_path / "not-even-opened.zarr", global_mean="median")


# ------------------------------------------------------------------ what it records


def test_settings_keep_the_attribute_names_and_values_of_earlier_results():
    # The attributes written by every earlier version (docs/dev/contract.md): results
    # saved then must still resume.
    assert AnalysisOptions().settings() == {
        "global_mean": "class", "pinv_rtol": 1e-10, "gemm_dtype": "float32",
        "ncc_reference_split": "train", "splits_selected": "*",
    }
    chosen = AnalysisOptions(global_mean="sample", pinv_rtol=3e-9, gemm_dtype="float64",
                             ncc=False, splits=["train", "test"])
    assert chosen.settings() == {
        "global_mean": "sample", "pinv_rtol": 3e-9, "gemm_dtype": "float64",
        "ncc_reference_split": "none", "splits_selected": "test,train",
    }
    attrs = chosen.attrs()
    assert attrs["accumulation_dtype"] == "float64"
    assert attrs["ncanalysis_version"] == ncanalysis.__version__
    # Neither the block size nor the progress bar changes what results are comparable to.
    assert AnalysisOptions(rows_per_block=7, progress=True).settings() == AnalysisOptions().settings()


def test_results_of_an_older_version_resume_with_default_options():
    import xarray as xr

    # Attributes as an older ncanalysis wrote them from a library call: no splits_selected.
    old = xr.Dataset(coords={"epoch": [0, 1], "split": ["train"]}, attrs={
        "global_mean": "class", "pinv_rtol": 1e-10, "gemm_dtype": "float32",
        "ncc_reference_split": "train", "accumulation_dtype": "float64"})
    assert settings_of(old)["splits_selected"] == ALL_SPLITS
    plan = plan_resume(old, [0, 1, 2], AnalysisOptions().settings())
    assert plan.done == [0, 1] and plan.todo == [2]
    plan = plan_resume(old, [0, 1], AnalysisOptions(pinv_rtol=1e-8).settings())
    assert plan.todo == [0, 1] and "pinv_rtol" in plan.reason


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    c, d = 4, 6
    means = 3.0 * rng.normal(size=(c, d))
    y = np.arange(80) % c
    x = means[y] + rng.normal(size=(80, d))
    yt = np.arange(20) % c
    xt = means[yt] + rng.normal(size=(20, d))
    return {"train": (x, y), "test": (xt, yt)}, means + 0.1 * rng.normal(size=(c, d))


def test_options_object_and_keywords_give_the_same_results():
    splits, weight = _problem()
    by_keywords = ncanalysis.analyze_arrays(splits, weight, global_mean="sample",
                                            gemm_dtype="float64", pinv_rtol=1e-6)
    options = AnalysisOptions(global_mean="sample", gemm_dtype="float64", pinv_rtol=1e-6)
    by_options = ncanalysis.analyze_arrays(splits, weight, options=options)
    assert by_keywords.attrs == by_options.attrs
    for name in by_keywords.data_vars:
        np.testing.assert_array_equal(by_keywords[name].values, by_options[name].values)
    # A keyword given overrides that field of the options.
    mixed = ncanalysis.analyze_arrays(splits, weight, options=options, global_mean="class")
    assert mixed.attrs["global_mean"] == "class" and mixed.attrs["gemm_dtype"] == "float64"


def test_options_splits_select_among_the_arrays():
    splits, weight = _problem()
    only = ncanalysis.analyze_arrays(splits, weight, options=AnalysisOptions(splits=["test"],
                                                                             ncc=False))
    assert only["split"].values.tolist() == ["test"]
    assert only.attrs["splits_selected"] == "test"
    with pytest.raises(InputError, match="val"):
        ncanalysis.analyze_arrays(splits, weight, options=AnalysisOptions(splits=["val"]))


# ------------------------------------------------------------------ command line


def test_command_line_options_are_the_objects_own():
    parser = argparse.ArgumentParser()
    AnalysisOptions.add_arguments(parser)
    args = parser.parse_args(["--global-mean", "sample", "--pinv-rtol", "1e-6", "--gemm-dtype",
                              "float64", "--no-ncc", "--rows-per-block", "64", "--splits",
                              "test,train"])
    assert AnalysisOptions.from_args(args, progress=True) == AnalysisOptions(
        global_mean="sample", pinv_rtol=1e-6, gemm_dtype="float64", ncc=False,
        rows_per_block=64, splits=("test", "train"), progress=True)
    assert AnalysisOptions.from_args(parser.parse_args([])) == AnalysisOptions()
    for bad in (["--pinv-rtol", "2"], ["--gemm-dtype", "int8"], ["--rows-per-block", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_ncanalysis_run_parses_through_the_options():
    from ncanalysis.cli import _analysis_options, build_parser

    args = build_parser().parse_args(["run", "x.zarr", "--gemm-dtype", "float64", "-q",
                                      "--splits", "train"])
    assert _analysis_options(args) == {"options": AnalysisOptions(
        gemm_dtype="float64", splits=("train",), progress=False)}


# ------------------------------------------------------------------ epochs checked first


def _separable_store(path, classifiers):
    """Well separated classes (means 10 e_c); a negated classifier has accuracy 0."""
    c, d = 4, 8
    rng = np.random.default_rng(0)
    means = 10.0 * np.eye(c, d)
    labels = np.arange(40) % c
    features = (means[labels] + 0.1 * rng.normal(size=(40, d))).astype(np.float32)
    with create_store(path, num_classes=c, num_features=d) as writer:
        for epoch, sign in classifiers.items():
            ep = writer.begin_epoch(epoch)
            ep.write_split("train", features, labels)
            ep.write_classifier(sign * means)
            ep.finalize()
    return means


def test_missing_epochs_fail_before_any_work(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    _separable_store(path, {0: 1, 10: 1})
    from ncanalysis.store import open_store_writer

    with open_store_writer(path) as writer:
        writer.begin_epoch(20)  # begun, never finalized
    computed = []
    real = engine._compute
    monkeypatch.setattr(engine, "_compute", lambda *a, **k: computed.append(1) or real(*a, **k))
    with pytest.raises(StoreFormatError, match=r"cannot analyse epoch\(s\) 20, 30") as caught:
        ncanalysis.analyze(path, epochs=range(0, 40, 10))
    assert "complete: 0, 10; incomplete: 20" in str(caught.value)
    with pytest.raises(IncompleteEpochError, match=r"epoch\(s\) 20 "):
        ncanalysis.analyze(path, epochs=[0, 20])
    assert computed == []  # nothing analysed before the error


def test_analyze_closes_a_store_it_opened(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    _separable_store(path, {0: 1})
    closed = []
    real = Store.close
    monkeypatch.setattr(Store, "close", lambda self: closed.append(self.path) or real(self))
    ncanalysis.analyze(path)
    assert len(closed) == 1
    with ncanalysis.open_store(path) as store:  # a Store passed in stays open
        ncanalysis.analyze(store)
        assert store.epochs() == [0]


# ------------------------------------------------------------------ terminal phase


def test_tpt_stable_epoch_is_recorded_by_analyze_and_merge(tmp_path):
    # Train accuracy, by construction: 0, 1, 0, 1, 1 at epochs 0..4 (a negated
    # classifier misclassifies every sample). The paper's start is epoch 1; train
    # accuracy stays 1 from epoch 3 on.
    path = tmp_path / "tpt.zarr"
    _separable_store(path, {0: -1, 1: 1, 2: -1, 3: 1, 4: 1})
    whole = ncanalysis.analyze(path)
    np.testing.assert_array_equal(whole.accuracy.sel(split="train"), [0, 1, 0, 1, 1])
    assert (whole.attrs["tpt_start_epoch"], whole.attrs["tpt_stable_epoch"]) == (1, 3)
    first = ncanalysis.analyze(path, epochs=[0, 1])
    assert (first.attrs["tpt_start_epoch"], first.attrs["tpt_stable_epoch"]) == (1, 1)
    merged = merge_results(first, ncanalysis.analyze(path, epochs=[2, 3, 4]))
    assert (merged.attrs["tpt_start_epoch"], merged.attrs["tpt_stable_epoch"]) == (1, 3)
    no_train = ncanalysis.analyze_arrays(
        {"test": (np.eye(4, 8) * 10, np.arange(4))}, np.eye(4, 8), ncc=False)
    assert (no_train.attrs["tpt_start_epoch"], no_train.attrs["tpt_stable_epoch"]) == (-1, -1)
