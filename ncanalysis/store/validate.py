"""List every way a store breaks the spec (docs/store-format.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import StoreFormatError
from ._backend import Backend, open_backend
from .spec import (
    BIAS,
    COMPLETE_ATTR,
    EPOCHS_GROUP,
    FEATURES,
    LABELS,
    SAMPLE_INDEX,
    WEIGHT,
    array_problem,
    check_meta,
    epoch_node,
    parse_epoch_name,
    split_node,
)

__all__ = ["validate_store"]


def validate_store(path: str | os.PathLike[str]) -> list[str]:
    """Check a whole store against the spec and list its problems.

    Every array of every complete epoch is checked: presence, shape, dtype, dimension
    names, whole-row chunks, every chunk written; and the values of the small arrays:
    labels in 0..C-1, sample indices >= 0, a finite classifier; the size of every
    uncompressed chunk file, and the checksum of every chunk that has one (which reads
    those chunks). Feature values are not otherwise checked (the writer refuses
    non-finite ones). Incomplete epochs are reported, not checked further.

    Parameters
    ----------
    path
        A Zarr v3 directory or an HDF5 file.

    Returns
    -------
    list of str
        One message per problem, each naming the file, epoch, split and array;
        empty when the store is valid.
    """
    try:
        backend = open_backend(Path(path), writable=False)
    except StoreFormatError as err:
        return [str(err)]
    try:
        meta = check_meta(backend.meta(), str(path))
    except StoreFormatError as err:
        backend.close()
        return [str(err)]
    try:
        return _store_problems(backend, meta["num_classes"], meta["num_features"])
    finally:
        backend.close()


def _store_problems(backend: Backend, c: int, d: int) -> list[str]:
    if not backend.has(EPOCHS_GROUP):
        return [f"{backend.path}: group {EPOCHS_GROUP!r} is missing"]
    problems = []
    try:
        names = backend.groups(EPOCHS_GROUP)
    except StoreFormatError as err:  # an epoch's zarr.json that is not JSON
        return [str(err)]
    for name in names:
        epoch = parse_epoch_name(name)
        if epoch is None:
            problems.append(
                f"{backend.path}: group {EPOCHS_GROUP}/{name} is not named by an epoch number"
            )
        elif backend.get_attr(epoch_node(epoch), COMPLETE_ATTR) != 1:
            problems.append(f"{backend.path}: epoch {epoch} is incomplete (not finalized)")
        else:
            try:
                problems += _epoch_problems(backend, epoch, c, d)
            except StoreFormatError as err:  # e.g. a zarr.json that is not JSON
                problems.append(str(err))
    return problems


def _epoch_problems(backend: Backend, epoch: int, c: int, d: int) -> list[str]:
    node = epoch_node(epoch)
    problems = [
        f"{backend.path}: epoch {epoch}, array {name!r}: {problem}"
        for name, shape in ((WEIGHT, (c, d)), (BIAS, (c,)))
        if (problem := _array_problem(backend, f"{node}/{name}", name, shape, c))
    ]
    splits = backend.groups(node)
    if not splits:
        problems.append(f"{backend.path}: epoch {epoch} has no split")
    for split in splits:
        problems += _split_problems(backend, epoch, split, c, d)
    return problems


def _split_problems(backend: Backend, epoch: int, split: str, c: int, d: int) -> list[str]:
    node = split_node(epoch, split)
    info = backend.info(f"{node}/{FEATURES}")
    n = info.shape[0] if info is not None else 0
    shapes = {FEATURES: (n, d), LABELS: (n,), SAMPLE_INDEX: (n,)}
    where = f"{backend.path}: epoch {epoch}, split {split!r}"
    return [
        f"{where}, array {name!r}: {problem}"
        for name, shape in shapes.items()
        if (problem := _array_problem(backend, f"{node}/{name}", name, shape, c))
    ]


def _array_problem(
    backend: Backend, node: str, name: str, shape: tuple[int, ...], num_classes: int
) -> str | None:
    """The first problem of one array: spec, unwritten chunks, then values."""
    problem = array_problem(backend.info(node), name, shape)
    if problem is None:
        written, total = backend.chunks_written(node)
        if written < total:
            problem = f"only {written} of {total} chunks written"
    if problem is None:
        # Sizes of uncompressed chunk files, and checksums where the array has them.
        problem = backend.chunk_problem(node)
    # Every array but the features is small enough to read whole.
    if problem is None and name != FEATURES:
        problem = _value_problem(backend.read(node), name, num_classes)
    return problem


def _value_problem(values: np.ndarray, name: str, num_classes: int) -> str | None:
    if name in (WEIGHT, BIAS):
        return None if np.isfinite(values).all() else "holds NaN or inf"
    if name == LABELS:
        bad, what = (values < 0) | (values >= num_classes), f"outside 0..{num_classes - 1}"
    else:
        bad, what = values < 0, "negative"
    rows = np.flatnonzero(bad)
    if rows.size == 0:
        return None
    return f"{rows.size} of {len(values)} values {what}, first at row {rows[0]} ({values[rows[0]]})"
