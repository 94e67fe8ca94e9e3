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
from .errors import InputError, NCAnalysisError

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
        except (ValueError, OSError, EOFError) as err:
            # npz members are read here: object arrays (refused without pickle),
            # damaged or truncated members.
            raise InputError(
                f"{self.path}: array {key!r} ({role}) cannot be read: {_one_line(err)}"
            ) from err
        if node is None or (self.kind != "npz" and not hasattr(node, "dtype")):
            problem = f"no array {key!r}" if node is None else f"{key!r} is a group, not an array"
            available = ", ".join(self.names()) or "(none)"
            raise InputError(
                f"{self.path}: {problem} (asked for as {role}); arrays in this "
                f"{self.kind} file: {available}"
            )
        return node

    def read(self, key: str, role: str) -> Any:
        """The whole array under ``key`` as numpy (for the small classifier arrays)."""
        import numpy as np

        node = self.array(key, role)
        try:
            return np.asarray(node[...])
        except (ValueError, OSError, TypeError) as err:
            raise InputError(
                f"{self.path}: array {key!r} ({role}) cannot be read: {_one_line(err)}"
            ) from err


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _describe(dump: _Dump, key: str, role: str, array: Any) -> str:
    """``"dump.h5: array 'fc/W' (weight) has shape (5, 8) and dtype float64"``."""
    return (f"{dump.path}: array {key!r} ({role}) has shape {tuple(array.shape)} and dtype "
            f"{array.dtype}")


def _check_arrays(dump: _Dump, keys: dict[str, str], arrays: dict[str, Any]) -> None:
    """Shapes and dtypes of the named arrays, in errors that name the file and the keys.

    The analyser checks the same again, but only knows them as "arrays: epoch 0";
    here a user learns which key of which file is wrong.
    """
    import numpy as np

    weight = arrays["weight"]
    if weight.ndim != 2:
        raise InputError(f"{_describe(dump, keys['weight'], 'weight', weight)}; expected a "
                         "2-D (C, d) last-layer weight")
    num_classes, dim = weight.shape
    for role, array in arrays.items():
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise InputError(f"{_describe(dump, keys[role], role, array)}; expected numbers")
    if "bias" in arrays and arrays["bias"].shape != (num_classes,):
        raise InputError(f"{_describe(dump, keys['bias'], 'bias', arrays['bias'])}; expected "
                         f"({num_classes},) to match weight {keys['weight']!r} {weight.shape}")
    for features_role, labels_role in (("features", "labels"),
                                       ("test_features", "test_labels")):
        if features_role not in arrays:
            continue
        features, labels = arrays[features_role], arrays[labels_role]
        if features.ndim != 2 or features.shape[1] != dim:
            raise InputError(
                f"{_describe(dump, keys[features_role], features_role, features)}; expected "
                f"(N, {dim}) to match weight {keys['weight']!r} {tuple(weight.shape)}"
            )
        if not np.issubdtype(features.dtype, np.floating):
            raise InputError(f"{_describe(dump, keys[features_role], features_role, features)}"
                             "; expected floating-point features")
        if tuple(labels.shape) != (features.shape[0],):
            raise InputError(
                f"{_describe(dump, keys[labels_role], labels_role, labels)}; expected "
                f"({features.shape[0]},): one label per row of {keys[features_role]!r}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{_describe(dump, keys[labels_role], labels_role, labels)}; "
                             "expected integer class labels")


@contextlib.contextmanager
def open_dump(path: str | os.PathLike) -> Iterator[_Dump]:
    """Open a dump file read-only for the duration of a ``with`` block."""
    path = Path(path)
    kind = dump_kind(path)
    if kind == "npz":
        import zipfile

        import numpy as np

        try:
            # allow_pickle=False: an archive of objects would run code on loading.
            root = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"{path}: not a readable .npz archive ({_one_line(err)})") from err
        if not hasattr(root, "files"):  # np.load of a single .npy saved under .npz
            raise InputError(f"{path}: a single NumPy array, not a .npz archive of named arrays")
        with root:
            yield _Dump(path, root, kind)
    elif kind == "hdf5":
        import h5py

        try:
            root = h5py.File(path, "r")
        except BlockingIOError as err:
            # A run-time condition, not bad input: the file is fine once closed.
            raise NCAnalysisError(
                f"{path}: the HDF5 file is locked by another process that has it open for "
                f"writing; try again once it is closed ({_one_line(err)})"
            ) from err
        except OSError as err:
            # Truncated, damaged, unreadable: the message says which.
            raise InputError(f"{path}: cannot open the HDF5 file ({_one_line(err)})") from err
        with root:
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
        ``options``, ``global_mean``, ``pinv_rtol``, ``gemm_dtype``, ``ncc``,
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
    keys = {"features": features, "labels": labels, "weight": weight}
    if bias is not None:
        keys["bias"] = bias
    if test_features is not None and test_labels is not None:  # both or neither (above)
        keys.update(test_features=test_features, test_labels=test_labels)
    with open_dump(path) as dump:
        arrays = {role: dump.read(key, role) if role in ("weight", "bias")
                  else dump.array(key, role) for role, key in keys.items()}
        _check_arrays(dump, keys, arrays)
        splits = {"train": (arrays["features"], arrays["labels"])}
        if test_features is not None:
            splits["test"] = (arrays["test_features"], arrays["test_labels"])
        weight_array = arrays["weight"]
        bias_array = arrays.get("bias")
        # The computation happens inside the ``with``: the arrays read from the open file.
        ds = analyze_arrays(splits, weight_array, bias_array, **options)
    ds.attrs["source"] = os.fspath(path)
    return ds
