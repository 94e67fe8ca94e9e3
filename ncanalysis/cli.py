"""The ``ncanalysis`` command line: run, info, validate and plot.

Conventions: results go to stdout (``--json`` for machines), logs and progress
to stderr.  Exit codes: 0 success, 1 runtime error, 2 usage error, 3 invalid
or incomplete input (a store or file that breaks the format, an unfinished
epoch, arrays that do not fit together).

Start-up time matters (``ncanalysis run`` follows training runs and is called
from scripts), so this module imports only the standard library at the top;
each command imports what it needs (matplotlib only for ``plot``,
dask.distributed only with ``--scheduler``/``--workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import InputError, NCAnalysisError, StoreFormatError
from .options import AnalysisOptions, _positive_int

__all__ = ["main", "build_parser", "format_table", "parse_epochs"]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INVALID = 3

_PROG = "ncanalysis"
_RESULT_SUFFIXES = (".zarr", ".nc", ".json", ".csv")
#: Columns of the run table: (variable, header, format).
_TABLE = (
    ("accuracy", "acc", "{:.4f}"),
    ("loss", "loss", "{:.3e}"),
    ("nc1", "nc1", "{:.3e}"),
    ("equinorm_means", "eqnorm_mu", "{:.3e}"),
    ("equinorm_weights", "eqnorm_w", "{:.3e}"),
    ("equiangular_means", "eqang_mu", "{:.3e}"),
    ("equiangular_weights", "eqang_w", "{:.3e}"),
    ("maxangle_means", "maxang_mu", "{:.3e}"),
    ("maxangle_weights", "maxang_w", "{:.3e}"),
    ("self_duality", "selfdual", "{:.3e}"),
    ("ncc_mismatch", "ncc_mism", "{:.4f}"),
)


class UsageError(Exception):
    """Options that cannot be honoured together (exit code 2)."""


# --------------------------------------------------------------------------- parsing


def parse_epochs(text: str) -> list[int]:
    """Parse ``"0,3,5-9"`` into ``[0, 3, 5, 6, 7, 8, 9]`` (ranges are inclusive).

    Raises
    ------
    argparse.ArgumentTypeError
        On anything else (argparse turns it into a usage error).
    """
    epochs: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            start = int(first)
            stop = int(last) if dash else start
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid epoch list {text!r}: expected e.g. 0,3,5-9"
            ) from None
        if start < 0 or stop < start:
            raise argparse.ArgumentTypeError(f"invalid epoch range {part!r} in {text!r}")
        epochs.extend(range(start, stop + 1))
    return sorted(set(epochs))


def epoch_ranges(epochs: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"0-2, 5"``: store.spec's, imported only when needed."""
    from .store.spec import epoch_ranges as ranges

    return ranges(list(epochs))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ncanalysis`` (docs/cli.md documents it)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Measure Neural Collapse (Papyan, Han & Donoho 2020) from stored "
        "penultimate activations.",
        epilog="Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 invalid or incomplete input.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="analyse every complete epoch of a store (or one dump file)",
        description="Analyse every complete epoch and split of the store at PATH, print a "
        "table of the main metrics and save the results (in the store's 'results' group, or "
        "--output). "
        "A second run analyses only the epochs not yet analysed with the same settings. "
        "With --features/--labels/--weight, PATH is instead another project's HDF5, Zarr "
        "or .npz file holding one epoch.",
    )
    run.add_argument("path", metavar="PATH", help="store (Zarr directory or .h5/.hdf5 file), "
                     "or a dump file with --features")
    out = run.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="FILE",
                     help="write the results here instead of into the store "
                     "(.zarr, .nc, .json or .csv, by suffix)")
    out.add_argument("--json", action="store_true",
                     help="print the results as JSON instead of a table")
    out.add_argument("--overwrite", action="store_true",
                     help="discard earlier results at the destination and analyse every "
                     "selected epoch again")
    out.add_argument("--keep-going", action="store_true",
                     help="skip an epoch that cannot be analysed and go on with the others "
                     "(they are listed at the end; exit code 3)")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no progress bar or log lines on stderr")
    sel = run.add_argument_group("selection")
    sel.add_argument("--epochs", type=parse_epochs, metavar="LIST",
                     help="epochs to analyse, e.g. 0,5,10-20 (default: every complete epoch)")
    # --splits and the "analysis settings" group: the options object's own.
    AnalysisOptions.add_arguments(run, selection=sel)
    par = run.add_argument_group("parallelism").add_mutually_exclusive_group()
    par.add_argument("--scheduler", metavar="ADDRESS",
                     help="address of a running dask.distributed scheduler, "
                     "e.g. tcp://10.0.0.1:8786")
    par.add_argument("--workers", type=_positive_int, metavar="N",
                     help="start a local dask.distributed cluster of N worker processes")
    dump = run.add_argument_group(
        "another project's file",
        "Name the arrays of an HDF5, Zarr or .npz file holding one epoch; nested arrays by "
        "their path, e.g. model/penultimate. The results are written only with --output.",
    )
    dump.add_argument("--features", metavar="KEY", help="train features (N, d)")
    dump.add_argument("--labels", metavar="KEY", help="train labels (N,)")
    dump.add_argument("--weight", metavar="KEY", help="last-layer weight (C, d)")
    dump.add_argument("--bias", metavar="KEY", help="last-layer bias (C,); default zeros")
    dump.add_argument("--test-features", metavar="KEY", help="test features")
    dump.add_argument("--test-labels", metavar="KEY", help="test labels")
    run.set_defaults(handler=_cmd_run)

    info = commands.add_parser(
        "info", help="describe a store",
        description="Splits, complete and incomplete epochs, N, d, C, dtypes and size on disk.",
    )
    info.add_argument("path", metavar="STORE")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_cmd_info)

    validate = commands.add_parser(
        "validate", help="check a store against the format specification",
        description="Check every epoch, split and array of STORE against the store format "
        "and list every problem found; exit code 3 when there is any.",
    )
    validate.add_argument("path", metavar="STORE")
    validate.add_argument("--json", action="store_true", help="print JSON instead of text")
    validate.set_defaults(handler=_cmd_validate)

    plot = commands.add_parser(
        "plot", help="draw the paper's figures from results",
        description="Write PNG and PDF figures (accuracy, NC1, equinorm, equiangularity, "
        "max-angle, self-duality, NCC mismatch, per-class views of the last epoch) of a "
        "results file or of the results stored in a store. Prints the files written.",
    )
    plot.add_argument("path", metavar="RESULTS_OR_STORE",
                      help="a .zarr, .nc, .json or .csv results file, or an analysed store")
    plot.add_argument("-d", "--output-dir", metavar="DIR",
                      help="where to write the figures (default: next to "
                      "RESULTS_OR_STORE, named after it with '-figures')")
    plot.set_defaults(handler=_cmd_plot)
    # Fault handling (docs/cli.md, exit codes): a bounded wait for a dask cluster,
    # and the traceback behind an error on demand.
    run.add_argument("--cluster-timeout", type=_cluster_timeout, default=60.0,
                     metavar="SECONDS",
                     help="with --scheduler/--workers: fail (exit 1) when the scheduler "
                     "does not answer, or has had no worker, for this long (default: 60)")
    for command in (run, info, validate, plot):
        command.add_argument("--debug", action="store_true",
                             help="print the traceback behind an error")
    return parser


# --------------------------------------------------------------------------- helpers


def _log(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"{_PROG}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _scheduler(args: argparse.Namespace) -> Iterator[Any]:
    """The dask scheduler asked for: None (threads), or a distributed Client.

    Only the command line makes Clients; the library takes whatever it is given.
    Every wait on the cluster is bounded by ``--cluster-timeout``: connecting to
    the scheduler, the first worker joining, and (through the dask config key
    the analyser reads) a cluster that loses every worker during the run.
    """
    if args.scheduler is None and args.workers is None:
        # Named rather than None: with None the analyser looks for an active
        # Client, which costs an import of dask.distributed (~0.7 s of start-up).
        yield "threads"
        return
    import dask
    from distributed import Client, LocalCluster

    from .errors import ClusterError

    timeout = args.cluster_timeout
    with contextlib.ExitStack() as stack:
        stack.enter_context(dask.config.set({"ncanalysis.cluster-timeout": timeout}))
        if args.scheduler is not None:
            _log(args, f"connecting to the dask scheduler at {args.scheduler}")
            try:
                client = stack.enter_context(Client(args.scheduler, timeout=timeout))
            except ValueError as err:  # distributed's word for a malformed address
                raise UsageError(f"--scheduler {args.scheduler}: {_one_line(err)}") from err
            except (OSError, TimeoutError) as err:
                raise ClusterError(
                    f"cannot reach the dask scheduler at {args.scheduler} within "
                    f"{timeout:g} s (--cluster-timeout): {_one_line(err)}"
                ) from err
        else:
            _log(args, f"starting a local dask cluster of {args.workers} worker process(es)")
            # No dashboard: a second run on the same machine would fight for its port.
            cluster = stack.enter_context(LocalCluster(
                n_workers=args.workers, processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster, timeout=timeout))
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as err:
            raise ClusterError(
                f"the dask scheduler at {client.scheduler.address} has no worker after "
                f"{timeout:g} s (--cluster-timeout); start workers for it"
            ) from err
        yield client


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a MemoryError may have none: say what it is)."""
    return " ".join(str(error).split()) or type(error).__name__


def _cluster_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _print_result(text: str) -> None:
    """Print a command's result on stdout; a reader that went away ends the output quietly.

    ``ncanalysis run STORE | head -3``: once ``head`` exits, writing raises
    BrokenPipeError.  As Unix tools do, the rest of the output is dropped
    without a message and the command's own exit status stands (the work, such
    as saving results, is done by the time results are printed).  stdout is
    pointed at os.devnull so that later writes and the final flush do not fail
    again.  (Restoring SIGPIPE's default action instead would also kill the
    process on a closed dask.distributed socket.)
    """
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# --------------------------------------------------------------------------- run


def _check_run_options(args: argparse.Namespace) -> bool:
    """Check what argparse cannot express (UsageError, exit 2); True in dump-file mode."""
    dump_keys = (args.features, args.labels, args.weight)
    dump_mode = any(key is not None for key in
                    dump_keys + (args.bias, args.test_features, args.test_labels))
    if dump_mode:
        if None in dump_keys:
            raise UsageError("--features, --labels and --weight go together")
        if (args.test_features is None) != (args.test_labels is None):
            raise UsageError("--test-features and --test-labels go together")
        if args.epochs is not None or args.splits is not None:
            raise UsageError("--epochs and --splits select from a store; a dump file holds "
                             "one epoch")
    if args.output is not None and Path(args.output).suffix.lower() not in _RESULT_SUFFIXES:
        raise UsageError(f"--output {args.output}: unknown format; use a file ending in "
                         f"{', '.join(_RESULT_SUFFIXES)}")
    if args.output is not None:
        # Before any analysis: an hour of work must not end in "no such directory".
        parent = Path(args.output).absolute().parent
        if not parent.is_dir():
            raise NCAnalysisError(f"--output {args.output}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise NCAnalysisError(f"--output {args.output}: directory {parent} is not writable")
    return dump_mode


def _analysis_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the analysis: one AnalysisOptions."""
    return {"options": AnalysisOptions.from_args(args, progress=not args.quiet)}


def _cmd_run(args: argparse.Namespace) -> int:
    failed: dict[int, BaseException] = {}
    if _check_run_options(args):
        ds = _run_dump(args)
    else:
        ds, failed = _run_store(args)
    if ds is not None:
        if args.json:
            from .results import to_json_dict

            _print_result(json.dumps(to_json_dict(ds), allow_nan=False))
        else:
            _print_result(format_table(ds))
    if failed:
        for epoch, error in failed.items():
            print(f"{_PROG} run: epoch {epoch} skipped: {_one_line(error)}", file=sys.stderr)
        print(f"{_PROG} run: error: {len(failed)} epoch(s) could not be analysed "
              f"({epoch_ranges(sorted(failed))}); the others are saved", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _check_output(args: argparse.Namespace) -> None:
    """Refuse, before any work, an --output that is not ncanalysis results (exit 3)."""
    from .results import check_replaceable

    if args.output is not None:
        check_replaceable(args.output)


def _run_dump(args: argparse.Namespace) -> Any:
    from .dumps import analyze_file
    from .results import ALL_SPLITS, save_results

    _check_output(args)
    with _scheduler(args) as scheduler:
        ds = analyze_file(
            args.path, features=args.features, labels=args.labels, weight=args.weight,
            bias=args.bias, test_features=args.test_features, test_labels=args.test_labels,
            scheduler=scheduler, **_analysis_options(args),
        )
    ds.attrs.update(source=os.path.abspath(args.path), splits_selected=ALL_SPLITS)
    if args.output is not None:
        _log(args, f"writing {args.output}")
        save_results(ds, args.output)
    return ds


def _existing_results(args: argparse.Namespace, source: str) -> Any:
    """Results already at the destination of this run, or None."""
    from .results import has_store_results, load_results

    if args.overwrite:
        return None
    if args.output is None:
        return load_results(args.path) if has_store_results(args.path) else None
    if not os.path.exists(args.output):
        return None
    existing = load_results(args.output)
    other = existing.attrs.get("source")
    if other != source:
        raise UsageError(f"{args.output} holds the results of {other}, not of {source}; "
                         "pass --overwrite to replace them, or choose another --output")
    return existing


#: Errors that make one epoch unusable (bad or unreadable data); --keep-going skips them.
_EPOCH_ERRORS = (NCAnalysisError, OSError)


def _run_store(args: argparse.Namespace) -> tuple[Any, dict[int, BaseException]]:
    """Analyse the store epoch by epoch, journalling the results of each one.

    Each epoch's results are made durable in the destination's journal as soon
    as it is analysed (cheap: one small file), and the journal is folded into
    the results with one write when the run ends, stopped or not; a killed
    run's journal is folded by the next run (see docs/cli.md, Safety of results).

    Returns the results now at the destination (None when none could be made)
    and the epochs skipped by --keep-going with their errors.
    """
    from .results import (
        fold_results,
        load_results,
        plan_resume,
    )
    from .store import open_store

    settings = AnalysisOptions.from_args(args).settings()
    source = os.path.abspath(args.path)
    _check_output(args)
    try:
        # Absolute: dask.distributed workers open the store themselves, each in
        # its own working directory.
        store = open_store(source)
    except StoreFormatError as err:
        if not _foreign_file(source):  # a damaged or locked store: the hint would mislead
            raise
        raise StoreFormatError(
            f"{err} (to analyse another project's file, name its arrays with --features, "
            "--labels and --weight)"
        ) from err
    target = args.output if args.output is not None else source
    in_store = args.output is None
    where = f"{target}" + ("" if args.output else " (group 'results')")
    failed: dict[int, BaseException] = {}
    with store:
        complete = store.epochs()
        wanted = complete if args.epochs is None else args.epochs
        store.check_epochs(wanted)  # all of them, before any work
        # What a killed run journalled counts as done: fold it in first.
        fold_results(target, in_store=in_store)
        existing = _existing_results(args, source)
        identities = {e: store.epoch_identity(e) for e in wanted}
        plan = plan_resume(existing, wanted, settings, identities)
        _log(args, f"{args.path}: {len(plan.todo)} epoch(s) to analyse, {plan.reason}")
        if not plan.todo:
            return plan.keep, failed
        _log(args, f"analysing epoch(s) {epoch_ranges(plan.todo)}")
        from .engine import analyze  # here: a run with nothing to do never loads numba
        from .progress import run_progress

        merged, saved = plan.keep, list[int]()
        try:
            # ONE bar for the whole run (ncanalysis/progress.py): analyze updates it per epoch.
            with _scheduler(args) as scheduler, \
                    run_progress(len(plan.todo), not args.quiet) as bar:
                for batch in _batches(store, plan.todo):
                    if len(batch) > 1:
                        try:
                            new = analyze(store, epochs=batch, splits=args.splits,
                                          scheduler=scheduler, epochs_per_compute=len(batch),
                                          **{**_analysis_options(args), "progress": bar})
                        except _EPOCH_ERRORS:
                            # Which epoch failed, exactly: again one by one (below).
                            pass
                        else:
                            for epoch in batch:
                                _journal_epoch(args, _one_epoch(new, epoch), source,
                                               settings, target, in_store, saved)
                            continue
                    for epoch in batch:
                        try:
                            new = analyze(store, epochs=[epoch], splits=args.splits,
                                          scheduler=scheduler,
                                          **{**_analysis_options(args), "progress": bar})
                        except _EPOCH_ERRORS as err:
                            if not args.keep_going:
                                if saved:
                                    _log(args, f"stopped at epoch {epoch}; epoch(s) "
                                         f"{epoch_ranges(saved)} analysed and saved to "
                                         f"{where}")
                                raise
                            _log(args, f"epoch {epoch} skipped (--keep-going): "
                                 f"{_one_line(err)}")
                            failed[epoch] = err
                            continue
                        _journal_epoch(args, new, source, settings, target, in_store, saved)
        except BaseException as err:
            if saved:
                # Stopped (bad epoch, Ctrl-C): the finished epochs still go into the results.
                try:
                    fold_results(target, in_store=in_store)
                except (NCAnalysisError, OSError) as fold_err:
                    err.add_note(f"the results of epoch(s) {epoch_ranges(saved)} stay in the "
                                 f"journal of {where}, folded by the next run "
                                 f"({_one_line(fold_err)})")
            raise
    if saved:
        # Merged under the results lock with what is there now: another run may
        # have added epochs since this one started (or folded this one's journal).
        folded = fold_results(target, in_store=in_store)
        merged = folded if folded is not None else load_results(target)
        _log(args, f"results of epoch(s) {epoch_ranges(saved)} saved to {where}")
    return merged, failed


# Epochs analysed in one dask.compute by `run` (_batches).  Each compute has a
# fixed cost (~0.2 s measured: graph build, scheduling, thread start, result
# fetch; benchmarks/RESULTS.md, "Batched small epochs") that dominates tiny
# epochs.  At 64 MiB of features an epoch's own reading and arithmetic already
# take about as long as that cost, so bigger epochs gain little and stay one per
# compute, keeping their journal entry (what a killed run keeps) and the
# progress bar per epoch.  16 epochs bound what a kill loses and what a batch
# with a bad epoch costs to redo one by one.
# The dask config key ncanalysis.batch-epochs (env DASK_NCANALYSIS__BATCH_EPOCHS)
# overrides the epoch limit; 1 gives one compute and one journal entry per epoch.
BATCH_FEATURE_BYTES = 64 * 2**20
BATCH_EPOCHS = 16
_BATCH_EPOCHS_KEY = "ncanalysis.batch-epochs"


def _batch_epochs() -> int:
    """Most epochs per compute: dask config ``ncanalysis.batch-epochs``, default 16."""
    import dask

    value = dask.config.get(_BATCH_EPOCHS_KEY, None)
    if value is None:
        return BATCH_EPOCHS
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if limit < 1 or str(limit) != str(value).strip():
        raise InputError(f"dask config {_BATCH_EPOCHS_KEY} must be a whole number >= 1, "
                         f"not {value!r}")
    return limit


def _feature_bytes(store: Any, epoch: int) -> int:
    """Bytes of the stored features of ``epoch`` (every split)."""
    return sum(store.num_samples(epoch, s) * store.num_features
               * store.feature_dtype(epoch, s).itemsize for s in store.splits(epoch))


def _batches(store: Any, epochs: Sequence[int]) -> list[list[int]]:
    """``epochs`` in order, cut into batches for one compute each.

    Consecutive epochs go together while the batch holds at most
    :data:`BATCH_EPOCHS` epochs (or dask config ``ncanalysis.batch-epochs``) and
    :data:`BATCH_FEATURE_BYTES` of features; an epoch bigger than that is a batch
    of its own.
    """
    limit = _batch_epochs()
    batches: list[list[int]] = []
    size = 0
    for epoch in epochs:
        nbytes = _feature_bytes(store, epoch)
        if (batches and len(batches[-1]) < limit
                and size + nbytes <= BATCH_FEATURE_BYTES):
            batches[-1].append(epoch)
            size += nbytes
        else:
            batches.append([epoch])
            size = nbytes
    return batches


def _one_epoch(ds: Any, epoch: int) -> Any:
    """The results of ``epoch`` from a batch's, as analysing it alone makes them.

    Splits the epoch lacks are dropped (the batch has the union of its epochs'
    splits) and the terminal-phase attributes are those of this epoch alone.
    """
    import numpy as np

    from .metrics import terminal_phase

    one = ds.sel(epoch=[epoch])
    one = one.isel(split=np.flatnonzero(one["n_samples"].values[0] >= 0))
    one.attrs.update(terminal_phase(one["epoch"].values, one["split"].values.tolist(),
                                    one["accuracy"].values))
    return one


def _journal_epoch(args: argparse.Namespace, new: Any, source: str, settings: dict,
                   target: str, in_store: bool, saved: list[int]) -> None:
    """Journal the results ``new`` of one epoch and add it to ``saved``."""
    from .results import journal_results

    # The attributes that make later runs resumable.
    new.attrs.update(source=source, splits_selected=settings["splits_selected"])
    journal_results(new, target, in_store=in_store, replace=args.overwrite and not saved)
    saved.append(int(new["epoch"].values[0]))


def _foreign_file(path: str) -> bool:
    """Whether ``path`` is readable data that is not a store (where --features may help).

    False for a missing path and for a store that cannot be opened (truncated,
    locked by its writer, broken metadata): those errors stand on their own.
    """
    from .store.spec import ROOT_ATTR

    target = Path(path)
    try:
        if target.is_dir():
            meta = target / "zarr.json"
            return not meta.is_file() or ROOT_ATTR not in json.loads(
                meta.read_text()).get("attributes", {})
        if not target.is_file():
            return False
        import h5py

        if not h5py.is_hdf5(target):
            return True
        with h5py.File(target, "r", locking=False) as root:
            return ROOT_ATTR not in root.attrs
    except (OSError, ValueError, AttributeError):  # unreadable: not known to be foreign
        return False


def format_table(ds: Any) -> str:
    """The main metrics of a results Dataset as a fixed-width text table.

    One row per (epoch, split) that was analysed, then a line saying where the
    terminal phase of training starts.
    """
    columns = [(name, head, fmt) for name, head, fmt in _TABLE if name in ds.data_vars]
    header = f"{'epoch':>6} {'split':<8} {'n':>8} " + " ".join(f"{h:>10}" for _, h, _ in columns)
    lines = [header]
    values = {name: ds[name].transpose("epoch", "split").values for name, _, _ in columns}
    n_samples = ds["n_samples"].transpose("epoch", "split").values
    for i, epoch in enumerate(ds["epoch"].values.tolist()):
        for j, split in enumerate(ds["split"].values.tolist()):
            if n_samples[i, j] < 0:
                continue
            cells = " ".join(f"{fmt.format(values[name][i, j]):>10}" for name, _, fmt in columns)
            lines.append(f"{epoch:>6} {split:<8} {n_samples[i, j]:>8} {cells}")
    tpt = int(ds.attrs.get("tpt_start_epoch", -1))
    lines.append(f"terminal phase of training starts at epoch {tpt} (train accuracy 1)"
                 if tpt >= 0 else "terminal phase of training not reached (train accuracy < 1)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- info / validate


def _size_on_disk(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _store_info(path: str) -> dict[str, Any]:
    from .store import open_store
    from .store.spec import split_order

    with open_store(path) as store:
        epochs = store.epochs()
        per_epoch: list[dict[str, Any]] = [
            {"epoch": e, "splits": {s: store.num_samples(e, s) for s in store.splits(e)}}
            for e in epochs]
        dtypes: dict[str, str] = {}
        if epochs:
            # Dtypes from the latest complete epoch: reading them is cheap (no data).
            last = epochs[-1]
            dtypes = {f"features/{s}": str(store.feature_dtype(last, s))
                      for s in store.splits(last)}
            dtypes["weight"] = str(store.weight(last).dtype)
            dtypes["bias"] = str(store.bias(last).dtype)
        return {
            "path": os.fspath(store.path),
            "backend": store.backend,
            "format_version": store.format_version,
            "num_classes": store.num_classes,
            "num_features": store.num_features,
            "class_names": store.class_names,
            "splits": sorted({s for item in per_epoch for s in item["splits"]},
                             key=split_order),
            "epochs": epochs,
            "incomplete_epochs": store.incomplete_epochs(),
            "samples": per_epoch,
            "dtypes": dtypes,
            "size_bytes": _size_on_disk(Path(store.path)),
        }


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _cmd_info(args: argparse.Namespace) -> int:
    info = _store_info(args.path)
    if args.json:
        _print_result(json.dumps(info))
        return EXIT_OK
    sizes: dict[str, set[int]] = {}
    for item in info["samples"]:
        for split, n in item["splits"].items():
            sizes.setdefault(split, set()).add(n)
    epochs = info["epochs"]
    lines = [
        f"store       {info['path']} ({info['backend']}, format {info['format_version']})",
        f"classes     C = {info['num_classes']}",
        f"features    d = {info['num_features']}",
        f"epochs      {len(epochs)} complete"
        + (f" ({epoch_ranges(epochs)})" if epochs else "")
        + (f", incomplete: {epoch_ranges(info['incomplete_epochs'])}"
           if info["incomplete_epochs"] else ", none incomplete"),
    ]
    for split in info["splits"]:
        n = sorted(sizes[split])
        count = f"N = {n[0]}" if len(n) == 1 else f"N = {n[0]}..{n[-1]} (varies by epoch)"
        lines.append(f"split       {split}: {count}, "
                     f"features {info['dtypes'].get(f'features/{split}', '?')}")
    if info["dtypes"]:
        lines.append(f"classifier  weight {info['dtypes']['weight']}, "
                     f"bias {info['dtypes']['bias']}")
    lines.append(f"size        {_human_bytes(info['size_bytes'])}")
    _print_result("\n".join(lines))
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from .store import validate_store

    problems = validate_store(args.path)
    if args.json:
        _print_result(json.dumps({"path": args.path, "valid": not problems,
                                  "problems": problems}))
    elif problems:
        _print_result("\n".join(problems))
    else:
        _print_result(f"{args.path}: valid")
    if problems:
        print(f"{_PROG} validate: {len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


# --------------------------------------------------------------------------- plot


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import save_figures
    from .results import load_results

    ds = load_results(args.path)
    source = Path(args.path.rstrip("/\\"))
    output_dir = (Path(args.output_dir) if args.output_dir is not None
                  else source.with_name(f"{source.stem}-figures"))
    for path in save_figures(ds, output_dir):
        _print_result(str(path))
    return EXIT_OK


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits 2 on usage errors, 0 after --help
        return int(stop.code or 0)
    prefix = f"{_PROG} {args.command}: error:"
    try:
        return args.handler(args)
    except UsageError as err:
        return _fail(args, f"{prefix} {_one_line(err)}", EXIT_USAGE)
    except (StoreFormatError, InputError) as err:
        return _fail(args, f"{prefix} {_one_line(err)}", EXIT_INVALID)
    except (NCAnalysisError, OSError) as err:
        return _fail(args, f"{prefix} {type(err).__name__}: {_one_line(err)}", EXIT_RUNTIME)
    except MemoryError as err:
        detail = f": {_one_line(err)}" if str(err) else ""
        return _fail(args, f"{prefix} out of memory (MemoryError{detail}); free memory, raise "
                     "the memory limit or use a smaller --rows-per-block", EXIT_RUNTIME)
    except KeyboardInterrupt:
        return _fail(args, f"{prefix} interrupted", 130)
    except Exception as err:  # noqa: BLE001 - reported with its type, never hidden
        # A bug here or an error of a library below that no rule above knows: one
        # line with the exception's type and message, the traceback with --debug.
        kind = type(err)
        name = (kind.__name__ if kind.__module__ == "builtins"
                else f"{kind.__module__}.{kind.__name__}")
        return _fail(args, f"{prefix} unexpected {name}: {_one_line(err)} (run again with "
                     "--debug for the traceback, and please report it)", EXIT_RUNTIME)


def _fail(args: argparse.Namespace, line: str, code: int) -> int:
    """Print the one-line error (after the traceback with ``--debug``); return ``code``.

    Called inside the ``except`` block, where the traceback is still at hand.
    """
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exc(file=sys.stderr)
    print(line, file=sys.stderr)
    return code


def entry_point() -> None:
    """The ``ncanalysis`` console script: :func:`main`, then an immediate exit.

    Tearing the interpreter down after a run (numba, dask, zarr and xarray
    modules and their idle threads) takes ~0.3 s here.  By the time main returns
    every store and file is closed and every result written, so once the
    standard streams are flushed there is nothing left for that teardown to do.
    """
    # One OpenBLAS thread: the analysis already runs one BLAS thread per dask
    # task (engine._blas_threads_for; distributed's nannies set the same), and an
    # OpenBLAS that starts a thread per core reserves a 32 MiB buffer for each at
    # load.  Under an address-space limit (ulimit -v) that reservation fails and
    # OpenBLAS retries it forever at 100 % CPU, inside a dask task, with no output.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    code = EXIT_RUNTIME
    try:
        code = main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else EXIT_RUNTIME
    except BaseException as err:  # noqa: BLE001 - raised while main reported an error
        with contextlib.suppress(BaseException):
            print(f"{_PROG}: error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
    finally:
        # Also after an exception: the interpreter's teardown joins dask's pool
        # threads, which can then hang for good (seen under ulimit -v).
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    entry_point()
