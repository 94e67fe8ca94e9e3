"""Save and load results Datasets, and resume an analysis where it stopped.

A results Dataset (the output of :func:`ncanalysis.analyze`) is stored in one
of five forms, chosen by :func:`save_results` from the path:

- ``*.zarr``: a Zarr group written by xarray (every variable and attribute);
- ``*.nc``: a netCDF4 file written through h5netcdf (every variable and attribute);
- ``*.json``: every variable, coordinate and attribute as plain JSON (see
  :func:`to_json_dict`); numbers round-trip exactly;
- ``*.csv``: one row per (epoch, split) with the scalar metrics, and the
  attributes in ``#`` comment lines at the top; numbers round-trip exactly
  but the per-class variables are not kept;
- the ``results`` group inside the analysed store itself (``in_store=True``):
  a Zarr group for a Zarr store, a netCDF group (h5netcdf) for an HDF5 store.

Resuming: :meth:`ncanalysis.options.AnalysisOptions.settings` describes the options of an analysis,
:func:`plan_resume` compares them with stored results and says which epochs
still need work, and :func:`merge_results` adds new epochs to old results.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError, NCAnalysisError, StoreFormatError
from .metrics import COUNT_VARIABLES, INT_VARIABLES, SCALAR_METRICS, terminal_phase
from .options import ALL_SPLITS, SETTINGS, AnalysisOptions, settings_of
from .store.spec import RESULTS_GROUP, ROOT_ATTR, is_hdf5_path, split_order
from .variables import describe

__all__ = [
    "ALL_SPLITS",
    "LOCK_TIMEOUT_S",
    "RESULTS_FORMATS",
    "SETTINGS",
    "ResumePlan",
    "check_replaceable",
    "fold_results",
    "from_csv_text",
    "from_json_dict",
    "has_store_results",
    "journal_results",
    "load_results",
    "merge_results",
    "plan_resume",
    "results_journal_path",
    "results_lock_path",
    "run_settings",
    "save_results",
    "settings_of",
    "to_csv_text",
    "to_json_dict",
    "update_results",
]

#: Suffixes of the stand-alone result files that save_results and load_results know.
RESULTS_FORMATS = (".zarr", ".nc", ".json", ".csv")
# ALL_SPLITS and SETTINGS live with the options (ncanalysis.options); re-exported here.

_JSON_FORMAT = "ncanalysis-results"
_JSON_VERSION = 1
_CSV_ATTR_PREFIX = "# "
#: The data variable holding each epoch's identity in its store ("" when the store had none).
IDENTITY = "epoch_identity"
#: Variables holding text, which every backend hands back in its own string type.
_STRING_VARIABLES = ("split", "class_name", IDENTITY)


# --------------------------------------------------------------------------- helpers


def _missing_value(name: str) -> float | int:
    """The value that marks a split absent from an epoch (see docs/dev/contract.md)."""
    return -1 if name in INT_VARIABLES else np.nan


def _ordered_splits(names: Iterable[str]) -> list[str]:
    """"train" first, then the others sorted: the analyser's order."""
    return sorted(set(names), key=split_order)


def _plain(value: Any) -> Any:
    """A numpy scalar or array attribute as a plain Python value (JSON-able)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _normalise(ds: xr.Dataset) -> xr.Dataset:
    """Give a loaded Dataset the in-memory conventions of the analyser.

    Backends hand back numpy scalars as attributes and variable-length strings
    as ``StringDType`` or object arrays; the analyser makes plain Python
    attributes and ``<U`` strings.
    """
    ds = ds.load()
    for var in _STRING_VARIABLES:
        if var in ds.variables and ds[var].dtype.kind not in "U":
            text = np.asarray(ds[var].values.tolist(), dtype=str)
            if var in ds.coords:
                ds = ds.assign_coords({var: (ds[var].dims, text)})
            else:
                ds[var] = (ds[var].dims, text)
    ds.attrs = {key: _plain(value) for key, value in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {}
        ds[name].encoding = {}
    # The attributes from the table, not the file's: the same for every format
    # (CSV keeps none) and for files written before they existed.
    return describe(ds)


def _for_writing(ds: xr.Dataset) -> xr.Dataset:
    """A copy whose string coordinates are object arrays.

    Zarr v3 has a specified variable-length ``string`` type but none for numpy's
    fixed-width ``<U`` strings (zarr warns that they may become unreadable);
    object arrays are written as the former.
    """
    out = describe(ds)  # a copy, in the documented order, with the variables' attributes
    for var in _STRING_VARIABLES:
        if var in out.coords:
            out = out.assign_coords({var: (out[var].dims, out[var].values.astype(object),
                                           out[var].attrs)})
        elif var in out.data_vars:
            out[var] = (out[var].dims, out[var].values.astype(object), out[var].attrs)
    for name in out.variables:
        out[name].encoding = {}
    return out


_TMP_TAG = "tmp"
_OLD_TAG = "old"
#: Seconds :func:`save_results` waits for another process's results lock, and
#: for an HDF5 store's file lock (a training run writing the file), before it fails.
LOCK_TIMEOUT_S = 300.0


def _sibling(path: Path, tag: str) -> Path:
    """A fresh path ``.<name>.<tag>-<8 hex>`` in the same directory (os.replace is a rename)."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def _siblings(path: Path, tag: str) -> list[Path]:
    """The ``.<name>.<tag>-<8 hex>`` siblings of ``path`` that save_results made, oldest first."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{tag}-[0-9a-f]{{8}}")
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.lstat().st_mtime)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """Undo what a killed :func:`_write_atomically` left next to ``path`` (hold the lock).

    A kill between the two renames leaves ``path`` missing and the earlier
    results under a ``.old-`` name: they are put back.  Temporaries are deleted.
    """
    backups = _siblings(path, _OLD_TAG)
    if backups and not os.path.lexists(path):
        os.replace(backups.pop(), path)
    for leftover in [*backups, *_siblings(path, _TMP_TAG)]:
        _remove(leftover)


def _write_atomically(path: Path, write: Any, *, directory: bool = False) -> None:
    """Call ``write(tmp)`` and move the result to ``path`` (hold the lock).

    A reader (or a crash) never sees a half-written results file: the old one
    stays until the new one is complete.  A directory cannot be swapped in one
    rename; the old one is first renamed to a ``.old-`` sibling, which
    :func:`_recover` puts back if the process dies before the second rename.
    """
    tmp = _sibling(path, _TMP_TAG)
    try:
        write(tmp)
        _sync(tmp)
        if directory and os.path.lexists(path):
            old = _sibling(path, _OLD_TAG)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        _sync(path.parent)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def _sync(path: Path) -> None:
    """Flush a file, or a directory's entries and files, to disk (durable before a rename)."""
    paths = [path] if not path.is_dir() else [*path.rglob("*"), path]
    for item in paths:
        if item.is_symlink():
            continue
        try:
            fd = os.open(item, os.O_RDONLY)
        except FileNotFoundError:
            # Seen once under load: a chunk listed, then gone (zarr drops chunks that
            # hold only the fill value); what is not there needs no flushing.
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- JSON


def _json_values(values: np.ndarray) -> list:
    """Nested lists; NaN becomes null and infinities strings (strict JSON)."""
    if values.dtype.kind != "f":
        return values.tolist()
    out = values.astype(object)
    out[np.isnan(values)] = None
    out[np.isposinf(values)] = "Infinity"
    out[np.isneginf(values)] = "-Infinity"
    return out.tolist()


def _json_variable(variable: xr.Variable) -> dict:
    dtype = "str" if variable.dtype.kind in "UO" else str(variable.dtype)
    values = variable.values.astype(str) if dtype == "str" else variable.values
    entry: dict[str, Any] = {"dims": list(variable.dims), "dtype": dtype,
                             "data": _json_values(values)}
    if variable.attrs:
        entry["attrs"] = {key: _plain(value) for key, value in variable.attrs.items()}
    return entry


def to_json_dict(ds: xr.Dataset) -> dict:
    """A results Dataset as a JSON-able dict holding every variable and attribute.

    Layout: ``{"format": "ncanalysis-results", "format_version": 1, "attrs": {...},
    "coords": {name: {"dims", "dtype", "data"}}, "data_vars": {...}}``.  Float
    NaN is written as ``null`` and infinities as the strings ``"Infinity"`` and
    ``"-Infinity"``, so the output is strict JSON; Python writes floats with the
    shortest repr that reads back to the same double, so numbers round-trip.
    """
    ds = describe(ds)
    return {
        "format": _JSON_FORMAT,
        "format_version": _JSON_VERSION,
        "attrs": {key: _plain(value) for key, value in ds.attrs.items()},
        "coords": {name: _json_variable(ds[name].variable) for name in ds.coords},
        "data_vars": {name: _json_variable(ds[name].variable) for name in ds.data_vars},
    }


def from_json_dict(data: dict, *, where: str = "JSON") -> xr.Dataset:
    """The inverse of :func:`to_json_dict`."""
    if data.get("format") != _JSON_FORMAT:
        raise StoreFormatError(f"{where}: not an ncanalysis results document (no format "
                               f"{_JSON_FORMAT!r})")
    if data.get("format_version") != _JSON_VERSION:
        raise StoreFormatError(
            f"{where}: results format version {data.get('format_version')!r} is not "
            f"supported (this ncanalysis reads version {_JSON_VERSION})"
        )

    def variable(entry: dict) -> tuple:
        dtype = str if entry["dtype"] == "str" else np.dtype(entry["dtype"])
        values = np.array(entry["data"], dtype=dtype)
        return (tuple(entry["dims"]), values, dict(entry.get("attrs", {})))

    try:
        coords = {name: variable(entry) for name, entry in data["coords"].items()}
        data_vars = {name: variable(entry) for name, entry in data["data_vars"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise StoreFormatError(f"{where}: malformed results document: {err}") from err
    return xr.Dataset(data_vars, coords=coords, attrs=dict(data.get("attrs", {})))


# --------------------------------------------------------------------------- CSV


def _csv_columns() -> tuple[str, ...]:
    """CSV columns after epoch and split: the counts, then the scalar metrics."""
    return COUNT_VARIABLES + SCALAR_METRICS


def to_csv_text(ds: xr.Dataset) -> str:
    """The scalar metrics as CSV: one row per (epoch, split) that was analysed.

    The attributes come first, one per line, as ``# name: <JSON value>``
    (``pandas.read_csv(path, comment="#")`` skips them).  Then a header line
    ``epoch,split,n_samples,nc1_rank,nc1,...`` and the rows; floats are written
    with Python's repr (``nan``, ``inf`` included), which reads back exactly.
    Splits absent from an epoch (``n_samples == -1``) get no row.
    """
    buffer = io.StringIO()
    for key, value in ds.attrs.items():
        buffer.write(f"{_CSV_ATTR_PREFIX}{key}: {json.dumps(_plain(value))}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [c for c in _csv_columns() if c in ds.data_vars]
    identity = IDENTITY in ds.data_vars
    writer.writerow(["epoch", "split", *columns, *([IDENTITY] if identity else [])])
    values = {name: ds[name].transpose("epoch", "split").values for name in columns}
    for i, epoch in enumerate(ds["epoch"].values.tolist()):
        for j, split in enumerate(ds["split"].values.tolist()):
            if "n_samples" in values and values["n_samples"][i, j] < 0:
                continue
            extra = [str(ds[IDENTITY].values[i])] if identity else []
            writer.writerow([epoch, split, *(repr(_plain(values[c][i, j])) for c in columns),
                             *extra])
    return buffer.getvalue()


def from_csv_text(text: str, *, where: str = "CSV") -> xr.Dataset:
    """The inverse of :func:`to_csv_text` (scalar metrics and attributes only)."""
    lines = text.splitlines()
    attrs: dict[str, Any] = {}
    body_start = 0
    for body_start, line in enumerate(lines):
        if not line.startswith(_CSV_ATTR_PREFIX.rstrip()):
            break
        key, sep, value = line[len(_CSV_ATTR_PREFIX):].partition(": ")
        if not sep:
            raise StoreFormatError(f"{where}: line {body_start + 1}: expected '# name: value'")
        attrs[key] = json.loads(value)
    rows = list(csv.reader(lines[body_start:]))
    if not rows or rows[0][:2] != ["epoch", "split"]:
        raise StoreFormatError(f"{where}: no 'epoch,split,...' header line")
    header, rows = rows[0], rows[1:]
    identity = header[-1] == IDENTITY
    columns = header[2:-1] if identity else header[2:]
    unknown = [c for c in columns if c not in _csv_columns()]
    if unknown:
        raise StoreFormatError(f"{where}: unknown column(s) {unknown}")
    try:
        epochs = sorted({int(row[0]) for row in rows})
        splits = _ordered_splits(row[1] for row in rows)
        data = {
            c: np.full((len(epochs), len(splits)), _missing_value(c),
                       dtype=np.int64 if c in INT_VARIABLES else np.float64)
            for c in columns
        }
        identities = [""] * len(epochs)
        for number, row in enumerate(rows, start=body_start + 2):
            if len(row) != len(header):
                raise StoreFormatError(f"{where}: line {number}: {len(row)} fields, "
                                       f"expected {len(header)}")
            i, j = epochs.index(int(row[0])), splits.index(row[1])
            for c, text_value in zip(columns, row[2:]):
                data[c][i, j] = int(text_value) if c in INT_VARIABLES else float(text_value)
            if identity:
                identities[i] = row[-1]
    except ValueError as err:
        raise StoreFormatError(f"{where}: malformed value: {err}") from err
    variables: dict[str, tuple] = {c: (("epoch", "split"), v) for c, v in data.items()}
    if identity:
        variables[IDENTITY] = (("epoch",), np.asarray(identities, dtype=str))
    return xr.Dataset(
        variables,
        coords={"epoch": np.asarray(epochs, dtype=np.int64),
                "split": np.asarray(splits, dtype=str)},
        attrs=attrs,
    )


# --------------------------------------------------------------------------- save / load


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in RESULTS_FORMATS:
        raise InputError(
            f"{path}: unknown results format {suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(RESULTS_FORMATS)}"
        )
    return suffix


def results_lock_path(path: str | os.PathLike, *, in_store: bool = False) -> Path:
    """The lock file that serialises writes of the results at ``path``.

    ``.<name>.lock`` next to the results file, or next to the store for its
    ``results`` group (``.<store name>.results.lock``).  It is left in place: an
    empty file, free once no ncanalysis process holds it.
    """
    path = Path(os.path.abspath(path))
    name = f".{path.name}.{RESULTS_GROUP}.lock" if in_store else f".{path.name}.lock"
    return path.with_name(name)


@contextlib.contextmanager
def _locked(path: Path, in_store: bool, timeout: float) -> Iterator[None]:
    """Hold the results lock of ``path`` (see :func:`results_lock_path`)."""
    from filelock import FileLock, Timeout

    lock_path = results_lock_path(path, in_store=in_store)
    if not lock_path.parent.is_dir():
        # filelock would create the directories; a mistyped --output must not.
        raise FileNotFoundError(f"{lock_path.parent}: no such directory (writing {path})")
    try:
        with FileLock(lock_path, timeout=timeout):
            yield
    except Timeout as err:
        raise NCAnalysisError(
            f"{path}: another process held the results lock {lock_path} for {timeout:g} s; "
            "is another `ncanalysis run` writing these results?"
        ) from err


def _is_results_attrs(attrs: Any) -> bool:
    """Attributes of an ncanalysis results Dataset (every one carries its version)."""
    return isinstance(attrs, dict) and "ncanalysis_version" in attrs and ROOT_ATTR not in attrs


def _zarr_attrs(path: Path) -> Any:
    try:
        return json.loads((path / "zarr.json").read_text(encoding="utf-8")).get("attributes")
    except (OSError, ValueError, AttributeError):
        return None


def _foreign(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}, not ncanalysis results; refusing to replace it "
                      "(choose another --output, or move it away)")


def _check_replaceable(path: Path) -> None:
    """Raise unless ``path`` is absent or holds results that :func:`save_results` wrote.

    Whatever the flags, a store (the analysed one included), a foreign
    directory or any other file is never replaced.
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise _foreign(path, "a symbolic link")
    if _is_zarr_store(path):
        raise _foreign(path, "an ncanalysis store")
    if path.is_dir():
        if not _is_results_attrs(_zarr_attrs(path)):
            raise _foreign(path, "a directory")
        # A results group holds zarr.json and one group directory per variable.
        for child in path.iterdir():
            if child.name != "zarr.json" and not (child / "zarr.json").is_file():
                raise _foreign(path, f"a directory holding {child.name!r}")
        return
    import h5py

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as handle:
                attrs = {key: None for key in handle.attrs}
        except OSError as err:
            raise _foreign(path, f"an HDF5 file that cannot be opened ({err})") from err
        if ROOT_ATTR in attrs:
            raise _foreign(path, "an ncanalysis store")
        if not _is_results_attrs(attrs):
            raise _foreign(path, "an HDF5 file")
        return
    suffix = path.suffix.lower()
    try:
        head = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise _foreign(path, "a file") from None
    if suffix == ".json":
        try:
            if json.loads(head).get("format") == _JSON_FORMAT:
                return
        except (ValueError, AttributeError):
            pass
    elif suffix == ".csv":
        lines = head.splitlines()
        if any(line.startswith(f"{_CSV_ATTR_PREFIX}ncanalysis_version: ")
               for line in lines if line.startswith(_CSV_ATTR_PREFIX.rstrip())):
            return
    raise _foreign(path, "a file")


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise InputError unless ``path`` is absent or holds results :func:`save_results` wrote.

    The check :func:`save_results` makes before replacing ``path``, offered so
    that a caller can refuse a destination before any work.
    """
    _check_replaceable(Path(path))


def save_results(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    in_store: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> Path:
    """Write a results Dataset, replacing whatever results were there.

    Parameters
    ----------
    ds : xarray.Dataset
        Results as returned by :func:`ncanalysis.analyze`.
    path : path
        A file or directory whose suffix picks the form (``.zarr``, ``.nc``,
        ``.json``, ``.csv``), or, with ``in_store=True``, the store that was
        analysed (Zarr directory or HDF5 file).
    in_store : bool
        Write the ``results`` group of the store at ``path``.
    lock_timeout : float
        Seconds to wait for the results lock (another process writing these
        results) and for an HDF5 store's file lock (a training run writing it).

    Returns
    -------
    pathlib.Path
        Where the results went (the group's directory for a Zarr store).

    Raises
    ------
    InputError
        When ``path`` holds something that is not ncanalysis results (a store,
        a foreign directory or file): it is never replaced.
    NCAnalysisError
        When a lock stays held for ``lock_timeout`` seconds.

    Notes
    -----
    Results are recognised by their ``ncanalysis_version`` attribute (added
    when ``ds`` lacks it) or, for JSON, the ``format`` key.  Writes are
    serialised by a lock file (:func:`results_lock_path`).  The new
    results are written aside, flushed to disk and renamed into place, so
    readers and crashes see either the old or the new results, never a mix
    and never none; a later write cleans up what a killed one left.
    """
    path = Path(path)
    if "ncanalysis_version" not in ds.attrs:
        # The mark by which a later save recognises these results as replaceable.
        from ._version import __version__

        ds = ds.assign_attrs(ncanalysis_version=__version__)
    with _locked(path, in_store, lock_timeout):
        # Journal entries pending now describe results that this write replaces:
        # folded later, they would bring replaced epochs back.
        journal = results_journal_path(path, in_store=in_store)
        pending = _journal_entries(journal)
        written = _save_unlocked(ds, path, in_store, lock_timeout)
        _drop_entries(journal, pending)
        return written


def _save_unlocked(ds: xr.Dataset, path: Path, in_store: bool, lock_timeout: float) -> Path:
    if in_store:
        if _is_hdf5_store(path):
            _save_hdf5_group(ds, path, lock_timeout)
            return path
        if not _is_zarr_store(path):
            raise InputError(f"{path}: not an ncanalysis store; cannot write its results group")
        target = path / RESULTS_GROUP
        _recover(target)
        _check_replaceable(target)
        _write_atomically(target, lambda tmp: _write_zarr(ds, tmp), directory=True)
        return target
    suffix = _suffix(path)
    _recover(path)
    _check_replaceable(path)
    if suffix == ".zarr":
        _write_atomically(path, lambda tmp: _write_zarr(ds, tmp), directory=True)
    elif suffix == ".nc":
        _write_atomically(
            path, lambda tmp: _for_writing(ds).to_netcdf(tmp, engine="h5netcdf")
        )
    elif suffix == ".json":
        text = json.dumps(to_json_dict(ds), allow_nan=False, indent=1)
        _write_atomically(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    else:
        text = to_csv_text(ds)
        _write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def update_results(
    new: xr.Dataset,
    path: str | os.PathLike,
    *,
    in_store: bool = False,
    replace: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> xr.Dataset:
    """Merge ``new`` into the results at ``path`` and write them, under the results lock.

    What is there is read at write time, under the lock, so that two processes
    adding epochs to the same results keep each other's.  Earlier results are
    kept when they come from the same ``source`` (not checked for a store's own
    results, which follow the store when it is moved) with the same settings
    (:data:`SETTINGS`) and model; otherwise (or with ``replace``) ``new``
    replaces them.

    Returns
    -------
    xarray.Dataset
        What was written.
    """
    path = Path(path)
    with _locked(path, in_store, lock_timeout):
        # Entries journalled before ``new`` come first, as if each had been saved.
        merged = _fold_unlocked(path, in_store, lock_timeout, last=(replace, new))
    assert merged is not None  # a fold with a last step always writes
    return merged


def _compatible(old: xr.Dataset, new: xr.Dataset, in_store: bool) -> bool:
    # A store's own results describe it wherever it has been moved or copied to.
    keys = ("num_classes", "num_features") + (() if in_store else ("source",))
    same = all(old.attrs.get(key) == new.attrs.get(key) for key in keys)
    return same and settings_of(old.attrs) == settings_of(new.attrs)


def _read_existing(path: Path, in_store: bool, lock_timeout: float) -> xr.Dataset | None:
    """The results at ``path`` (hold the lock), after recovering a killed write; or None.

    The saved results only: the journal is the caller's business.
    """
    if in_store:
        if _is_hdf5_store(path):
            _retry_locked(path, lock_timeout, lambda: _recover_hdf5(path))
        else:
            _recover(path / RESULTS_GROUP)
        return _load_saved(path) if _has_saved_store_results(path) else None
    _recover(path)
    if not os.path.lexists(path):
        return None
    _check_replaceable(path)
    return _load_saved(path)


# --------------------------------------------------------------------------- journal
#
# Saving every epoch by rewriting the whole results costs seconds per epoch (every
# variable rewritten and flushed, an HDF5 store growing by the results each time).
# Instead each epoch is appended to a journal as one small file, and the journal is
# folded into the results with one write at the end of a run (or by the next run,
# update_results or save_results).  A journal entry records one update_results call
# (the epoch's results and whether it replaces what was there): folding replays the
# entries in the order they were written, so the results are what saving each epoch
# at once would have made.  Replaying an entry already folded changes nothing (a
# merge replaces an epoch with the same values), which makes a fold killed between
# its write and the removal of its entries harmless; entries are removed oldest
# first, so that a kill part-way never leaves an older entry to override a newer one.

_JOURNAL_FORMAT = "ncanalysis-results-journal"
#: A journal entry: ``<time in ns, 20 digits>-<8 hex>.json``; names sort in writing order.
_JOURNAL_ENTRY = re.compile(r"[0-9]{20}-[0-9a-f]{8}\.json")
#: A journal entry being written: ``.<entry name>.tmp``.
_JOURNAL_TMP = re.compile(r"\.[0-9]{20}-[0-9a-f]{8}\.json\.tmp")
#: Age in seconds after which a journal temporary is taken as left by a killed writer
#: (a writer holds one for the milliseconds of one write and flush; there is no lock).
JOURNAL_TMP_STALE_S = 600.0
_last_stamp = [0]


def results_journal_path(path: str | os.PathLike, *, in_store: bool = False) -> Path:
    """The journal directory of the results at ``path`` (see :func:`journal_results`).

    ``.<name>.journal`` next to a results file, or ``.<store name>.results-journal``
    next to a store for its ``results`` group: beside the lock file, so that
    journalling never writes inside a store that a training run may be writing.
    """
    path = Path(os.path.abspath(path))
    name = f".{path.name}.{RESULTS_GROUP}-journal" if in_store else f".{path.name}.journal"
    return path.with_name(name)


def _stamp() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process."""
    _last_stamp[0] = max(time.time_ns(), _last_stamp[0] + 1)
    return _last_stamp[0]


def journal_results(
    new: xr.Dataset,
    path: str | os.PathLike,
    *,
    in_store: bool = False,
    replace: bool = False,
) -> Path:
    """Record ``new`` for the results at ``path`` without rewriting them.

    The cheap, durable equivalent of :func:`update_results`: ``new`` is written
    as one small JSON file (see :func:`to_json_dict`) in the journal directory
    (:func:`results_journal_path`), flushed and renamed into place, so a crash
    leaves the entry whole or absent.  Names are unique: no lock is taken.
    :func:`load_results` sees the entry at once; :func:`fold_results` (or the
    next :func:`update_results` or :func:`save_results`) writes it into the
    results.

    Parameters
    ----------
    new : xarray.Dataset
        Results of one or more epochs, as from :func:`ncanalysis.analyze`.
    path : path
        The results file, or with ``in_store=True`` the analysed store.
    in_store : bool
        For the ``results`` group of the store at ``path``.
    replace : bool
        The folded results start afresh from ``new`` (``update_results(replace=True)``).

    Returns
    -------
    pathlib.Path
        The journal entry written.
    """
    if "ncanalysis_version" not in new.attrs:
        from ._version import __version__

        new = new.assign_attrs(ncanalysis_version=__version__)
    journal = results_journal_path(path, in_store=in_store)
    if not journal.parent.is_dir():
        raise FileNotFoundError(f"{journal.parent}: no such directory (writing {path})")
    text = json.dumps({"format": _JOURNAL_FORMAT, "format_version": 1, "replace": replace,
                       "results": to_json_dict(new)}, allow_nan=False)
    name = f"{_stamp():020d}-{uuid.uuid4().hex[:8]}.json"
    for _ in range(3):
        if not journal.is_dir():
            journal.mkdir(exist_ok=True)
            _sync_entries(journal.parent)
        tmp = journal / f".{name}.tmp"
        try:
            with open(tmp, "x", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except FileNotFoundError:
            continue  # a fold removed the (empty) journal directory just now: make it again
        # The directory holds ``tmp``: no fold can remove it before this rename.
        os.replace(tmp, journal / name)
        _sync_entries(journal)
        return journal / name
    raise NCAnalysisError(f"{journal}: the journal directory kept vanishing while writing "
                          f"an entry for {path}")


def _sync_entries(directory: Path) -> None:
    """Flush a directory's own entries (not the files under it: :func:`_sync` does those)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _journal_entries(journal: Path) -> list[Path]:
    """The entries of a journal, in writing order."""
    if not journal.is_dir():
        return []
    return sorted((p for p in journal.iterdir() if _JOURNAL_ENTRY.fullmatch(p.name)),
                  key=lambda p: p.name)


def _read_entry(entry: Path) -> tuple[bool, xr.Dataset] | None:
    """``(replace, results)`` of a journal entry; None when a fold removed it meanwhile."""
    try:
        text = entry.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StoreFormatError(f"{entry}: journal entry is not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != _JOURNAL_FORMAT:
        raise StoreFormatError(f"{entry}: not an ncanalysis journal entry")
    if data.get("format_version") != 1:
        raise StoreFormatError(f"{entry}: journal format version "
                               f"{data.get('format_version')!r} is not supported")
    ds = _normalise(from_json_dict(data.get("results", {}), where=os.fspath(entry)))
    return bool(data.get("replace")), ds


def _read_journal(journal: Path) -> list[tuple[bool, xr.Dataset]]:
    steps = (_read_entry(entry) for entry in _journal_entries(journal))
    return [step for step in steps if step is not None]


def _replay(base: xr.Dataset | None, steps: Iterable[tuple[bool, xr.Dataset]],
            in_store: bool) -> xr.Dataset | None:
    """``base`` after each step as :func:`update_results` would have made it.

    Consecutive steps that merge (same model, source and settings, same variables)
    are first combined into one Dataset with a single concatenation: merging a
    hundred one-epoch entries one by one costs seconds.
    """
    merged = base
    group: list[xr.Dataset] = []
    for replace, new in steps:
        if group and not replace and _compatible(group[-1], new, in_store) \
                and set(new.variables) == set(group[-1].variables):
            group.append(new)
            continue
        if group:
            merged = _merge_group(merged, group)
        if replace or merged is None or not _compatible(merged, new, in_store):
            merged, group = None, [new]
        else:
            group = [new]
    if group:
        merged = _merge_group(merged, group)
    return merged


def _merge_group(base: xr.Dataset | None, group: list[xr.Dataset]) -> xr.Dataset:
    """``base`` (None: nothing) with the Datasets of ``group`` merged in, later ones winning.

    The Datasets of ``group`` have the same variables and attributes that make them
    compatible (see :func:`_replay`): their union is one concatenation.
    """
    if len(group) == 1:
        combined = group[0]
    else:
        latest = {epoch: i for i, ds in enumerate(group) for epoch in ds["epoch"].values.tolist()}
        parts = [ds.sel(epoch=[e for e in ds["epoch"].values.tolist() if latest[e] == i])
                 for i, ds in enumerate(group)]
        parts = [part for part in parts if part.sizes["epoch"]]
        splits = _ordered_splits(s for part in parts for s in part["split"].values.tolist())
        combined = xr.concat([_with_splits(part, splits) for part in parts], dim="epoch",
                             data_vars="all", coords="minimal", compat="override",
                             join="exact", combine_attrs="drop").sortby("epoch")
        combined.attrs = dict(group[-1].attrs)
        combined.attrs.update(terminal_phase(combined["epoch"].values,
                                             combined["split"].values.tolist(),
                                             combined["accuracy"].values))
        combined = describe(combined)
    return combined if base is None else merge_results(base, combined)


def _drop_entries(journal: Path, entries: Sequence[Path]) -> None:
    """Remove folded entries, oldest first, then the journal when nothing else is there."""
    for entry in entries:
        entry.unlink(missing_ok=True)
    if not journal.is_dir():
        return
    stale = time.time() - JOURNAL_TMP_STALE_S
    for tmp in journal.iterdir():
        if _JOURNAL_TMP.fullmatch(tmp.name) and tmp.lstat().st_mtime < stale:
            tmp.unlink(missing_ok=True)
    try:
        journal.rmdir()
    except OSError as err:
        # Another process is writing an entry: the journal stays for its fold.
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def _fold_unlocked(path: Path, in_store: bool, lock_timeout: float,
                   last: tuple[bool, xr.Dataset] | None = None) -> xr.Dataset | None:
    """Write the results with the journal (then ``last``) replayed onto them (hold the lock)."""
    journal = results_journal_path(path, in_store=in_store)
    entries = _journal_entries(journal)
    # Under the lock no other fold removes these entries: each one reads.
    steps = [step for step in map(_read_entry, entries) if step is not None]
    if last is not None:
        steps.append(last)
    if not steps:
        _drop_entries(journal, [])
        return None
    base = None
    if not any(replace for replace, _ in steps):
        base = _read_existing(path, in_store, lock_timeout)
    merged = _replay(base, steps, in_store)
    assert merged is not None
    _save_unlocked(merged, path, in_store, lock_timeout)
    _drop_entries(journal, entries)
    return merged


def fold_results(
    path: str | os.PathLike,
    *,
    in_store: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> xr.Dataset | None:
    """Write the journal's entries (:func:`journal_results`) into the results at ``path``.

    One crash-safe write under the results lock, as :func:`update_results`
    makes; the entries are removed afterwards.  A kill at any moment loses
    nothing: until the write is in place the entries are still there, and
    folding an entry twice gives the same results.

    Returns
    -------
    xarray.Dataset or None
        What was written; None when the journal held no entry (nothing written).
    """
    path = Path(path)
    if not _journal_entries(results_journal_path(path, in_store=in_store)):
        return None  # the common case, decided without waiting for the lock
    with _locked(path, in_store, lock_timeout):
        return _fold_unlocked(path, in_store, lock_timeout)


def _retry_locked(path: Path, timeout: float, action: Any) -> Any:
    """Run ``action()``, retrying while another process holds the HDF5 file lock.

    HDF5 refuses a second process a file open for writing (BlockingIOError): a
    training run appending epochs holds it for each write.  Backoff doubles from
    10 ms to 1 s, for ``timeout`` seconds in all.
    """
    delay, deadline = 0.01, time.monotonic() + timeout
    while True:
        try:
            return action()
        except BlockingIOError as err:
            if time.monotonic() >= deadline:
                raise NCAnalysisError(
                    f"{path}: the HDF5 file stayed locked by another process for "
                    f"{timeout:g} s (a training run writing it?); results not written"
                ) from err
        time.sleep(delay)
        delay = min(2 * delay, 1.0)


def _hdf5_aside(handle: Any, tag: str) -> list[str]:
    pattern = re.compile(rf"\.{RESULTS_GROUP}\.{tag}-[0-9a-f]{{8}}")
    return sorted(name for name in handle if pattern.fullmatch(name))


def _recover_hdf5(path: Path) -> None:
    """The HDF5 twin of :func:`_recover`, on the groups inside the store file."""
    import h5py

    with h5py.File(path, "r") as handle:
        dirty = bool(_hdf5_aside(handle, _TMP_TAG) or _hdf5_aside(handle, _OLD_TAG))
    if not dirty:
        return
    with h5py.File(path, "a") as handle:
        backups = _hdf5_aside(handle, _OLD_TAG)
        if backups and RESULTS_GROUP not in handle:
            handle.move(backups.pop(), RESULTS_GROUP)
        for name in [*backups, *_hdf5_aside(handle, _TMP_TAG)]:
            del handle[name]


def _save_hdf5_group(ds: xr.Dataset, path: Path, lock_timeout: float) -> None:
    """Write the results group of an HDF5 store without ever deleting the old one first.

    The new group is written under a temporary name and flushed (the file is
    closed); then, in one short open, the old group is renamed aside, the new
    one renamed to ``results`` and the old one deleted.  A kill at any point
    leaves the old or the new results reachable (:func:`_recover_hdf5`).
    HDF5 does not give the space of deleted groups back: the file grows by the
    size of the results on every write (``h5repack`` reclaims it).
    """
    import h5py

    _retry_locked(path, lock_timeout, lambda: _recover_hdf5(path))
    with h5py.File(path, "r") as handle:
        if ROOT_ATTR not in handle.attrs:
            raise InputError(f"{path}: not an ncanalysis store; cannot write its results group")
        if RESULTS_GROUP in handle and not _is_results_attrs(dict(handle[RESULTS_GROUP].attrs)):
            raise _foreign(path / RESULTS_GROUP, "a group")
    tmp = f".{RESULTS_GROUP}.{_TMP_TAG}-{uuid.uuid4().hex[:8]}"
    _retry_locked(path, lock_timeout, lambda: _for_writing(ds).to_netcdf(
        path, mode="a", group=tmp, engine="h5netcdf"))

    def swap() -> None:
        with h5py.File(path, "a") as handle:
            if RESULTS_GROUP in handle:
                old = f".{RESULTS_GROUP}.{_OLD_TAG}-{uuid.uuid4().hex[:8]}"
                handle.move(RESULTS_GROUP, old)
                handle.move(tmp, RESULTS_GROUP)
                del handle[old]
            else:
                handle.move(tmp, RESULTS_GROUP)

    _retry_locked(path, lock_timeout, swap)


def _write_zarr(ds: xr.Dataset, path: Path) -> None:
    # Consolidated into the results group's own zarr.json (``path`` is that
    # group, written as a root of its own), so that xarray.open_zarr and
    # zarr.open_consolidated read every variable's metadata from one file.  The
    # store's root is not consolidated (the store reader lists it directly).
    with warnings.catch_warnings():
        # zarr 3.1 warns that consolidated metadata is not yet part of the Zarr v3
        # specification; zarr-python and xarray read and write it all the same.
        warnings.filterwarnings("ignore", message="Consolidated metadata",
                                category=UserWarning)
        _for_writing(ds).to_zarr(path, mode="w-", consolidated=True, zarr_format=3)


def _readable(path: Path) -> Path:
    """``path``, or the backup a write killed between its two renames left (read-only use)."""
    if not os.path.lexists(path):
        backups = _siblings(path, _OLD_TAG)
        if backups:
            return backups[-1]
    return path


def _hdf5_results_group(handle: Any) -> str | None:
    """The results group of an open HDF5 store, or the backup a killed swap left; or None."""
    if RESULTS_GROUP in handle:
        return RESULTS_GROUP
    backups = _hdf5_aside(handle, _OLD_TAG)
    return backups[-1] if backups else None


def has_store_results(path: str | os.PathLike) -> bool:
    """Return True when the store at ``path`` holds a ``results`` group or journalled results."""
    if _journal_entries(results_journal_path(path, in_store=True)):
        return True
    return _has_saved_store_results(Path(path))


def _has_saved_store_results(path: Path) -> bool:
    """Whether the store at ``path`` holds a ``results`` group (the journal aside)."""
    if path.is_file():
        import h5py

        def probe() -> bool:
            with h5py.File(path, "r") as handle:
                return _hdf5_results_group(handle) is not None

        return bool(_retry_locked(path, LOCK_TIMEOUT_S, probe))
    return (_readable(path / RESULTS_GROUP) / "zarr.json").is_file()


def _is_hdf5_store(path: Path) -> bool:
    """Whether a store path is HDF5, decided as the store reader does (a file, or the suffix)."""
    return path.is_file() or is_hdf5_path(path)


def _is_zarr_store(path: Path) -> bool:
    """Return True when ``path`` is the root of a Zarr ncanalysis store (not a results group)."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attributes = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
    except json.JSONDecodeError as err:
        raise StoreFormatError(f"{meta}: not valid JSON: {err}") from err
    return ROOT_ATTR in attributes


def load_results(path: str | os.PathLike) -> xr.Dataset:
    """Read results written by :func:`save_results`.

    Parameters
    ----------
    path : path
        A ``.zarr``, ``.nc``, ``.json`` or ``.csv`` results file, or a store
        (Zarr directory or HDF5 file) holding a ``results`` group.

    Returns
    -------
    xarray.Dataset
        In memory, with plain Python attributes.  A CSV gives the scalar
        metrics only (no ``class`` dimension).

    Raises
    ------
    StoreFormatError
        When ``path`` does not exist, holds no results, or cannot be parsed.

    Notes
    -----
    Epochs journalled (:func:`journal_results`) and not yet folded into the
    results are included, as they will be once folded.
    """
    path = Path(path)
    is_results_file = path.is_file() and path.suffix.lower() in RESULTS_FORMATS
    in_store = _is_zarr_store(path) or (path.is_file() and not is_results_file)
    # The journal first: an entry that a fold removes after this listing is in the
    # results read below.
    steps = _read_journal(results_journal_path(path, in_store=in_store))
    if steps:
        saved = (_has_saved_store_results(path) if in_store
                 else os.path.lexists(path) or os.path.lexists(_readable(path)))
        base = _load_saved(path) if saved else None
        merged = _replay(base, steps, in_store)
        assert merged is not None
        return merged
    return _load_saved(path)


def _load_saved(path: Path) -> xr.Dataset:
    """The results that :func:`save_results` wrote at ``path`` (the journal aside)."""
    where = os.fspath(path)
    if not path.exists() and not _readable(path).exists():
        raise StoreFormatError(f"{where}: no such file or directory")
    is_results_file = path.is_file() and path.suffix.lower() in RESULTS_FORMATS
    if _is_zarr_store(path) or (path.is_file() and not is_results_file):
        import h5py

        if path.is_file() and not h5py.is_hdf5(path):
            raise InputError(f"{where}: neither a results file ({', '.join(RESULTS_FORMATS)}) "
                             "nor a store")
        if not _has_saved_store_results(path):
            raise StoreFormatError(
                f"{where}: the store holds no results; run `ncanalysis run {where}` first"
            )
        if path.is_file():
            def read() -> xr.Dataset:
                with h5py.File(path, "r") as handle:
                    group = _hdf5_results_group(handle)
                return _open_with(xr.open_dataset, where, path, group=group,
                                  engine="h5netcdf")

            return _retry_locked(path, LOCK_TIMEOUT_S, read)
        return _open_with(xr.open_zarr, where, _readable(path / RESULTS_GROUP),
                          consolidated=False, chunks=None)
    suffix = _suffix(path)
    path = _readable(path)
    if suffix == ".zarr":
        if not (path / "zarr.json").is_file():
            raise StoreFormatError(f"{where}: not a Zarr v3 group (no zarr.json)")
        return _open_with(xr.open_zarr, where, path, consolidated=False, chunks=None)
    if suffix == ".nc":
        return _open_with(xr.open_dataset, where, path, engine="h5netcdf")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise StoreFormatError(f"{where}: not valid JSON: {err}") from err
        return _normalise(from_json_dict(data, where=where))
    return _normalise(from_csv_text(text, where=where))


def _open_with(opener: Any, where: str, *args: Any, **kwargs: Any) -> xr.Dataset:
    """Open with an xarray backend and load; unreadable input is a format error."""
    try:
        with opener(*args, **kwargs) as ds:
            return _normalise(ds)
    except BlockingIOError:
        raise  # another process holds the HDF5 file: the caller waits and retries
    except (OSError, ValueError, KeyError) as err:
        raise StoreFormatError(f"{where}: cannot read results: {err}") from err


# --------------------------------------------------------------------------- resume


def run_settings(
    *,
    global_mean: str = "class",
    pinv_rtol: float = 1e-10,
    gemm_dtype: str = "float32",
    ncc: bool = True,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The settings of an analysis: ``AnalysisOptions(...).settings()`` (kept for callers)."""
    return AnalysisOptions(global_mean=global_mean, pinv_rtol=pinv_rtol,  # type: ignore[arg-type]
                           gemm_dtype=gemm_dtype, ncc=ncc, splits=splits).settings()  # type: ignore[arg-type]


@dataclass
class ResumePlan:
    """What a new run has to do, given the results already at its destination.

    Attributes
    ----------
    todo : list of int
        Epochs to analyse.
    done : list of int
        Epochs asked for that are already analysed with the same settings.
    keep : xarray.Dataset or None
        Old results to merge the new epochs into (None: start afresh).
    reason : str
        One line for the log: why the plan is what it is.
    """

    todo: list[int]
    done: list[int]
    keep: xr.Dataset | None = field(repr=False)
    reason: str


def plan_resume(
    existing: xr.Dataset | None,
    epochs: Sequence[int],
    settings: dict[str, Any],
    identities: Mapping[int, str | None] | None = None,
) -> ResumePlan:
    """Decide which of ``epochs`` to analyse, given the ``existing`` results.

    An epoch is skipped when it is in ``existing``, ``existing`` was made
    with the same ``settings`` (see :data:`SETTINGS`) and, when
    ``identities`` (epoch -> the store's :meth:`~ncanalysis.store.Store.epoch_identity`)
    is given, the epoch's identity is the one recorded in the results: an
    epoch rewritten since (a training run restarted from a checkpoint) is
    analysed again.  When the settings differ, every epoch is analysed and the
    old results are dropped: one results Dataset holds one set of settings.
    """
    epochs = [int(e) for e in epochs]
    if existing is None:
        return ResumePlan(epochs, [], None, "no earlier results")
    old = settings_of(existing.attrs)
    changed = [f"{key} {old[key]!r} -> {settings[key]!r}" for key in SETTINGS
               if old[key] != settings[key]]
    if changed:
        return ResumePlan(epochs, [], None,
                          "earlier results used other settings (" + "; ".join(changed)
                          + "): analysing every epoch again and replacing them")
    analysed = set(existing["epoch"].values.tolist())
    replaced: list[int] = []
    if identities is not None:
        recorded = (dict(zip(existing["epoch"].values.tolist(),
                             existing[IDENTITY].values.tolist()))
                    if IDENTITY in existing.data_vars else {})
        replaced = [e for e in epochs if e in analysed
                    and recorded.get(e, "") != (identities.get(e) or "")]
    done = [e for e in epochs if e in analysed and e not in replaced]
    todo = [e for e in epochs if e not in done]
    reason = f"{len(done)} epoch(s) already analysed with the same settings"
    if replaced:
        reason += (f"; epoch(s) {', '.join(map(str, replaced))} were rewritten in the store "
                   "since they were analysed (new epoch identity): analysing them again")
    return ResumePlan(todo, done, existing, reason)


def _with_splits(ds: xr.Dataset, splits: list[str]) -> xr.Dataset:
    """``ds`` reindexed to ``splits``; new splits get the missing-value markers."""
    fill = {name: _missing_value(str(name)) for name in ds.data_vars if name != IDENTITY}
    return ds.reindex(split=splits, fill_value=fill)


def _with_identity(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with an epoch_identity variable; results from before identities get ""."""
    if IDENTITY in ds.data_vars:
        return ds
    return ds.assign({IDENTITY: ("epoch", np.full(ds.sizes["epoch"], "", dtype=str))})


def merge_results(old: xr.Dataset, new: xr.Dataset) -> xr.Dataset:
    """Old results with the epochs of ``new`` added (``new`` wins where both have one).

    The attributes are those of ``new``, with ``tpt_start_epoch`` and
    ``tpt_stable_epoch`` recomputed over the merged epochs.

    Raises
    ------
    InputError
        When the two do not describe the same classes.
    """
    for key in ("num_classes", "num_features"):
        if old.attrs.get(key) != new.attrs.get(key):
            raise InputError(
                f"cannot merge results with {key}={old.attrs.get(key)} and "
                f"{key}={new.attrs.get(key)}: they come from different models"
            )
    if "class" in new.dims and "class" not in old.dims:
        # Old results read from CSV keep no per-class variables; neither can the merge.
        new = new.drop_dims("class")
    if "n_classes_present" in new.data_vars and "n_classes_present" not in old.data_vars:
        # Results made before splits could miss classes: every analysed split had all C.
        old = old.assign(n_classes_present=xr.where(
            old["n_samples"] >= 0, int(old.attrs["num_classes"]), -1).astype(np.int64))
    if IDENTITY in old.data_vars or IDENTITY in new.data_vars:
        old, new = _with_identity(old), _with_identity(new)
    repeated = np.intersect1d(old["epoch"].values, new["epoch"].values)
    old = old.drop_sel(epoch=repeated)
    if old.sizes["epoch"] == 0:
        merged = new.copy()
    else:
        splits = _ordered_splits([*old["split"].values.tolist(), *new["split"].values.tolist()])
        merged = xr.concat(
            [_with_splits(old, splits), _with_splits(new, splits)],
            dim="epoch",
            data_vars="all",
            coords="minimal",
            compat="override",
            join="exact",
            combine_attrs="drop",
        ).sortby("epoch")
    merged.attrs = dict(new.attrs)
    merged.attrs.update(terminal_phase(merged["epoch"].values, merged["split"].values.tolist(),
                                       merged["accuracy"].values))
    return describe(merged)
