"""The results journal: one small file per update, replayed onto the results.

Writing entries (:func:`journal_results`), listing and reading them, replaying
them as :func:`~ncanalysis.results.update_results` would have, and removing
folded ones.  Folding them into the results file is
:func:`~ncanalysis.results.fold_results` (:mod:`.saveload`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import xarray as xr

from ..errors import NCAnalysisError, StoreFormatError
from ..metrics import terminal_phase
from ..store.spec import RESULTS_GROUP
from ..variables import describe
from .files import _sync_entries
from .formats import _normalise, _ordered_splits, from_json_dict, to_json_dict
from .resume import _compatible, _with_splits, merge_results

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
        from .._version import __version__

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
