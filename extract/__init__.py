"""ncanalysis_extract: record penultimate features of PyTorch models into an ncanalysis store.

The features of Neural Collapse are the input of a classifier's last linear layer.
`FeatureRecorder` hooks that layer (found automatically or named), runs the model in
eval mode over each split once per epoch, and writes features, labels, sample indices
and the layer's W and b into a store that ``ncanalysis`` analyses offline. It works on
one process or on every rank of a DDP job (each rank writes its own contiguous,
write-unit-aligned rows), and an epoch becomes visible to readers only once complete.

This package imports torch; ``ncanalysis`` itself never does.

Examples
--------
>>> from ncanalysis_extract import FeatureRecorder  # doctest: +SKIP
>>> with FeatureRecorder("run.zarr", model) as recorder:  # doctest: +SKIP
...     for epoch in range(epochs):
...         train_one_epoch(model)
...         recorder.record_epoch(epoch, {"train": train_set, "test": test_set})
"""

from ncanalysis._version import __version__

from .comm import (
    CallbackCommunicator,
    Communicator,
    LocalCommunicator,
    TorchCommunicator,
    resolve_communicator,
)
from .epoch import EpochRecording
from .errors import ExtractError, FeatureValueError, LayerError, RankFailedError
from .hook import FeatureCapture, classifier_parameters, find_classifier, unwrap_model
from .ranges import rank_loader, rank_row_range, rank_subset
from .recorder import FeatureRecorder

__all__ = [
    "__version__",
    "FeatureRecorder",
    "EpochRecording",
    "find_classifier",
    "unwrap_model",
    "classifier_parameters",
    "FeatureCapture",
    "rank_row_range",
    "rank_subset",
    "rank_loader",
    "Communicator",
    "LocalCommunicator",
    "TorchCommunicator",
    "CallbackCommunicator",
    "resolve_communicator",
    "ExtractError",
    "LayerError",
    "FeatureValueError",
    "RankFailedError",
]
