"""The results codecs: what a results Dataset looks like in each form on disk.

``.zarr`` and ``.nc`` through xarray's backends, ``.json`` (:func:`to_json_dict`)
and ``.csv`` (:func:`to_csv_text`) written here, and the conventions a Dataset
is given when it is read back (:func:`_normalise`) or written (:func:`_for_writing`).
The lowest module of :mod:`ncanalysis.results`: it imports none of the others.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError, StoreFormatError
from ..metrics import COUNT_VARIABLES, INT_VARIABLES, SCALAR_METRICS
from ..store.spec import split_order
from ..variables import describe

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


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in RESULTS_FORMATS:
        raise InputError(
            f"{path}: unknown results format {suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(RESULTS_FORMATS)}"
        )
    return suffix


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


def _open_with(opener: Any, where: str, *args: Any, **kwargs: Any) -> xr.Dataset:
    """Open with an xarray backend and load; unreadable input is a format error."""
    try:
        with opener(*args, **kwargs) as ds:
            return _normalise(ds)
    except BlockingIOError:
        raise  # another process holds the HDF5 file: the caller waits and retries
    except (OSError, ValueError, KeyError) as err:
        raise StoreFormatError(f"{where}: cannot read results: {err}") from err
