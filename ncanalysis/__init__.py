"""ncanalysis: measure Neural Collapse from stored activations, out of core.

The metrics are those of Papyan, Han & Donoho (PNAS 2020) and their companions;
``docs/metrics.md`` defines every number.  The main entry points:

- :func:`analyze` -- every metric of every complete epoch of a store;
- :func:`analyze_arrays` -- the same from arrays of another project (numpy,
  dask, zarr, h5py), no store needed;
- :func:`open_store` / :func:`create_store` -- read and write the store format.
"""

from ._version import __version__
from .engine import analyze, analyze_arrays
from .errors import IncompleteEpochError, InputError, NCAnalysisError, StoreFormatError
from .store import Store, create_store, open_store, open_store_writer, validate_store

__all__ = [
    "__version__",
    "analyze",
    "analyze_arrays",
    "open_store",
    "create_store",
    "open_store_writer",
    "validate_store",
    "Store",
    "NCAnalysisError",
    "StoreFormatError",
    "IncompleteEpochError",
    "InputError",
]
