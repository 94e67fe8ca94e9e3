"""Save, update, fold and load results: the public I/O, built on the modules below.

Picks the form from the path (:mod:`.formats`), writes it safely under the
results lock (:mod:`.files`), and folds in or reads the journal (:mod:`.journal`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import xarray as xr

from ..errors import InputError, StoreFormatError
from ..store.spec import RESULTS_GROUP, ROOT_ATTR
from .files import (
    _OLD_TAG,
    _TMP_TAG,
    LOCK_TIMEOUT_S,
    _check_replaceable,
    _foreign,
    _hdf5_results_group,
    _is_hdf5_store,
    _is_results_attrs,
    _is_zarr_store,
    _locked,
    _readable,
    _recover,
    _recover_hdf5,
    _retry_locked,
    _write_atomically,
)
from .formats import (
    RESULTS_FORMATS,
    _for_writing,
    _normalise,
    _open_with,
    _suffix,
    _write_zarr,
    from_csv_text,
    from_json_dict,
    to_csv_text,
    to_json_dict,
)
from .journal import (
    _drop_entries,
    _journal_entries,
    _read_entry,
    _read_journal,
    _replay,
    results_journal_path,
)


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
        from .._version import __version__

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
