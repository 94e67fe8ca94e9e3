"""The direct reader of uncompressed Zarr chunk files against zarr's own reads."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
import zarr
from dask.base import tokenize
from store_helpers import make_store
from zarr.codecs import BloscCodec, Crc32cCodec

from ncanalysis.errors import InputError, StoreFormatError
from ncanalysis.sources import store_row_blocks
from ncanalysis.store import DIRECT_READS_ENV, ChunkError, open_store
from ncanalysis.store._rawzarr import RawRowChunks, raw_row_chunks
from ncanalysis.store._zarr import ZarrRows


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
    """Outside a store (no ``where``) a missing chunk is zarr's fill value; a store's
    complete epoch refuses it (tests/test_faults_store.py)."""
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
        blocks = store_row_blocks(store, 0, "train", rows_per_block=1)
        assert isinstance(blocks.array, RawRowChunks)
        assert blocks.block_rows == features.chunks[0]


@pytest.mark.parametrize("encoding", [{"name": "v2", "separator": "."},
                                      {"name": "v2", "separator": "/"},
                                      {"name": "default", "separator": "/"}])
@pytest.mark.parametrize("checksum", [False, True])
def test_v2_key_encoding_and_checksummed_chunks_read_directly(tmp_path, encoding, checksum):
    values = np.random.default_rng(1).standard_normal((23, 5)).astype(np.float16)
    array = _array(tmp_path, values, 4, compressors=[Crc32cCodec()] if checksum else None,
                   chunk_key_encoding=encoding)
    reader = raw_row_chunks(array)
    assert isinstance(reader, RawRowChunks) and reader.checksum is checksum
    # The file the reader names is the one zarr wrote (v2: "1.0", no "c" prefix).
    assert os.path.exists(reader.chunk_path(5))
    for start in range(0, 24, 3):
        for stop in range(start, 24, 2):
            np.testing.assert_array_equal(reader[start:stop, :], array[start:stop])


def test_direct_crc32c_check_agrees_with_zarr(tmp_path):
    """A flipped byte fails both zarr's crc32c codec and the direct reader's own check."""
    values = np.arange(40, dtype=np.float32).reshape(10, 4)
    array = _array(tmp_path, values, 4, compressors=[Crc32cCodec()])
    reader = raw_row_chunks(array, where="somewhere")
    with open(reader.chunk_path(1), "r+b") as file:
        file.seek(5)
        byte = file.read(1)[0]
        file.seek(5)
        file.write(bytes([byte ^ 0x10]))
    with pytest.raises(ValueError, match="checksum"):
        array[4:8]
    with pytest.raises(ChunkError, match=r"somewhere: .*c/1/0: chunk fails its crc32c"):
        reader[4:8, :]
    np.testing.assert_array_equal(reader[0:4, :], values[0:4])
    np.testing.assert_array_equal(reader[8:10, :], values[8:10])  # padded last chunk


def test_fill_value_is_part_of_the_token(tmp_path):
    array = _array(tmp_path, np.ones((8, 3), np.float32), 4, compressors=None)
    reader = raw_row_chunks(array)
    other = dataclasses.replace(reader, fill_value=np.float32(7))
    assert tokenize(reader) == tokenize(raw_row_chunks(array))
    assert tokenize(reader) != tokenize(other)


def test_switch_turns_the_direct_reader_off(tmp_path, monkeypatch):
    path = tmp_path / "store.zarr"
    data = make_store(path, epochs=(0,))
    expected = data[0].splits["train"][0].astype(np.float16)
    for value, kind in (("0", ZarrRows), ("off", ZarrRows), ("1", RawRowChunks), ("", RawRowChunks)):
        monkeypatch.setenv(DIRECT_READS_ENV, value)
        with open_store(path) as store:
            blocks = store_row_blocks(store, 0, "train", rows_per_block=8)
            assert isinstance(blocks.array, kind), value
            np.testing.assert_array_equal(blocks.array[0:22], expected)
    monkeypatch.setenv(DIRECT_READS_ENV, "maybe")
    with open_store(path) as store, pytest.raises(InputError, match=DIRECT_READS_ENV):
        store_row_blocks(store, 0, "train")
