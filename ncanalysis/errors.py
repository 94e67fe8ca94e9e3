"""Exceptions raised by ncanalysis.

Every message names what is wrong and where: the file, the epoch, the split and
the array, so a user can find the problem without a debugger.
"""

from __future__ import annotations

__all__ = [
    "NCAnalysisError",
    "StoreFormatError",
    "IncompleteEpochError",
    "InputError",
    "ClusterError",
]


class NCAnalysisError(Exception):
    """Base class of every error raised on purpose by ncanalysis."""


class StoreFormatError(NCAnalysisError):
    """A store is missing, unreadable, of an unknown version, or breaks the spec."""


class IncompleteEpochError(StoreFormatError):
    """An epoch was asked for that has not been marked complete by its writer."""


class InputError(NCAnalysisError, ValueError):
    """Arrays handed to the analyser do not fit together or hold bad values."""


class ClusterError(NCAnalysisError):
    """The dask.distributed cluster cannot run the analysis.

    Raised when no worker is there for longer than the cluster timeout (none came,
    or the last one died), when a task's workers kept dying (dask's
    ``KilledWorker``), or when the scheduler lost the computation.  The message
    names the epoch being analysed.
    """
