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

One concern per module, imported one way (each only from those above it):

- :mod:`.formats`: the codecs (.zarr/.nc/.json/.csv) and the in-memory conventions;
- :mod:`.files`: recognising results, refusing foreign destinations, the lock,
  atomic writes and their recovery, HDF5 lock retry;
- :mod:`.resume`: :func:`plan_resume`, :class:`ResumePlan`, :func:`merge_results`;
- :mod:`.journal`: :func:`journal_results` and replaying the journal;
- :mod:`.saveload`: :func:`save_results`, :func:`update_results`,
  :func:`fold_results`, :func:`load_results`, :func:`has_store_results`.
"""

from __future__ import annotations

from ..options import ALL_SPLITS, SETTINGS, settings_of
from .files import LOCK_TIMEOUT_S, check_replaceable, results_lock_path
from .formats import RESULTS_FORMATS, from_csv_text, from_json_dict, to_csv_text, to_json_dict
from .journal import journal_results, results_journal_path
from .resume import ResumePlan, merge_results, plan_resume, run_settings
from .saveload import fold_results, has_store_results, load_results, save_results, update_results

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
