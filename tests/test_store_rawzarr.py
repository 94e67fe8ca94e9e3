"""The direct reader of uncompressed Zarr chunk files against zarr's own reads."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from store_helpers import make_store

from ncanalysis.errors import StoreFormatError
from ncanalysis.store import open_store
from ncanalysis.store._rawzarr import RawRowChunks, raw_row_chunks


def _array(tmp_path, values, chunk_rows, **kwargs) -> zarr.Array:
    array = zarr.create_array(
        tmp_path / "a.zarr", shape=values.shape, dtype=values.dtype,
        chunks=(chunk_rows, values.shape[1]), fill_value=0, **kwargs,
    )
    array[...] = values
    return array


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("separator", ["/", "."])
def test_every_row_slice_matches_zarr(tmp_path, dtype, separator):
    values = np.random.default_rng(0).standard_normal((23, 5)).astype(dtype)
    array = _array(tmp_path, values, 4, compressors=None,
                   chunk_key_encoding={"name": "default", "separator": separator})
    reader = raw_row_chunks(array)
    assert isinstance(reader, RawRowChunks)
    for start in range(0, 24):
        for stop in range(start, 24):
            got = reader[start:stop, 0:5]
            assert got.dtype == values.dtype and got.shape == (stop - start, 5)
            assert np.array_equal(got, array[start:stop]), (start, stop)
    np.testing.assert_array_equal(reader[3:17, 1:4], values[3:17, 1:4])
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone[:, :], values)


def test_missing_chunk_reads_as_fill_value_and_truncated_chunk_is_an_error(tmp_path):
    values = np.arange(1, 41, dtype=np.float32).reshape(10, 4)
    array = _array(tmp_path, values, 4, compressors=None)
    reader = raw_row_chunks(array)
    os.remove(reader.chunk_path(1))  # rows 4..7
    expected = values.copy()
    expected[4:8] = 0
    np.testing.assert_array_equal(reader[:, :], expected)
    np.testing.assert_array_equal(reader[2:9, :], array[2:9])
    with open(reader.chunk_path(2), "r+b") as file:
        file.truncate(10)
    with pytest.raises(StoreFormatError, match=r"c/2/0: chunk file ends at byte 10"):
        reader[8:10, :]


def test_layouts_that_need_zarr_are_left_to_zarr(tmp_path):
    values = np.ones((8, 3), dtype=np.float32)
    assert raw_row_chunks(_array(tmp_path / "blosc", values, 4, compressors=BloscCodec())) is None
    split_columns = zarr.create_array(tmp_path / "c.zarr", shape=(8, 3), dtype=np.float32,
                                      chunks=(4, 2), compressors=None)
    assert raw_row_chunks(split_columns) is None
    sharded = zarr.create_array(tmp_path / "s.zarr", shape=(8, 3), dtype=np.float32,
                                chunks=(2, 3), shards=(4, 3), compressors=None)
    assert raw_row_chunks(sharded) is None
    big_endian = zarr.create_array(tmp_path / "b.zarr", shape=(8, 3), dtype=">f4",
                                   chunks=(4, 3), compressors=None)
    assert raw_row_chunks(big_endian) is None


def test_store_features_take_the_direct_path(tmp_path):
    """The writer's layout qualifies, so a store's features never go through zarr's decoder."""
    path = tmp_path / "store.zarr"
    data = make_store(path, epochs=(0,))
    with open_store(path) as store:
        features = store.features(0, "train", rows_per_block=1)
        graph = dict(features.__dask_graph__())
        assert any(isinstance(value, RawRowChunks) for value in graph.values())
        np.testing.assert_allclose(
            features.compute(), data[0].splits["train"][0], rtol=2**-11, atol=0
        )
        # The analyser's own blocks: the same reader, the same row ranges.
        blocks = store.feature_blocks(0, "train", rows_per_block=1)
        assert isinstance(blocks.array, RawRowChunks)
        assert blocks.block_rows == features.chunks[0]
