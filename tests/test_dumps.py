"""analyze_file: another project's HDF5, Zarr and .npz dumps under their own array names."""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr


from cli_helpers import epoch_arrays  # noqa: E402

import ncanalysis  # noqa: E402
from ncanalysis import dumps  # noqa: E402
from ncanalysis.errors import InputError  # noqa: E402

KEYS = {"features": "acts/train_x", "labels": "acts/train_y", "weight": "fc_w", "bias": "fc_b",
        "test_features": "acts/test_x", "test_labels": "acts/test_y"}


def write_dump(path, arrays) -> None:
    """The epoch's arrays under KEYS, as the file's suffix asks."""
    values = {
        KEYS["features"]: arrays["train"][0].astype(np.float32),
        KEYS["labels"]: arrays["train"][1],
        KEYS["test_features"]: arrays["test"][0].astype(np.float32),
        KEYS["test_labels"]: arrays["test"][1],
        KEYS["weight"]: arrays["weight"],
        KEYS["bias"]: arrays["bias"],
    }
    chunks = {key: (min(16, len(value)),) + value.shape[1:] for key, value in values.items()}
    if path.suffix == ".npz":
        # npz names are flat; "/" is kept as part of the member name.
        np.savez(path, **values)
    elif path.suffix == ".h5":
        with h5py.File(path, "w") as handle:
            for key, value in values.items():
                handle.create_dataset(key, data=value, chunks=chunks[key])
    else:
        group = zarr.open_group(path, mode="w")
        for key, value in values.items():
            group.create_array(key, data=value, chunks=chunks[key])


@pytest.fixture(scope="module")
def arrays():
    return epoch_arrays(2)


@pytest.fixture(scope="module")
def expected(arrays):
    splits = {s: (arrays[s][0].astype(np.float32), arrays[s][1]) for s in ("train", "test")}
    return ncanalysis.analyze_arrays(splits, arrays["weight"], arrays["bias"], scheduler="sync")


@pytest.mark.parametrize("name", ["dump.npz", "dump.h5", "dump.zarr"])
def test_each_format_matches_analyze_arrays(tmp_path, arrays, expected, name):
    path = tmp_path / name
    write_dump(path, arrays)
    got = dumps.analyze_file(path, scheduler="sync", rows_per_block=16, **KEYS)
    assert got.attrs["source"] == os.fspath(path)
    xr.testing.assert_allclose(got.drop_attrs(), expected.drop_attrs(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name,kind", [("dump.h5", "Dataset"), ("dump.zarr", "Array")])
def test_hdf5_and_zarr_are_passed_lazily(tmp_path, arrays, monkeypatch, name, kind):
    path = tmp_path / name
    write_dump(path, arrays)
    seen = {}

    def spy(splits, weight, bias=None, **options):
        seen.update({split: type(features).__name__ for split, (features, _) in splits.items()})
        return ncanalysis.analyze_arrays(splits, weight, bias, **options)

    monkeypatch.setattr(dumps, "analyze_arrays", spy)
    dumps.analyze_file(path, scheduler="sync", **KEYS)
    assert seen == {"train": kind, "test": kind}


def test_train_only_and_no_bias(tmp_path, arrays):
    path = tmp_path / "dump.npz"
    write_dump(path, arrays)
    got = dumps.analyze_file(path, features=KEYS["features"], labels=KEYS["labels"],
                             weight=KEYS["weight"], scheduler="sync", epoch=7)
    assert got["split"].values.tolist() == ["train"]
    assert got["epoch"].values.tolist() == [7]
    assert got["bias_collapse"].notnull().all()


@pytest.mark.parametrize("name", ["dump.npz", "dump.h5", "dump.zarr"])
def test_missing_key_names_file_key_and_alternatives(tmp_path, arrays, name):
    path = tmp_path / name
    write_dump(path, arrays)
    with pytest.raises(InputError) as info:
        dumps.analyze_file(path, **{**KEYS, "labels": "acts/train_labels"})
    message = str(info.value)
    assert os.fspath(path) in message and "'acts/train_labels'" in message
    assert "labels" in message
    for key in KEYS.values():
        assert key in message, key


def test_group_is_not_an_array(tmp_path, arrays):
    path = tmp_path / "dump.h5"
    write_dump(path, arrays)
    with pytest.raises(InputError, match="'acts' .*group"):
        dumps.analyze_file(path, **{**KEYS, "features": "acts"})


def test_unreadable_paths_and_half_test_split(tmp_path, arrays):
    with pytest.raises(InputError, match="no such file"):
        dumps.analyze_file(tmp_path / "nope.h5", **KEYS)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        dumps.analyze_file(tmp_path / "notes.txt", **KEYS)
    with pytest.raises(InputError, match="test_features and test_labels"):
        dumps.analyze_file(tmp_path / "notes.txt", features="a", labels="b", weight="c",
                           test_features="d")
