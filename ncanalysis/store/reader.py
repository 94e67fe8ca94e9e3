"""Read a store: complete epochs, their splits, features in row blocks, small arrays as numpy."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IncompleteEpochError, InputError, StoreFormatError
from ._backend import Backend, open_backend
from .spec import (
    BIAS,
    COMPLETE_ATTR,
    EPOCH_IDENTITY_ATTR,
    EPOCHS_GROUP,
    FEATURES,
    LABELS,
    SAMPLE_INDEX,
    WEIGHT,
    ArrayInfo,
    array_problem,
    check_meta,
    epoch_node,
    epoch_ranges,
    is_count,
    parse_epoch_name,
    split_node,
    split_order,
)

if TYPE_CHECKING:  # dask.array takes ~0.5 s to import; reading a store does not need it
    import dask.array as da

__all__ = ["open_store", "RowSource", "Store"]


@dataclass(frozen=True)
class RowSource:
    """The features of one split as a picklable array-like, read a range of rows at a time.

    What :meth:`Store.feature_rows` returns; the analyser cuts it into blocks of
    whole stored chunks (``ncanalysis.sources.store_row_blocks``).

    Attributes
    ----------
    array : array-like, shape (N, d)
        ``array[start:stop]`` reads those rows as numpy: straight from the chunk
        files where the layout allows it (uncompressed whole-row chunks on a local
        Zarr store), else through zarr, or through an :class:`HDF5Proxy` that opens
        the file inside the reading task.  Holds no open file: it pickles, for
        dask.distributed workers.
    chunk_rows : int
        Rows per stored chunk: reads of whole chunks waste nothing.
    """

    array: Any
    chunk_rows: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.array.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key])


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open a store for reading.

    Parameters
    ----------
    path
        A Zarr v3 directory, or an HDF5 file (``.h5``/``.hdf5``).

    Raises
    ------
    StoreFormatError
        When ``path`` is not a store, or has a format version this code cannot read.
    """
    backend = open_backend(Path(path), writable=False)
    try:
        meta = check_meta(backend.meta(), str(path))
    except StoreFormatError:
        backend.close()
        raise
    return Store(backend, meta)


class Store:
    """A store opened for reading; made by `open_store`.

    The lists of epochs and splits are read from the store on every call, so a store
    that is still being written shows each epoch once its writer finalizes it.

    Attributes
    ----------
    path : pathlib.Path
    backend : str
        ``"zarr"`` or ``"hdf5"``.
    num_classes, num_features : int
        C and d.
    class_names : list of str
    provenance : dict
        What the writer recorded (model, layer, storage dtype, library versions, ...).
    format_version : str
    """

    def __init__(self, backend: Backend, meta: dict) -> None:
        self._backend = backend
        self.path = backend.path
        self.backend: str = backend.name
        self.num_classes: int = meta["num_classes"]
        self.num_features: int = meta["num_features"]
        self.class_names: list[str] = list(meta["class_names"])
        self.provenance: dict = meta["provenance"]
        self.format_version: str = meta["version"]

    def __repr__(self) -> str:
        return (
            f"<Store {str(self.path)!r} ({self.backend}): C={self.num_classes}, "
            f"d={self.num_features}, epochs={self.epochs()}>"
        )

    def epochs(self) -> list[int]:
        """Numbers of the complete epochs, sorted."""
        return [e for e in self._all_epochs() if self._is_complete(e)]

    def incomplete_epochs(self) -> list[int]:
        """Numbers of the epochs begun but not finalized, sorted."""
        return [e for e in self._all_epochs() if not self._is_complete(e)]

    def check_epochs(self, epochs: Iterable[int] | None = None) -> list[int]:
        """The epochs to analyse, every one checked at once, before any work.

        Parameters
        ----------
        epochs
            Default: every complete epoch.

        Returns
        -------
        list of int
            ``epochs`` as integers in the order given (default: the complete epochs).

        Raises
        ------
        IncompleteEpochError
            When every epoch that cannot be read is one begun but not finalized.
        StoreFormatError
            When some are not in the store, or there is no epoch at all; the
            message names them all and the store's complete and incomplete epochs.
        """
        complete = self.epochs()
        wanted = list(complete) if epochs is None else [int(e) for e in epochs]
        incomplete = self.incomplete_epochs()
        described = (f"complete: {epoch_ranges(complete) if complete else 'none'}; "
                     f"incomplete: {epoch_ranges(incomplete) if incomplete else 'none'}")
        if not wanted:
            raise StoreFormatError(f"{self.path}: no complete epoch to analyse ({described})")
        unusable = sorted(set(wanted) - set(complete))
        if unusable:
            error = IncompleteEpochError if set(unusable) <= set(incomplete) else StoreFormatError
            raise error(
                f"{self.path}: cannot analyse epoch(s) {epoch_ranges(unusable)} ({described})"
            )
        return wanted

    def splits(self, epoch: int) -> list[str]:
        """Splits of a complete epoch: ``"train"`` first if present, then sorted."""
        self._check_epoch(epoch)
        return sorted(self._backend.groups(epoch_node(epoch)), key=split_order)

    def num_samples(self, epoch: int, split: str) -> int:
        """N, the rows of one split of one epoch."""
        return self._features_info(epoch, split).shape[0]

    def feature_rows(self, epoch: int, split: str) -> RowSource:
        """Features (N, d) in their stored dtype, as a picklable row source.

        Each analysis task reads its own rows from it (see :class:`RowSource`).
        """
        info = self._features_info(epoch, split)
        source = self._backend.row_source(f"{split_node(epoch, split)}/{FEATURES}")
        return RowSource(source, int(info.chunks[0]))

    def feature_dtype(self, epoch: int, split: str) -> np.dtype:
        """The stored dtype of one split's features, read without dask or the data."""
        return np.dtype(self._features_info(epoch, split).dtype)

    def features(
        self, epoch: int, split: str, *, rows_per_block: int | None = None
    ) -> da.Array:
        """Features (N, d) in their stored dtype, as a dask array chunked along rows.

        Parameters
        ----------
        epoch, split
            Which features.
        rows_per_block
            Rows per dask block, rounded to the nearest multiple of the stored
            chunk rows (at least one chunk); default: one block per stored chunk.

        Returns
        -------
        dask.array.Array
            Its graph holds no open file and can be pickled (for dask.distributed).
        """
        import dask.array as da

        if rows_per_block is not None and not is_count(rows_per_block):
            raise InputError(f"rows_per_block must be a positive integer, got {rows_per_block!r}")
        rows = self.feature_rows(epoch, split)
        unit = rows.chunk_rows
        step = (unit if rows_per_block is None
                else unit * max(1, (rows_per_block + unit // 2) // unit))
        return da.from_array(
            rows.array,
            chunks=(step, self.num_features),
            asarray=True,
            lock=False,
            fancy=False,
            meta=np.empty((0, 0), rows.dtype),
        )

    def labels(self, epoch: int, split: str) -> np.ndarray:
        """Labels (N,), integers in 0..C-1."""
        labels = self._read_rows(epoch, split, LABELS)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise StoreFormatError(
                f"{self._where(epoch, split, LABELS)}: row {row} holds {labels[row]}, "
                f"outside 0..{self.num_classes - 1}"
            )
        return labels

    def sample_index(self, epoch: int, split: str) -> np.ndarray:
        """Dataset index (N,) of each row, int64."""
        return self._read_rows(epoch, split, SAMPLE_INDEX).astype(np.int64, copy=False)

    def weight(self, epoch: int) -> np.ndarray:
        """Classifier weight (C, d), float32 or float64."""
        return self._read_classifier(epoch, WEIGHT, (self.num_classes, self.num_features))

    def bias(self, epoch: int) -> np.ndarray:
        """Classifier bias (C,), float32 or float64."""
        return self._read_classifier(epoch, BIAS, (self.num_classes,))

    def epoch_identity(self, epoch: int) -> str | None:
        """The identity its writer gave a complete epoch at finalize (format 1.1).

        A rewritten epoch (a training run restarted from a checkpoint) gets a new
        one; None for stores written before format 1.1.
        """
        self._check_epoch(epoch)
        value = self._backend.get_attr(epoch_node(epoch), EPOCH_IDENTITY_ATTR)
        return None if value is None else str(value)

    def close(self) -> None:
        """Release the store."""
        self._backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all_epochs(self) -> list[int]:
        numbers = (parse_epoch_name(name) for name in self._backend.groups(EPOCHS_GROUP))
        return sorted(n for n in numbers if n is not None)

    def _is_complete(self, epoch: int) -> bool:
        # JSON true (Zarr) and the integer 1 (HDF5) both compare equal to 1.
        return self._backend.get_attr(epoch_node(epoch), COMPLETE_ATTR) == 1

    def _check_epoch(self, epoch: int) -> None:
        if not self._backend.has(epoch_node(epoch)):
            raise StoreFormatError(
                f"{self.path}: no epoch {epoch!r} (complete epochs: {self.epochs()})"
            )
        if not self._is_complete(epoch):
            raise IncompleteEpochError(
                f"{self.path}: epoch {epoch} is incomplete (its writer has not finalized it)"
            )

    def _check_split(self, epoch: int, split: str) -> None:
        splits = self.splits(epoch)
        if split not in splits:
            raise StoreFormatError(
                f"{self.path}: epoch {epoch} has no split {split!r} (splits: {splits})"
            )

    def _features_info(self, epoch: int, split: str) -> ArrayInfo:
        self._check_split(epoch, split)
        info = self._backend.info(f"{split_node(epoch, split)}/{FEATURES}")
        n = info.shape[0] if info is not None else 0
        return _checked(info, FEATURES, (n, self.num_features), self._where(epoch, split, FEATURES))

    def _read_rows(self, epoch: int, split: str, name: str) -> np.ndarray:
        n = self._features_info(epoch, split).shape[0]
        node = f"{split_node(epoch, split)}/{name}"
        _checked(self._backend.info(node), name, (n,), self._where(epoch, split, name))
        return self._backend.read(node)

    def _read_classifier(self, epoch: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self._check_epoch(epoch)
        node = f"{epoch_node(epoch)}/{name}"
        where = f"{self.path}: epoch {epoch}, array {name!r}"
        _checked(self._backend.info(node), name, shape, where)
        return self._backend.read(node)

    def _where(self, epoch: int, split: str, name: str) -> str:
        return f"{self.path}: epoch {epoch}, split {split!r}, array {name!r}"


def _checked(info: ArrayInfo | None, name: str, shape: tuple[int, ...], where: str) -> ArrayInfo:
    """``info`` if the array fits the spec, else StoreFormatError naming it."""
    problem = array_problem(info, name, shape)
    if problem is not None:
        raise StoreFormatError(f"{where}: {problem}")
    if info is None:  # array_problem reports a missing array; this narrows the type
        raise StoreFormatError(f"{where}: missing")
    return info
