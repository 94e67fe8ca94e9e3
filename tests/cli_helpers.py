"""Shared pieces of the command-line, results, plot and dump tests.

- :func:`make_store` writes a small store whose training "collapses": the
  features are planted class means plus noise that shrinks epoch by epoch, so
  train accuracy reaches 1 part-way through and NC1 falls;
- :func:`append_epoch` adds one more epoch, as a training run still writing would;
- :func:`run_cli` and :func:`run_cli_many` run the *installed* ``ncanalysis``
  entry point in subprocesses, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from ncanalysis.store import create_store, open_store_writer

__all__ = [
    "C",
    "D",
    "CLASS_NAMES",
    "ENTRY_POINT",
    "epoch_arrays",
    "make_store",
    "append_epoch",
    "run_cli",
    "run_cli_many",
    "assert_same_numbers",
]

C, D = 4, 6
CLASS_NAMES = ["ant", "bee", "cat", "dog"]
N_TRAIN, N_TEST = 96, 32
#: The console script that ``pip install`` put beside this Python.
ENTRY_POINT = Path(sys.executable).with_name("ncanalysis")


def _means(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(C, D)) * 2.0


def epoch_arrays(epoch: int, *, seed: int = 0) -> dict:
    """Features, labels and classifier of one epoch of the planted collapse.

    The noise scale halves every epoch; the classifier is the centred means, so
    the network's decision approaches the nearest class centre.
    """
    rng = np.random.default_rng([seed, epoch])
    means = _means(seed)
    noise = 1.5 * 0.5**epoch
    arrays: dict = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = np.arange(n) % C
        arrays[split] = (means[labels] + noise * rng.normal(size=(n, D)), labels)
    arrays["weight"] = means - means.mean(axis=0)
    arrays["bias"] = 0.01 * rng.normal(size=C)
    return arrays


def _write_epoch(writer, epoch: int, seed: int, splits: tuple[str, ...]) -> None:
    arrays = epoch_arrays(epoch, seed=seed)
    epoch_writer = writer.begin_epoch(epoch)
    for split in splits:
        epoch_writer.write_split(split, *arrays[split])
    epoch_writer.write_classifier(arrays["weight"], arrays["bias"])
    epoch_writer.finalize()


def make_store(path: str | os.PathLike, epochs=range(3), *, seed: int = 0,
               splits: tuple[str, ...] = ("train", "test"), chunk_rows: int = 32) -> Path:
    """Write a small store (Zarr, or HDF5 for an ``.h5`` path) with ``epochs``."""
    with create_store(path, num_classes=C, num_features=D, class_names=CLASS_NAMES,
                      feature_dtype="float32", chunk_rows=chunk_rows) as writer:
        for epoch in epochs:
            _write_epoch(writer, epoch, seed, splits)
    return Path(path)


def append_epoch(path: str | os.PathLike, epoch: int, *, seed: int = 0,
                 splits: tuple[str, ...] = ("train", "test"), finalize: bool = True) -> None:
    """Add an epoch to an existing store (left incomplete with ``finalize=False``)."""
    with open_store_writer(path) as writer:
        if finalize:
            _write_epoch(writer, epoch, seed, splits)
        else:
            writer.begin_epoch(epoch).write_split("train", *epoch_arrays(epoch, seed=seed)["train"])


def _command(args) -> list[str]:
    assert ENTRY_POINT.exists(), (
        f"{ENTRY_POINT} is missing: install the project (pip install -e .) before testing"
    )
    return [str(ENTRY_POINT), *map(str, args)]


def run_cli(*args: str | os.PathLike, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the installed ``ncanalysis`` with ``args``; capture text stdout and stderr."""
    return subprocess.run(_command(args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def run_cli_many(*commands: list, timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """Run several independent ``ncanalysis`` commands at once; results in order.

    Most of a small run is Python's single-threaded start-up, so running
    commands side by side uses both cores of a CI machine.
    """
    procs = [(args, subprocess.Popen(_command(args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)) for args in commands]
    done = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(_command(args), proc.returncode, out, err))
    return done


def assert_same_numbers(got: xr.Dataset, expected: xr.Dataset, *, rtol: float = 0.0) -> None:
    """Every variable of ``got`` equals ``expected``'s (NaN where NaN; exact by default)."""
    assert list(got["epoch"].values) == list(expected["epoch"].values)
    assert list(got["split"].values) == list(expected["split"].values)
    assert set(got.data_vars) <= set(expected.data_vars)
    for name in got.data_vars:
        if got[name].dtype.kind in "UO":  # epoch_identity: text, compared exactly
            assert got[name].values.tolist() == expected[name].values.tolist(), name
            continue
        np.testing.assert_allclose(got[name].values, expected[name].values, rtol=rtol, atol=0,
                                   err_msg=name)
        assert got[name].dtype == expected[name].dtype, name
