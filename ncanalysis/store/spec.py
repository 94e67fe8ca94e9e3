"""Names, versions and sizes of the ncanalysis store format, version 1.

docs/store-format.md is the specification; this module holds its constants and the
small pure helpers (paths, chunk sizes, version checks) shared by both backends, the
reader and the writer.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TypeGuard

import numpy as np

from ..errors import StoreFormatError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FORMAT_MAJOR",
    "ROOT_ATTR",
    "EPOCHS_GROUP",
    "RESULTS_GROUP",
    "EPOCH_IDENTITY_ATTR",
    "COMPLETE_ATTR",
    "FEATURES",
    "LABELS",
    "SAMPLE_INDEX",
    "WEIGHT",
    "BIAS",
    "DIMENSIONS",
    "FEATURE_DTYPES",
    "CLASSIFIER_DTYPES",
    "LABEL_DTYPE",
    "SAMPLE_INDEX_DTYPE",
    "HDF5_SUFFIXES",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CHECKSUMS",
    "ArrayInfo",
    "is_hdf5_path",
    "epoch_node",
    "split_node",
    "parse_epoch_name",
    "check_split_name",
    "split_order",
    "epoch_ranges",
    "check_meta",
    "array_problem",
    "is_count",
    "is_index",
    "default_chunk_rows",
]

FORMAT_NAME = "ncanalysis-store"
FORMAT_VERSION = "1.1"
FORMAT_MAJOR = int(FORMAT_VERSION.split(".")[0])
#: The one root attribute that holds the format name, version and store-wide metadata.
ROOT_ATTR = "ncanalysis"
EPOCHS_GROUP = "epochs"
#: Written by ncanalysis.results; readers of the store ignore it.
RESULTS_GROUP = "results"
#: Epoch group attribute, set true (Zarr) or 1 (HDF5) last, by finalize.
COMPLETE_ATTR = "complete"
#: Epoch group attribute (format 1.1): a uuid4 hex written by finalize, just before COMPLETE_ATTR.
EPOCH_IDENTITY_ATTR = "epoch_identity"

FEATURES = "features"
LABELS = "labels"
SAMPLE_INDEX = "sample_index"
WEIGHT = "weight"
BIAS = "bias"

#: Dimension names of every array, in axis order.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    FEATURES: ("sample", "feature"),
    LABELS: ("sample",),
    SAMPLE_INDEX: ("sample",),
    WEIGHT: ("class", "feature"),
    BIAS: ("class",),
}

FEATURE_DTYPES = ("float16", "float32", "float64")
CLASSIFIER_DTYPES = ("float32", "float64")
LABEL_DTYPE = "int64"
SAMPLE_INDEX_DTYPE = "int64"
HDF5_SUFFIXES = (".h5", ".hdf5")

#: Stored bytes of features per chunk when chunk_rows is not given: a few MB keeps the
#: number of files per epoch in the hundreds at ImageNet scale and each read large.
DEFAULT_CHUNK_BYTES = 8 << 20
#: Whether new stores checksum every chunk (format 1.1; Zarr crc32c, HDF5 fletcher32).
#: Verifying them cost ~1 % of the analysis of an ImageNet-10% epoch (+0.07 s of CPU per
#: 565 MB read pass; benchmarks/RESULTS.md, "Checksums"), under the 5 % allowed: on by default.
DEFAULT_CHECKSUMS = True

# Floating arrays and their dtypes; labels and sample_index take any integer dtype.
_DTYPES = {FEATURES: FEATURE_DTYPES, WEIGHT: CLASSIFIER_DTYPES, BIAS: CLASSIFIER_DTYPES}
_EPOCH_NAME = re.compile(r"0|[1-9][0-9]*")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# An HDF5 epoch group also holds the arrays and dimension scales named here.
_RESERVED_SPLIT_NAMES = frozenset({WEIGHT, BIAS, *DIMENSIONS[WEIGHT]})


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """What a backend knows about one stored array without reading its values.

    Attributes
    ----------
    shape, chunks : tuple of int
        Array and chunk shapes.
    dtype : numpy.dtype
        Stored dtype.
    dimension_names : tuple of str or None
        Zarr ``dimension_names`` or the names of the HDF5 dimension scales; None when
        an axis has no name.
    """

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    dimension_names: tuple[str, ...] | None


def is_hdf5_path(path: str | os.PathLike[str]) -> bool:
    """Return True when ``path`` names an HDF5 store (by its suffix)."""
    return Path(path).suffix.lower() in HDF5_SUFFIXES


def epoch_node(epoch: int) -> str:
    """Return the path of an epoch group relative to the store root."""
    return f"{EPOCHS_GROUP}/{epoch}"


def split_node(epoch: int, split: str) -> str:
    """Return the path of a split group relative to the store root."""
    return f"{EPOCHS_GROUP}/{epoch}/{split}"


def parse_epoch_name(name: str) -> int | None:
    """Return the epoch number a group name stands for, or None if it is not one."""
    return int(name) if _EPOCH_NAME.fullmatch(name) else None


def split_order(split: str) -> tuple[bool, str]:
    """Sort key of split names: ``"train"`` first, then the others by name.

    The one order of splits everywhere: a store's, the results' split coordinate,
    merged results.  ``sorted(names, key=split_order)``.
    """
    return (split != "train", split)


def epoch_ranges(epochs: list[int] | tuple[int, ...]) -> str:
    """Sorted epochs as ranges, for messages: ``[0, 1, 2, 5]`` as ``"0-2, 5"``."""
    runs: list[list[int]] = []
    for epoch in epochs:
        if runs and epoch == runs[-1][1] + 1:
            runs[-1][1] = epoch
        else:
            runs.append([epoch, epoch])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def check_split_name(split: str) -> None:
    """Raise ValueError unless ``split`` is a valid split group name."""
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        raise ValueError(
            f"invalid split name {split!r}: use letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    if split in _RESERVED_SPLIT_NAMES:
        raise ValueError(f"invalid split name {split!r}: the name is reserved by the format")


def check_meta(meta: object, where: str) -> dict:
    """Check the root attribute of a store and return it.

    Parameters
    ----------
    meta
        The decoded value of the root attribute ``ROOT_ATTR`` (None when absent).
    where
        The store's path, for messages.

    Raises
    ------
    StoreFormatError
        When the attribute is missing, names another format, has a major version this
        code cannot read, or lacks a required entry.
    """
    if meta is None:
        raise StoreFormatError(
            f"{where}: not an ncanalysis store (no root attribute {ROOT_ATTR!r})"
        )
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise StoreFormatError(
            f"{where}: root attribute {ROOT_ATTR!r} does not name the format {FORMAT_NAME!r}"
        )
    version = meta.get("version")
    match = re.fullmatch(r"(\d+)\.(\d+)", version) if isinstance(version, str) else None
    if match is None:
        raise StoreFormatError(f"{where}: malformed format version {version!r}")
    if int(match[1]) != FORMAT_MAJOR:
        raise StoreFormatError(
            f"{where}: store format version {version} is not supported; this ncanalysis "
            f"reads versions {FORMAT_MAJOR}.x (a newer ncanalysis may read it)"
        )
    c, d = meta.get("num_classes"), meta.get("num_features")
    for key, value in (("num_classes", c), ("num_features", d)):
        if not is_count(value):
            raise StoreFormatError(f"{where}: {key} is {value!r}, not a positive integer")
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) == c and all(isinstance(n, str) for n in names)):
        raise StoreFormatError(f"{where}: class_names is not a list of {c} strings")
    if not isinstance(meta.get("provenance"), dict):
        raise StoreFormatError(f"{where}: provenance is not a mapping")
    return meta


def is_index(value: object) -> TypeGuard[int | np.integer]:
    """Whether ``value`` is a non-negative integer (a bool is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 0)


def is_count(value: object) -> TypeGuard[int | np.integer]:
    """Whether ``value`` is a positive integer (a bool is not)."""
    return is_index(value) and bool(value >= 1)


def array_problem(info: ArrayInfo | None, name: str, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a stored array, or None when it fits the spec.

    Parameters
    ----------
    info
        The stored array (None when missing).
    name
        Its name (``FEATURES``, ``LABELS``, ...), which fixes its dtypes and dimensions.
    shape
        The shape it must have.
    """
    if info is None:
        return "missing"
    if info.shape != shape:
        return f"shape {info.shape}, expected {shape}"
    allowed = _DTYPES.get(name)
    if allowed is None and info.dtype.kind not in "iu":
        return f"dtype {info.dtype}, expected an integer dtype"
    if allowed is not None and info.dtype.name not in allowed:
        return f"dtype {info.dtype}, expected one of {allowed}"
    if info.dimension_names != DIMENSIONS[name]:
        return f"dimension names {info.dimension_names}, expected {DIMENSIONS[name]}"
    if tuple(info.chunks[1:]) != shape[1:]:
        return f"chunks {info.chunks} split rows; a chunk must hold whole rows"
    return None


def default_chunk_rows(num_samples: int, num_features: int, dtype: str) -> int:
    """Rows per stored chunk holding about DEFAULT_CHUNK_BYTES of features.

    At least 1 row, at most ``num_samples``.
    """
    row_bytes = num_features * np.dtype(dtype).itemsize
    return max(1, min(num_samples, DEFAULT_CHUNK_BYTES // row_bytes))
