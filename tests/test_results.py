"""Saving, loading, merging and resuming results (ncanalysis.results), in process."""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest
import xarray as xr


from cli_helpers import C, CLASS_NAMES, epoch_arrays, make_store  # noqa: E402

import ncanalysis  # noqa: E402
from ncanalysis import results  # noqa: E402
from ncanalysis.errors import InputError, StoreFormatError  # noqa: E402
from ncanalysis.metrics import SCALAR_METRICS  # noqa: E402
from ncanalysis.store import validate_store  # noqa: E402


def analysed(epoch: int, splits=("train", "test"), **options) -> xr.Dataset:
    arrays = epoch_arrays(epoch)
    ds = ncanalysis.analyze_arrays({s: arrays[s] for s in splits}, arrays["weight"],
                                   arrays["bias"], epoch=epoch, class_names=CLASS_NAMES,
                                   scheduler="sync", **options)
    ds.attrs["splits_selected"] = results.ALL_SPLITS
    return ds


@pytest.fixture(scope="module")
def two_epochs() -> xr.Dataset:
    """Epochs 0 (train and test) and 1 (train only): a split missing from an epoch."""
    ds = results.merge_results(analysed(0), analysed(1, splits=("train",)))
    # Values a text format could mangle: an infinity next to the NaNs of the missing split.
    ds["cdnv"].loc[{"epoch": 0, "split": "test"}] = np.inf
    return ds


def scalar_part(ds: xr.Dataset) -> xr.Dataset:
    return ds.drop_dims("class")


@pytest.mark.parametrize("suffix", [".zarr", ".nc", ".json"])
def test_full_formats_round_trip_exactly(tmp_path, two_epochs, suffix):
    path = results.save_results(two_epochs, tmp_path / f"r{suffix}")
    back = results.load_results(path)
    xr.testing.assert_identical(back, two_epochs)
    # Saving again replaces the file in place and leaves no temporary sibling behind
    # (only the results lock file, kept by design: docs/cli.md).
    results.save_results(back, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".r{suffix}.lock", f"r{suffix}"]


def test_csv_keeps_scalar_metrics_and_attributes(tmp_path, two_epochs):
    path = results.save_results(two_epochs, tmp_path / "r.csv")
    back = results.load_results(path)
    xr.testing.assert_identical(back, scalar_part(two_epochs))
    # A plain CSV reader sees one row per analysed (epoch, split): the absent one has none.
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    assert [(r["epoch"], r["split"]) for r in rows] == [("0", "train"), ("0", "test"),
                                                        ("1", "train")]
    assert float(rows[0]["nc1"]) == two_epochs["nc1"].sel(epoch=0, split="train").item()
    assert set(SCALAR_METRICS) <= set(rows[0])


def test_json_is_strict_and_complete(tmp_path, two_epochs):
    path = results.save_results(two_epochs, tmp_path / "r.json")
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["attrs"]["tpt_start_epoch"] == two_epochs.attrs["tpt_start_epoch"]
    assert set(data["data_vars"]) == set(two_epochs.data_vars)
    assert data["data_vars"]["cdnv"]["data"][0][1] == "Infinity"
    assert data["data_vars"]["nc1"]["data"][1][1] is None


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_in_store_group(tmp_path, name):
    store = make_store(tmp_path / name, epochs=[0, 1])
    assert not results.has_store_results(store)
    ds = ncanalysis.analyze(store, scheduler="sync")
    results.save_results(ds, store, in_store=True)
    results.save_results(ds, store, in_store=True)  # replacing works too
    assert results.has_store_results(store)
    xr.testing.assert_identical(results.load_results(store), ds)
    # The store itself is untouched: still valid and still analysable.
    assert validate_store(store) == []
    xr.testing.assert_identical(ncanalysis.analyze(store, scheduler="sync"), ds)


def test_load_errors(tmp_path):
    with pytest.raises(StoreFormatError, match="no such file"):
        results.load_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match="bad.json"):
        results.load_results(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(StoreFormatError, match="not an ncanalysis results"):
        results.load_results(tmp_path / "other.json")
    (tmp_path / "r.txt").write_text("")
    with pytest.raises(InputError, match="neither a results file"):
        results.load_results(tmp_path / "r.txt")
    store = make_store(tmp_path / "s.zarr", epochs=[0])
    with pytest.raises(InputError, match="unknown results format"):
        results.save_results(analysed(0), tmp_path / "r.parquet")
    (store / "results").mkdir()  # a results group name without a group in it
    with pytest.raises(StoreFormatError, match="s.zarr"):
        results.load_results(store)


def test_merge_adds_epochs_and_splits(two_epochs):
    later = analysed(3, splits=("train", "test"))
    # Epochs 0 and 1 of the planted collapse stay below train accuracy 1; mark epoch 3 as reached.
    later["accuracy"].loc[{"split": "train"}] = 1.0
    merged = results.merge_results(two_epochs, later)
    assert merged["epoch"].values.tolist() == [0, 1, 3]
    assert merged["split"].values.tolist() == ["train", "test"]
    xr.testing.assert_identical(merged.sel(epoch=[0, 1]).drop_attrs(), two_epochs.drop_attrs())
    xr.testing.assert_identical(merged.sel(epoch=[3]).drop_attrs(), later.drop_attrs())
    # The missing split keeps its markers and the integer variables stay integers.
    assert merged["n_samples"].sel(epoch=1, split="test").item() == -1
    assert merged["class_count"].dtype == np.int64
    assert merged.attrs["tpt_start_epoch"] == 3


def test_merge_new_epoch_wins_and_tpt_is_recomputed(two_epochs):
    redo = analysed(1)
    redo["accuracy"].loc[{"split": "train"}] = 1.0
    merged = results.merge_results(two_epochs, redo)
    assert merged["n_samples"].sel(epoch=1, split="test").item() > 0
    assert merged.attrs["tpt_start_epoch"] == 1


def test_merge_refuses_other_models(two_epochs):
    other = two_epochs.copy()
    other.attrs = {**two_epochs.attrs, "num_classes": C + 1}
    with pytest.raises(InputError, match="num_classes"):
        results.merge_results(two_epochs, other)


def test_merge_into_csv_results_drops_class_variables(two_epochs):
    old = scalar_part(two_epochs)
    merged = results.merge_results(old, analysed(2))
    assert "class" not in merged.dims
    assert merged["epoch"].values.tolist() == [0, 1, 2]


def test_plan_resume(two_epochs):
    same = results.run_settings()
    plan = results.plan_resume(two_epochs, [0, 1, 2, 3], same)
    assert (plan.todo, plan.done) == ([2, 3], [0, 1])
    assert plan.keep is two_epochs
    fresh = results.plan_resume(None, [0, 1], same)
    assert (fresh.todo, fresh.keep) == ([0, 1], None)
    for changed in ({"global_mean": "sample"}, {"pinv_rtol": 1e-8}, {"gemm_dtype": "float64"},
                    {"ncc": False}, {"splits": ["train"]}):
        plan = results.plan_resume(two_epochs, [0, 1, 2], results.run_settings(**changed))
        assert (plan.todo, plan.keep) == ([0, 1, 2], None), changed
        assert "other settings" in plan.reason


def test_settings_survive_every_format(tmp_path, two_epochs):
    ds = two_epochs.copy()
    ds.attrs.update(results.run_settings(pinv_rtol=3e-9, splits=["train", "test"]))
    for suffix in results.RESULTS_FORMATS:
        back = results.load_results(results.save_results(ds, tmp_path / f"s{suffix}"))
        assert results.settings_of(back) == results.settings_of(ds), suffix
