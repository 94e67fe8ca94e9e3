"""Store integrity under injected faults (issue 10): missing, truncated, resized and
corrupted chunk files, broken ``zarr.json`` and unwritten HDF5 chunks.

Each fault is injected with plain file or h5py edits into a small store, then read
through both read paths (the direct chunk-file reader and zarr; ``read_path``),
validated, and where it applies shown to the command line.  Before this work a
missing chunk read as zeros (wrong metrics, exit 0), ``validate`` called damaged
chunks valid, flipped bytes were accepted and broken metadata gave tracebacks.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from store_helpers import make_store, store_path
from zarr.codecs import Crc32cCodec

from ncanalysis import analyze
from ncanalysis.cli import main as cli_main
from ncanalysis.errors import InputError, StoreFormatError
from ncanalysis.sources import read_rows, store_row_blocks
from ncanalysis.store import (
    FORMAT_VERSION,
    ChunkError,
    create_store,
    open_store,
    validate_store,
)
from ncanalysis.store._zarr import ZarrRows

FEATURES = "epochs/0/train/features"
WHERE = r"epoch 0, split 'train', array 'features'"


def _chunk(path: Path, node: str, *index: int) -> Path:
    return path.joinpath(*node.split("/"), "c", *map(str, index))


def _flip(file: Path, offset: int) -> None:
    """XOR the lowest bit of one byte: a float16 stays finite, only its value changes."""
    with open(file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x01]))


@pytest.mark.parametrize("checksums", [False, True])
def test_missing_feature_chunk_is_an_error_not_zeros(tmp_path, read_path, checksums):
    path = store_path(tmp_path, "zarr")
    data = make_store(path, epochs=(0,), checksums=checksums)
    os.remove(_chunk(path, FEATURES, 1, 0))  # rows 4..7
    with open_store(path) as store:
        with pytest.raises(ChunkError, match=WHERE + r": chunk file .*c/1/0 is missing"):
            store.features(0, "train").compute()
        blocks = store_row_blocks(store, 0, "train", rows_per_block=4)
        if read_path == "zarr":
            assert isinstance(blocks.array, ZarrRows)
        with pytest.raises(ChunkError, match="c/1/0"):
            read_rows(blocks.array, 4, 8)
        # The chunks that are there still read, with their values.
        expected = data[0].splits["train"][0][8:12].astype(np.float16)
        np.testing.assert_array_equal(read_rows(blocks.array, 8, 12), expected)
    with pytest.raises(StoreFormatError, match="c/1/0"):
        analyze(path)


@pytest.mark.parametrize(
    ("node", "index", "read"),
    [
        ("epochs/0/train/labels", (1,), lambda s: s.labels(0, "train")),
        ("epochs/0/train/sample_index", (1,), lambda s: s.sample_index(0, "train")),
        ("epochs/0/weight", (0, 0), lambda s: s.weight(0)),
        ("epochs/0/bias", (0,), lambda s: s.bias(0)),
    ],
)
def test_missing_chunk_of_a_small_array_is_an_error(tmp_path, node, index, read):
    path = store_path(tmp_path, "zarr")
    make_store(path, epochs=(0,))
    os.remove(_chunk(path, node, *index))
    name = node.rsplit("/", 1)[-1]
    with open_store(path) as store, pytest.raises(
        ChunkError, match=rf"epoch 0(, split 'train')?, array '{name}': chunk file .*is missing"
    ):
        read(store)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_unwritten_chunks_of_an_epoch_marked_complete(tmp_path, backend, read_path):
    """A writer that set ``complete`` without writing every row (or a hand edit)."""
    path = store_path(tmp_path, backend)
    rng = np.random.default_rng(0)
    with create_store(path, num_classes=3, num_features=6, chunk_rows=4) as writer:
        epoch = writer.begin_epoch(0)
        epoch.create_split("train", 12)
        epoch.write_rows("train", 0, rng.standard_normal((4, 6)), np.array([0, 1, 2, 0]))
        epoch.write_classifier(rng.standard_normal((3, 6)))
    if backend == "zarr":
        zarr.open_group(path, mode="r+")["epochs/0"].attrs["complete"] = True
    else:
        with h5py.File(path, "r+") as file:
            file["epochs/0"].attrs["complete"] = 1
    with open_store(path) as store:
        assert store.epochs() == [0]
        with pytest.raises(ChunkError, match=WHERE):
            store.features(0, "train").compute()
        with pytest.raises(ChunkError, match=r"array 'labels'"):
            store.labels(0, "train")
    assert any("features" in p and "chunks written" in p for p in validate_store(path))


@pytest.mark.parametrize("fault", ["truncated", "zero-byte", "too long"])
@pytest.mark.parametrize("checksums", [False, True])
@pytest.mark.parametrize("node", [FEATURES, "epochs/0/train/labels"])
def test_validate_catches_damaged_chunk_files(tmp_path, fault, checksums, node):
    path = store_path(tmp_path, "zarr")
    make_store(path, epochs=(0,), checksums=checksums)
    chunk = _chunk(path, node, 1, 0) if node == FEATURES else _chunk(path, node, 1)
    size = chunk.stat().st_size
    with open(chunk, "r+b") as handle:
        if fault == "too long":
            handle.seek(size)
            handle.write(b"\0" * 8)
        else:
            handle.truncate(size // 2 if fault == "truncated" else 0)
    name = node.rsplit("/", 1)[-1]
    problems = validate_store(path)
    assert len(problems) == 1, problems
    assert f"array '{name}'" in problems[0] and str(chunk) in problems[0]


@pytest.mark.parametrize("checksums", [False, True])
def test_truncated_chunks_are_clear_errors_when_read(tmp_path, read_path, checksums):
    path = store_path(tmp_path, "zarr")
    make_store(path, epochs=(0,), checksums=checksums)
    for node, index in ((FEATURES, (2, 0)), ("epochs/0/train/labels", (2,))):
        with open(_chunk(path, node, *index), "r+b") as handle:
            handle.truncate(5)
    with open_store(path) as store:
        with pytest.raises(ChunkError, match=r"array 'labels'.*c/2"):
            store.labels(0, "train")
        with pytest.raises(ChunkError, match=WHERE + ".*c/2/0"):
            store.features(0, "train").compute()
    code = cli_main(["run", str(path), "--output", str(tmp_path / "out.nc")])
    assert code == 3


def test_flipped_feature_bytes_fail_the_checksum_on_both_paths(tmp_path, read_path):
    path = store_path(tmp_path, "zarr")
    make_store(path, epochs=(0,), checksums=True)
    chunk = _chunk(path, FEATURES, 2, 0)
    before = np.frombuffer(chunk.read_bytes()[:-4], np.float16)
    _flip(chunk, 6)
    after = np.frombuffer(chunk.read_bytes()[:-4], np.float16)
    assert np.isfinite(after).all() and (after != before).sum() == 1  # a plausible value
    with open_store(path) as store:
        with pytest.raises(ChunkError, match=WHERE + r".*c/2/0.*(crc32c|checksum)"):
            store.features(0, "train").compute()
        blocks = store_row_blocks(store, 0, "train", rows_per_block=4)
        with pytest.raises(ChunkError, match="c/2/0"):
            read_rows(blocks.array, 9, 10)  # a partial chunk is verified whole
        read_rows(blocks.array, 0, 8)  # the other chunks read
    problems = validate_store(path)
    assert len(problems) == 1 and "c/2/0" in problems[0] and "crc32c" in problems[0]


def test_flipped_labels_bytes_fail_the_checksum(tmp_path):
    path = store_path(tmp_path, "zarr")
    make_store(path, epochs=(0,), checksums=True)
    _flip(_chunk(path, "epochs/0/train/labels", 0), 8)  # label 0 or 1 or 2 -> another small int
    with open_store(path) as store, pytest.raises(ChunkError, match=r"array 'labels'.*c/0"):
        store.labels(0, "train")
    assert any("labels" in p and "crc32c" in p for p in validate_store(path))


def test_flipped_bytes_in_hdf5_fail_fletcher32(tmp_path):
    path = store_path(tmp_path, "hdf5")
    make_store(path, epochs=(0,), checksums=True)
    with h5py.File(path, "r") as file:
        dataset = file[FEATURES]
        assert dataset.fletcher32
        offset = dataset.id.get_chunk_info_by_coord((8, 0)).byte_offset
    _flip(path, offset + 6)
    with open_store(path) as store:
        with pytest.raises(ChunkError, match=WHERE + r".*rows 8\.\."):
            store.features(0, "train").compute()
        read_rows(store_row_blocks(store, 0, "train", rows_per_block=4).array, 0, 8)  # others read
    problems = validate_store(path)
    assert len(problems) == 1 and "features" in problems[0], problems


def test_without_checksums_flipped_bytes_go_unnoticed(tmp_path):
    """Why checksums: a 1.0-style store (checksums off) reads the changed value."""
    path = store_path(tmp_path, "zarr")
    make_store(path, epochs=(0,), checksums=False)
    _flip(_chunk(path, FEATURES, 2, 0), 6)
    assert validate_store(path) == []
    with open_store(path) as store:
        assert np.isfinite(store.features(0, "train").compute()).all()


@pytest.mark.parametrize(
    "broken", ["epochs/0/zarr.json", "epochs/0/train/zarr.json",
               "epochs/0/train/features/zarr.json", "epochs/0/train/labels/zarr.json"],
)
def test_invalid_json_in_metadata_is_one_line_naming_the_file(tmp_path, capsys, broken):
    path = store_path(tmp_path, "zarr")
    make_store(path, epochs=(0, 1))
    target = path / broken
    target.write_text('{"zarr_format": 3, "node_type": ')
    message = rf"{target}: invalid Zarr metadata"
    with pytest.raises(StoreFormatError, match=message), open_store(path) as store:
        for epoch in store.epochs():
            for split in store.splits(epoch):
                store.num_samples(epoch, split)
                store.labels(epoch, split)
                store.features(epoch, split)
    problems = validate_store(path)
    assert any(str(target) in p for p in problems), problems
    capsys.readouterr()
    assert cli_main(["validate", str(path)]) == 3
    assert str(target) in capsys.readouterr().out
    if "labels" not in broken:  # info reads no labels
        assert cli_main(["info", str(path)]) == 3
        err = capsys.readouterr().err
        assert str(target) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
@pytest.mark.parametrize("checksums", [False, True])
def test_checksums_option_sets_the_codec_and_filter(tmp_path, backend, checksums):
    path = store_path(tmp_path, backend)
    data = make_store(path, epochs=(0,), checksums=checksums)
    for node in (FEATURES, "epochs/0/train/labels", "epochs/0/weight", "epochs/0/bias"):
        if backend == "zarr":
            array = zarr.open_array(path / node, mode="r")
            assert array.compressors == ((Crc32cCodec(),) if checksums else ())
        else:
            with h5py.File(path, "r") as file:
                assert file[node].fletcher32 is checksums
    with open_store(path) as store:
        assert store.format_version == FORMAT_VERSION == "1.1"
        np.testing.assert_array_equal(store.labels(0, "test"), data[0].splits["test"][1])
    assert validate_store(path) == []
    with pytest.raises(InputError, match="checksums"):
        create_store(tmp_path / "x.zarr", num_classes=2, num_features=2, checksums="yes")


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_version_1_0_store_without_checksums_still_reads_and_takes_epochs(tmp_path, backend):
    """What 1.0 writers made: no checksums, version "1.0". New epochs keep its choice."""
    from store_helpers import epoch_data, read_root_meta, write_root_meta

    path = store_path(tmp_path, backend)
    data = make_store(path, epochs=(0,), checksums=False)
    meta = read_root_meta(path)
    del meta["checksums"]
    write_root_meta(path, meta | {"version": "1.0"})
    from ncanalysis.store import open_store_writer

    with open_store_writer(path) as writer:
        assert writer.checksums is False
        epoch = writer.begin_epoch(1)
        more = epoch_data(1)
        for split, arrays in more.splits.items():
            epoch.write_split(split, *arrays)
        epoch.write_classifier(more.weight, more.bias)
        epoch.finalize()
    with open_store(path) as store:
        assert store.format_version == "1.0" and store.epochs() == [0, 1]
        np.testing.assert_array_equal(store.labels(0, "train"), data[0].splits["train"][1])
    assert validate_store(path) == []
