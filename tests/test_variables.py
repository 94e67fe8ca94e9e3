"""Results read well in xarray: every variable described, in the documented order (issue 11).

The order and the attributes are checked against docs/metrics.md ("Variables in
order"), the document a user reads, and through every results format.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import h5py
import pytest
import xarray as xr
import zarr
from cli_helpers import make_store, run_cli

import ncanalysis
from ncanalysis.results import load_results, merge_results, save_results
from ncanalysis.variables import COLLAPSE_VALUES, VARIABLES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
ATTRS = ("long_name", "description", "collapse")


def _documented_order() -> list[str]:
    """The variable names of the table under "Variables in order", top to bottom."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Variables in order", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| \d+ \| `(\w+)` \|", section, flags=re.MULTILINE)


def _documented_collapse() -> dict[str, str]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Variables in order", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| \d+ \| `(\w+)` \| [^|]+ \| ([^|]+?) \|", section,
                           flags=re.MULTILINE))


def _assert_described(ds: xr.Dataset, where: str) -> None:
    for name in ds.data_vars:
        for key in ATTRS:
            assert isinstance(ds[name].attrs.get(key), str) and ds[name].attrs[key], (
                f"{where}: {name} has no {key}")
        assert ds[name].attrs["collapse"] in COLLAPSE_VALUES, (where, name)
    order = [n for n in _documented_order() if n in ds.data_vars]
    assert list(ds.data_vars) == order, where


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> xr.Dataset:
    store = make_store(tmp_path_factory.mktemp("v") / "store.zarr", epochs=range(3))
    return ncanalysis.analyze(store)


def test_docs_list_every_variable_in_the_table_order():
    assert _documented_order() == [v.name for v in VARIABLES]
    assert _documented_collapse() == {v.name: v.collapse for v in VARIABLES}


def test_analysis_results_are_described_and_ordered(results):
    assert set(results.data_vars) == {v.name for v in VARIABLES}
    _assert_described(results, "analyze")
    assert results["nc1"].attrs["collapse"] == "decreases to 0"
    assert results["accuracy"].attrs["collapse"] == "increases to 1"
    assert results["n_samples"].attrs["collapse"] == "none"
    for variable in VARIABLES:  # dims and dtype as the table says
        got = results[variable.name]
        assert got.dims == variable.dims, variable.name
        assert (got.dtype.kind == "U") if variable.dtype == "str" else (
            str(got.dtype) == variable.dtype), variable.name


@pytest.mark.parametrize("suffix", [".zarr", ".nc", ".json", ".csv"])
def test_attributes_survive_save_and_load(results, tmp_path, suffix):
    path = tmp_path / f"results{suffix}"
    save_results(results, path)
    back = load_results(path)
    _assert_described(back, suffix)
    # In the file itself, not only re-applied on load (CSV keeps no variable attributes).
    if suffix == ".zarr":
        assert zarr.open_group(path, mode="r")["nc1"].attrs["collapse"] == "decreases to 0"
    elif suffix == ".nc":
        with h5py.File(path, "r") as handle:
            assert handle["loss"].attrs["long_name"] == results["loss"].attrs["long_name"]
    elif suffix == ".json":
        assert '"collapse": "increases to 1"' in path.read_text(encoding="utf-8")


def test_merged_results_are_described_and_ordered(results):
    merged = merge_results(results.isel(epoch=[0]), results.isel(epoch=[1, 2]))
    _assert_described(merged, "merge")
    merged = merge_results(results.isel(epoch=[2]).drop_vars("epoch_identity"),
                           results.isel(epoch=[0]))
    _assert_described(merged, "merge of old results")


def test_store_results_group_has_consolidated_metadata(tmp_path):
    store = make_store(tmp_path / "store.zarr", epochs=range(2))
    done = run_cli("run", store, "--quiet")
    assert done.returncode == 0, done.stderr
    group = store / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not yet in the v3 spec
        consolidated = zarr.open_consolidated(group, mode="r")
        metadata = consolidated.metadata.consolidated_metadata
        assert metadata is not None and "nc1" in metadata.metadata
        with xr.open_zarr(group, consolidated=True) as ds:
            assert ds["self_duality"].attrs["collapse"] == "decreases to 0"
            for name in ds.data_vars:  # in the file, text variables included
                assert ds[name].attrs.get("collapse") in COLLAPSE_VALUES, name
            assert ds["class_name"].attrs["long_name"] == "class name"
            assert set(ds.data_vars) == {v.name for v in VARIABLES}
    # Zarr lists a group's arrays by name; load_results gives the documented order back.
    _assert_described(load_results(store), "store results")
