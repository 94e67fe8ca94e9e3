"""Row blocks of uncompressed Zarr v3 arrays, read straight from their chunk files.

The store's features are written without compression (docs/store-format.md,
section 10), so a chunk file is the rows' bytes, followed by a 4-byte crc32c
when the array has checksums (format 1.1).  Reading a block with one
``readinto`` per chunk file, directly into the block's array, skips zarr's
buffers, codec pipeline and event loop: a third of the CPU time of
``zarr.Array.__getitem__`` here (0.10 against 0.28 s for 524 MB of float16 in
4096-row blocks from the page cache).  The checksum, where there is one, is
verified on every read, as zarr does.
Arrays that are compressed, sharded, big-endian, on a non-local store or not
chunked by whole rows are read by zarr itself; both give the same values.

``NCANALYSIS_DIRECT_READS=0`` (also ``false``, ``no``, ``off``) turns this reader
off: every array is then read through zarr (same values, same errors, slower).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding, V2ChunkKeyEncoding
from zarr.storage import LocalStore

from ..errors import InputError, StoreFormatError
from ._chunks import CRC32C_BYTES, ChunkError, crc32c_trailer_ok

__all__ = ["DIRECT_READS_ENV", "RawRowChunks", "direct_reads_enabled", "raw_row_chunks"]

#: Environment variable that turns the direct reader off ("0", "false", "no", "off").
DIRECT_READS_ENV = "NCANALYSIS_DIRECT_READS"
_ON, _OFF = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")


def direct_reads_enabled() -> bool:
    """Whether stores read uncompressed Zarr chunks directly (``NCANALYSIS_DIRECT_READS``).

    Read when a store's features are opened, so the choice travels in the graph.

    Raises
    ------
    InputError
        When the variable holds anything but a yes/no word.
    """
    value = os.environ.get(DIRECT_READS_ENV, "").strip().lower()
    if value not in _ON + _OFF:
        raise InputError(
            f"{DIRECT_READS_ENV}={os.environ[DIRECT_READS_ENV]!r}: "
            "expected 1/0 (true/false, on/off)"
        )
    return value in _ON


@dataclass(frozen=True)
class RawRowChunks:
    """A picklable, array-like view of a 2-D Zarr v3 array chunked by whole rows.

    For RowBlocks and ``dask.array.from_array``: ``reader[rows, columns]`` with
    slices returns a numpy array.  It holds only the array's directory and
    layout, so a graph that contains it can travel to dask.distributed workers.

    Attributes
    ----------
    prefix, separator
        Chunk ``i`` is the file ``f"{prefix}{i}{separator}0"`` of the directory
        (zarr's default key encoding: prefix ``"c/"`` or ``"c."``; its v2 encoding: ``""``).
    checksum
        Each chunk file ends with zarr's 4-byte crc32c of the bytes before it.
    where
        ``"<store>: epoch E, split 'S', array 'A'"`` for a store's array: a missing
        chunk file is then an error (a complete epoch has every chunk), not
        ``fill_value``.  Empty for arrays outside a store.
    """

    directory: str
    shape: tuple[int, int]
    dtype: np.dtype
    chunk_rows: int
    separator: str
    fill_value: Any
    prefix: str = "c/"
    checksum: bool = False
    where: str = ""

    @property
    def ndim(self) -> int:
        return 2

    def chunk_path(self, index: int) -> str:
        """The file of row chunk ``index``."""
        return os.path.join(self.directory, f"{self.prefix}{index}{self.separator}0")

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        if not isinstance(rows, slice) or not isinstance(columns, slice):
            raise TypeError(f"{self.directory}: only slices can be read, not {key!r}")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise TypeError(f"{self.directory}: row slices must have step 1, not {step}")
        out = np.empty((max(0, stop - start), self.shape[1]), dtype=self.dtype)
        row_bytes = self.shape[1] * self.dtype.itemsize
        flat = out.reshape(-1).view(np.uint8).data  # a writable memoryview of ``out``
        for index in range(start // self.chunk_rows, -(-stop // self.chunk_rows)):
            first = max(start, index * self.chunk_rows)
            last = min(stop, (index + 1) * self.chunk_rows)
            target = flat[(first - start) * row_bytes : (last - start) * row_bytes]
            offset = (first - index * self.chunk_rows) * row_bytes
            path = self.chunk_path(index)
            if self.checksum and len(target) != self.chunk_rows * row_bytes:
                # The checksum covers the whole chunk (the last one is padded to full size).
                whole = memoryview(bytearray(self.chunk_rows * row_bytes))
                found = read_chunk_bytes(path, 0, whole, checksum=True, where=self.where)
                if found:
                    target[:] = whole[offset : offset + len(target)]
            else:
                found = read_chunk_bytes(path, offset, target, self.checksum, self.where)
            if not found:
                if self.where:
                    last_row = min(self.shape[0], (index + 1) * self.chunk_rows) - 1
                    raise ChunkError(
                        f"{self.where}: chunk file {path} is missing (rows "
                        f"{index * self.chunk_rows}..{last_row} of a complete epoch: deleted or "
                        "lost)"
                    )
                out[first - start : last - start] = self.fill_value  # chunk never written
        return out if columns == slice(None) else out[:, columns]

    def __dask_tokenize__(self) -> tuple:
        return (
            type(self).__name__, self.directory, self.shape, str(self.dtype), self.chunk_rows,
            self.prefix, self.separator, repr(self.fill_value), self.checksum, self.where,
        )


def read_chunk_bytes(
    path: str, offset: int, target: memoryview, checksum: bool = False, where: str = ""
) -> bool:
    """Fill ``target`` from ``path`` at ``offset``; False if the file does not exist.

    With ``checksum``, ``target`` is the whole chunk (``offset`` 0) and the file must
    end with its crc32c, which is verified.

    Raises
    ------
    StoreFormatError
        The file is shorter than the rows it must hold, or (with ``checksum``) has
        the wrong size or a crc32c that does not match its bytes.
    """
    try:
        file = open(path, "rb", buffering=0)
    except FileNotFoundError:
        return False
    label = f"{where}: " if where else ""
    error = ChunkError if where else StoreFormatError
    with file:
        file.seek(offset)
        done = 0
        while done < len(target):
            got = file.readinto(target[done:])
            if not got:
                raise error(
                    f"{label}{path}: chunk file ends at byte {offset + done}, expected at least "
                    f"{offset + len(target) + (CRC32C_BYTES if checksum else 0)} bytes "
                    "(truncated or not an uncompressed chunk)"
                )
            done += got
        if checksum:
            trailer = file.read(CRC32C_BYTES + 1)
            if len(trailer) != CRC32C_BYTES:
                raise error(
                    f"{label}{path}: chunk file holds {len(target) + len(trailer)}+ bytes, "
                    f"expected {len(target) + CRC32C_BYTES} (truncated or wrong size)"
                )
            if not crc32c_trailer_ok(target, trailer):
                raise error(
                    f"{label}{path}: chunk fails its crc32c checksum (its bytes changed "
                    "after they were written)"
                )
    return True


def raw_row_chunks(array: zarr.Array, *, where: str = "") -> RawRowChunks | None:
    """A :class:`RawRowChunks` for ``array``, or None when its layout needs zarr's decoder.

    ``where`` (a store array's description) makes a missing chunk an error.
    """
    metadata = array.metadata
    store = array.store
    codecs = metadata.codecs if metadata.zarr_format == 3 else ()
    encoding = metadata.chunk_key_encoding if metadata.zarr_format == 3 else None
    checksum = len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec)
    if (
        metadata.zarr_format != 3
        or array.ndim != 2
        or array.shards is not None
        or array.chunks[1] != array.shape[1]
        or not isinstance(store, LocalStore)
        or not isinstance(encoding, (DefaultChunkKeyEncoding, V2ChunkKeyEncoding))
        or len(codecs) not in (1, 2)
        or (len(codecs) == 2 and not checksum)
        or not isinstance(codecs[0], BytesCodec)
    ):
        return None
    dtype = np.dtype(array.dtype)
    # The file bytes become the array as they are: both must be little-endian.
    if dtype.itemsize > 1 and (
        sys.byteorder != "little"
        or not dtype.isnative
        or codecs[0].endian is None
        or codecs[0].endian.value != "little"
    ):
        return None
    separator = encoding.separator
    return RawRowChunks(
        directory=os.path.join(str(store.root), array.path),
        shape=(int(array.shape[0]), int(array.shape[1])),
        dtype=dtype,
        chunk_rows=int(array.chunks[0]),
        separator=separator,
        fill_value=metadata.fill_value,
        prefix=f"c{separator}" if isinstance(encoding, DefaultChunkKeyEncoding) else "",
        checksum=checksum,
        where=where,
    )
