"""The small interface the reader, writer and validator use to reach a store.

Both backends address nodes by '/'-separated paths relative to the store root
(``"epochs/3/train/features"``) and speak numpy; everything format-specific above
them (names, shapes, completeness, checks) lives in one place, not twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import StoreFormatError
from ._hdf5 import HDF5Backend
from ._zarr import ZarrBackend
from .spec import ArrayInfo, is_hdf5_path

__all__ = ["Backend", "open_backend", "create_backend"]


class Backend(Protocol):
    """Storage operations of one store (Zarr directory or HDF5 file)."""

    name: str
    path: Path

    def meta(self) -> object:
        """Decoded value of the root attribute, or None when it is absent."""

    def groups(self, node: str) -> list[str]:
        """Names of the child groups of ``node``, sorted; [] when ``node`` is absent."""

    def has(self, node: str) -> bool:
        """Whether a group or array exists at ``node``."""

    def get_attr(self, node: str, key: str) -> Any:
        """An attribute of ``node`` as a Python value; None when it or ``node`` is absent
        (an epoch may be replaced by another process between listing and reading)."""

    def set_attr(self, node: str, key: str, value: bool | str) -> None:
        """Set a boolean (HDF5 stores it as the integer 0 or 1) or string attribute."""

    def create_group(self, node: str, attrs: dict[str, bool]) -> None:
        """Create the group ``node`` with ``attrs``, replacing whatever was there."""

    def info(self, node: str) -> ArrayInfo | None:
        """Shape, chunks, dtype and dimension names of an array; None if not an array."""

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
        """Create an uncompressed, unsharded array filled with 0 and named dimensions.

        With ``checksums``, every chunk carries a checksum verified on every read
        (Zarr: the crc32c codec; HDF5: the fletcher32 filter).
        """

    def write(self, group: str, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write each array into rows ``[start, start + len)`` of ``group/name``."""

    def read(self, node: str) -> np.ndarray:
        """Read a whole array; ChunkError on a missing, damaged or corrupt chunk."""

    def chunks_written(self, node: str) -> tuple[int, int]:
        """Number of stored chunks of an array that were written, and in total."""

    def chunk_problem(self, node: str) -> str | None:
        """The first missing, wrongly sized or corrupt chunk of an array, or None."""

    def row_source(self, node: str) -> Any:
        """A picklable array-like of ``node`` whose row slices read as numpy."""

    def close(self) -> None:
        """Release what the backend holds open."""


def open_backend(path: Path, *, writable: bool) -> Backend:
    """Open an existing store with the backend its path calls for.

    Raises
    ------
    StoreFormatError
        When ``path`` is missing or not a Zarr group / HDF5 file.
    """
    if not path.exists():
        raise StoreFormatError(f"{path}: no such store (the path does not exist)")
    # A file is HDF5 whatever its suffix; a directory is Zarr.
    cls = HDF5Backend if is_hdf5_path(path) or path.is_file() else ZarrBackend
    return cls(path, writable=writable)


def create_backend(path: Path, meta: dict, *, overwrite: bool) -> Backend:
    """Create an empty store (root attribute and ``epochs`` group) at ``path``."""
    cls = HDF5Backend if is_hdf5_path(path) else ZarrBackend
    return cls.create(path, meta, overwrite=overwrite)
