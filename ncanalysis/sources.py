"""Turn the arrays other projects hand us into row-chunked dask arrays.

Accepted: numpy arrays, dask arrays, zarr arrays and h5py datasets.  h5py
objects cannot be pickled, so an h5py dataset becomes the store's HDF5 proxy,
which remembers the file path and dataset name and opens the file inside each
task: under dask.distributed the workers read their own rows and no data passes
through the client.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .store._hdf5 import HDF5Proxy
from .store.spec import default_block_rows

__all__ = ["as_row_blocks"]


def _stored_rows(array: Any) -> int | None:
    """Rows per stored chunk of a zarr array or h5py dataset, if chunked."""
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int):
        return int(chunks[0])
    return None


def _block_rows(shape: tuple[int, ...], itemsize: int, stored: int | None, rows: int | None) -> int:
    """Rows per dask block: ``rows`` or the store's default, a multiple of the stored chunk."""
    if rows is None:
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
        rows = default_block_rows(shape[0], row_bytes)
    if stored:
        rows = max(stored, (rows // stored) * stored)
    return int(min(max(rows, 1), max(shape[0], 1)))


def as_row_blocks(array: Any, *, rows_per_block: int | None = None) -> da.Array:
    """A dask array chunked along the first axis only, whole rows per block.

    Parameters
    ----------
    array : numpy array, dask array, zarr.Array or h5py.Dataset
    rows_per_block : int, optional
        Rows per dask block; rounded down to a multiple of the stored chunk
        rows (at least one stored chunk).  Default: about 1/32 of the rows,
        4 to 32 MiB of stored data per block.
    """
    if isinstance(array, da.Array):
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
    rows = _block_rows(array.shape, array.dtype.itemsize, stored, rows_per_block)
    chunks = (rows,) + tuple(-1 for _ in array.shape[1:])
    return da.from_array(array, chunks=chunks, asarray=True, lock=False, fancy=False)
