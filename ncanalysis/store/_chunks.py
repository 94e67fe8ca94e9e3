"""Chunk integrity: the error for a missing or damaged chunk, and the crc32c check.

A complete epoch has every chunk written (docs/store-format.md, section 6), so a
missing chunk file there is damage, never "rows of zeros", and a chunk whose
checksum does not match its bytes was changed after it was written.  Both read
paths (the direct chunk reader and zarr/h5py) and the validator use these.
"""

from __future__ import annotations

import re

import google_crc32c  # zarr's Crc32cCodec uses this package: the same CRC-32C values
import numpy as np

from ..errors import StoreFormatError

__all__ = ["CRC32C_BYTES", "ChunkError", "crc32c_trailer_ok", "describe_node"]

#: Bytes of the crc32c trailer that zarr's ``crc32c`` codec appends to a chunk.
CRC32C_BYTES = 4

_NODE = re.compile(r"epochs/(\d+)(?:/([^/]+))?/([^/]+)")


class ChunkError(StoreFormatError):
    """A chunk of a complete epoch is missing, truncated, of the wrong size or fails its
    checksum."""


def crc32c_trailer_ok(payload: memoryview | bytes, trailer: bytes) -> bool:
    """Whether ``trailer`` is zarr's crc32c of ``payload``.

    zarr's ``Crc32cCodec`` appends ``google_crc32c.value(payload)`` (CRC-32C,
    Castagnoli, over every byte before the trailer) as a little-endian uint32.
    """
    # google_crc32c refuses memoryviews but takes numpy arrays (a view, not a copy).
    view = np.frombuffer(payload, dtype=np.uint8)
    return len(trailer) == CRC32C_BYTES and trailer == google_crc32c.value(view).to_bytes(
        CRC32C_BYTES, "little"
    )


def describe_node(store: object, node: str) -> str:
    """``"<store>: epoch E, split 'S', array 'A'"`` for an array path of a store."""
    match = _NODE.fullmatch(node)
    if match is None:
        return f"{store}: array {node!r}"
    epoch, split, name = match.groups()
    split_part = "" if split is None else f", split {split!r}"
    return f"{store}: epoch {epoch}{split_part}, array {name!r}"
