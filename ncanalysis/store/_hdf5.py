"""HDF5 file backend of the store.

Every operation opens the file and closes it again: a writer killed between two calls
leaves a closed, consistent file, and no h5py object outlives a call (they cannot be
pickled, and an open read handle would block a later writer in the same process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreFormatError
from .spec import EPOCHS_GROUP, ROOT_ATTR, ArrayInfo

__all__ = ["HDF5Backend", "HDF5Proxy", "LOCK_WAIT_S"]

#: Seconds to wait for another process to release the file's lock before giving up.
LOCK_WAIT_S = 30.0

# The NAME that netCDF-4 gives a dimension scale that is not also a variable, so that
# h5netcdf (and xarray through it) shows the scale as a dimension only.
_NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."


class HDF5Backend:
    """Store operations on an HDF5 file.

    Parameters
    ----------
    path
        The store file.
    writable
        Open for writing (``r+``) rather than read-only.
    """

    name = "hdf5"

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = path
        self._mode = "r+" if writable else "r"
        if not path.is_file() or not h5py.is_hdf5(path):
            raise StoreFormatError(f"{path}: not a store (not an HDF5 file)")

    @classmethod
    def create(cls, path: Path, meta: dict, *, overwrite: bool) -> HDF5Backend:
        """Create an empty store at ``path`` and open it for writing."""
        with _open(path, "w" if overwrite else "w-") as file:
            # HDF5 attributes hold no mappings: the root attribute is JSON text.
            file.attrs[ROOT_ATTR] = json.dumps(meta)
            file.create_group(EPOCHS_GROUP)
        return cls(path, writable=True)

    @contextlib.contextmanager
    def _file(self) -> Iterator[h5py.File]:
        with _open(self.path, self._mode) as file:
            yield file

    def meta(self) -> object:
        with self._file() as file:
            raw = file.attrs.get(ROOT_ATTR)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (TypeError, json.JSONDecodeError) as err:
            raise StoreFormatError(
                f"{self.path}: root attribute {ROOT_ATTR!r} is not JSON text"
            ) from err

    def groups(self, node: str) -> list[str]:
        with self._file() as file:
            group = file.get(node)
            if not isinstance(group, h5py.Group):
                return []
            return sorted(k for k, v in group.items() if isinstance(v, h5py.Group))

    def has(self, node: str) -> bool:
        with self._file() as file:
            return node in file

    def get_attr(self, node: str, key: str) -> Any:
        with self._file() as file:
            found = file.get(node)
            value = None if found is None else found.attrs.get(key)
        return value.item() if isinstance(value, np.generic) else value

    def set_attr(self, node: str, key: str, value: bool | str) -> None:
        with self._file() as file:
            file[node].attrs[key] = value if isinstance(value, str) else int(value)

    def create_group(self, node: str, attrs: dict[str, bool]) -> None:
        with self._file() as file:
            if node in file:
                # HDF5 does not give the space back to the file system (h5repack does).
                del file[node]
            group = file.create_group(node)
            for key, value in attrs.items():
                group.attrs[key] = int(value)

    def info(self, node: str) -> ArrayInfo | None:
        with self._file() as file:
            dataset = file.get(node)
            if not isinstance(dataset, h5py.Dataset):
                return None
            names = tuple(
                dim[0].name.rsplit("/", 1)[-1] if len(dim) else None for dim in dataset.dims
            )
            return ArrayInfo(
                shape=dataset.shape,
                chunks=dataset.chunks or dataset.shape,
                dtype=dataset.dtype,
                dimension_names=None if None in names else names,
            )

    def create_array(
        self,
        node: str,
        *,
        shape: tuple[int, ...],
        dtype: str,
        chunks: tuple[int, ...],
        dims: tuple[str, ...],
    ) -> None:
        parent, name = node.rsplit("/", 1)
        with self._file() as file:
            group = file[parent]
            # Uncompressed: gzip and lzf wrote at 11-93 MB/s here (docs/store-format.md, sec. 10).
            dataset = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
            for axis, dim in enumerate(dims):
                dataset.dims[axis].attach_scale(_scale(group, dim, shape[axis]))

    def write(self, group: str, start: int, arrays: dict[str, np.ndarray]) -> None:
        with self._file() as file:
            for name, values in arrays.items():
                file[f"{group}/{name}"][start : start + len(values)] = values

    def read(self, node: str) -> np.ndarray:
        with self._file() as file:
            return file[node][()]

    def chunks_written(self, node: str) -> tuple[int, int]:
        with self._file() as file:
            dataset = file[node]
            if dataset.chunks is None:
                return int(dataset.id.get_storage_size() > 0), 1
            total = math.prod(-(-n // c) for n, c in zip(dataset.shape, dataset.chunks))
            return dataset.id.get_num_chunks(), total

    def row_source(self, node: str) -> HDF5Proxy:
        info = self.info(node)
        return HDF5Proxy(str(self.path), node, info.shape, info.dtype)

    def close(self) -> None:
        """Nothing to release: no call leaves the file open."""


def _open(path: Path | str, mode: str) -> h5py.File:
    """Open an HDF5 file, waiting while another process holds its lock.

    HDF5 locks a file while any process has it open for writing, or for reading
    against a writer. Every process here holds the file for one operation only, so a
    reader and a writer take turns instead of failing.
    """
    delay, waited = 0.01, 0.0
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError as err:
            if waited >= LOCK_WAIT_S:
                raise StoreFormatError(
                    f"{path}: the HDF5 file stayed locked by another process for "
                    f"{LOCK_WAIT_S:g} s"
                ) from err
        except OSError as err:
            raise StoreFormatError(f"{path}: cannot open the HDF5 file ({err})") from err
        time.sleep(delay)
        waited += delay
        delay = min(2 * delay, 0.5)


def _scale(group: h5py.Group, dim: str, size: int) -> h5py.Dataset:
    """The dimension scale ``dim`` of ``group``, created on first use."""
    scale = group.get(dim)
    if scale is None:
        # Never written, so it takes no space in the file.
        scale = group.create_dataset(dim, shape=(size,), dtype="f4")
        scale.make_scale(_NOT_A_VARIABLE + b"%10d" % size)
    elif scale.shape != (size,):
        raise StoreFormatError(
            f"{group.file.filename}: dimension {dim!r} of {group.name} has length "
            f"{scale.shape[0]}, not {size}"
        )
    return scale


@dataclasses.dataclass(frozen=True)
class HDF5Proxy:
    """A picklable stand-in for an HDF5 dataset, for RowBlocks and ``dask.array.from_array``.

    It holds only the file path, dataset name, shape and dtype; each read opens the
    file read-only inside the task (h5py objects cannot be pickled for
    dask.distributed workers).
    """

    path: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        with _open(self.path, "r") as file:
            return file[self.name][key]

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self.path, self.name, self.shape, str(self.dtype))
