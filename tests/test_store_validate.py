"""Broken stores: validate_store lists the problem, the reader raises naming it."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from store_helpers import (
    BACKENDS,
    D,
    SIZES,
    delete_node,
    make_store,
    read_root_meta,
    replace_array,
    set_value,
    store_path,
    write_root_meta,
)

from ncanalysis.errors import IncompleteEpochError, StoreFormatError
from ncanalysis.store import open_store, open_store_writer, validate_store


@pytest.fixture(params=BACKENDS)
def path(request, tmp_path):
    path = store_path(tmp_path, request.param)
    make_store(path)
    return path


def _only_problem(path: Path, *parts: str) -> str:
    """The one problem validate_store finds; it names the file and every part."""
    problems = validate_store(path)
    assert len(problems) == 1, problems
    for part in (str(path), *parts):
        assert part in problems[0]
    return problems[0]


def test_valid_store_has_no_problem(path):
    assert validate_store(path) == []


def test_missing_array(path):
    delete_node(path, "epochs/1/train/labels")
    assert "missing" in _only_problem(path, "epoch 1", "'train'", "'labels'")
    with open_store(path) as store:
        with pytest.raises(StoreFormatError, match=r"epoch 1, split 'train', array 'labels': miss"):
            store.labels(1, "train")
        # The rest of the store still reads.
        assert store.labels(1, "test").shape == (SIZES["test"],)


def test_missing_classifier(path):
    delete_node(path, "epochs/0/bias")
    _only_problem(path, "epoch 0", "'bias'", "missing")
    with open_store(path) as store, pytest.raises(StoreFormatError, match=r"epoch 0, array 'bias'"):
        store.bias(0)


def test_wrong_shape(path):
    replace_array(path, "epochs/1/test/sample_index", np.arange(SIZES["test"] + 1), ("sample",))
    message = _only_problem(path, "epoch 1", "'test'", "'sample_index'")
    assert f"shape ({SIZES['test'] + 1},), expected ({SIZES['test']},)" in message
    with open_store(path) as store, pytest.raises(StoreFormatError, match=r"'sample_index': shape"):
        store.sample_index(1, "test")


def test_wrong_dtype(path):
    integers = np.ones((SIZES["train"], D), np.int32)
    replace_array(path, "epochs/0/train/features", integers, ("sample", "feature"))
    assert "dtype int32" in _only_problem(path, "epoch 0", "'train'", "'features'")
    with open_store(path) as store:
        with pytest.raises(StoreFormatError, match=r"'features': dtype int32"):
            store.features(0, "train")


def test_label_out_of_range(path):
    set_value(path, "epochs/1/train/labels", 3, 7)
    message = _only_problem(path, "epoch 1", "'train'", "'labels'")
    assert "outside 0..2, first at row 3 (7)" in message
    with open_store(path) as store:
        with pytest.raises(StoreFormatError, match=r"row 3 holds 7, outside 0..2"):
            store.labels(1, "train")


def test_negative_sample_index_and_non_finite_classifier(path):
    set_value(path, "epochs/0/test/sample_index", 2, -5)
    set_value(path, "epochs/1/weight", (1, 1), np.nan)
    where = f"{path}: epoch 0, split 'test', array 'sample_index'"
    assert validate_store(path) == [
        f"{where}: 1 of 9 values negative, first at row 2 (-5)",
        f"{path}: epoch 1, array 'weight': holds NaN or inf",
    ]


def test_unknown_major_version(path):
    meta = read_root_meta(path)
    write_root_meta(path, meta | {"version": "2.0"})
    _only_problem(path, "version 2.0 is not supported")
    with pytest.raises(StoreFormatError, match=r"version 2.0 is not supported"):
        open_store(path)
    with pytest.raises(StoreFormatError, match=r"version 2.0 is not supported"):
        open_store_writer(path)


def test_newer_minor_version_is_read(path):
    write_root_meta(path, read_root_meta(path) | {"version": "1.9", "new_entry": [1]})
    assert validate_store(path) == []
    with open_store(path) as store:
        assert store.format_version == "1.9"
        assert store.epochs() == [0, 1]


def test_incomplete_epoch(path):
    writer = open_store_writer(path)
    writer.begin_epoch(4).create_split("train", 5)
    _only_problem(path, "epoch 4 is incomplete")
    with open_store(path) as store:
        with pytest.raises(IncompleteEpochError, match=r"epoch 4 is incomplete"):
            store.splits(4)


def test_missing_dimension_names(tmp_path):
    path = store_path(tmp_path, "zarr")
    make_store(path)
    root = zarr.open_group(path, mode="r+")
    bias = root["epochs/1/bias"][...]
    del root["epochs/1/bias"]
    root.create_array("epochs/1/bias", data=bias)
    assert "dimension names None, expected ('class',)" in _only_problem(path, "epoch 1", "'bias'")


def test_unwritten_chunk_of_a_complete_epoch(tmp_path):
    path = store_path(tmp_path, "zarr")
    make_store(path, chunk_rows=4)
    (path / "epochs/0/train/features/c/1/0").unlink()
    assert "only 5 of 6 chunks written" in _only_problem(path, "epoch 0", "'train'", "'features'")


def _plain_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as file:
        file["x"] = np.ones(3)


def _plain_zarr(path: Path) -> None:
    zarr.open_group(path, mode="w").attrs["ncanalysis"] = {"format": "other", "version": "1.0"}


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.zarr", None, "does not exist"),
        ("empty_dir", lambda p: p.mkdir(), "no Zarr group"),
        ("text.h5", lambda p: p.write_text("hello"), "not an HDF5 file"),
        ("plain.h5", _plain_hdf5, "not an ncanalysis store"),
        ("other.zarr", _plain_zarr, "does not name the format"),
    ],
)
def test_not_a_store(tmp_path, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    assert len(validate_store(path)) == 1
    assert message in validate_store(path)[0]
    with pytest.raises(StoreFormatError, match=message):
        open_store(path)


def test_root_attribute_not_json(tmp_path):
    path = store_path(tmp_path, "hdf5")
    make_store(path, epochs=())
    with h5py.File(path, "r+") as file:
        file.attrs["ncanalysis"] = "{not json"
    with pytest.raises(StoreFormatError, match=r"not JSON text"):
        open_store(path)
