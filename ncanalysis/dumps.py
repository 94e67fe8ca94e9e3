"""Analyse one epoch dumped by another project, under that project's own array names.

Other code bases save penultimate features, labels and the last layer to an
HDF5 file, a Zarr group or a NumPy ``.npz`` archive with names of their own
choosing.  :func:`analyze_file` opens such a file, picks the arrays by name and
hands them to :func:`ncanalysis.analyze_arrays`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xarray as xr

from .engine import analyze_arrays
from .errors import InputError

__all__ = ["analyze_file", "open_dump", "dump_kind"]


def dump_kind(path: str | os.PathLike) -> str:
    """The format of a dump: ``"npz"``, ``"hdf5"`` or ``"zarr"``.

    ``.npz`` files are recognised by suffix, HDF5 files by their signature
    (whatever their suffix), Zarr groups as directories.

    Raises
    ------
    InputError
        When ``path`` is missing or none of the three.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        return "zarr"
    if path.suffix.lower() == ".npz":
        return "npz"
    if h5py.is_hdf5(path):
        return "hdf5"
    raise InputError(
        f"{path}: not an HDF5 file, a Zarr directory or a .npz archive; cannot read arrays"
    )


class _Dump:
    """Named arrays of an open dump file, looked up with helpful errors."""

    def __init__(self, path: Path, root: Any, kind: str):
        self.path = path
        self.root = root
        self.kind = kind

    def names(self) -> list[str]:
        """Every array in the file, by the path to use as its key."""
        if self.kind == "npz":
            return sorted(self.root.files)
        if self.kind == "zarr":
            return sorted(name for name, node in self.root.members(max_depth=None)
                          if type(node).__name__ == "Array")
        found: list[str] = []

        def visit(name: str, node: Any) -> None:
            if type(node).__name__ == "Dataset":
                found.append(name)

        self.root.visititems(visit)
        return sorted(found)

    def array(self, key: str, role: str) -> Any:
        """The array stored under ``key``; ``role`` (e.g. "labels") names it in errors.

        HDF5 datasets and Zarr arrays are returned unread (the analyser reads
        them block by block); npz members are read whole by NumPy.
        """
        try:
            node = self.root[key]
        except KeyError:
            node = None
        if node is None or (self.kind != "npz" and not hasattr(node, "dtype")):
            problem = f"no array {key!r}" if node is None else f"{key!r} is a group, not an array"
            available = ", ".join(self.names()) or "(none)"
            raise InputError(
                f"{self.path}: {problem} (asked for as {role}); arrays in this "
                f"{self.kind} file: {available}"
            )
        return node


@contextlib.contextmanager
def open_dump(path: str | os.PathLike) -> Iterator[_Dump]:
    """Open a dump file read-only for the duration of a ``with`` block."""
    path = Path(path)
    kind = dump_kind(path)
    if kind == "npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as root:
            yield _Dump(path, root, kind)
    elif kind == "hdf5":
        import h5py

        with h5py.File(path, "r") as root:
            yield _Dump(path, root, kind)
    else:
        import zarr

        try:
            root = zarr.open_group(path, mode="r")
        except (FileNotFoundError, ValueError) as err:
            raise InputError(f"{path}: not a Zarr group: {err}") from err
        yield _Dump(path, root, kind)


def analyze_file(
    path: str | os.PathLike,
    *,
    features: str,
    labels: str,
    weight: str,
    bias: str | None = None,
    test_features: str | None = None,
    test_labels: str | None = None,
    **options: Any,
) -> xr.Dataset:
    """Every Neural Collapse metric of one epoch stored in a file of another project.

    Parameters
    ----------
    path : path
        An HDF5 file, a Zarr group (directory) or a NumPy ``.npz`` archive.
    features, labels : str
        Keys of the train features (N, d) and labels (N,).  Nested arrays are
        named by their path inside the file (``"epoch_10/penultimate"``).
    weight : str
        Key of the last layer's weight (C, d).
    bias : str, optional
        Key of the last layer's bias (C,); zeros when omitted.
    test_features, test_labels : str, optional
        Keys of a test split (both or neither).
    **options
        Passed to :func:`ncanalysis.analyze_arrays` (``epoch``, ``scheduler``,
        ``global_mean``, ``pinv_rtol``, ``gemm_dtype``, ``ncc``,
        ``rows_per_block``, ``progress``, ``class_names``).

    Returns
    -------
    xarray.Dataset
        As :func:`ncanalysis.analyze_arrays`, with the ``source`` attribute set
        to ``path``.

    Raises
    ------
    InputError
        When the file cannot be read or a key is missing; the message names the
        file and the key and lists the arrays the file holds.

    Notes
    -----
    HDF5 datasets and Zarr arrays are read lazily, block by block, so the
    features need not fit in memory (and dask.distributed workers read their
    own blocks).  A ``.npz`` archive has no partial reads: NumPy loads each
    array whole, so the features must fit in memory.
    """
    if (test_features is None) != (test_labels is None):
        raise InputError("test_features and test_labels go together: give both or neither")
    with open_dump(path) as dump:
        splits = {"train": (dump.array(features, "features"), dump.array(labels, "labels"))}
        if test_features is not None:
            splits["test"] = (
                dump.array(test_features, "test_features"),
                dump.array(test_labels, "test_labels"),
            )
        weight_array = dump.array(weight, "weight")[...]
        bias_array = None if bias is None else dump.array(bias, "bias")[...]
        # The computation happens inside the ``with``: the arrays read from the open file.
        ds = analyze_arrays(splits, weight_array, bias_array, **options)
    ds.attrs["source"] = os.fspath(path)
    return ds
