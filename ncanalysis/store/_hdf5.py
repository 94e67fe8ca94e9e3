"""HDF5 file backend of the store.

Every operation opens the file and closes it again: a writer killed between two calls
leaves a closed, consistent file, and no h5py object outlives a call (they cannot be
pickled, and an open read handle would block a later writer in the same process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreFormatError
from ._chunks import ChunkError, describe_node
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
            # A dimension without an attached scale has no name; then the array has none.
            names = [str(dim[0].name).rsplit("/", 1)[-1] for dim in dataset.dims if len(dim)]
            return ArrayInfo(
                shape=dataset.shape,
                chunks=dataset.chunks or dataset.shape,
                dtype=dataset.dtype,
                dimension_names=tuple(names) if len(names) == len(dataset.dims) else None,
            )

    def create_array(
        self,
        node: str,
        *,
        shape: tuple[int, ...],
        dtype: str,
        chunks: tuple[int, ...],
        dims: tuple[str, ...],
        checksums: bool = False,
    ) -> None:
        parent, name = node.rsplit("/", 1)
        with self._file() as file:
            group = file[parent]
            # Uncompressed: gzip and lzf wrote at 11-93 MB/s here (docs/store-format.md, sec. 10).
            # fletcher32 adds a 4-byte checksum per chunk that HDF5 checks on every read.
            dataset = group.create_dataset(
                name, shape=shape, dtype=dtype, chunks=chunks, fletcher32=checksums
            )
            for axis, dim in enumerate(dims):
                dataset.dims[axis].attach_scale(_scale(group, dim, shape[axis]))

    def write(self, group: str, start: int, arrays: dict[str, np.ndarray]) -> None:
        with self._file() as file:
            for name, values in arrays.items():
                file[f"{group}/{name}"][start : start + len(values)] = values

    def read(self, node: str) -> np.ndarray:
        """Read a whole array of a complete epoch: every chunk must be there and intact."""
        info = self.info(node)
        return self._proxy(node, info)[...]

    def chunks_written(self, node: str) -> tuple[int, int]:
        with self._file() as file:
            dataset = file[node]
            if dataset.chunks is None:
                return int(dataset.id.get_storage_size() > 0), 1
            total = math.prod(-(-n // c) for n, c in zip(dataset.shape, dataset.chunks))
            return dataset.id.get_num_chunks(), total

    def chunk_problem(self, node: str) -> str | None:
        """The first unwritten chunk of an array, or one that fails its fletcher32, or None."""
        with self._file() as file:
            dataset = file[node]
            written = dataset.chunks is None or dataset.id.get_num_chunks() == math.prod(
                -(-n // c) for n, c in zip(dataset.shape, dataset.chunks)
            )
            checksummed = dataset.fletcher32
        if written and not checksummed:
            return None  # nothing more to check without reading every value for nothing
        info = self.info(node)
        if info is None:
            raise StoreFormatError(f"{describe_node(self.path, node)}: the array is missing")
        proxy = self._proxy(node, info)
        unit = info.chunks[0]
        try:
            for start in range(0, info.shape[0], unit):
                # Reading checks that the chunks exist; HDF5 verifies fletcher32 on read.
                proxy[start : start + unit]
        except ChunkError as err:
            return str(err).removeprefix(f"{proxy.where}: ")
        return None

    def row_source(self, node: str) -> HDF5Proxy:
        return self._proxy(node, self.info(node))

    def _proxy(self, node: str, info: ArrayInfo | None) -> HDF5Proxy:
        """A picklable reader of one array that names it in its errors."""
        if info is None:
            raise StoreFormatError(f"{describe_node(self.path, node)}: the array is missing")
        return HDF5Proxy(str(self.path), node, info.shape, info.dtype,
                         describe_node(self.path, node))

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
    #: ``"<store>: epoch E, split 'S', array 'A'"`` for an array of a store's complete
    #: epoch: an unwritten chunk is then an error (HDF5 would return the fill value),
    #: and a read error (a failed fletcher32) names the chunk. Empty for other files.
    where: str = ""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        with _open(self.path, "r") as file:
            dataset = file[self.name]
            if not self.where:
                return dataset[key]
            rows = key[0] if isinstance(key, tuple) else key
            start, stop = (rows.indices(self.shape[0])[:2]
                           if isinstance(rows, slice) and self.shape else (0, None))
            self._check_allocated(dataset, start, stop)
            try:
                return dataset[key]
            except OSError as err:
                raise ChunkError(
                    f"{self.where}: {self._damaged(dataset, start, stop)} cannot be read "
                    f"({err}; with fletcher32 checksums: its bytes changed)"
                ) from err

    def _damaged(self, dataset: h5py.Dataset, start: int, stop: int | None) -> str:
        """Name the first chunk of rows ``start:stop`` that h5py cannot read."""
        unit = (dataset.chunks or dataset.shape or (1,))[0]
        stop = self.shape[0] if stop is None and self.shape else (stop or 1)
        for row in range(start - start % unit, stop, unit):
            try:
                dataset[row : row + unit]
            except OSError:
                return f"the chunk at rows {row}..{min(row + unit, self.shape[0]) - 1}"
        return f"rows {start}..{stop - 1}"

    def _check_allocated(self, dataset: h5py.Dataset, start: int, stop: int | None) -> None:
        """Raise ChunkError on an unwritten chunk among rows ``start:stop``.

        One query per chunk.
        """
        chunks = dataset.chunks
        if chunks is None or not self.shape:
            return
        stop = self.shape[0] if stop is None else stop
        # Quick path: the common complete array has every chunk (one call).
        total = math.prod(-(-n // c) for n, c in zip(self.shape, chunks))
        if dataset.id.get_num_chunks() == total:
            return
        others = [range(0, n, c) for n, c in zip(self.shape[1:], chunks[1:])]
        for row in range(start - start % chunks[0], stop, chunks[0]):
            for rest in (itertools.product(*others) if others else [()]):
                if dataset.id.get_chunk_info_by_coord((row, *rest)).byte_offset is None:
                    raise ChunkError(
                        f"{self.where}: {self.path}: chunk at rows {row}.."
                        f"{min(row + chunks[0], self.shape[0]) - 1} was never written "
                        "(a complete epoch has every chunk)"
                    )

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self.path, self.name, self.shape, str(self.dtype), self.where)
