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
]


class NCAnalysisError(Exception):
    """Base class of every error raised on purpose by ncanalysis."""


class StoreFormatError(NCAnalysisError):
    """A store is missing, unreadable, of an unknown version, or breaks the spec."""


class IncompleteEpochError(StoreFormatError):
    """An epoch was asked for that has not been marked complete by its writer."""


class InputError(NCAnalysisError, ValueError):
    """Arrays handed to the analyser do not fit together or hold bad values."""
