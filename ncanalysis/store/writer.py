"""Write epochs of features, labels and classifiers into a store.

One process (rank 0) creates the store, begins each epoch, creates its splits, writes
the classifier and finalizes; any number of processes write rows in between, each
owning whole write units (stored chunks). The caller synchronises the processes.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from .._version import __version__
from ..errors import IncompleteEpochError, InputError, NCAnalysisError, StoreFormatError
from ._backend import Backend, create_backend, open_backend
from .spec import (
    BIAS,
    COMPLETE_ATTR,
    DEFAULT_CHECKSUMS,
    DIMENSIONS,
    EPOCH_IDENTITY_ATTR,
    FEATURE_DTYPES,
    FEATURES,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABEL_DTYPE,
    LABELS,
    SAMPLE_INDEX,
    SAMPLE_INDEX_DTYPE,
    WEIGHT,
    check_meta,
    check_split_name,
    default_chunk_rows,
    epoch_node,
    is_count,
    is_index,
    split_node,
)

__all__ = ["create_store", "open_store_writer", "StoreWriter", "EpochWriter"]

_SPLIT_ARRAYS = (FEATURES, LABELS, SAMPLE_INDEX)


def create_store(
    path: str | os.PathLike[str],
    *,
    num_classes: int,
    num_features: int,
    class_names: Sequence[str] | None = None,
    feature_dtype: str = "float16",
    chunk_rows: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    checksums: bool = DEFAULT_CHECKSUMS,
) -> StoreWriter:
    """Create an empty store and return a writer for it.

    Parameters
    ----------
    path
        A directory for a Zarr v3 store, or a file ending in ``.h5``/``.hdf5`` for HDF5.
    num_classes, num_features
        C and d.
    class_names
        C names; default ``"0"`` .. ``"C-1"``.
    feature_dtype
        Default storage dtype of features: ``"float16"``, ``"float32"`` or ``"float64"``.
    chunk_rows
        Rows per stored chunk (the write unit); default about 8 MiB of features.
    provenance
        JSON-serialisable facts from the producer (model class, layer path, number of
        writer processes, library versions, ...). The store adds the versions of
        ncanalysis, numpy and its storage library under ``library_versions`` and the
        creation time under ``created``.
    overwrite
        Replace an existing ncanalysis store at ``path`` (never anything else).
    checksums
        Give every chunk a checksum that both read paths verify on every read (Zarr:
        the crc32c codec; HDF5: the fletcher32 filter), so that changed bytes are an
        error, not silently different numbers. Default `DEFAULT_CHECKSUMS`.

    Returns
    -------
    StoreWriter

    Raises
    ------
    InputError
        On an invalid argument.
    FileExistsError
        When ``path`` exists and ``overwrite`` is false, or is not a store.
    """
    path = Path(path)
    c = _count(num_classes, "num_classes")
    d = _count(num_features, "num_features")
    names = [str(i) for i in range(c)] if class_names is None else list(class_names)
    if len(names) != c or not all(isinstance(name, str) for name in names):
        raise InputError(f"class_names must be {c} strings, got {class_names!r}")
    _check_feature_dtype(feature_dtype)
    if chunk_rows is not None:
        _count(chunk_rows, "chunk_rows")
    if not isinstance(checksums, bool):
        raise InputError(f"checksums must be True or False, got {checksums!r}")
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_classes": c,
        "num_features": d,
        "class_names": names,
        "feature_dtype": feature_dtype,
        "chunk_rows": chunk_rows,
        "checksums": checksums,
        "provenance": _provenance(provenance),
    }
    if path.exists():
        _check_replaceable(path, overwrite)
    return StoreWriter(create_backend(path, meta, overwrite=overwrite), meta)


def open_store_writer(path: str | os.PathLike[str]) -> StoreWriter:
    """Open an existing store to append epochs, or to write rows from another process.

    Raises
    ------
    StoreFormatError
        When ``path`` is not a store of a readable version.
    """
    backend = open_backend(Path(path), writable=True)
    try:
        meta = check_meta(backend.meta(), str(path))
    except BaseException:
        backend.close()  # not a store: release what was opened
        raise
    return StoreWriter(backend, meta)


class StoreWriter:
    """Writes epochs into one store; made by `create_store` or `open_store_writer`.

    Attributes
    ----------
    path : pathlib.Path
    num_classes, num_features : int
    feature_dtype : str
        Default storage dtype of features.
    chunk_rows : int or None
        Rows per stored chunk of new splits; None for about 8 MiB of features.
    checksums : bool
        Whether new arrays get chunk checksums (the store's choice at creation).
    """

    def __init__(self, backend: Backend, meta: dict) -> None:
        self._backend = backend
        self.path = backend.path
        self.num_classes: int = meta["num_classes"]
        self.num_features: int = meta["num_features"]
        self.feature_dtype: str = meta.get("feature_dtype", "float16")
        self.chunk_rows: int | None = meta.get("chunk_rows")
        # Stores of format 1.0 have no checksums; new epochs keep the store's choice.
        self.checksums: bool = meta.get("checksums") is True

    def begin_epoch(self, epoch: int) -> EpochWriter:
        """Create epoch ``epoch``, marked incomplete, replacing one of that number.

        Called by one process (rank 0), before the others call `open_epoch`.
        """
        epoch = _epoch_number(epoch)
        node = epoch_node(epoch)
        if self._backend.has(node):
            # Marked incomplete first, so a crash while deleting cannot leave a
            # half-deleted epoch that still reads as complete.
            self._backend.set_attr(node, COMPLETE_ATTR, False)
        self._backend.create_group(node, {COMPLETE_ATTR: False})
        return EpochWriter(self, epoch, owner=True)

    def open_epoch(self, epoch: int) -> EpochWriter:
        """Open an epoch begun by `begin_epoch` in another process, to write rows.

        Raises
        ------
        NCAnalysisError
            On an HDF5 store: h5py without MPI cannot have several writer processes.
        StoreFormatError
            When the epoch was not begun, or was already finalized.
        """
        epoch = _epoch_number(epoch)
        if self._backend.name == "hdf5":
            raise NCAnalysisError(
                f"{self.path}: an HDF5 store has exactly one writer process (h5py has no "
                "MPI here); write from several processes into a Zarr store instead"
            )
        node = epoch_node(epoch)
        if not self._backend.has(node):
            raise StoreFormatError(f"{self.path}: epoch {epoch} has not been begun")
        if self._backend.get_attr(node, COMPLETE_ATTR) == 1:
            raise StoreFormatError(f"{self.path}: epoch {epoch} is already finalized")
        return EpochWriter(self, epoch, owner=False)

    def close(self) -> None:
        """Release the store."""
        self._backend.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpochWriter:
    """Writes one epoch; made by `StoreWriter.begin_epoch` or `StoreWriter.open_epoch`.

    Only the writer from `begin_epoch` creates splits, writes the classifier and
    finalizes; every writer writes rows.
    """

    def __init__(self, store: StoreWriter, epoch: int, *, owner: bool) -> None:
        self.epoch = epoch
        self._store = store
        self._backend = store._backend
        self._owner = owner
        self._finalized = False
        self._layouts: dict[str, tuple[int, int, str]] = {}

    def create_split(
        self, split: str, num_samples: int, *, feature_dtype: str | None = None
    ) -> None:
        """Create the arrays of one split, to be filled by `write_rows`.

        Parameters
        ----------
        split
            Split name (``"train"``, ``"test"``, ...).
        num_samples
            N, the rows of the split.
        feature_dtype
            Storage dtype of the features; default the store's.
        """
        self._check_writable("create_split", owner=True)
        n = _count(num_samples, "num_samples")
        dtype = self._store.feature_dtype if feature_dtype is None else feature_dtype
        self._create_split(split, n, dtype)

    def write_unit_rows(self, split: str) -> int:
        """Rows of one write unit (stored chunk) of ``split``.

        Concurrent writers must each own whole write units.
        """
        return self._layout(split)[1]

    def write_rows(
        self,
        split: str,
        start: int,
        features: np.ndarray,
        labels: np.ndarray,
        sample_index: np.ndarray | None = None,
    ) -> None:
        """Write rows ``[start, start + n)`` of a created split.

        Parameters
        ----------
        split
            A split made by `create_split`.
        start
            First row; a multiple of `write_unit_rows`.
        features
            (n, d) floating values; n is a multiple of `write_unit_rows` unless the
            rows reach the end of the split.
        labels
            (n,) integers in 0..C-1.
        sample_index
            (n,) dataset index of each row; default ``start .. start + n - 1``.

        Raises
        ------
        InputError
            On a bad shape, dtype or position, a label out of range, or a feature that
            the storage dtype cannot hold (beyond its range, NaN or inf). Nothing is
            written then.
        """
        self._check_writable("write_rows", owner=False)
        num_samples, unit, dtype = self._layout(split)
        where = self._where(split)
        if not is_index(start):
            raise InputError(f"{where}: start must be a non-negative integer, got {start!r}")
        start = int(start)
        arrays = _prepare_rows(
            where, start, features, labels, sample_index,
            num_features=self._store.num_features,
            num_classes=self._store.num_classes,
            dtype=dtype,
        )
        stop = start + len(arrays[LABELS])
        if stop > num_samples:
            raise InputError(f"{where}: rows {start}..{stop - 1} pass the end ({num_samples} rows)")
        if start % unit or (stop % unit and stop != num_samples):
            raise InputError(
                f"{where}: rows {start}..{stop - 1} do not cover whole write units of "
                f"{unit} rows (concurrent writers sharing a unit lose rows)"
            )
        self._backend.write(split_node(self.epoch, split), start, arrays)

    def write_split(
        self,
        split: str,
        features: np.ndarray,
        labels: np.ndarray,
        sample_index: np.ndarray | None = None,
        *,
        feature_dtype: str | None = None,
    ) -> None:
        """Create a split and write all its rows at once (single-process writers).

        Parameters are those of `create_split` and `write_rows`; nothing is created
        when the values are invalid.
        """
        self._check_writable("write_split", owner=True)
        dtype = self._store.feature_dtype if feature_dtype is None else feature_dtype
        _check_feature_dtype(dtype)
        arrays = _prepare_rows(
            self._where(split), 0, features, labels, sample_index,
            num_features=self._store.num_features,
            num_classes=self._store.num_classes,
            dtype=dtype,
        )
        self._create_split(split, _count(len(arrays[LABELS]), "rows of features"), dtype)
        self._backend.write(split_node(self.epoch, split), 0, arrays)

    def write_classifier(self, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
        """Write the last layer: weight (C, d) and bias (C,), float32 or float64.

        float16 values are stored as float32; a missing bias is stored as zeros.
        """
        self._check_writable("write_classifier", owner=True)
        c, d = self._store.num_classes, self._store.num_features
        where = f"{self._store.path}: epoch {self.epoch}"
        w = _classifier_array(weight, (c, d), WEIGHT, where)
        b = np.zeros(c, w.dtype) if bias is None else _classifier_array(bias, (c,), BIAS, where)
        node = epoch_node(self.epoch)
        for name, values in ((WEIGHT, w), (BIAS, b)):
            if self._backend.info(f"{node}/{name}") is None:
                self._backend.create_array(
                    f"{node}/{name}",
                    shape=values.shape,
                    dtype=values.dtype.name,
                    chunks=values.shape,
                    dims=DIMENSIONS[name],
                    checksums=self._store.checksums,
                )
        self._backend.write(node, 0, {WEIGHT: w, BIAS: b})

    def finalize(self) -> None:
        """Mark the epoch complete, after checking that everything was written.

        Called by the `begin_epoch` writer once every process has written its rows.

        Raises
        ------
        IncompleteEpochError
            Naming every split or array that is missing or not fully written; the
            epoch stays incomplete.
        """
        self._check_writable("finalize", owner=True)
        node = epoch_node(self.epoch)
        splits = self._backend.groups(node)
        missing = [] if splits else ["no split was created"]
        arrays = [f"{split}/{name}" for split in splits for name in _SPLIT_ARRAYS]
        for array in [*arrays, WEIGHT, BIAS]:
            if self._backend.info(f"{node}/{array}") is None:
                missing.append(f"{array} is missing")
                continue
            written, total = self._backend.chunks_written(f"{node}/{array}")
            if written < total:
                missing.append(f"{array} has {written} of {total} chunks written")
        if missing:
            raise IncompleteEpochError(
                f"{self._store.path}: epoch {self.epoch} cannot be finalized: "
                + "; ".join(missing)
            )
        # A fresh identity per finalize: results can tell a rewritten epoch apart.
        self._backend.set_attr(node, EPOCH_IDENTITY_ATTR, uuid.uuid4().hex)
        # Last write of the epoch: readers see it only from here on.
        self._backend.set_attr(node, COMPLETE_ATTR, True)
        self._finalized = True

    def _create_split(self, split: str, num_samples: int, dtype: str) -> None:
        try:
            check_split_name(split)
        except ValueError as err:
            raise InputError(f"{self._where(split)}: {err}") from err
        _check_feature_dtype(dtype)
        node = split_node(self.epoch, split)
        if self._backend.has(node):
            raise InputError(
                f"{self._where(split)}: split already created (begin the epoch again to replace it)"
            )
        d = self._store.num_features
        rows = self._store.chunk_rows or default_chunk_rows(num_samples, d, dtype)
        rows = min(rows, num_samples)
        self._backend.create_group(node, {})
        shapes = {FEATURES: (num_samples, d), LABELS: (num_samples,), SAMPLE_INDEX: (num_samples,)}
        dtypes = {FEATURES: dtype, LABELS: LABEL_DTYPE, SAMPLE_INDEX: SAMPLE_INDEX_DTYPE}
        for name, shape in shapes.items():
            self._backend.create_array(
                f"{node}/{name}",
                shape=shape,
                dtype=dtypes[name],
                chunks=(rows, *shape[1:]),
                dims=DIMENSIONS[name],
                checksums=self._store.checksums,
            )
        self._layouts[split] = (num_samples, rows, dtype)

    def _layout(self, split: str) -> tuple[int, int, str]:
        """(rows, rows per chunk, feature dtype) of a created split."""
        if split not in self._layouts:
            info = self._backend.info(f"{split_node(self.epoch, split)}/{FEATURES}")
            if info is None:
                raise StoreFormatError(f"{self._where(split)}: split has not been created")
            self._layouts[split] = (info.shape[0], info.chunks[0], info.dtype.name)
        return self._layouts[split]

    def _check_writable(self, action: str, *, owner: bool) -> None:
        if self._finalized:
            raise NCAnalysisError(
                f"{self._store.path}: epoch {self.epoch} is finalized; cannot {action}"
            )
        if owner and not self._owner:
            raise NCAnalysisError(
                f"{self._store.path}: epoch {self.epoch}: {action} belongs to the process "
                "that called begin_epoch; open_epoch writers only write rows"
            )

    def _where(self, split: str) -> str:
        return f"{self._store.path}: epoch {self.epoch}, split {split!r}"


def _prepare_rows(
    where: str,
    start: int,
    features: np.ndarray,
    labels: np.ndarray,
    sample_index: np.ndarray | None,
    *,
    num_features: int,
    num_classes: int,
    dtype: str,
) -> dict[str, np.ndarray]:
    """Check rows and convert them to their stored dtypes, or raise InputError."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    n = len(features) if features.ndim else -1
    if features.shape != (n, num_features):
        raise InputError(
            f"{where}: features have shape {features.shape}, expected (n, {num_features})"
        )
    if labels.shape != (n,):
        raise InputError(f"{where}: labels have shape {labels.shape}, expected ({n},)")
    if sample_index is None:
        index = np.arange(start, start + n, dtype=SAMPLE_INDEX_DTYPE)
    else:
        index = np.asarray(sample_index)
        if index.shape != (n,):
            raise InputError(f"{where}: sample_index has shape {index.shape}, expected ({n},)")
    return {
        FEATURES: _stored_features(features, dtype, where, start),
        LABELS: _stored_integers(labels, LABELS, num_classes, where, start),
        SAMPLE_INDEX: _stored_integers(index, SAMPLE_INDEX, None, where, start),
    }


def _stored_features(values: np.ndarray, dtype: str, where: str, start: int) -> np.ndarray:
    """``values`` in ``dtype``; InputError on a value the dtype cannot hold."""
    if values.dtype.kind not in "fiu":
        raise InputError(f"{where}: features have dtype {values.dtype}, expected real numbers")
    limit = np.finfo(dtype).max
    if values.dtype == dtype:
        fits = _all_finite(values)
    else:
        # NaN propagates through max and min and fails both comparisons.
        fits = values.size == 0 or (values.max() <= limit and values.min() >= -limit)
    if not fits:
        ok = np.abs(values) <= limit
        row = int(np.argmin(ok.all(axis=1)))
        value = values[row][~ok[row]][0]
        raise InputError(
            f"{where}: features row {start + row} holds {value}, which {dtype} storage "
            f"cannot hold (finite values up to {limit:g} in magnitude); nothing was written"
        )
    return values.astype(dtype, copy=False)


def _all_finite(values: np.ndarray) -> bool:
    if values.dtype == np.float16:
        # numpy's float16 arithmetic is slow (6x here); inf and NaN have all exponent bits set.
        return not np.any((values.view(np.uint16) & 0x7C00) == 0x7C00)
    return bool(np.isfinite(values).all())


def _stored_integers(
    values: np.ndarray, name: str, num_classes: int | None, where: str, start: int
) -> np.ndarray:
    """``values`` as int64 after checking their range (0..C-1, or >= 0)."""
    if values.dtype.kind not in "iu":
        raise InputError(f"{where}: {name} have dtype {values.dtype}, expected integers")
    bad = values < 0 if num_classes is None else (values < 0) | (values >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        expected = ">= 0" if num_classes is None else f"in 0..{num_classes - 1}"
        raise InputError(
            f"{where}: {name} row {start + row} is {values[row]}, expected {expected}; "
            "nothing was written"
        )
    return values.astype(np.int64, copy=False)


def _classifier_array(
    values: np.ndarray, shape: tuple[int, ...], name: str, where: str
) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != shape:
        raise InputError(f"{where}: {name} has shape {values.shape}, expected {shape}")
    if values.dtype.kind != "f" or values.dtype.itemsize > 8:
        raise InputError(f"{where}: {name} has dtype {values.dtype}, expected float32 or float64")
    if not np.isfinite(values).all():
        raise InputError(f"{where}: {name} holds NaN or inf")
    # float16 is widened (exactly): classifiers are stored as float32 or float64.
    return values.astype(np.float32) if values.dtype.itemsize < 4 else values


def _provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    record = dict(provenance or {})
    record["library_versions"] = {
        **(record.get("library_versions") or {}),
        "ncanalysis": __version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "h5py": h5py.__version__,
    }
    record["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        json.dumps(record)
    except TypeError as err:
        raise InputError(f"provenance must be JSON-serialisable: {err}") from err
    return record


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """Refuse to create over an existing path unless it is a store to overwrite."""
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace a store")
    if path.is_dir() and not any(path.iterdir()):
        return
    refusal = f"{path} is not an ncanalysis store; refusing to overwrite it"
    try:
        backend = open_backend(path, writable=False)
    except StoreFormatError as err:
        raise FileExistsError(refusal) from err
    try:
        meta = backend.meta()
    except StoreFormatError as err:
        raise FileExistsError(refusal) from err
    finally:
        backend.close()
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT_NAME):
        raise FileExistsError(refusal)


def _check_feature_dtype(dtype: str) -> None:
    if dtype not in FEATURE_DTYPES:
        raise InputError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")


def _count(value: object, name: str) -> int:
    if not is_count(value):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _epoch_number(epoch: object) -> int:
    if not is_index(epoch):
        raise InputError(f"epoch must be a non-negative integer, got {epoch!r}")
    return int(epoch)
