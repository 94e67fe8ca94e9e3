"""ncanalysis: measure Neural Collapse from stored activations, out of core.

The metrics are those of Papyan, Han & Donoho (PNAS 2020) and their companions;
``docs/metrics.md`` defines every number.  The main entry points:

- :func:`analyze` -- every metric of every complete epoch of a store;
- :func:`analyze_arrays` -- the same from arrays of another project (numpy,
  dask, zarr, h5py), no store needed;
- :func:`analyze_file` -- the same from another project's HDF5, Zarr or npz dump;
- :class:`AnalysisOptions` -- every analysis option in one object (``options=``);
- :func:`open_store` / :func:`create_store` -- read and write the store format.

The heavy modules (numba, xarray, dask) load on first use, so that the
extractor and the command line start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import IncompleteEpochError, InputError, NCAnalysisError, StoreFormatError

_LAZY = {
    "analyze": ".engine",
    "analyze_arrays": ".engine",
    "analyze_file": ".dumps",
    "AnalysisOptions": ".options",
    "open_store": ".store",
    "create_store": ".store",
    "open_store_writer": ".store",
    "validate_store": ".store",
    "Store": ".store",
}

__all__ = [
    "__version__",
    "NCAnalysisError",
    "StoreFormatError",
    "IncompleteEpochError",
    "InputError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ncanalysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
