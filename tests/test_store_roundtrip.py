"""Write a store and read it back, on both backends and both Zarr read paths."""

from __future__ import annotations

import pickle

import dask
import numpy as np
import pytest
from store_helpers import BACKENDS, C, D, SIZES, epoch_data, make_store, store_path

from ncanalysis.errors import IncompleteEpochError, StoreFormatError
from ncanalysis.store import FORMAT_VERSION, create_store, open_store, open_store_writer

# Every test runs with the direct chunk reader and through zarr only (conftest.read_path).
pytestmark = pytest.mark.usefixtures("read_path")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_round_trip_float16(tmp_path, backend):
    path = store_path(tmp_path, backend)
    data = make_store(path, epochs=(0, 1, 3))
    with open_store(path) as store:
        assert store.backend == backend
        assert (store.num_classes, store.num_features) == (C, D)
        assert store.class_names == ["cat", "dog", "eel"]
        assert store.format_version == FORMAT_VERSION
        assert store.provenance["model"] == "Net"
        assert set(store.provenance["library_versions"]) >= {"numpy", "zarr", "h5py", "ncanalysis"}
        assert store.epochs() == [0, 1, 3]
        assert store.incomplete_epochs() == []
        for epoch, expected in data.items():
            assert store.splits(epoch) == ["train", "test"]
            for split, (features, labels, index) in expected.splits.items():
                stored = store.features(epoch, split)
                assert stored.dtype == np.float16
                assert store.num_samples(epoch, split) == len(labels)
                # float16 keeps 11 significant bits: relative error <= 2**-11.
                np.testing.assert_allclose(stored.compute(), features, rtol=2**-11, atol=0)
                np.testing.assert_array_equal(store.labels(epoch, split), labels)
                np.testing.assert_array_equal(store.sample_index(epoch, split), index)
                assert store.sample_index(epoch, split).dtype == np.int64
            np.testing.assert_array_equal(store.weight(epoch), expected.weight)
            np.testing.assert_array_equal(store.bias(epoch), expected.bias)
            # Classifiers keep the dtype they were given.
            assert store.weight(epoch).dtype == np.float32
            assert store.bias(epoch).dtype == np.float64


def test_round_trip_float32_is_exact(tmp_path, backend):
    path = store_path(tmp_path, backend)
    data = make_store(path, feature_dtype="float32", chunk_rows=None)
    with open_store(path) as store:
        features = store.features(1, "test").compute()
    assert features.dtype == np.float32
    assert np.array_equal(features.view(np.uint32), data[1].splits["test"][0].view(np.uint32))


def test_rows_written_in_units_with_default_index(tmp_path, backend):
    """create_split + write_rows unit by unit; per-split float32; bias defaults to 0."""
    path = store_path(tmp_path, backend)
    data = epoch_data(0)
    features, labels, _ = data.splits["train"]
    with create_store(path, num_classes=C, num_features=D, chunk_rows=5) as writer:
        epoch = writer.begin_epoch(0)
        epoch.create_split("train", len(labels), feature_dtype="float32")
        unit = epoch.write_unit_rows("train")
        assert unit == 5
        for start in range(0, len(labels), 2 * unit):
            rows = slice(start, start + 2 * unit)
            epoch.write_rows("train", start, features[rows], labels[rows])
        epoch.write_classifier(data.weight.astype(np.float64))
        epoch.finalize()
    with open_store(path) as store:
        assert store.class_names == ["0", "1", "2"]
        np.testing.assert_array_equal(store.features(0, "train").compute(), features)
        np.testing.assert_array_equal(store.sample_index(0, "train"), np.arange(len(labels)))
        assert store.weight(0).dtype == np.float64
        np.testing.assert_array_equal(store.bias(0), np.zeros(C))


def test_default_chunks_hold_whole_rows(tmp_path, backend):
    """Default chunk_rows: about 8 MiB of features, at most N rows."""
    path = store_path(tmp_path, backend)
    make_store(path, chunk_rows=None)
    with open_store(path) as store:
        assert store.features(0, "train").chunks == ((SIZES["train"],), (D,))
    with open_store_writer(path) as writer:
        epoch = writer.begin_epoch(5)
        epoch.create_split("big", 2_000_000)
        assert epoch.write_unit_rows("big") == (8 << 20) // (2 * D)
        epoch.create_split("wide", 10, feature_dtype="float64")
        assert epoch.write_unit_rows("wide") == 10


# Default: one block per stored chunk (the analyser's block sizing is ncanalysis.sources'
# and tested in test_layers.py).
@pytest.mark.parametrize(("rows_per_block", "expected"), [(None, 4), (1, 4), (9, 8), (10, 12)])
def test_features_blocks_are_whole_stored_chunks(tmp_path, backend, rows_per_block, expected):
    path = store_path(tmp_path, backend)
    make_store(path, chunk_rows=4)
    with open_store(path) as store:
        features = store.features(0, "train", rows_per_block=rows_per_block)
    rows = features.chunks[0]
    assert features.chunks[1] == (D,)
    assert rows[0] == expected
    assert all(r % 4 == 0 for r in rows[:-1]) and sum(rows) == SIZES["train"]


def test_features_graph_pickles(tmp_path, backend):
    """No open file in the graph: it survives pickling (as dask.distributed needs)."""
    path = store_path(tmp_path, backend)
    data = make_store(path)
    with open_store(path) as store:
        features = store.features(1, "train", rows_per_block=8)
    graph = dict(features.__dask_graph__())
    assert len(pickle.loads(pickle.dumps(graph))) == len(graph)
    # What a distributed worker gets: the unpickled graph, computed elsewhere.
    clone = pickle.loads(pickle.dumps(features))
    result = dask.compute(clone, scheduler="sync")[0]
    expected = data[1].splits["train"][0].astype(np.float16)
    assert np.array_equal(result.view(np.uint16), expected.view(np.uint16))


def test_begin_epoch_replaces_an_epoch(tmp_path, backend):
    path = store_path(tmp_path, backend)
    data = make_store(path, epochs=(0, 1))
    replacement = epoch_data(7, sizes={"val": 5})
    with open_store_writer(path) as writer:
        epoch = writer.begin_epoch(1)
        with open_store(path) as store:
            # From begin_epoch on, readers no longer see the old epoch.
            assert store.epochs() == [0]
            assert store.incomplete_epochs() == [1]
        epoch.write_split("val", *replacement.splits["val"])
        epoch.write_classifier(replacement.weight)
        epoch.finalize()
    with open_store(path) as store:
        assert store.epochs() == [0, 1]
        assert store.splits(1) == ["val"]
        np.testing.assert_array_equal(store.labels(1, "val"), replacement.splits["val"][1])
        np.testing.assert_array_equal(store.weight(1), replacement.weight)
        np.testing.assert_array_equal(store.labels(0, "train"), data[0].splits["train"][1])


def test_complete_epochs_readable_while_another_is_written(tmp_path, backend):
    path = store_path(tmp_path, backend)
    data = make_store(path, epochs=(0, 1))
    with open_store_writer(path) as writer:
        epoch = writer.begin_epoch(2)
        epoch.create_split("train", SIZES["train"])
        features, labels, index = epoch_data(2).splits["train"]
        epoch.write_rows("train", 0, features[:8], labels[:8], index[:8])
        with open_store(path) as store:
            assert store.epochs() == [0, 1]
            assert store.incomplete_epochs() == [2]
            np.testing.assert_array_equal(store.labels(1, "test"), data[1].splits["test"][1])
            with pytest.raises(IncompleteEpochError, match=r"epoch 2 is incomplete"):
                store.features(2, "train")
            with pytest.raises(IncompleteEpochError, match=str(path)):
                store.weight(2)
            with pytest.raises(StoreFormatError, match=r"no epoch 9"):
                store.splits(9)
            with pytest.raises(StoreFormatError, match=r"no split 'val'"):
                store.labels(0, "val")


def test_results_group_is_ignored(tmp_path, backend):
    """The root may hold a results group (ncanalysis.results); readers ignore it."""
    path = store_path(tmp_path, backend)
    make_store(path, epochs=(0,))
    if backend == "zarr":
        import zarr

        results = zarr.open_group(path, mode="r+").create_group("results/run")
        results.create_array("nc1", data=np.ones(3))
    else:
        import h5py

        with h5py.File(path, "r+") as file:
            file.create_dataset("results/run/nc1", data=np.ones(3))
    from ncanalysis.store import validate_store

    assert validate_store(path) == []
    with open_store(path) as store:
        assert store.epochs() == [0]
