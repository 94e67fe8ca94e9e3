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

Resuming: :func:`run_settings` describes the options of an analysis,
:func:`plan_resume` compares them with stored results and says which epochs
still need work, and :func:`merge_results` adds new epochs to old results.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError, StoreFormatError
from .metrics import INT_VARIABLES
from .store.spec import RESULTS_GROUP, ROOT_ATTR, is_hdf5_path

__all__ = [
    "RESULTS_FORMATS",
    "ALL_SPLITS",
    "SETTINGS",
    "save_results",
    "load_results",
    "has_store_results",
    "to_json_dict",
    "from_json_dict",
    "to_csv_text",
    "from_csv_text",
    "run_settings",
    "settings_of",
    "ResumePlan",
    "plan_resume",
    "merge_results",
    "tpt_start_epoch",
]

#: Suffixes of the stand-alone result files that save_results and load_results know.
RESULTS_FORMATS = (".zarr", ".nc", ".json", ".csv")
#: Value of the ``splits_selected`` attribute when every split was analysed
#: (not a valid split name, see docs/store-format.md).
ALL_SPLITS = "*"
#: The attributes that make two analyses comparable: an epoch analysed with the
#: same values need not be analysed again.
SETTINGS = ("global_mean", "pinv_rtol", "gemm_dtype", "ncc_reference_split", "splits_selected")

_JSON_FORMAT = "ncanalysis-results"
_JSON_VERSION = 1
_CSV_ATTR_PREFIX = "# "
#: The integer variables of a results Dataset (docs/dev/contract.md); -1 marks a missing split.


# --------------------------------------------------------------------------- helpers


def _missing_value(name: str) -> float | int:
    """The value that marks a split absent from an epoch (see docs/dev/contract.md)."""
    return -1 if name in INT_VARIABLES else np.nan


def _ordered_splits(names: Iterable[str]) -> list[str]:
    """"train" first, then the others sorted: the analyser's order."""
    return sorted(set(names), key=lambda s: (s != "train", s))


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
    for name in ("split", "class_name"):
        if name in ds.coords and ds[name].dtype.kind not in "U":
            text = np.asarray(ds[name].values.tolist(), dtype=str)
            ds = ds.assign_coords({name: (ds[name].dims, text)})
    ds.attrs = {key: _plain(value) for key, value in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {}
        ds[name].encoding = {}
    return ds


def _for_writing(ds: xr.Dataset) -> xr.Dataset:
    """A copy whose string coordinates are object arrays.

    Zarr v3 has a specified variable-length ``string`` type but none for numpy's
    fixed-width ``<U`` strings (zarr warns that they may become unreadable);
    object arrays are written as the former.
    """
    out = ds.copy()
    for name in ("split", "class_name"):
        if name in out.coords:
            out = out.assign_coords({name: (out[name].dims, out[name].values.astype(object))})
    for name in out.variables:
        out[name].encoding = {}
    return out


def _temporary_sibling(path: Path) -> Path:
    """A fresh path in the same directory, so that os.replace is a rename."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _replace_tree(tmp: Path, path: Path) -> None:
    """Put the directory ``tmp`` in place of ``path`` (which may exist)."""
    if path.exists():
        old = _temporary_sibling(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def _write_atomically(path: Path, write: Any, *, directory: bool = False) -> None:
    """Call ``write(tmp)`` and move the result to ``path``.

    A reader (or a crash) never sees a half-written results file: the old one
    stays until the new one is complete.
    """
    tmp = _temporary_sibling(path)
    try:
        write(tmp)
        if directory:
            _replace_tree(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


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
    return {"dims": list(variable.dims), "dtype": dtype, "data": _json_values(values)}


def to_json_dict(ds: xr.Dataset) -> dict:
    """A results Dataset as a JSON-able dict holding every variable and attribute.

    Layout: ``{"format": "ncanalysis-results", "format_version": 1, "attrs": {...},
    "coords": {name: {"dims", "dtype", "data"}}, "data_vars": {...}}``.  Float
    NaN is written as ``null`` and infinities as the strings ``"Infinity"`` and
    ``"-Infinity"``, so the output is strict JSON; Python writes floats with the
    shortest repr that reads back to the same double, so numbers round-trip.
    """
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
        return (tuple(entry["dims"]), values)

    try:
        coords = {name: variable(entry) for name, entry in data["coords"].items()}
        data_vars = {name: variable(entry) for name, entry in data["data_vars"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise StoreFormatError(f"{where}: malformed results document: {err}") from err
    return xr.Dataset(data_vars, coords=coords, attrs=dict(data.get("attrs", {})))


# --------------------------------------------------------------------------- CSV


def _csv_columns() -> tuple[str, ...]:
    """CSV columns after epoch and split: the counts, then the scalar metrics."""
    # Imported here: ncanalysis.metrics loads numba, which reading Zarr, netCDF
    # or JSON results (``ncanalysis plot``) does not need.
    from .metrics import SCALAR_METRICS

    return ("n_samples", "nc1_rank", "n_classes_present") + SCALAR_METRICS


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
    writer.writerow(["epoch", "split", *columns])
    values = {name: ds[name].transpose("epoch", "split").values for name in columns}
    for i, epoch in enumerate(ds["epoch"].values.tolist()):
        for j, split in enumerate(ds["split"].values.tolist()):
            if "n_samples" in values and values["n_samples"][i, j] < 0:
                continue
            writer.writerow([epoch, split, *(repr(_plain(values[c][i, j])) for c in columns)])
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
    columns = header[2:]
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
        for number, row in enumerate(rows, start=body_start + 2):
            if len(row) != len(header):
                raise StoreFormatError(f"{where}: line {number}: {len(row)} fields, "
                                       f"expected {len(header)}")
            i, j = epochs.index(int(row[0])), splits.index(row[1])
            for c, text_value in zip(columns, row[2:]):
                data[c][i, j] = int(text_value) if c in INT_VARIABLES else float(text_value)
    except ValueError as err:
        raise StoreFormatError(f"{where}: malformed value: {err}") from err
    return xr.Dataset(
        {c: (("epoch", "split"), v) for c, v in data.items()},
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


def save_results(ds: xr.Dataset, path: str | os.PathLike, *, in_store: bool = False) -> Path:
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
        Write the ``results`` group of the store at ``path``.  In a Zarr store
        the group is replaced in one rename; in an HDF5 store the group is
        deleted and written again (HDF5 allows one writer: do not do this while
        a training run is writing the file; use a separate results file).

    Returns
    -------
    pathlib.Path
        Where the results went (the group's directory for a Zarr store).

    Notes
    -----
    Stand-alone files are written to a temporary sibling and renamed into
    place, so readers see either the old or the new results, never a mix.
    """
    path = Path(path)
    if in_store:
        if _is_hdf5_store(path):
            _save_hdf5_group(ds, path)
            return path
        target = path / RESULTS_GROUP
        _write_atomically(target, lambda tmp: _write_zarr(ds, tmp), directory=True)
        return target
    suffix = _suffix(path)
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


def _write_zarr(ds: xr.Dataset, path: Path) -> None:
    # Unconsolidated: the results are small, and the store's own (root)
    # consolidated metadata must not be asked to describe them.
    _for_writing(ds).to_zarr(path, mode="w-", consolidated=False, zarr_format=3)


def _save_hdf5_group(ds: xr.Dataset, path: Path) -> None:
    import h5py

    with h5py.File(path, "a") as handle:
        if RESULTS_GROUP in handle:
            del handle[RESULTS_GROUP]
    _for_writing(ds).to_netcdf(path, mode="a", group=RESULTS_GROUP, engine="h5netcdf")


def has_store_results(path: str | os.PathLike) -> bool:
    """Return True when the store at ``path`` holds a ``results`` group."""
    path = Path(path)
    if path.is_file():
        import h5py

        with h5py.File(path, "r") as handle:
            return RESULTS_GROUP in handle
    return (path / RESULTS_GROUP / "zarr.json").is_file()


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
    """
    path = Path(path)
    where = os.fspath(path)
    if not path.exists():
        raise StoreFormatError(f"{where}: no such file or directory")
    is_results_file = path.is_file() and path.suffix.lower() in RESULTS_FORMATS
    if _is_zarr_store(path) or (path.is_file() and not is_results_file):
        import h5py

        if path.is_file() and not h5py.is_hdf5(path):
            raise InputError(f"{where}: neither a results file ({', '.join(RESULTS_FORMATS)}) "
                             "nor a store")
        if not has_store_results(path):
            raise StoreFormatError(
                f"{where}: the store holds no results; run `ncanalysis run {where}` first"
            )
        if path.is_file():
            return _open_with(xr.open_dataset, where, path, group=RESULTS_GROUP,
                              engine="h5netcdf")
        return _open_with(xr.open_zarr, where, path / RESULTS_GROUP, consolidated=False,
                          chunks=None)
    suffix = _suffix(path)
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
    """The settings of an analysis, as the attributes its results carry.

    ``splits=None`` (every split) is recorded as :data:`ALL_SPLITS`; a list as
    its sorted, comma-separated names.
    """
    return {
        "global_mean": global_mean,
        "pinv_rtol": float(pinv_rtol),
        "gemm_dtype": gemm_dtype,
        "ncc_reference_split": "train" if ncc else "none",
        "splits_selected": ALL_SPLITS if splits is None else ",".join(sorted(set(splits))),
    }


def settings_of(ds: xr.Dataset) -> dict[str, Any]:
    """The settings recorded in a results Dataset's attributes.

    Results saved by a library call carry no ``splits_selected``; they are
    taken to cover every split (the default of :func:`ncanalysis.analyze`).
    """
    found = {key: ds.attrs.get(key) for key in SETTINGS}
    if found["splits_selected"] is None:
        found["splits_selected"] = ALL_SPLITS
    if found["pinv_rtol"] is not None:
        found["pinv_rtol"] = float(found["pinv_rtol"])
    return found


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
    existing: xr.Dataset | None, epochs: Sequence[int], settings: dict[str, Any]
) -> ResumePlan:
    """Decide which of ``epochs`` to analyse, given the ``existing`` results.

    An epoch is skipped when it is in ``existing`` and ``existing`` was made
    with the same ``settings`` (see :data:`SETTINGS`).  When the settings
    differ, every epoch is analysed and the old results are dropped: one
    results Dataset holds one set of settings.
    """
    epochs = [int(e) for e in epochs]
    if existing is None:
        return ResumePlan(epochs, [], None, "no earlier results")
    old = settings_of(existing)
    changed = [f"{key} {old[key]!r} -> {settings[key]!r}" for key in SETTINGS
               if old[key] != settings[key]]
    if changed:
        return ResumePlan(epochs, [], None,
                          "earlier results used other settings (" + "; ".join(changed)
                          + "): analysing every epoch again and replacing them")
    analysed = set(existing["epoch"].values.tolist())
    done = [e for e in epochs if e in analysed]
    todo = [e for e in epochs if e not in analysed]
    return ResumePlan(todo, done, existing,
                      f"{len(done)} epoch(s) already analysed with the same settings")


def tpt_start_epoch(ds: xr.Dataset) -> int:
    """The first epoch whose train accuracy is exactly 1, or -1 (no such epoch)."""
    if "train" not in ds["split"].values.tolist():
        return -1
    accuracy = ds["accuracy"].sel(split="train").values
    reached = np.flatnonzero(accuracy == 1.0)
    return int(ds["epoch"].values[reached[0]]) if reached.size else -1


def _with_splits(ds: xr.Dataset, splits: list[str]) -> xr.Dataset:
    """``ds`` reindexed to ``splits``; new splits get the missing-value markers."""
    fill = {name: _missing_value(name) for name in ds.data_vars}
    return ds.reindex(split=splits, fill_value=fill)


def merge_results(old: xr.Dataset, new: xr.Dataset) -> xr.Dataset:
    """Old results with the epochs of ``new`` added (``new`` wins where both have one).

    The attributes are those of ``new``, with ``tpt_start_epoch`` recomputed
    over the merged epochs.

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
    merged.attrs["tpt_start_epoch"] = tpt_start_epoch(merged)
    return merged
