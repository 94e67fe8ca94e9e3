"""ncanalysis.results as a package: the lazy imports of its modules resolve (issue 12)."""

from __future__ import annotations

import pytest
from test_results import analysed

import ncanalysis
from ncanalysis import results
from ncanalysis.errors import StoreFormatError


def test_results_without_a_version_are_marked_when_saved_or_journalled(tmp_path):
    # save_results and journal_results add the ncanalysis_version mark by which a later
    # save recognises the file as replaceable; the import doing it sits inside the function.
    ds = analysed(0)
    del ds.attrs["ncanalysis_version"]
    saved = tmp_path / "saved.json"
    results.save_results(ds, saved)
    assert results.load_results(saved).attrs["ncanalysis_version"] == ncanalysis.__version__
    journalled = tmp_path / "journalled.nc"
    results.journal_results(ds, journalled)
    assert results.load_results(journalled).attrs["ncanalysis_version"] == ncanalysis.__version__
    results.save_results(ds, saved)  # recognised as results: replaced, not refused


def test_unreadable_zarr_metadata_is_a_format_error_naming_the_file(tmp_path):
    # Group attributes are read through zarr's API; what zarr cannot parse is reported.
    bad = tmp_path / "r.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match=str(bad / "zarr.json")):
        results.load_results(bad)
    with pytest.raises(StoreFormatError, match=str(bad / "zarr.json")):
        results.check_replaceable(bad)
