"""The writer: refused values and calls, finalize checks, concurrent and killed writers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from store_helpers import BACKENDS, C, D, SIZES, chunks_written, epoch_data, make_store, store_path

from ncanalysis.errors import IncompleteEpochError, InputError, NCAnalysisError, StoreFormatError
from ncanalysis.store import create_store, open_store, open_store_writer, validate_store

# Forked children start at once: they inherit the imports (a fresh interpreter takes seconds).
_fork = multiprocessing.get_context("fork")


@pytest.fixture(params=BACKENDS)
def path(request, tmp_path):
    path = store_path(tmp_path, request.param)
    make_store(path)
    return path


@pytest.mark.parametrize("value", [70000.0, -65520.0, np.inf, -np.inf, np.nan])
def test_float16_overflow_is_refused_and_nothing_written(path, value):
    features, labels, index = epoch_data(2).splits["train"]
    features = features.copy()
    features[13, 2] = value
    writer = open_store_writer(path)
    epoch = writer.begin_epoch(2)
    with pytest.raises(InputError, match=rf"{path}: epoch 2, split 'train': features row 13 holds"):
        epoch.write_split("train", features, labels, index)
    assert validate_store(path) == [f"{path}: epoch 2 is incomplete (not finalized)"]
    # write_split created nothing: the split can still be created.
    epoch.create_split("train", SIZES["train"])
    with pytest.raises(InputError, match=r"features row 13 holds"):
        epoch.write_rows("train", 12, features[12:16], labels[12:16])
    assert chunks_written(path, "epochs/2/train/features") == 0
    # The float16 maximum itself is fine, and float32 storage holds 70000.
    features[13, 2] = 65504.0
    epoch.write_rows("train", 0, features, labels)
    features[13, 2] = 70000.0
    epoch.write_split("f32", features, labels, feature_dtype="float32")
    epoch.write_classifier(epoch_data(2).weight)
    epoch.finalize()
    with open_store(path) as store:
        assert store.features(2, "train")[13, 2].compute() == 65504
        assert store.features(2, "f32")[13, 2].compute() == 70000


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_non_finite_input_in_the_storage_dtype_is_refused(path, value, dtype):
    features = np.ones((8, D), dtype)
    features[5, 1] = value
    epoch = open_store_writer(path).begin_epoch(2)
    with pytest.raises(InputError, match=rf"features row 5 holds {value}, which {dtype} storage"):
        epoch.write_split("train", features, np.zeros(8, int), feature_dtype=dtype)


def test_float32_storage_refuses_float64_beyond_range(path):
    writer = open_store_writer(path)
    epoch = writer.begin_epoch(3)
    features = np.zeros((4, D))
    features[1, 0] = 1e39
    with pytest.raises(InputError, match=r"row 1 holds 1e\+39, which float32 storage"):
        epoch.write_split("train", features, np.zeros(4, int), feature_dtype="float32")


@pytest.mark.parametrize(
    ("start", "rows", "message"),
    [
        (2, 4, r"rows 2..5 do not cover whole write units of 4 rows"),
        (0, 6, r"rows 0..5 do not cover whole write units"),
        (20, 4, r"rows 20..23 pass the end \(22 rows\)"),
        (-4, 4, r"start must be a non-negative integer"),
    ],
)
def test_write_rows_must_cover_whole_units(path, start, rows, message):
    epoch = open_store_writer(path).begin_epoch(2)
    epoch.create_split("train", SIZES["train"])
    with pytest.raises(InputError, match=message):
        epoch.write_rows("train", start, np.zeros((rows, D)), np.zeros(rows, int))


def test_last_unit_may_be_short(path):
    epoch = open_store_writer(path).begin_epoch(2)
    epoch.create_split("train", SIZES["train"])
    epoch.write_rows("train", 20, np.ones((2, D)), np.ones(2, int))
    assert chunks_written(path, "epochs/2/train/features") == 1


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros((4, D + 1)), np.zeros(4, int), r"features have shape \(4, 7\), expected \(n, 6"),
        (np.zeros((4, D)), np.zeros(3, int), r"labels have shape \(3,\), expected \(4,\)"),
        (np.zeros((4, D)), np.zeros(4), r"labels have dtype float64, expected integers"),
        (np.zeros((4, D)), np.array([0, 1, C, 0]), r"labels row 2 is 3, expected in 0..2"),
        (np.zeros((4, D)), np.array([0, -1, 0, 0]), r"labels row 1 is -1"),
        (np.zeros((4, D), complex), np.zeros(4, int), r"expected real numbers"),
    ],
)
def test_bad_rows_are_refused(path, features, labels, message):
    epoch = open_store_writer(path).begin_epoch(2)
    epoch.create_split("train", SIZES["train"])
    with pytest.raises(InputError, match=message):
        epoch.write_rows("train", 0, features, labels)
    assert chunks_written(path, "epochs/2/train/features") == 0


def test_bad_sample_index_is_refused(path):
    epoch = open_store_writer(path).begin_epoch(2)
    with pytest.raises(InputError, match=r"sample_index row 1 is -3, expected >= 0"):
        epoch.write_split("train", np.zeros((3, D)), np.zeros(3, int), np.array([0, -3, 1]))


def test_bad_classifier_is_refused(path):
    epoch = open_store_writer(path).begin_epoch(2)
    with pytest.raises(InputError, match=r"weight has shape \(6, 3\), expected \(3, 6\)"):
        epoch.write_classifier(np.zeros((D, C)))
    with pytest.raises(InputError, match=r"bias has shape \(2,\), expected \(3,\)"):
        epoch.write_classifier(np.zeros((C, D)), np.zeros(2))
    with pytest.raises(InputError, match=r"weight holds NaN or inf"):
        epoch.write_classifier(np.full((C, D), np.nan))
    with pytest.raises(InputError, match=r"expected float32 or float64"):
        epoch.write_classifier(np.zeros((C, D), int))


def test_finalize_names_what_is_missing(path):
    features, labels, index = epoch_data(2).splits["train"]
    epoch = open_store_writer(path).begin_epoch(2)
    with pytest.raises(IncompleteEpochError, match=r"no split was created; weight is missing"):
        epoch.finalize()
    epoch.create_split("train", SIZES["train"])
    epoch.write_rows("train", 0, features[:8], labels[:8], index[:8])
    epoch.write_classifier(epoch_data(2).weight)
    with pytest.raises(IncompleteEpochError, match=r"train/features has 2 of 6 chunks written"):
        epoch.finalize()
    epoch.write_rows("train", 8, features[8:], labels[8:], index[8:])
    epoch.finalize()
    with pytest.raises(NCAnalysisError, match=r"epoch 2 is finalized"):
        epoch.write_rows("train", 0, features[:4], labels[:4])
    with open_store(path) as store:
        assert store.epochs() == [0, 1, 2]


def test_bad_arguments(tmp_path, path):
    with pytest.raises(InputError, match=r"feature_dtype must be one of"):
        create_store(tmp_path / "a.zarr", num_classes=C, num_features=D, feature_dtype="bfloat16")
    with pytest.raises(InputError, match=r"class_names must be 3 strings"):
        create_store(tmp_path / "b.zarr", num_classes=C, num_features=D, class_names=["a", "b"])
    with pytest.raises(InputError, match=r"num_features must be a positive integer"):
        create_store(tmp_path / "c.zarr", num_classes=C, num_features=0)
    with pytest.raises(InputError, match=r"provenance must be JSON-serialisable"):
        create_store(tmp_path / "d.zarr", num_classes=C, num_features=D, provenance={"x": object()})
    epoch = open_store_writer(path).begin_epoch(2)
    for split in ("a/b", "", "weight", "class"):
        with pytest.raises(InputError, match=r"invalid split name"):
            epoch.create_split(split, 4)
    epoch.create_split("train", 4)
    with pytest.raises(InputError, match=r"split already created"):
        epoch.create_split("train", 4)
    with pytest.raises(StoreFormatError, match=r"split 'test': split has not been created"):
        epoch.write_unit_rows("test")
    with pytest.raises(InputError, match=r"epoch must be a non-negative integer"):
        open_store_writer(path).begin_epoch(-1)


def test_create_refuses_existing_paths(tmp_path, path):
    with pytest.raises(FileExistsError, match=r"pass overwrite=True"):
        create_store(path, num_classes=C, num_features=D)
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not an ncanalysis store; refusing"):
        create_store(other, num_classes=C, num_features=D, overwrite=True)
    assert (other / "precious.txt").exists()
    create_store(path, num_classes=2, num_features=D, overwrite=True).close()
    with open_store(path) as store:
        assert (store.num_classes, store.epochs()) == (2, [])


def test_open_epoch_rules(path):
    writer = open_store_writer(path)
    if path.suffix == ".h5":
        with pytest.raises(NCAnalysisError, match=r"an HDF5 store has exactly one writer process"):
            writer.open_epoch(1)
        return
    with pytest.raises(StoreFormatError, match=r"epoch 5 has not been begun"):
        writer.open_epoch(5)
    with pytest.raises(StoreFormatError, match=r"epoch 1 is already finalized"):
        writer.open_epoch(1)
    writer.begin_epoch(5).create_split("train", 8)
    other = open_store_writer(path).open_epoch(5)
    assert other.write_unit_rows("train") == 4
    actions = (
        lambda: other.create_split("test", 4),
        lambda: other.write_classifier(np.zeros((C, D))),
        other.finalize,
    )
    for action in actions:
        with pytest.raises(NCAnalysisError, match=r"belongs to the process that called begin"):
            action()


def _write_rank(path, epoch, rank, world, features, labels):
    """One writer process: whole write units, a contiguous range per rank."""
    writer = open_store_writer(path).open_epoch(epoch)
    unit = writer.write_unit_rows("train")
    units = -(-len(labels) // unit)
    first, last = (units * rank // world) * unit, (units * (rank + 1) // world) * unit
    for start in range(first, min(last, len(labels)), unit):
        stop = min(start + unit, len(labels))
        writer.write_rows("train", start, features[start:stop], labels[start:stop])


def test_concurrent_zarr_writers_land_every_row(tmp_path):
    path = store_path(tmp_path, "zarr")
    rng = np.random.default_rng(5)
    n, world = 203, 4
    features, labels = rng.standard_normal((n, D)).astype(np.float32), rng.integers(0, C, n)
    with create_store(
        path, num_classes=C, num_features=D, chunk_rows=8, feature_dtype="float32"
    ) as writer:
        epoch = writer.begin_epoch(0)
        epoch.create_split("train", n)
        procs = [
            _fork.Process(target=_write_rank, args=(path, 0, rank, world, features, labels))
            for rank in range(1, world)
        ]
        for proc in procs:
            proc.start()
        _write_rank(path, 0, 0, world, features, labels)
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        epoch.write_classifier(np.ones((C, D), np.float32))
        epoch.finalize()
    with open_store(path) as store:
        np.testing.assert_array_equal(store.features(0, "train").compute(), features)
        np.testing.assert_array_equal(store.labels(0, "train"), labels)
        np.testing.assert_array_equal(store.sample_index(0, "train"), np.arange(n))


def _write_forever(path, started):
    """Begin epoch 2 and rewrite its rows until killed."""
    epoch = open_store_writer(path).begin_epoch(2)
    epoch.create_split("train", 4096)
    features = np.ones((512, D), np.float32)
    labels = np.zeros(512, int)
    start = 0
    while True:
        epoch.write_rows("train", start, features, labels)
        started.set()
        start = (start + 512) % 4096


@pytest.mark.parametrize("backend", BACKENDS)
def test_writer_killed_mid_epoch_leaves_earlier_epochs(tmp_path, backend):
    path = store_path(tmp_path, backend)
    data = make_store(path, chunk_rows=512)
    started = _fork.Event()
    proc = _fork.Process(target=_write_forever, args=(path, started))
    proc.start()
    assert started.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert validate_store(path) == [f"{path}: epoch 2 is incomplete (not finalized)"]
    with open_store(path) as store:
        assert (store.epochs(), store.incomplete_epochs()) == ([0, 1], [2])
        np.testing.assert_array_equal(store.labels(1, "train"), data[1].splits["train"][1])
        features = store.features(1, "test").compute()
        np.testing.assert_allclose(features, data[1].splits["test"][0], rtol=2**-11)
    # The store still takes the epoch again.
    with open_store_writer(path) as writer:
        epoch = writer.begin_epoch(2)
        epoch.write_split("train", *data[1].splits["train"])
        epoch.write_classifier(data[1].weight)
        epoch.finalize()
    assert validate_store(path) == []


def _hold_open(path, opened, seconds):
    import h5py

    with h5py.File(path, "r"):
        opened.set()
        time.sleep(seconds)


def test_hdf5_writer_waits_for_a_reader_in_another_process(tmp_path):
    """HDF5 locks the file against a writer while another process reads it: the writer
    waits for its turn instead of failing (a training run is not killed by a reader)."""
    path = store_path(tmp_path, "hdf5")
    make_store(path, epochs=(0,))
    opened = _fork.Event()
    reader = _fork.Process(target=_hold_open, args=(path, opened, 1.0))
    reader.start()
    assert opened.wait(60)
    begun = time.monotonic()
    with open_store_writer(path) as writer:
        writer.begin_epoch(1)
    assert time.monotonic() - begun > 0.5
    reader.join()
    with open_store(path) as store:
        assert store.incomplete_epochs() == [1]
