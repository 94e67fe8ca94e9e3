"""The ncanalysis store: one format (docs/store-format.md), Zarr v3 and HDF5 backends.

Read with `open_store`, check with `validate_store`, write with `create_store` /
`open_store_writer`. The names and constants of the format live in `spec`.
"""

from ._chunks import ChunkError
from ._hdf5 import HDF5Proxy
from ._rawzarr import DIRECT_READS_ENV
from .reader import RowSource, Store, open_store
from .spec import (
    BIAS,
    CLASSIFIER_DTYPES,
    COMPLETE_ATTR,
    DEFAULT_CHECKSUMS,
    DEFAULT_CHUNK_BYTES,
    DIMENSIONS,
    EPOCHS_GROUP,
    FEATURE_DTYPES,
    FEATURES,
    FORMAT_MAJOR,
    FORMAT_NAME,
    FORMAT_VERSION,
    HDF5_SUFFIXES,
    LABEL_DTYPE,
    LABELS,
    RESULTS_GROUP,
    ROOT_ATTR,
    SAMPLE_INDEX,
    SAMPLE_INDEX_DTYPE,
    WEIGHT,
)
from .validate import validate_store
from .writer import EpochWriter, StoreWriter, create_store, open_store_writer

__all__ = [
    "HDF5Proxy",
    "RowSource",
    "open_store",
    "Store",
    "validate_store",
    "create_store",
    "open_store_writer",
    "StoreWriter",
    "EpochWriter",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FORMAT_MAJOR",
    "ROOT_ATTR",
    "EPOCHS_GROUP",
    "RESULTS_GROUP",
    "COMPLETE_ATTR",
    "FEATURES",
    "LABELS",
    "SAMPLE_INDEX",
    "WEIGHT",
    "BIAS",
    "DIMENSIONS",
    "FEATURE_DTYPES",
    "CLASSIFIER_DTYPES",
    "LABEL_DTYPE",
    "SAMPLE_INDEX_DTYPE",
    "HDF5_SUFFIXES",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CHECKSUMS",
    "DIRECT_READS_ENV",
    "ChunkError",
]
