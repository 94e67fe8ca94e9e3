"""Record the penultimate features of a model, epoch by epoch, into an ncanalysis store.

`FeatureRecorder` runs the extraction pass itself (`FeatureRecorder.record_epoch`)
or takes rows from the caller's own loop (`FeatureRecorder.epoch`). Every epoch goes
through the same steps, on one process or on every rank of a DDP job::

    rank 0: begin the epoch (marked incomplete), create its splits
    -- agreement 1 (a barrier that also tells whether rank 0 failed) --
    every rank: write its own contiguous, write-unit-aligned rows of each split
    -- agreement 2 (did any rank fail? did any value overflow float16?) --
    rank 0: write W and b, finalize (marks the epoch complete, last)
    -- agreement 3 --

Every rank goes through the three agreements whatever happens on it, and raises only
after the last, so one failing rank never leaves the others waiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler

from ncanalysis._version import __version__ as _ncanalysis_version
from ncanalysis.store import HDF5_SUFFIXES, StoreWriter, create_store, open_store_writer

from .comm import Communicator, resolve_communicator
from .epoch import FAILED, OK, OVERFLOW, TORCH_DTYPES, EpochRecording
from .errors import ExtractError, FeatureValueError, RankFailedError
from .hook import FeatureCapture, classifier_parameters, find_classifier, unwrap_model
from .ranges import rank_loader

__all__ = ["FeatureRecorder"]

logger = logging.getLogger(__name__)

Mode = Literal["create", "overwrite", "append"]
OnOverflow = Literal["error", "float32"]


class FeatureRecorder:
    """Writes the input of a model's classifier layer, and the layer's W and b, per epoch.

    Parameters
    ----------
    store
        Store path: a directory (Zarr v3), or a file ending in ``.h5``/``.hdf5`` (HDF5;
        one writer process only).
    model
        The network; DDP, DataParallel and ``torch.compile`` wrappers are removed, and
        the pass runs the inner module, so no collective runs inside a forward pass
        (ranks run different numbers of batches).
    layer
        Module path of the classifier (``"fc"``, ``"head.linear"``); default the last
        `torch.nn.Linear` with ``out_features == num_classes`` (see `find_classifier`).
    num_classes
        C; default the ``out_features`` of the layer found.
    class_names
        C names stored with the data; default ``"0"`` .. ``"C-1"``.
    feature_dtype
        Storage dtype of the features: ``"float16"`` (default) or ``"float32"``
        (``"float64"`` is accepted too).
    on_overflow
        What a feature beyond the float16 range does: ``"error"`` (default) raises
        `FeatureValueError` naming epoch, split and row; ``"float32"`` stores that epoch
        in float32 instead (`record_epoch` runs the pass again) and every later epoch
        too. NaN or inf always raise: no dtype stores them usefully.
    chunk_rows
        Rows per stored chunk, which is the write unit of concurrent writers; default
        the store's (about 8 MiB of features).
    mode
        ``"create"`` a new store (default; an existing path is an error),
        ``"overwrite"`` an existing store, or ``"append"`` epochs to an existing store
        (created when missing). Recording an epoch that exists replaces it.
    provenance
        Extra JSON-serialisable facts to keep in the store.
    device
        Where batches go before the forward pass; default the device of the model's
        first parameter (CPU for a model without parameters).
    forward
        ``forward(module, inputs)`` runs one batch; default ``module(inputs)``.
    rank, world_size, barrier, reduce_max
        Several processes without torch.distributed: this process's rank, the number of
        processes, a barrier callable, and ``reduce_max(int) -> int`` (the largest value
        over the processes). See `CallbackCommunicator`.
    communicator
        Or any object with ``rank``, ``world_size``, ``barrier()`` and
        ``reduce_max(int)``. By default an initialized ``torch.distributed`` process
        group is used, else one process.
    checksums
        Chunk checksums in a new store (see `ncanalysis.store.create_store`); default
        the store format's default. An appended store keeps its own choice.

    Attributes
    ----------
    store_path : pathlib.Path
    layer_path : str
        Module path of the hooked layer in the unwrapped model.
    layer : torch.nn.Linear
    num_classes, num_features : int
        C and d.
    feature_dtype : str
        Storage dtype of the next epoch (``"float32"`` after an overflow with
        ``on_overflow="float32"``).
    rank, world_size : int

    Notes
    -----
    The features of an epoch are those of the model in eval mode, computed under
    `torch.no_grad`, after the epoch's training (as in Papyan, Han & Donoho 2020).

    Examples
    --------
    >>> recorder = FeatureRecorder("run.zarr", model)  # doctest: +SKIP
    >>> for epoch in range(epochs):  # doctest: +SKIP
    ...     train_one_epoch(model)
    ...     recorder.record_epoch(epoch, {"train": train_set, "test": test_set})
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        model: nn.Module,
        *,
        layer: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        feature_dtype: str = "float16",
        on_overflow: OnOverflow = "error",
        chunk_rows: int | None = None,
        mode: Mode = "create",
        provenance: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        barrier: Callable[[], object] | None = None,
        reduce_max: Callable[[int], int] | None = None,
        communicator: Communicator | None = None,
        checksums: bool | None = None,
    ) -> None:
        if feature_dtype not in TORCH_DTYPES:
            raise ValueError(
                f"feature_dtype must be one of {tuple(TORCH_DTYPES)}, got {feature_dtype!r}")
        if on_overflow not in ("error", "float32"):
            raise ValueError(f"on_overflow must be 'error' or 'float32', got {on_overflow!r}")
        if mode not in ("create", "overwrite", "append"):
            raise ValueError(f"mode must be 'create', 'overwrite' or 'append', got {mode!r}")
        self._comm = resolve_communicator(
            rank=rank, world_size=world_size, barrier=barrier, reduce_max=reduce_max,
            communicator=communicator,
        )
        self.rank: int = self._comm.rank
        self.world_size: int = self._comm.world_size
        self.store_path = Path(store)
        if self.world_size > 1 and self.store_path.suffix.lower() in HDF5_SUFFIXES:
            raise ValueError(
                f"{self.store_path}: an HDF5 store has one writer process (h5py has no MPI "
                f"here), but {self.world_size} processes are recording; use a Zarr store "
                "(a directory path)"
            )
        agrees = getattr(self._comm, "agrees", True)
        if on_overflow == "float32" and self.world_size > 1 and not agrees:
            raise ValueError(
                "on_overflow='float32' with several processes needs them to agree on "
                "restarting an epoch: pass reduce_max= with barrier=, or use torch.distributed"
            )
        self.model = model
        self._module = unwrap_model(model)
        self.layer_path, self.layer = find_classifier(self._module, layer, num_classes=num_classes)
        self.num_classes: int = self.layer.out_features
        self.num_features: int = self.layer.in_features
        self.feature_dtype: str = feature_dtype
        self.on_overflow: OnOverflow = on_overflow
        self._forward = forward
        self._device = torch.device(device) if device is not None else _model_device(self._module)
        self._writer = self._open_store(
            mode, class_names=class_names, chunk_rows=chunk_rows,
            provenance=self._provenance(provenance), checksums=checksums,
        )

    # -- store ---------------------------------------------------------------------

    def _provenance(self, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        record = dict(extra or {})
        cls = type(self._module)
        record.update({
            "producer": "ncanalysis_extract",
            "model_class": f"{cls.__module__}.{cls.__qualname__}",
            "layer": self.layer_path,
            "feature_dtype": self.feature_dtype,
            "on_overflow": self.on_overflow,
            "world_size": self.world_size,
        })
        record["library_versions"] = {
            **(record.get("library_versions") or {}),
            "torch": torch.__version__,
            "ncanalysis_extract": _ncanalysis_version,
            "python": platform.python_version(),
        }
        return record

    def _open_store(
        self, mode: Mode, *, class_names: list[str] | None, chunk_rows: int | None,
        provenance: dict[str, Any], checksums: bool | None = None,
    ) -> StoreWriter:
        """Rank 0 creates (or opens) the store; the others open it after a barrier."""
        writer: StoreWriter | None = None
        error: Exception | None = None
        if self.rank == 0:
            try:
                if mode == "append" and self.store_path.exists():
                    writer = open_store_writer(self.store_path)
                else:
                    writer = create_store(
                        self.store_path, num_classes=self.num_classes,
                        num_features=self.num_features, class_names=class_names,
                        feature_dtype=self.feature_dtype, chunk_rows=chunk_rows,
                        provenance=provenance, overwrite=mode == "overwrite",
                        # None: the store format's default (ncanalysis.store.DEFAULT_CHECKSUMS)
                        **({} if checksums is None else {"checksums": checksums}),
                    )
            except FileExistsError as exc:
                # The writer names its own option (overwrite=True); the recorder's is mode=.
                error = exc
                if mode == "create":
                    error = FileExistsError(
                        f"{self.store_path} already exists; pass mode='overwrite' to replace "
                        "the store or mode='append' to add epochs to it")
                    error.__cause__ = exc
            except Exception as exc:  # re-raised below, after the other ranks learn of it
                error = exc
        if self._comm.reduce_max(FAILED if error else OK) != OK:
            if error is not None:
                raise error
            raise RankFailedError(f"{self.store_path}: rank 0 could not create or open the store")
        if self.rank != 0:
            try:
                writer = open_store_writer(self.store_path)
            except Exception as exc:
                error = exc
        if self._comm.reduce_max(FAILED if error else OK) != OK:
            if writer is not None:
                writer.close()
            if error is not None:
                raise error
            raise RankFailedError(f"{self.store_path}: another rank could not open the store")
        assert writer is not None
        if (writer.num_classes, writer.num_features) != (self.num_classes, self.num_features):
            writer.close()
            raise ExtractError(
                f"{self.store_path}: the store holds C={writer.num_classes}, "
                f"d={writer.num_features}, but layer {self.layer_path!r} has "
                f"C={self.num_classes}, d={self.num_features}"
            )
        return writer

    def close(self) -> None:
        """Release the store."""
        self._writer.close()

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording -------------------------------------------------------------------

    def epoch(
        self, epoch: int, splits: Mapping[str, int], *, feature_dtype: str | None = None
    ) -> EpochRecording:
        """Record one epoch from rows the caller supplies (a context manager).

        Parameters
        ----------
        epoch
            Epoch number; an existing epoch of that number is replaced.
        splits
            Rows N of every split of the epoch (the total over all processes).
        feature_dtype
            Storage dtype of this epoch; default `feature_dtype`.

        Returns
        -------
        EpochRecording
            Entering it begins the epoch; leaving it without an exception writes W and
            b of the layer as they are then, and finalizes the epoch. Leaving it with an
            exception leaves the epoch incomplete.

        Examples
        --------
        Rows computed elsewhere, or captured from forward passes the loop runs anyway:

        >>> with recorder.epoch(7, splits={"train": len(train_set)}) as ep:  # doctest: +SKIP
        ...     for x, y, index in ep.loader("train", train_set, batch_size=512):
        ...         with ep.capture("train", y, index):
        ...             model(x)
        """
        dtype = self.feature_dtype if feature_dtype is None else feature_dtype
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"feature_dtype must be one of {tuple(TORCH_DTYPES)}, got {dtype!r}")
        return EpochRecording(self, epoch, dict(splits), dtype)

    def record_epoch(
        self,
        epoch: int,
        sources: Mapping[str, DataLoader | Dataset | Iterable[Any]],
        *,
        num_samples: Mapping[str, int] | None = None,
        batch_size: int = 256,
        loader_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run the model over every split and write one epoch.

        The model runs in eval mode under `torch.no_grad`; the previous train/eval mode
        of every submodule is restored afterwards.

        Parameters
        ----------
        epoch
            Epoch number; an existing epoch of that number is replaced.
        sources
            For each split name, one of:

            - a map-style `torch.utils.data.Dataset` whose items are ``(x, y)`` or
              ``(x, y, index)``: the recorder reads this rank's rows through
              `rank_loader` (required with several processes);
            - a `torch.utils.data.DataLoader` (one process): used as it is; N is
              ``len(loader.dataset)``;
            - any other iterable of batches (one process): N from ``num_samples``.

            Batches are ``(x, y)`` or ``(x, y, index)``; without ``index`` the stored
            sample index is the row number.
        num_samples
            N of splits whose source has no length.
        batch_size, loader_kwargs
            For the loaders made from datasets (``num_workers``, ``pin_memory``, ...).

        Returns
        -------
        dict
            ``epoch``, ``feature_dtype``, ``rows`` and ``row_ranges`` (per split, this
            rank's), ``bytes`` (feature bytes this rank wrote), ``seconds``,
            ``retried_in_float32``.

        Raises
        ------
        FeatureValueError
            A NaN/inf feature, or one beyond float16 with ``on_overflow="error"``.
        RankFailedError
            Another rank failed; the epoch was left incomplete.
        """
        t0 = time.perf_counter()
        plans = {
            split: self._plan(epoch, split, source, (num_samples or {}).get(split),
                              batch_size, dict(loader_kwargs or {}))
            for split, source in sources.items()
        }
        counts = {split: n for split, (n, _) in plans.items()}
        retried = False
        while True:
            recording = EpochRecording(self, epoch, counts, self.feature_dtype)
            recording._begin()
            status = OK
            error: Exception | None = None
            try:
                with _eval_mode(self._module), torch.no_grad():
                    for split, (_, make_batches) in plans.items():
                        start, stop = recording.row_range(split)
                        self._run(recording, split, make_batches(start, stop))
                recording._flush_all()
            except FeatureValueError as exc:
                status, error = self._value_status(exc, recording.feature_dtype), exc
            except Exception as exc:  # re-raised by _end, after the agreements
                status, error = FAILED, exc
            if recording._end(status, error) == "retry":
                retried = True
                self._switch_to_float32(epoch, error)
                continue
            return {
                "epoch": int(epoch),
                "feature_dtype": recording.feature_dtype,
                "rows": {s: recording.rows_added(s) for s in counts},
                "row_ranges": {s: recording.row_range(s) for s in counts},
                "bytes": recording.bytes_written,
                "seconds": time.perf_counter() - t0,
                "retried_in_float32": retried,
            }

    def _value_status(self, exc: FeatureValueError, dtype: str) -> int:
        if exc.overflow and self.on_overflow == "float32" and dtype == "float16":
            return OVERFLOW
        return FAILED

    def _switch_to_float32(self, epoch: int, error: BaseException | None) -> None:
        # Sticky: features that outgrew float16 once rarely shrink back, and running
        # every later pass twice would double its cost.
        self.feature_dtype = "float32"
        logger.warning("%s: epoch %s is stored in float32, as are later epochs (%s)",
                       self.store_path, epoch, error)

    def _plan(
        self, epoch: int, split: str, source: Any, n: int | None, batch_size: int,
        loader_kwargs: dict[str, Any],
    ) -> tuple[int, Callable[[int, int], Iterable[Any]]]:
        """(N, batches of rows [start, stop)) for one split's source."""
        where = f"{self.store_path}: epoch {epoch}, split {split!r}"
        if isinstance(source, Dataset) and not isinstance(source, IterableDataset):
            size = len(source)  # type: ignore[arg-type]
            if n is not None and n != size:
                raise ValueError(f"{where}: num_samples={n} but the dataset has {size} items")

            def from_dataset(start: int, stop: int) -> Iterable[Any]:
                return rank_loader(source, start, stop, batch_size=batch_size, **loader_kwargs)

            return size, from_dataset
        if self.world_size > 1:
            raise ValueError(
                f"{where}: with {self.world_size} processes pass the map-style dataset, "
                f"not a {type(source).__name__}: each rank then reads its own contiguous, "
                "write-unit-aligned rows (a DistributedSampler's strided rows cannot be "
                "written concurrently)"
            )
        if n is None:
            dataset = getattr(source, "dataset", None)
            try:
                n = len(dataset) if dataset is not None else None
            except TypeError:
                n = None
        if n is None:
            raise ValueError(
                f"{where}: the number of rows is unknown; pass num_samples={{{split!r}: N}}")
        if self.on_overflow == "float32" and iter(source) is source:
            raise ValueError(
                f"{where}: a one-shot iterator cannot be read twice, which "
                "on_overflow='float32' needs when an epoch overflows float16; pass a "
                "DataLoader, a dataset or a list of batches"
            )
        if isinstance(source, DataLoader) and isinstance(source.sampler, RandomSampler):
            warnings.warn(
                f"{where}: the DataLoader shuffles; rows are stored in the order they "
                "come, and their sample_index is only right if batches carry it as (x, y, index)",
                stacklevel=3,
            )
        return n, lambda start, stop: source

    def _run(self, recording: EpochRecording, split: str, batches: Iterable[Any]) -> None:
        """Forward every batch and hand the captured features to ``recording``."""
        with FeatureCapture(self.layer, self.layer_path) as capture:
            for batch in batches:
                x, y, index = _unpack(batch, recording._where(split))
                x = _to_device(x, self._device)
                if self._forward is None:
                    self._module(x)
                else:
                    self._forward(self._module, x)
                recording.add(split, capture.pop(), y, index)

    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """W (C, d) and b (C,) of the hooked layer now, as `classifier_parameters`."""
        return classifier_parameters(self.layer)


def _model_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _unpack(batch: Any, where: str) -> tuple[Any, Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    kind = f"a {type(batch).__name__}" + (
        f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    raise ValueError(f"{where}: a batch must be (inputs, labels) or (inputs, labels, "
                     f"indices), got {kind}")


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x
