"""Small stores for the store tests, and direct edits that break them on purpose.

The edits go through zarr and h5py, not ncanalysis, so that the tests see what the
reader and validator make of stores written by someone else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import zarr

from ncanalysis.store import ROOT_ATTR, create_store

__all__ = [
    "BACKENDS",
    "EpochData",
    "store_path",
    "epoch_data",
    "make_store",
    "delete_node",
    "replace_array",
    "read_root_meta",
    "write_root_meta",
    "set_value",
    "chunks_written",
]

BACKENDS = ("zarr", "hdf5")
C, D = 3, 6
SIZES = {"train": 22, "test": 9}


@dataclass
class EpochData:
    """What one epoch of a test store holds (features as written, before storage)."""

    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    weight: np.ndarray
    bias: np.ndarray


def store_path(tmp_path: Path, backend: str, name: str = "store") -> Path:
    """A store path in ``tmp_path`` for ``backend`` ("zarr" or "hdf5")."""
    return tmp_path / f"{name}{'.zarr' if backend == 'zarr' else '.h5'}"


def epoch_data(epoch: int, *, sizes: dict[str, int] = SIZES, c: int = C, d: int = D) -> EpochData:
    """Seeded features (float32, ReLU-like), labels, shuffled sample indices, W and b."""
    rng = np.random.default_rng(1000 + epoch)
    splits = {}
    for split, n in sizes.items():
        features = np.maximum(rng.standard_normal((n, d)), 0).astype(np.float32) * 10
        splits[split] = (features, rng.integers(0, c, n), rng.permutation(n) + 5)
    return EpochData(splits, rng.standard_normal((c, d)).astype(np.float32), rng.standard_normal(c))


def make_store(
    path: Path,
    *,
    epochs: tuple[int, ...] = (0, 1),
    chunk_rows: int | None = 4,
    feature_dtype: str = "float16",
    checksums: bool | None = None,
) -> dict[int, EpochData]:
    """Write complete epochs (split by split with `write_split`) and return their data."""
    data = {}
    with create_store(
        path, num_classes=C, num_features=D, class_names=["cat", "dog", "eel"],
        feature_dtype=feature_dtype, chunk_rows=chunk_rows, provenance={"model": "Net"},
        **({} if checksums is None else {"checksums": checksums}),
    ) as writer:
        for epoch in epochs:
            data[epoch] = epoch_data(epoch)
            epoch_writer = writer.begin_epoch(epoch)
            for split, arrays in data[epoch].splits.items():
                epoch_writer.write_split(split, *arrays)
            epoch_writer.write_classifier(data[epoch].weight, data[epoch].bias)
            epoch_writer.finalize()
    return data


def delete_node(path: Path, node: str) -> None:
    """Delete a group or array of a store."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as file:
            del file[node]
    else:
        del zarr.open_group(path, mode="r+")[node]


def replace_array(path: Path, node: str, values: np.ndarray, dims: tuple[str, ...]) -> None:
    """Replace an array of a store by ``values`` (HDF5: without dimension scales)."""
    delete_node(path, node)
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as file:
            file.create_dataset(node, data=values)
    else:
        root = zarr.open_group(path, mode="r+")
        root.create_array(node, data=values, dimension_names=dims)


def read_root_meta(path: Path) -> dict:
    """The decoded root attribute of a store."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as file:
            return json.loads(file.attrs[ROOT_ATTR])
    return zarr.open_group(path, mode="r").attrs[ROOT_ATTR]


def write_root_meta(path: Path, meta: dict) -> None:
    """Overwrite the root attribute of a store."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as file:
            file.attrs[ROOT_ATTR] = json.dumps(meta)
    else:
        zarr.open_group(path, mode="r+").attrs[ROOT_ATTR] = meta


def set_value(path: Path, node: str, index: int, value: object) -> None:
    """Overwrite one element of a stored array in place."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as file:
            file[node][index] = value
    else:
        zarr.open_group(path, mode="r+")[node][index] = value


def chunks_written(path: Path, node: str) -> int:
    """How many chunks of a stored array exist."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as file:
            return file[node].id.get_num_chunks()
    return zarr.open_group(path, mode="r")[node].nchunks_initialized

