"""Exceptions raised on purpose by ``ncanalysis_extract``.

They derive from `ncanalysis.errors.NCAnalysisError`, so one ``except`` clause
catches every error of the toolkit, and each message names the epoch, split, row
or layer concerned.
"""

from __future__ import annotations

from ncanalysis.errors import InputError, NCAnalysisError

__all__ = ["ExtractError", "LayerError", "FeatureValueError", "RankFailedError"]


class ExtractError(NCAnalysisError):
    """Base class of the errors of the extractor."""


class LayerError(ExtractError, ValueError):
    """The classifier layer cannot be found, or its input cannot be captured."""


class FeatureValueError(ExtractError, InputError):
    """A feature is NaN, infinite, or beyond the range of the storage dtype.

    Attributes
    ----------
    epoch : int
    split : str
    row : int
        Row of the split (in the store) holding the value.
    value : float
    overflow : bool
        True when the value is finite but beyond the storage dtype's range (a wider
        dtype would hold it); False for NaN or inf.
    """

    def __init__(
        self, message: str, *, epoch: int, split: str, row: int, value: float, overflow: bool
    ) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.split = split
        self.row = row
        self.value = value
        self.overflow = overflow


class RankFailedError(ExtractError, RuntimeError):
    """Another process of a multi-process recording failed; this epoch was not finalized."""
