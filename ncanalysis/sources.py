"""How the analyser gets at the feature rows of a split: :class:`RowBlocks` or a dask array.

Accepted inputs: numpy arrays, zarr arrays, h5py datasets and dask arrays.  All
but dask arrays become :class:`RowBlocks`, which the analysis tasks read
themselves, one block of whole rows at a time.  Dask arrays are kept as they
are, rechunked to whole rows.  h5py objects cannot be pickled, so an h5py
dataset is replaced by the store's HDF5 proxy, which remembers the file path and
dataset name and opens the file inside each task: under dask.distributed the
workers read their own rows and no data passes through the client.

Nothing here imports dask.array: with the xarray, pandas and scipy it imports
in turn it costs ~0.5 s, a quarter of a small ``ncanalysis run``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .store import HDF5Proxy

if TYPE_CHECKING:
    import dask.array as da

    from .store import Store

__all__ = [
    "BLOCKS_PER_SPLIT",
    "DEFAULT_BLOCK_BYTES",
    "MIN_BLOCK_BYTES",
    "RowBlocks",
    "as_row_blocks",
    "default_block_rows",
    "is_dask_array",
    "read_rows",
    "store_row_blocks",
    "whole_chunk_rows",
]

#: Stored bytes of features per dask block when rows_per_block is not given: a
#: split is cut into about BLOCKS_PER_SPLIT blocks, so that the last blocks of a
#: pass keep every worker busy, of MIN_BLOCK_BYTES to DEFAULT_BLOCK_BYTES each
#: (smaller blocks cost per-task overhead, larger ones memory).
DEFAULT_BLOCK_BYTES = 32 << 20
MIN_BLOCK_BYTES = 4 << 20
BLOCKS_PER_SPLIT = 32


def default_block_rows(num_rows: int, row_bytes: int) -> int:
    """Rows per block for a split of ``num_rows`` rows of ``row_bytes`` bytes.

    About 1/BLOCKS_PER_SPLIT of the split, within MIN_BLOCK_BYTES and
    DEFAULT_BLOCK_BYTES (and never more than the split).
    """
    target = num_rows * row_bytes // BLOCKS_PER_SPLIT
    target = min(DEFAULT_BLOCK_BYTES, max(MIN_BLOCK_BYTES, target))
    return int(max(1, min(num_rows, target // max(1, row_bytes))))


def whole_chunk_rows(
    chunk_rows: int, row_bytes: int, rows_per_block: int | None = None, num_rows: int = 0
) -> int:
    """Rows per block of a store's split: a whole number (at least one) of stored chunks.

    Parameters
    ----------
    chunk_rows
        Rows per stored chunk.
    row_bytes
        Stored bytes of one row.
    rows_per_block
        Requested rows per block, rounded to the nearest multiple of ``chunk_rows``;
        None takes :func:`default_block_rows` of the split.
    num_rows
        Rows of the split (for the default).
    """
    if rows_per_block is None:
        rows_per_block = default_block_rows(num_rows, row_bytes)
    chunks = (rows_per_block + chunk_rows // 2) // chunk_rows  # halves round up
    return chunk_rows * max(1, chunks)


def store_row_blocks(
    store: Store, epoch: int, split: str, *, rows_per_block: int | None = None
) -> RowBlocks:
    """A store's features of one split as the blocks of rows the analysis reads.

    Blocks are whole stored chunks (:func:`whole_chunk_rows`); the array-like is
    the store's picklable :class:`~ncanalysis.store.RowSource`, so each task reads
    its own rows (under dask.distributed, on its worker).
    """
    source = store.feature_rows(epoch, split)
    num_rows, dim = source.shape
    rows = whole_chunk_rows(source.chunk_rows, dim * source.dtype.itemsize, rows_per_block,
                            num_rows)
    return RowBlocks.of(source.array, rows)


def is_dask_array(value: Any) -> bool:
    """Whether ``value`` is a dask array (without importing dask.array to find out)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(value, module.Array)


@dataclass(frozen=True)
class RowBlocks:
    """The features of one split as blocks of whole rows, read where they are used.

    Attributes
    ----------
    array : array-like, shape (N, d)
        Anything whose ``array[start:stop]`` gives those rows as numpy (a store's
        chunk reader, a zarr array, an HDF5 proxy, a numpy array).  Under
        dask.distributed it travels to the workers, so it must pickle.
    bounds : tuple of int
        The first row of every block, then N.
    """

    array: Any
    bounds: tuple[int, ...]

    @classmethod
    def of(cls, array: Any, rows: int) -> RowBlocks:
        """``array`` in blocks of ``rows`` rows (the last one may be shorter)."""
        num_rows = int(array.shape[0])
        starts = list(range(0, num_rows, max(1, int(rows)))) or [0]
        return cls(array, tuple(starts) + (num_rows,))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.array.shape)

    @property
    def block_rows(self) -> tuple[int, ...]:
        """Rows in each block."""
        return tuple(b - a for a, b in zip(self.bounds[:-1], self.bounds[1:]))

    def ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` rows of each block."""
        return list(zip(self.bounds[:-1], self.bounds[1:]))


def read_rows(array: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an array-like, as numpy (the read of one block)."""
    return np.asarray(array[start:stop])


def _stored_rows(array: Any) -> int | None:
    """Rows per stored chunk of a zarr array or h5py dataset, if chunked."""
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int):
        return int(chunks[0])
    return None


def _block_rows(shape: tuple[int, ...], itemsize: int, stored: int | None, rows: int | None) -> int:
    """Rows per block: ``rows`` or the store's default, a multiple of the stored chunk."""
    if rows is None:
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
        rows = default_block_rows(shape[0], row_bytes)
    if stored:
        rows = max(stored, (rows // stored) * stored)
    return int(min(max(rows, 1), max(shape[0], 1)))


def as_row_blocks(array: Any, *, rows_per_block: int | None = None) -> RowBlocks | da.Array:
    """Features as blocks of whole rows: :class:`RowBlocks`, or a dask array for dask input.

    Parameters
    ----------
    array : numpy array, dask array, zarr.Array or h5py.Dataset
    rows_per_block : int, optional
        Rows per block; rounded down to a multiple of the stored chunk rows (at
        least one stored chunk).  Default: about 1/32 of the rows, 4 to 32 MiB
        of stored data per block; a dask array keeps its own row chunks.
    """
    if is_dask_array(array):
        stored = int(max(array.chunks[0])) if rows_per_block is None else None
        rows = _block_rows(array.shape, array.dtype.itemsize, stored, rows_per_block)
        if rows_per_block is None and all(len(c) == 1 for c in array.chunks[1:]):
            return array
        return array.rechunk((rows,) + tuple(-1 for _ in array.shape[1:]))
    module = type(array).__module__
    if module.startswith("h5py"):
        stored = _stored_rows(array)
        array = HDF5Proxy(array.file.filename, array.name, array.shape, array.dtype)
    elif module.startswith("zarr"):
        stored = _stored_rows(array)
    else:
        array = np.asarray(array)
        stored = None
    return RowBlocks.of(array, _block_rows(array.shape, array.dtype.itemsize, stored,
                                           rows_per_block))
