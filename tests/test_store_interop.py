"""Stores open with xarray, dask and zarr alone, with named dimensions."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec
from store_helpers import C, D, SIZES, make_store, store_path

from ncanalysis.store import DEFAULT_CHECKSUMS, DIMENSIONS


def _open(path, group):
    if path.suffix == ".h5":
        return xr.open_dataset(path, group=group, engine="h5netcdf")
    # Stores carry no consolidated metadata (it would go stale while epochs are added).
    return xr.open_zarr(path, group=group, consolidated=False)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_xarray_opens_split_and_epoch_groups(tmp_path, backend):
    path = store_path(tmp_path, backend)
    data = make_store(path)
    features, labels, index = data[1].splits["train"]
    with _open(path, "epochs/1/train") as split:
        assert set(split.data_vars) == {"features", "labels", "sample_index"}
        assert split["features"].dims == ("sample", "feature")
        assert split["labels"].dims == ("sample",)
        assert split["sample_index"].dims == ("sample",)
        assert dict(split.sizes) == {"sample": SIZES["train"], "feature": D}
        np.testing.assert_array_equal(split["features"].values, features.astype(np.float16))
        np.testing.assert_array_equal(split["labels"].values, labels)
        np.testing.assert_array_equal(split["sample_index"].values, index)
    with _open(path, "epochs/1") as epoch:
        assert set(epoch.data_vars) == {"weight", "bias"}
        assert epoch["weight"].dims == ("class", "feature")
        assert epoch["bias"].dims == ("class",)
        assert dict(epoch.sizes) == {"class": C, "feature": D}
        np.testing.assert_array_equal(epoch["weight"].values, data[1].weight)
        np.testing.assert_array_equal(epoch["bias"].values, data[1].bias)
        assert epoch.attrs["complete"] == 1


def test_dask_from_zarr_reads_features(tmp_path):
    path = store_path(tmp_path, "zarr")
    data = make_store(path, chunk_rows=4)
    features = da.from_zarr(str(path), component="epochs/0/test/features")
    assert features.chunks == ((4, 4, 1), (D,))
    np.testing.assert_array_equal(features.compute(), data[0].splits["test"][0].astype(np.float16))


def test_zarr_arrays_are_named_explicitly_chunked_unsharded_uncompressed(tmp_path):
    path = store_path(tmp_path, "zarr")
    make_store(path, chunk_rows=4)
    root = zarr.open_group(path, mode="r")
    arrays = dict(root["epochs/0"].arrays()) | {
        f"train/{name}": array for name, array in root["epochs/0/train"].arrays()
    }
    assert set(arrays) == {"weight", "bias", "train/features", "train/labels", "train/sample_index"}
    for name, array in arrays.items():
        assert array.metadata.dimension_names == DIMENSIONS[name.rsplit("/")[-1]]
        assert array.shards is None
        # Uncompressed; format 1.1 stores append a crc32c checksum by default.
        assert array.compressors == ((Crc32cCodec(),) if DEFAULT_CHECKSUMS else ())
    assert arrays["train/features"].chunks == (4, D)
    assert arrays["train/labels"].chunks == (4,)
