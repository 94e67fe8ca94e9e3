"""Zarr v3 directory backend of the store."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.array_spec import ArrayConfigParams
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import collect_aiterator, sync

from ..errors import StoreFormatError
from ._chunks import CRC32C_BYTES, ChunkError, crc32c_trailer_ok, describe_node
from ._rawzarr import RawRowChunks, direct_reads_enabled, raw_row_chunks
from .spec import EPOCHS_GROUP, ROOT_ATTR, ArrayInfo

__all__ = ["ZarrBackend", "ZarrRows"]

# What zarr raises on a zarr.json that is not JSON, or JSON that is not metadata.
_METADATA_ERRORS = (
    json.JSONDecodeError, zarr.errors.BaseZarrError, ValueError, TypeError, KeyError)

# Chunks equal to the fill value are written anyway, so that "every chunk exists" tells
# that every row was written (a chunk of class-0 labels or dead ReLU features is all 0).
_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


class ZarrBackend:
    """Store operations on a Zarr v3 directory.

    Parameters
    ----------
    path
        The store directory.
    writable
        Open for writing (``r+``) rather than read-only.
    """

    name = "zarr"

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = path
        try:
            # Consolidated metadata would go stale while epochs are added or replaced.
            self._root = zarr.open_group(
                path, mode="r+" if writable else "r", use_consolidated=False
            )
        except (FileNotFoundError, zarr.errors.BaseZarrError, json.JSONDecodeError) as err:
            raise StoreFormatError(f"{path}: not a store (no Zarr group: {err})") from err
        if self._root.metadata.zarr_format != 3:
            raise StoreFormatError(
                f"{path}: Zarr format {self._root.metadata.zarr_format} store; "
                "the format needs Zarr v3 (dimension names)"
            )

    @classmethod
    def create(cls, path: Path, meta: dict, *, overwrite: bool) -> ZarrBackend:
        """Create an empty store at ``path`` and open it for writing."""
        root = zarr.open_group(
            path, mode="w" if overwrite else "w-", zarr_format=3, attributes={ROOT_ATTR: meta}
        )
        root.create_group(EPOCHS_GROUP)
        return cls(path, writable=True)

    def meta(self) -> object:
        return self._root.attrs.get(ROOT_ATTR)

    def groups(self, node: str) -> list[str]:
        with self._metadata(node, children=True):
            group = self._group(node)
            return [] if group is None else sorted(group.group_keys())

    def has(self, node: str) -> bool:
        with self._metadata(node):
            return node in self._root

    def get_attr(self, node: str, key: str) -> Any:
        with self._metadata(node):
            found = self._root.get(node)
            return None if found is None else found.attrs.get(key)

    def set_attr(self, node: str, key: str, value: bool | str) -> None:
        self._root[node].attrs[key] = value

    def create_group(self, node: str, attrs: dict[str, bool]) -> None:
        # overwrite also clears leftovers of a deletion cut short (files without zarr.json).
        self._root.create_group(node, attributes=attrs, overwrite=True)

    def info(self, node: str) -> ArrayInfo | None:
        with self._metadata(node):
            array = self._array(node)
        if array is None:
            return None
        names = _v3_metadata(array, describe_node(self.path, node)).dimension_names
        return ArrayInfo(
            shape=array.shape,
            # The write unit of a sharded array (not written by us) is the shard.
            chunks=array.shards or array.chunks,
            dtype=np.dtype(array.dtype),
            dimension_names=None if names is None or None in names else tuple(map(str, names)),
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
        # Uncompressed: on float16 features Blosc gained 1.0-1.1x and cost read speed
        # (docs/store-format.md, section 10). The crc32c codec only appends 4 bytes.
        self._root.create_array(
            node,
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            dimension_names=dims,
            serializer=BytesCodec(),
            compressors=[Crc32cCodec()] if checksums else None,
            fill_value=0,
        )

    def write(self, group: str, start: int, arrays: dict[str, np.ndarray]) -> None:
        for name, values in arrays.items():
            target = self._existing_array(f"{group}/{name}").with_config(_WRITE_CONFIG)
            target[start : start + len(values)] = values

    def read(self, node: str) -> np.ndarray:
        """Read a whole array of a complete epoch: every chunk must be there and intact."""
        with self._metadata(node):
            array = self._existing_array(node)
        return ZarrRows(array, describe_node(self.path, node))[...]

    def chunks_written(self, node: str) -> tuple[int, int]:
        array = self._existing_array(node)
        return array.nchunks_initialized, array.nchunks

    def chunk_problem(self, node: str) -> str | None:
        """The first missing, wrongly sized or corrupt chunk of an array, or None.

        Sizes are checked where the codecs fix them (uncompressed, with or without
        crc32c); chunks with a crc32c are read and verified.
        """
        array = self._existing_array(node)
        missing = _missing_keys(array)
        if missing:
            return f"{len(missing)} chunk(s) missing, first {_key_path(array, missing[0])}"
        codecs = _v3_metadata(array, describe_node(self.path, node)).codecs
        if array.shards is not None or not isinstance(codecs[0], BytesCodec):
            return None
        checksum = codecs[1:] == (Crc32cCodec(),)
        if len(codecs) > 1 and not checksum:
            return None  # compressed: the size is not known in advance
        payload = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
        expected = payload + (CRC32C_BYTES if checksum else 0)
        store = array.store
        for key in _keys(array):
            full = f"{array.path}/{key}"
            size = sync(store.getsize(full))
            if size != expected:
                return f"chunk file {_key_path(array, key)} holds {size} bytes, expected {expected}"
            if checksum:
                data = sync(store.get(full, prototype=default_buffer_prototype()))
                if data is None:  # deleted between the size check and the read
                    return f"chunk file {_key_path(array, key)} is missing"
                raw = data.as_numpy_array().tobytes()
                if not crc32c_trailer_ok(memoryview(raw)[:payload], raw[payload:]):
                    return f"chunk file {_key_path(array, key)} fails its crc32c checksum"
        return None

    def row_source(self, node: str) -> RawRowChunks | ZarrRows:
        with self._metadata(node):
            array = self._existing_array(node)
        where = describe_node(self.path, node)
        raw = raw_row_chunks(array, where=where) if direct_reads_enabled() else None
        return ZarrRows(array, where) if raw is None else raw

    def close(self) -> None:
        self._root.store.close()

    @contextlib.contextmanager
    def _metadata(self, node: str, *, children: bool = False) -> Iterator[None]:
        """Turn zarr's error on a broken ``zarr.json`` into one naming the file."""
        try:
            yield
        except _METADATA_ERRORS as err:
            bad = _broken_metadata(Path(self.path), node, children=children)
            if bad is None:
                raise
            raise StoreFormatError(f"{bad}: invalid Zarr metadata ({err})") from err

    def _group(self, node: str) -> zarr.Group | None:
        found = self._root.get(node)
        return found if isinstance(found, zarr.Group) else None

    def _array(self, node: str) -> zarr.Array | None:
        found = self._root.get(node)
        return found if isinstance(found, zarr.Array) else None

    def _existing_array(self, node: str) -> zarr.Array:
        """The array at ``node`` (KeyError when absent; StoreFormatError when a group)."""
        found = self._root[node]
        if not isinstance(found, zarr.Array):
            raise StoreFormatError(
                f"{describe_node(self.path, node)}: is a Zarr group, expected an array")
        return found


def _v3_metadata(array: zarr.Array, where: str) -> ArrayV3Metadata:
    """The Zarr v3 metadata of an array (dimension names and codecs exist only in v3)."""
    metadata = array.metadata
    if not isinstance(metadata, ArrayV3Metadata):
        raise StoreFormatError(
            f"{where}: Zarr format {metadata.zarr_format} array; the format needs Zarr v3")
    return metadata


def _broken_metadata(root: Path, node: str, *, children: bool) -> Path | None:
    """The first ``zarr.json`` on the way to ``node`` (or below it) that is not a JSON object."""
    parts = node.split("/")
    candidates = [root.joinpath(*parts[:i], "zarr.json") for i in range(len(parts) + 1)]
    if children and root.joinpath(*parts).is_dir():
        candidates += sorted(root.joinpath(*parts).glob("*/zarr.json"))
    for candidate in candidates:
        try:
            text = candidate.read_text()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError):
            return candidate
        try:
            if not isinstance(json.loads(text), dict):
                return candidate
        except json.JSONDecodeError:
            return candidate
    return None


def _stored_rows(array: zarr.Array) -> int:
    """Rows of one stored object (chunk, or shard when sharded): the write unit."""
    return int((array.shards or array.chunks)[0])


def _keys(array: zarr.Array, start: int = 0, stop: int | None = None) -> list[str]:
    """Keys of the stored objects that hold rows ``start:stop`` (all columns)."""
    stored = array.shards or array.chunks
    stop = array.shape[0] if stop is None else stop
    rows = range(start // stored[0], -(-stop // stored[0]))
    others = [range(-(-n // c)) for n, c in zip(array.shape[1:], stored[1:])]
    encode = array.metadata.encode_chunk_key
    return [encode((i, *rest)) for i in rows for rest in _product(others)]


def _product(ranges: list[range]) -> Iterator[tuple[int, ...]]:
    if not ranges:
        yield ()
        return
    for first in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (first, *rest)


def _missing_keys(array: zarr.Array, start: int = 0, stop: int | None = None) -> list[str]:
    """The stored objects of rows ``start:stop`` that do not exist."""
    keys = _keys(array, start, stop)
    if len(keys) <= 4:
        return [k for k in keys if not sync(array.store.exists(f"{array.path}/{k}"))]
    # One listing instead of one request per chunk (labels: hundreds of chunks).
    prefix = f"{array.path}/"
    present = {k[len(prefix):] for k in collect_aiterator(array.store.list_prefix(prefix))}
    return [k for k in keys if k not in present]


def _key_path(array: zarr.Array, key: str) -> str:
    return f"{array.store_path}/{key}".removeprefix("file://")


@dataclass(frozen=True)
class ZarrRows:
    """A store array read through zarr, refusing missing chunks and naming damaged ones.

    zarr returns the fill value for a chunk that does not exist; in a complete
    epoch that is damage (docs/store-format.md, section 7), so each read first
    checks that the chunks it covers exist (a few requests per block, no per-row
    work). zarr itself verifies a crc32c codec; its error is given the chunk's name.
    Picklable (the zarr array pickles), for dask.distributed.
    """

    array: zarr.Array
    where: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) else key
        start, stop = 0, self.array.shape[0]
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.array.shape[0])
        missing = _missing_keys(self.array, start, stop) if stop > start else []
        if missing:
            raise ChunkError(
                f"{self.where}: chunk file {_key_path(self.array, missing[0])} is missing "
                "(a complete epoch has every chunk: deleted or lost)"
            )
        try:
            # zarr types the result as array-like or scalar; with numpy buffers it is an ndarray.
            return np.asarray(self.array[key])
        except (ValueError, TypeError) as err:
            raise ChunkError(f"{self.where}: {self._damaged(start, stop)} ({err})") from err

    def _damaged(self, start: int, stop: int) -> str:
        """Name the first chunk of rows ``start:stop`` that zarr cannot decode."""
        unit = _stored_rows(self.array)
        for first in range(start - start % unit, stop, unit):
            try:
                self.array[first : first + unit]
            except (ValueError, TypeError):
                key = _keys(self.array, first, first + 1)[0]
                return f"chunk file {_key_path(self.array, key)} is damaged (checksum or size)"
        return f"rows {start}..{stop - 1} cannot be decoded"

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, str(self.array.store), self.array.path,
                json.dumps(self.array.metadata.to_dict(), default=str), self.where)
