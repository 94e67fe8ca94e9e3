"""The analyser: one dask graph per epoch, streamed out of core, results as xarray.

For every split of an epoch the graph makes two passes over the feature blocks
(:class:`~ncanalysis.sources.RowBlocks`, which the tasks read themselves, or a
dask array's chunks):

1. class counts and float64 class sums per block, merged by a tree reduction,
   then the split's geometry (means and the Sigma_B spectrum);
2. once the geometries of the split and of the train split are known, the
   per-block scatter statistics (NC1 terms, logits, loss, NCC), merged again.

A pass-2 task reads its block only once the geometry exists (RowBlocks are read
inside the task; a dask array's chunks are *bound* to the pass-1 results with
:func:`dask.graph_manipulation.bind`, making fresh read tasks), so no block is
held in memory between the passes and peak memory does not grow with N.  Both
passes of every split share one ``dask.compute`` per epoch (or per batch of
small epochs: ``epochs_per_compute``).  The library never
creates a dask Client: it runs on ``scheduler`` (a name or a Client), or on the
Client the caller has made active.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr
from dask.delayed import Delayed
from dask.graph_manipulation import bind
from dask.highlevelgraph import HighLevelGraph

from . import metrics, stats
from .errors import ClusterError, InputError
from .metrics import (
    CLASS_METRICS,
    INT_VARIABLES,
    SCALAR_METRICS,
    split_metrics,
    terminal_phase,
)
from .options import AnalysisOptions, GemmDtype, GlobalMean, resolve_options
from .progress import epoch_progress, logger
from .sources import (
    RowBlocks,
    as_row_blocks,
    is_dask_array,
    read_rows,
    store_row_blocks,
)
from .store.spec import epoch_ranges, split_order
from .variables import describe

if TYPE_CHECKING:
    import dask.array as da

__all__ = [
    "AnalysisOptions",
    "EpochInput",
    "analyze",
    "analyze_arrays",
    "analyze_epochs",
    "epoch_graph",
]

_TREE_WIDTH = 8


@dataclass
class EpochInput:
    """The inputs of one epoch: feature and label arrays per split, and the classifier.

    ``splits`` maps a split name to ``(features, labels)``: features (N, d) as
    :class:`~ncanalysis.sources.RowBlocks` or a dask array chunked along rows
    only, labels a numpy or dask array (N,).
    ``where`` names the source ("digits.zarr") for error messages.
    """

    epoch: int
    splits: Mapping[str, tuple[RowBlocks | da.Array, Any]]
    weight: np.ndarray
    bias: np.ndarray
    where: str = "arrays"

    def context(self, split: str | None = None) -> str:
        """A prefix for error messages: source, epoch and split."""
        text = f"{self.where}: epoch {self.epoch}"
        return text if split is None else f"{text}, split {split!r}"


def _check_epoch(item: EpochInput, ncc: bool) -> None:
    """Shapes and finiteness of everything small, before any graph is built."""
    weight, bias = item.weight, item.bias
    where = item.context()
    for name, value in (("weight", weight), ("bias", bias)):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise InputError(f"{where}: {name} must hold numbers, not dtype {value.dtype}")
    if weight.ndim != 2:
        raise InputError(f"{where}: weight must be 2-D (C, d), got shape {weight.shape}")
    num_classes, dim = weight.shape
    if num_classes < 2:
        raise InputError(f"{where}: weight has C={num_classes} rows; Neural Collapse needs C >= 2")
    if bias.shape != (num_classes,):
        raise InputError(
            f"{where}: bias has shape {bias.shape}, expected ({num_classes},) to match weight "
            f"{weight.shape}"
        )
    for name, value in (("weight", weight), ("bias", bias)):
        bad = np.argwhere(~np.isfinite(value))
        if bad.size:
            raise InputError(
                f"{where}: {name} holds NaN or inf (first at index {tuple(bad[0].tolist())})"
            )
    if not item.splits:
        raise InputError(f"{where}: no splits to analyse")
    for split, (features, labels) in item.splits.items():
        context = item.context(split)
        if features.ndim != 2 or features.shape[1] != dim:
            raise InputError(
                f"{context}: features have shape {features.shape}, expected (N, {dim}) to match "
                f"weight {weight.shape}"
            )
        if np.shape(labels) != (features.shape[0],):
            raise InputError(
                f"{context}: labels have shape {np.shape(labels)}, expected ({features.shape[0]},)"
                " (one per feature row)"
            )
        if not np.issubdtype(features.dtype, np.floating):
            raise InputError(f"{context}: features must be floating point, not {features.dtype}")
        if not np.issubdtype(np.dtype(labels.dtype), np.integer):
            raise InputError(f"{context}: labels must be integers, not {labels.dtype}")
    if ncc and "train" not in item.splits:
        raise InputError(
            f"{where}: ncc_mismatch (NC4) uses the class means of the 'train' split, but this "
            f"epoch has only {sorted(item.splits)}; pass ncc=False (command line: --no-ncc) "
            "to skip NC4"
        )


def _add_all(parts: list) -> Any:
    """Sum a list of partial statistics (their ``+`` merges them exactly)."""
    return sum(parts[1:], parts[0])


def _block_sizes(features: RowBlocks | da.Array) -> tuple[int, ...]:
    """Rows in each block of a split's features."""
    return features.block_rows if isinstance(features, RowBlocks) else features.chunks[0]


def _block_inputs(
    name: str, features: RowBlocks | da.Array, labels: Any, after: Delayed | None = None
) -> tuple[dict, list[tuple], list]:
    """What the tasks of one pass take as their feature and label blocks.

    RowBlocks become a read task nested in each block's task, which therefore
    reads its rows only when it runs; their array-like is put in the graph once.
    A dask array's chunks are referred to by key, through fresh read tasks
    bound to ``after`` when given.  Numpy labels are sliced into the tasks.

    Returns
    -------
    layer : dict
        Graph entries the arguments need.
    blocks : list of (feature argument, label argument)
    dependencies : list
        Dask collections the arguments refer to.
    """
    layer: dict = {}
    dependencies: list = []
    if isinstance(features, RowBlocks):
        source = f"{name}-rows"
        layer[source] = features.array
        feature_args: list = [(read_rows, source, a, b) for a, b in features.ranges()]
    else:
        if after is not None:
            features = bind(features, [after])
        dependencies.append(features)
        feature_args = [(features.name, i, 0) for i in range(features.numblocks[0])]
    sizes = _block_sizes(features)
    if is_dask_array(labels):
        # An explicit method: letting dask choose one imports dask.distributed (~0.4 s).
        labels = labels.rechunk((sizes,), method="tasks")
        dependencies.append(labels)
        label_args: list = [(labels.name, i) for i in range(len(sizes))]
    else:
        labels = np.asarray(labels)
        stops = np.cumsum(sizes)
        label_args = [labels[stop - size : stop] for size, stop in zip(sizes, stops)]
    return layer, list(zip(feature_args, label_args)), dependencies


def _block_layer(name: str, task: Any, blocks: list[tuple], extra: list) -> tuple[dict, Any]:
    """Tasks ``task(feature block, label block, *extra[i])`` merged by a tree of sums.

    The graph is written directly (one task per block, then _TREE_WIDTH-wide
    sums): wrapping each block in ``dask.delayed`` would merge and cull the
    whole graph once per block.  The sums have their own key prefix: sharing
    the blocks' would put them in one dask.distributed task group, which then
    no longer counts as root tasks, and the scheduler would send every block
    task to the worker that holds the plan (measured: 14.5 instead of 9.1 s
    per ImageNet-10% epoch on 2 workers, one of them mostly idle).  Returns the
    layer and the key of the merged result.
    """
    layer: dict = {}
    keys = []
    for i, (block, labels) in enumerate(blocks):
        key = (name, 0, i)
        layer[key] = (task, block, labels, *extra[i])
        keys.append(key)
    level = 0
    while len(keys) > 1:
        level += 1
        merged = []
        for j in range(0, len(keys), _TREE_WIDTH):
            key = (f"{name}-merge", level, j // _TREE_WIDTH)
            layer[key] = (_add_all, keys[j : j + _TREE_WIDTH])
            merged.append(key)
        keys = merged
    return layer, keys[0]


def _pass1(item: EpochInput, split: str, num_classes: int, **options: Any) -> Delayed:
    """The split's geometry (class means, Sigma_B spectrum) as one delayed value."""
    features, labels = item.splits[split]
    context = item.context(split)
    name = f"ncanalysis-sums-{uuid.uuid4().hex}"
    inputs, blocks, dependencies = _block_inputs(name, features, labels)
    offsets = np.concatenate([[0], np.cumsum(_block_sizes(features))[:-1]])
    task = functools.partial(_class_sums_task, num_classes=num_classes, context=context)
    layer, total = _block_layer(name, task, blocks, [[int(o)] for o in offsets])
    layer.update(inputs)
    # The train split must hold every class; the others are analysed over the classes they have.
    geometry = functools.partial(
        stats.split_geometry, context=context, require_all=(split == "train"), **options
    )
    layer[name] = (geometry, total)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
    return Delayed(name, graph)


def _class_sums_task(features, labels, first_row, *, num_classes, context):
    """Pass-1 task: the block's row offset arrives positionally from the graph."""
    return stats.block_class_sums(
        features, labels, num_classes, first_row=first_row, context=context
    )


def _pass2(item: EpochInput, split: str, plan: Delayed) -> Delayed:
    """The split's merged scatter statistics as one delayed value."""
    features, labels = item.splits[split]
    name = f"ncanalysis-scatter-{uuid.uuid4().hex}"
    # Blocks read once the plan exists: none is held between the passes.
    inputs, blocks, dependencies = _block_inputs(name, features, labels, after=plan)
    layer, total = _block_layer(name, stats.block_scatter, blocks, [[plan.key]] * len(blocks))
    layer.update(inputs)
    # dask's Delayed does not match its own DaskCollection protocol (__dask_scheduler__).
    graph = HighLevelGraph.from_collections(
        name, layer, dependencies=[*dependencies, plan])  # type: ignore[list-item]
    return Delayed(total, graph, layer=name)


def _weight_shape(weight: np.ndarray) -> dict[str, float]:
    """The weight-only metrics of an epoch (the same for every split)."""
    return metrics.shape_metrics(metrics.gram_matrix(weight), "weights")


def _gather(names: list[str], values: list[dict]) -> dict:
    return dict(zip(names, values))


def epoch_graph(
    item: EpochInput,
    *,
    options: AnalysisOptions | None = None,
    global_mean: GlobalMean | None = None,
    pinv_rtol: float | None = None,
    gemm_dtype: GemmDtype | None = None,
    ncc: bool | None = None,
) -> Any:
    """The delayed computation of every metric of one epoch.

    ``options`` (or the separate keywords, which override its fields) as in
    :func:`analyze_arrays`; its ``splits`` and ``rows_per_block`` are the
    caller's (``item`` holds the splits already cut into blocks).

    Returns
    -------
    dask.delayed.Delayed
        Computes to ``{split: metrics dict}`` (see :func:`ncanalysis.metrics.split_metrics`).
    """
    chosen = resolve_options(options, global_mean=global_mean, pinv_rtol=pinv_rtol,
                             gemm_dtype=gemm_dtype, ncc=ncc)
    ncc = chosen.ncc
    gemm_dtype = chosen.gemm_dtype
    _check_epoch(item, ncc)
    num_classes = item.weight.shape[0]
    geometry_options = {"global_mean": chosen.global_mean, "pinv_rtol": chosen.pinv_rtol}
    geometries = {split: _pass1(item, split, num_classes, **geometry_options)
                  for split in item.splits}
    train = geometries.get("train") if ncc else None
    scatters = {}
    for split in item.splits:
        plan = dask.delayed(stats.block_plan)(
            geometries[split],
            train,
            item.weight,
            item.bias,
            gemm_dtype=gemm_dtype,
            is_train=(split == "train"),
        )
        scatters[split] = _pass2(item, split, plan)
    # One task per split, so that a split's metrics overlap the other splits' pass 2.
    weight_shape = dask.delayed(_weight_shape)(item.weight)
    names = list(item.splits)
    per_split = [
        dask.delayed(split_metrics)(
            geometries[s], scatters[s], item.weight, item.bias, ncc=ncc, weight_shape=weight_shape
        )
        for s in names
    ]
    return dask.delayed(_gather)(names, per_split)


def _active_client(scheduler: Any) -> Any:
    """The dask.distributed Client that will run the graph, or None."""
    if scheduler is not None:
        # A Client can only have been made if distributed is imported: no import to check.
        distributed = sys.modules.get("distributed")
        return scheduler if distributed and isinstance(scheduler, distributed.Client) else None
    # A Client can only be active if distributed was imported: skip its 0.5 s import.
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # distributed's way of saying that no Client is active
        return None


def _scheduler_name(scheduler: Any) -> str | None:
    """The local scheduler's name (None: dask's configured one, else threads), or None."""
    if scheduler is None:
        scheduler = dask.config.get("scheduler", None) or "threads"
    return scheduler.lower() if isinstance(scheduler, str) else None


def _local_scheduler(scheduler: Any) -> Any:
    """dask's get function for a local scheduler's name; anything else unchanged.

    Handing dask.compute the function rather than the name skips its check for an
    active dask.distributed Client, which imports distributed (~0.3 s of start-up).
    """
    from dask.base import named_schedulers

    name = _scheduler_name(scheduler)
    return scheduler if name is None else named_schedulers.get(name, scheduler)


def _blas_threads_for(scheduler: Any) -> contextlib.AbstractContextManager:
    """One BLAS thread per task while dask's local thread pool runs the graph.

    Dask already runs one task per core; an OpenBLAS that also starts a thread per
    core in every task oversubscribes the machine (measured: 2.2x slower epochs
    on 2 cores).  dask.distributed workers get ``OPENBLAS_NUM_THREADS=1`` from
    their nanny; the processes and synchronous schedulers are left alone.
    """
    if _scheduler_name(scheduler) in ("threads", "threading"):
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    return contextlib.nullcontext()


#: Seconds a dask.distributed run waits while its cluster has no worker, unless the
#: dask config key ``ncanalysis.cluster-timeout`` says otherwise.  A nanny restarts
#: a dead worker, and a freshly started worker joins its scheduler, within a few
#: seconds; a minute covers both with a wide margin, while a run whose workers
#: are gone for good still stops soon enough to be noticed.
CLUSTER_TIMEOUT = 60.0
_CLUSTER_TIMEOUT_KEY = "ncanalysis.cluster-timeout"


def cluster_timeout() -> float:
    """Seconds to wait for a worker (dask config ``ncanalysis.cluster-timeout``, default 60)."""
    value = dask.config.get(_CLUSTER_TIMEOUT_KEY, None)
    timeout = CLUSTER_TIMEOUT if value is None else float(value)
    if not timeout > 0:
        raise InputError(f"{_CLUSTER_TIMEOUT_KEY} must be a positive number of seconds, "
                         f"not {value!r}")
    return timeout


def _live_workers(client: Any, timeout: float) -> int:
    """Workers the scheduler knows of; 0 when the scheduler does not answer in time."""
    try:
        return len(client.nthreads(callback_timeout=timeout))
    except (OSError, TimeoutError):  # a scheduler that went away has no workers
        return 0


def _cluster_result(client: Any, future: Any, where: str) -> Any:
    """``future.result()``, failing with ClusterError instead of waiting forever.

    The wait is cut into short polls; between them the scheduler's worker count
    is read.  Once there has been no worker for :func:`cluster_timeout` seconds
    (none came, or the last one died and nothing restarted it) the computation
    is cancelled and ClusterError raised.  dask's ``KilledWorker`` (a task whose
    workers kept dying, e.g. killed for memory) and a lost computation become
    ClusterError naming ``where`` (file and epoch).
    """
    import time
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    timeout = cluster_timeout()
    poll = min(1.0, timeout / 4)
    empty_since: float | None = None
    checked = time.monotonic()
    step = 0.005
    while True:
        if future.done():
            try:
                if future.status != "finished":  # raises the task's own error
                    return future.result()
                # Fetching the finished (small) result: bounded too, yet apart from
                # the task's own errors (a task may raise TimeoutError itself).
                return future.result(timeout=timeout)
            except KilledWorker as err:
                raise ClusterError(
                    f"{where}: dask workers kept dying while running task {err.task!r} "
                    f"({err.allowed_failures + 1} tries; last worker "
                    f"{err.last_worker.address}); a worker killed for memory is the usual "
                    "cause: give workers more memory or use a smaller --rows-per-block"
                ) from err
            except CancelledError as err:
                raise ClusterError(
                    f"{where}: the dask scheduler lost the computation (scheduler "
                    f"restarted, stopped or unreachable): {err}"
                ) from err
            except TimeoutError as err:
                if future.status == "finished":
                    raise ClusterError(
                        f"{where}: could not fetch the finished result from the dask "
                        f"cluster within {timeout:g} s"
                    ) from err
                continue  # its worker left with it: the scheduler computes it again
        # Short sleeps: done() is local state, so a finished epoch is seen at once.
        time.sleep(step)
        step = min(2 * step, 0.1)
        now = time.monotonic()
        if now - checked < poll:
            continue
        checked = now
        if _live_workers(client, timeout) > 0:
            empty_since = None
            continue
        empty_since = now if empty_since is None else empty_since
        if now - empty_since >= timeout:
            with contextlib.suppress(Exception):
                client.cancel(future)
            raise ClusterError(
                f"{where}: the dask cluster has had no worker for {timeout:g} s (none "
                "joined, or every worker died); start workers, or raise the wait with "
                "--cluster-timeout (dask config ncanalysis.cluster-timeout)"
            )


def _compute(graph: Any, scheduler: Any, where: str = "arrays") -> Any:
    """Compute one delayed object.

    On a dask.distributed Client the wait is bounded (:func:`_cluster_result`);
    ``where`` names the source and epoch in its errors.  Progress is counted in
    epochs by the caller (ncanalysis/progress.py), not per task.
    """
    client = _active_client(scheduler)
    if client is not None:
        return _cluster_result(client, client.compute(graph), where)
    with _blas_threads_for(scheduler):
        return dask.compute(graph, scheduler=_local_scheduler(scheduler))[0]


def _compute_batch(
    batch: Sequence[tuple[EpochInput, Any]], scheduler: Any, results: dict[int, dict],
    reporter: Any,
) -> None:
    """Compute the graphs of ``batch`` (epoch, graph) in ONE compute into ``results``."""
    for item, _ in batch:
        logger.info("%s: analysing %s", item.context(), ", ".join(item.splits))
    if len(batch) == 1:
        item, graph = batch[0]
        values = [_compute(graph, scheduler, item.context())]
    else:
        first = batch[0][0]
        where = f"{first.where}: epochs {epoch_ranges([item.epoch for item, _ in batch])}"
        # One Delayed of the list: one future on a Client, so _cluster_result's
        # bounded wait and KilledWorker mapping cover the whole batch.
        values = _compute(dask.delayed(list)([graph for _, graph in batch]), scheduler, where)
    for (item, _), value in zip(batch, values, strict=True):
        results[item.epoch] = value
        reporter.epoch_done(item.context())


def _to_dataset(
    results: Mapping[int, Mapping[str, dict]],
    *,
    num_classes: int,
    num_features: int,
    class_names: Sequence[str] | None,
    attrs: dict,
) -> xr.Dataset:
    """Assemble ``{epoch: {split: metrics}}`` into the labelled results Dataset."""
    epochs = sorted(results)
    present = {s for per_epoch in results.values() for s in per_epoch}
    splits = sorted(present, key=split_order)
    shape2 = (len(epochs), len(splits))
    shape3 = shape2 + (num_classes,)
    data: dict[str, tuple] = {}
    for name in SCALAR_METRICS + metrics.COUNT_VARIABLES + CLASS_METRICS:
        per_class = name in CLASS_METRICS
        is_int = name in INT_VARIABLES
        values = np.full(shape3 if per_class else shape2, -1 if is_int else np.nan,
                         dtype=np.int64 if is_int else np.float64)
        for i, epoch in enumerate(epochs):
            for j, split in enumerate(splits):
                if split in results[epoch]:
                    values[i, j] = results[epoch][split][name]
        dims = ("epoch", "split", "class") if per_class else ("epoch", "split")
        data[name] = (dims, values)
    coords: dict[str, Any] = {
        "epoch": np.asarray(epochs, dtype=np.int64),
        "split": np.asarray(splits, dtype=str),
        "class": np.arange(num_classes, dtype=np.int64),
    }
    if class_names is not None:
        coords["class_name"] = ("class", np.asarray(list(class_names), dtype=str))
    dataset = xr.Dataset(data, coords=coords)
    dataset.attrs.update(attrs)
    dataset.attrs.update(
        num_classes=int(num_classes),
        num_features=int(num_features),
        etf_exists=int(num_classes <= num_features + 1),
        **terminal_phase(epochs, splits, dataset["accuracy"].values),
    )
    return describe(dataset)  # order and attributes: ncanalysis/variables.py


def analyze_epochs(
    items: Iterable[EpochInput],
    *,
    num_classes: int,
    num_features: int,
    class_names: Sequence[str] | None = None,
    source: str = "arrays",
    scheduler: Any = None,
    options: AnalysisOptions | None = None,
    global_mean: GlobalMean | None = None,
    pinv_rtol: float | None = None,
    gemm_dtype: GemmDtype | None = None,
    ncc: bool | None = None,
    progress: Any = None,
    epochs_per_compute: int = 1,
) -> xr.Dataset:
    """Analyse a sequence of epochs, ``epochs_per_compute`` per ``dask.compute``, into one Dataset.

    This is the common path of :func:`analyze` and :func:`analyze_arrays`;
    ``progress`` as in :func:`ncanalysis.progress.epoch_progress` (still counted in
    epochs: a batch's epochs are reported done together).  Batching saves the
    fixed cost of each compute (scheduling, thread start, result fetch), which
    dominates tiny epochs; the epoch graphs are independent, so the numbers do
    not change.  An error in a batch does not say which of its epochs failed
    unless the task's own message does (it names its epoch).
    """
    if epochs_per_compute < 1:
        raise InputError(f"epochs_per_compute must be >= 1, not {epochs_per_compute!r}")
    chosen = resolve_options(options, global_mean=global_mean, pinv_rtol=pinv_rtol,
                             gemm_dtype=gemm_dtype, ncc=ncc, progress=progress)
    results: dict[int, dict] = {}
    with epoch_progress(chosen.progress, total=None) as reporter:  # closes only a bar it made
        batch: list[tuple[EpochInput, Any]] = []
        for item in items:
            if item.epoch in results or any(item.epoch == b.epoch for b, _ in batch):
                raise InputError(f"{item.context()}: epoch given twice")
            batch.append((item, epoch_graph(item, options=chosen)))
            if len(batch) == epochs_per_compute:
                _compute_batch(batch, scheduler, results, reporter)
                batch = []
        if batch:
            _compute_batch(batch, scheduler, results, reporter)
    return _to_dataset(
        results,
        num_classes=num_classes,
        num_features=num_features,
        class_names=class_names,
        attrs={**chosen.attrs(), "source": source},
    )


def analyze_arrays(
    splits: Mapping[str, tuple[Any, Any]],
    weight: Any,
    bias: Any = None,
    *,
    epoch: int = 0,
    scheduler: Any = None,
    options: AnalysisOptions | None = None,
    global_mean: GlobalMean | None = None,
    pinv_rtol: float | None = None,
    gemm_dtype: GemmDtype | None = None,
    ncc: bool | None = None,
    rows_per_block: int | None = None,
    progress: Any = None,
    class_names: Sequence[str] | None = None,
) -> xr.Dataset:
    """Every Neural Collapse metric of one epoch, from arrays (no store needed).

    Parameters
    ----------
    splits : mapping of str to (features, labels)
        E.g. ``{"train": (X, y), "test": (Xt, yt)}``.  Features (N, d) and labels
        (N,) may be numpy arrays, dask arrays, zarr arrays or h5py datasets; they
        are read block by block and never loaded whole.
    weight : array, shape (C, d)
        The last layer's weight.
    bias : array, shape (C,), optional
        The last layer's bias (zeros when omitted).
    epoch : int
        The epoch coordinate of the result.
    scheduler : str or distributed.Client, optional
        Passed to ``dask.compute``; default: the active Client, else threads.
        On a Client the wait is bounded: :class:`~ncanalysis.errors.ClusterError`
        once the cluster has had no worker for the dask config value
        ``ncanalysis.cluster-timeout`` (seconds, default 60), or when dask gives up
        on a task whose workers kept dying (``KilledWorker``).
    options : AnalysisOptions, optional
        Every analysis option in one object (:class:`ncanalysis.options.AnalysisOptions`);
        its ``splits``, when given, selects from ``splits``.
    global_mean, pinv_rtol, gemm_dtype, ncc, rows_per_block, progress
        The fields of :class:`~ncanalysis.options.AnalysisOptions` one by one; a
        keyword given overrides that field of ``options``.  Defaults: "class",
        1e-10, "float32", True, automatic, False.
    progress : bool, callable or tqdm-like, optional
        ``True``: one bar on stderr for the call (epochs done, rate, time
        left); ``callback(done, total)``; or an object with ``update(n)``
        (a tqdm bar: updated, never closed).  See :mod:`ncanalysis.progress`.
    class_names : sequence of str, optional

    Returns
    -------
    xarray.Dataset
        Dimensions epoch (length 1), split and class; see ``docs/metrics.md``.
    """
    chosen = resolve_options(options, global_mean=global_mean, pinv_rtol=pinv_rtol,
                             gemm_dtype=gemm_dtype, ncc=ncc, rows_per_block=rows_per_block,
                             progress=progress)
    if chosen.splits is not None:
        missing = [s for s in chosen.splits if s not in splits]
        if missing:
            raise InputError(f"arrays: no split(s) {missing} (given: {sorted(splits)})")
        splits = {name: splits[name] for name in chosen.splits}
    weight = np.asarray(weight)
    # shape[:1]: a scalar or 1-D weight reaches _check_epoch, which names the problem.
    bias = np.zeros(weight.shape[:1]) if bias is None else np.asarray(bias)
    prepared = {
        name: (as_row_blocks(features, rows_per_block=chosen.rows_per_block),
               _labels_array(labels))
        for name, (features, labels) in splits.items()
    }
    item = EpochInput(epoch=int(epoch), splits=prepared, weight=weight, bias=bias)
    return analyze_epochs(
        [item],
        num_classes=weight.shape[0] if weight.ndim == 2 else 0,
        num_features=weight.shape[-1] if weight.ndim else 0,
        class_names=class_names,
        scheduler=scheduler,
        options=dataclasses.replace(
            chosen, progress=epoch_progress(chosen.progress, total=1)),
    )


def _labels_array(labels: Any) -> Any:
    """Labels as a numpy array, or a dask array left lazy."""
    if is_dask_array(labels):
        return labels
    return np.asarray(labels[...] if hasattr(labels, "chunks") else labels)


def analyze(
    store_or_path: Any,
    *,
    epochs: Iterable[int] | None = None,
    splits: Iterable[str] | None = None,
    scheduler: Any = None,
    options: AnalysisOptions | None = None,
    global_mean: GlobalMean | None = None,
    pinv_rtol: float | None = None,
    gemm_dtype: GemmDtype | None = None,
    ncc: bool | None = None,
    rows_per_block: int | None = None,
    progress: Any = None,
    epochs_per_compute: int = 1,
) -> xr.Dataset:
    """Every Neural Collapse metric of every complete epoch and split of a store.

    Parameters
    ----------
    store_or_path : Store or path
        An open :class:`ncanalysis.store.Store` or the path of one (Zarr or HDF5);
        a path is opened here and closed before returning.
    epochs : iterable of int, optional
        Epochs to analyse (default: every complete epoch).  Every one is checked
        before any work: an incomplete or missing epoch raises
        :class:`~ncanalysis.errors.IncompleteEpochError` or
        :class:`~ncanalysis.errors.StoreFormatError` naming all of them.
    splits : iterable of str, optional
        Splits to analyse (default: all; overrides ``options.splits``).  NCC needs
        "train" among them.
    scheduler, options, global_mean, pinv_rtol, gemm_dtype, ncc, rows_per_block, progress
        As in :func:`analyze_arrays`.
    epochs_per_compute : int
        Epochs computed together in one ``dask.compute`` (default 1).  More saves
        the fixed cost of a compute on tiny epochs, with the same numbers; an
        error then stops the whole batch (the CLI retries such a batch epoch by
        epoch).  Keep it 1 for big epochs: a batch's epochs are in flight at once.

    Returns
    -------
    xarray.Dataset
        Dimensions epoch, split and class; ``epoch_identity`` (over epoch) holds
        each epoch's :meth:`~ncanalysis.store.Store.epoch_identity` ("" for
        stores written before format 1.1).
    """
    from .store import Store, open_store

    chosen = resolve_options(options, splits=splits, global_mean=global_mean,
                             pinv_rtol=pinv_rtol, gemm_dtype=gemm_dtype, ncc=ncc,
                             rows_per_block=rows_per_block, progress=progress)
    if isinstance(store_or_path, Store):
        return _analyze_store(store_or_path, epochs, scheduler, chosen, epochs_per_compute)
    with open_store(store_or_path) as store:
        return _analyze_store(store, epochs, scheduler, chosen, epochs_per_compute)


def _analyze_store(
    store: Any, epochs: Iterable[int] | None, scheduler: Any, options: AnalysisOptions,
    epochs_per_compute: int = 1,
) -> xr.Dataset:
    """:func:`analyze` of an open store."""
    wanted = store.check_epochs(epochs)  # all of them, before any work
    chosen = options.splits
    identities: dict[int, str] = {}

    def items() -> Iterable[EpochInput]:
        for epoch in wanted:
            # Read before the data: an epoch rewritten during its analysis then
            # keeps the old identity, and the next run analyses it again.
            identities[epoch] = store.epoch_identity(epoch) or ""
            names = store.splits(epoch)
            if chosen is not None:
                missing = [s for s in chosen if s not in names]
                if missing:
                    raise InputError(
                        f"{store.path}: epoch {epoch} has no split(s) {missing} (has {names})"
                    )
                names = [s for s in names if s in chosen]
            yield EpochInput(
                epoch=epoch,
                splits={
                    s: (
                        store_row_blocks(store, epoch, s, rows_per_block=options.rows_per_block),
                        store.labels(epoch, s),
                    )
                    for s in names
                },
                weight=store.weight(epoch),
                bias=store.bias(epoch),
                where=os.fspath(store.path),
            )

    dataset = analyze_epochs(
        items(),
        num_classes=store.num_classes,
        num_features=store.num_features,
        class_names=store.class_names,
        source=os.fspath(store.path),
        scheduler=scheduler,
        options=dataclasses.replace(
            options, progress=epoch_progress(options.progress, total=len(wanted))),
        epochs_per_compute=epochs_per_compute,
    )
    epoch_ids = [identities[e] for e in dataset["epoch"].values.tolist()]
    return describe(dataset.assign(epoch_identity=("epoch", np.asarray(epoch_ids, dtype=str))))
