"""One epoch being written by one process: its rows, its checks, its three agreements.

Made by `FeatureRecorder.epoch` (rows from the caller) and used by
`FeatureRecorder.record_epoch` (rows from the recorder's own pass). The protocol is
described in `ncanalysis_extract.recorder`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ncanalysis.store import EpochWriter

from .errors import ExtractError, FeatureValueError, RankFailedError
from .hook import FeatureCapture
from .ranges import rank_loader, rank_row_range

if TYPE_CHECKING:
    from .recorder import FeatureRecorder

__all__ = ["EpochRecording"]

# Status codes of the agreements: the MAX over ranks wins, so a failure anywhere
# outranks an overflow anywhere, which outranks success.
OK, OVERFLOW, FAILED = 0, 1, 2

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


@dataclass
class _SplitRows:
    """One split as this process writes it."""

    num_samples: int
    start: int
    stop: int
    unit: int
    next_row: int = 0          # next row to be added (absolute)
    written: int = 0           # rows written to the store (absolute end)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def pending_rows(self) -> int:
        return self.next_row - self.written


class EpochRecording:
    """One epoch being recorded by this process; made by `FeatureRecorder.epoch`.

    Rows are added in order, each process filling its own range (`row_range`); they
    are written in whole write units as they accumulate.

    Attributes
    ----------
    epoch : int
    feature_dtype : str
    bytes_written : int
        Bytes of features this process wrote.
    """

    def __init__(
        self, recorder: FeatureRecorder, epoch: int, splits: dict[str, int], feature_dtype: str
    ) -> None:
        if not splits:
            raise ValueError(f"{recorder.store_path}: epoch {epoch} needs at least one split")
        self._rec = recorder
        self._comm = recorder._comm
        self.epoch = epoch
        self.feature_dtype = feature_dtype
        self._counts = splits
        self._splits: dict[str, _SplitRows] = {}
        self._writer: EpochWriter | None = None
        self._limit = float(np.finfo(feature_dtype).max)
        self._torch_dtype = TORCH_DTYPES[feature_dtype]
        self.bytes_written = 0
        self._active = False

    # -- the protocol of ncanalysis_extract.recorder's docstring --------------------

    def _begin(self) -> None:
        """Rank 0 begins the epoch and creates its splits; every rank opens it."""
        rec, error = self._rec, None
        if rec.rank == 0:
            try:
                self._writer = rec._writer.begin_epoch(self.epoch)
                for split, n in self._counts.items():
                    self._writer.create_split(split, n, feature_dtype=self.feature_dtype)
            except Exception as exc:  # re-raised below, after the agreement
                error = exc
        if self._comm.reduce_max(FAILED if error else OK) != OK:
            if error is not None:
                raise error
            raise RankFailedError(f"{self._where()}: rank 0 could not begin the epoch")
        try:
            if rec.rank != 0:
                self._writer = rec._writer.open_epoch(self.epoch)
            for split, n in self._counts.items():
                unit = self._epoch_writer().write_unit_rows(split)
                start, stop = rank_row_range(n, rec.rank, rec.world_size, unit)
                self._splits[split] = _SplitRows(n, start, stop, unit, start, start)
        except Exception as exc:
            # The others are already past the barrier: meet them at the next two.
            self._end(FAILED, exc)
            raise AssertionError("unreachable: _end raises on failure") from exc  # pragma: no cover
        self._active = True

    def _epoch_writer(self) -> EpochWriter:
        """The writer of this epoch, which exists once ``_begin`` has begun or opened it."""
        if self._writer is None:
            raise RuntimeError(
                f"{self._where()}: the epoch has not been begun (record through "
                "FeatureRecorder.epoch or record_epoch)")
        return self._writer

    def _end(self, status: int, error: BaseException | None) -> str:
        """Agree on the outcome, finalize on rank 0; ``"retry"``, ``"done"`` or raise."""
        self._active = False
        agreed = self._comm.reduce_max(status)
        if agreed == OVERFLOW:
            return "retry"
        final_error = None
        if agreed == OK and self._rec.rank == 0:
            try:
                writer = self._epoch_writer()
                writer.write_classifier(*self._rec.classifier())
                # The epoch's last write: readers see it only from here on.
                writer.finalize()
            except Exception as exc:  # re-raised below, after the agreement
                final_error = exc
        final = self._comm.reduce_max(FAILED if final_error else OK)
        if error is not None:
            raise error
        if final_error is not None:
            raise final_error
        if agreed != OK or final != OK:
            raise RankFailedError(
                f"{self._where()}: another rank failed; the epoch was left incomplete"
            )
        return "done"

    def __enter__(self) -> EpochRecording:
        self._begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, Exception):
            # KeyboardInterrupt and friends: leave at once, the epoch stays incomplete.
            return
        status, error = OK, None
        if exc is None:
            try:
                self._flush_all()
            except Exception as flush_exc:
                status, error = FAILED, flush_exc
        else:
            status = FAILED
            if (isinstance(exc, FeatureValueError) and exc.overflow
                    and self._rec.on_overflow == "float32" and self.feature_dtype == "float16"):
                # The rows already given are gone; later epochs start in float32 so that
                # recording this one again succeeds.
                self._rec._switch_to_float32(self.epoch, exc)
        try:
            self._end(status, error)
        except RankFailedError:
            if exc is None:
                raise
            # The body's own exception is the one to see; it propagates after this.

    # -- rows ------------------------------------------------------------------------

    def row_range(self, split: str) -> tuple[int, int]:
        """Rows ``[start, stop)`` of ``split`` that this process adds."""
        rows = self._state(split)
        return rows.start, rows.stop

    def num_samples(self, split: str) -> int:
        """N of ``split``, over all processes."""
        return self._state(split).num_samples

    def rows_added(self, split: str) -> int:
        """Rows of ``split`` added by this process so far."""
        rows = self._state(split)
        return rows.next_row - rows.start

    def loader(self, split: str, dataset: Dataset, *, batch_size: int = 256,
               **loader_kwargs: Any) -> DataLoader:
        """A DataLoader over this process's rows of ``split`` (`rank_loader`)."""
        start, stop = self.row_range(split)
        return rank_loader(dataset, start, stop, batch_size=batch_size, **loader_kwargs)

    def add(
        self,
        split: str,
        features: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        indices: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Add the next rows of ``split``.

        Parameters
        ----------
        split
            A split of the epoch.
        features
            (n, d) features, on any device; flattened to (n, d) if needed.
        labels
            (n,) integer labels.
        indices
            (n,) dataset indices; default the row numbers.

        Raises
        ------
        FeatureValueError
            On a NaN, an inf, or a value beyond the storage dtype's range.
        ValueError
            On shapes that do not fit, or more rows than this process's range.
        """
        if not self._active:
            raise ExtractError(f"{self._where(split)}: the epoch is not open for rows "
                               "(use it inside its with block)")
        rows = self._state(split)
        where = self._where(split)
        x = torch.as_tensor(features).detach()
        n = x.shape[0] if x.ndim else 0
        d = self._rec.num_features
        if x.ndim < 1 or x.numel() != n * d:
            raise ValueError(f"{where}: features have shape {tuple(x.shape)}, expected (n, {d})")
        x = x.reshape(n, d)
        y = _integers(labels, n, "labels", where)
        if rows.next_row + n > rows.stop:
            raise ValueError(
                f"{where}: rank {self._rec.rank} was given {rows.next_row - rows.start + n} "
                f"rows, more than its range [{rows.start}, {rows.stop})"
            )
        index = (np.arange(rows.next_row, rows.next_row + n, dtype=np.int64)
                 if indices is None else _integers(indices, n, "indices", where))
        stored = self._stored(x, rows.next_row, index, split)
        rows.pending.append((stored, y, index))
        rows.next_row += n
        if rows.pending_rows >= rows.unit:
            self._write(split, rows, final=False)

    @contextlib.contextmanager
    def capture(
        self,
        split: str,
        labels: torch.Tensor | np.ndarray,
        indices: torch.Tensor | np.ndarray | None = None,
    ) -> Iterator[None]:
        """Add the classifier input of the one forward pass run inside the block.

        For loops that run the model anyway. The features are those of that pass: in
        train mode and mid-epoch if the loop trains (the paper's features come from
        the model in eval mode after the epoch, as `FeatureRecorder.record_epoch` does).

        Parameters
        ----------
        split
            A split of the epoch.
        labels, indices
            As for `add`, one per sample of the forward pass.
        """
        with FeatureCapture(self._rec.layer, self._rec.layer_path) as capture:
            yield
            features = capture.pop()
        self.add(split, features, labels, indices)

    def _stored(self, x: torch.Tensor, first_row: int, index: np.ndarray, split: str) -> np.ndarray:
        """``x`` in the storage dtype, on the CPU; FeatureValueError on a bad value."""
        if not x.is_floating_point():
            x = x.float()
        # One reduction pass finds NaN (aminmax propagates it; the comparisons are then
        # false), inf and values beyond the range: 4x faster here than abs-compare-any.
        # It runs on the model's device, and the cast too, so that half the bytes cross
        # to the host.
        if x.numel() and not _within(torch.aminmax(x), self._limit):
            bad = ~(x.abs() <= self._limit)
            row = int(bad.any(dim=1).nonzero()[0, 0])
            column = int(bad[row].nonzero()[0, 0])
            raise self._value_error(split, first_row + row, int(index[row]), column,
                                    float(x[row, column]))
        return x.to(self._torch_dtype).cpu().numpy()

    def _value_error(
        self, split: str, row: int, sample: int, column: int, value: float
    ) -> FeatureValueError:
        """The error for a feature the storage dtype cannot hold."""
        overflow = math.isfinite(value)
        where = f"{self._where(split)}, row {row} (sample index {sample}): feature {column}"
        if not overflow:
            message = (f"{where} of layer {self._rec.layer_path!r}'s input is {value}; the "
                       "model produced NaN/inf, which no storage dtype holds")
        else:
            message = (f"{where} is {value:g}, beyond the {self.feature_dtype} range (finite "
                       f"values up to {self._limit:g} in magnitude)")
            if self.feature_dtype == "float16" and self._rec.on_overflow == "error":
                message += "; pass on_overflow='float32' to store such epochs in float32"
            elif self.feature_dtype == "float16":
                # Seen only from FeatureRecorder.epoch: record_epoch redoes the pass.
                message += ("; the epoch is left incomplete and later epochs are stored in "
                            "float32: record this one again")
        return FeatureValueError(message, epoch=self.epoch, split=split, row=row,
                                 value=value, overflow=overflow)

    def _write(self, split: str, rows: _SplitRows, *, final: bool) -> None:
        """Write the pending rows that fill whole units (all of them when ``final``)."""
        count = rows.pending_rows if final else rows.pending_rows // rows.unit * rows.unit
        if count == 0:
            return
        features, labels, index = (np.concatenate(part) for part in zip(*rows.pending))
        self._epoch_writer().write_rows(
            split, rows.written, features[:count], labels[:count], index[:count])
        rows.written += count
        self.bytes_written += features[:count].nbytes
        rows.pending = ([] if count == len(labels)
                        else [(features[count:], labels[count:], index[count:])])

    def _flush_all(self) -> None:
        """Write what is pending and check every split got exactly its rows."""
        for split, rows in self._splits.items():
            if rows.next_row != rows.stop:
                raise ValueError(
                    f"{self._where(split)}: rank {self._rec.rank} added "
                    f"{rows.next_row - rows.start} rows; its range [{rows.start}, "
                    f"{rows.stop}) has {rows.stop - rows.start}"
                )
            self._write(split, rows, final=True)

    def _state(self, split: str) -> _SplitRows:
        try:
            return self._splits[split]
        except KeyError:
            raise ValueError(
                f"{self._where()}: no split {split!r} (splits: {sorted(self._counts)})"
                + ("" if self._splits else "; the epoch has not begun")
            ) from None

    def _where(self, split: str | None = None) -> str:
        base = f"{self._rec.store_path}: epoch {self.epoch}"
        return base if split is None else f"{base}, split {split!r}"


def _within(extremes: tuple[torch.Tensor, torch.Tensor], limit: float) -> bool:
    """Whether ``(min, max)`` lie in ``[-limit, limit]``; False when either is NaN."""
    low, high = torch.stack(list(extremes)).tolist()  # one device-to-host copy
    return -limit <= low and high <= limit


def _integers(values: Any, n: int, name: str, where: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{where}: {name} have shape {array.shape}, expected ({n},) "
                         "(one integer per row)")
    if array.dtype.kind not in "iu":
        raise ValueError(f"{where}: {name} have dtype {array.dtype}, expected integers")
    return array.astype(np.int64, copy=False)
