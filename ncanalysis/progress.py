"""Progress of an analysis, counted in epochs: one bar per run, or the caller's callback.

``progress=`` of :func:`ncanalysis.analyze` (and of ``analyze_arrays``,
``analyze_file``) takes, as pooch's ``progressbar`` does:

- ``False`` (default): nothing;
- ``True``: one tqdm bar on stderr for the whole call, with the epochs done,
  the rate and the time left;
- a callable ``callback(done, total)``: called once before the first epoch
  (``done=0``) and after each analysed epoch, with the epochs done so far and
  the epochs of the call;
- an object with ``update(n)`` (a tqdm bar, or anything alike): ``update(1)``
  after each analysed epoch.  It is the caller's: the analysis never closes it,
  so one bar can follow several calls (the command line makes one for a run and
  analyses the run epoch by epoch).

The bar is drawn in the process that calls the analysis, after each epoch's
result is back, so it is the same with threads and under dask.distributed.
Library code never prints: the line per epoch goes to the ``ncanalysis``
logger (level DEBUG).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol, Self

from .errors import InputError

__all__ = ["EpochProgress", "ProgressLike", "epoch_progress", "run_progress"]

logger = logging.getLogger("ncanalysis")


class _Updatable(Protocol):
    def update(self, n: int = 1) -> Any: ...


#: What ``progress=`` accepts.
ProgressLike = bool | None | Callable[[int, int], Any] | _Updatable


class EpochProgress:
    """Reports the epochs of one analysis call to a bar or a callback.

    Made by :func:`epoch_progress`; a context manager that closes the bar it made
    itself (never one it was given).
    """

    def __init__(self, target: Any, total: int | None, *, owned: bool) -> None:
        self._target = target
        self._owned = owned
        self.total = total
        self.done = 0
        if callable(target) and not hasattr(target, "update"):
            target(0, total)

    def epoch_done(self, where: str) -> None:
        """Count one analysed epoch (``where`` names it, for the log)."""
        self.done += 1
        logger.debug("%s: analysed (%d of %s)", where, self.done, self.total)
        if self._target is None:
            return
        if hasattr(self._target, "update"):
            self._target.update(1)
        else:
            self._target(self.done, self.total)

    def close(self) -> None:
        """Close the bar made for this call (a given bar or callback is left alone)."""
        if self._owned and self._target is not None:
            self._target.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def epoch_progress(progress: Any, total: int | None) -> EpochProgress:
    """The reporter for ``progress=`` (see the module docstring) over ``total`` epochs.

    An :class:`EpochProgress` is returned as it is, so that a public function can
    make the reporter with its total and pass it to the common path.

    Raises
    ------
    InputError
        When ``progress`` is none of the accepted kinds (the message names it).
    """
    if isinstance(progress, EpochProgress):
        return progress
    if progress is None or progress is False:
        return EpochProgress(None, total, owned=False)
    if progress is True:
        return EpochProgress(_bar(total), total, owned=True)
    if hasattr(progress, "update") or callable(progress):
        return EpochProgress(progress, total, owned=False)
    raise InputError(
        f"progress must be True, False, a callable callback(done, total) or an object "
        f"with update(n) (a tqdm bar), not {progress!r}"
    )


def _bar(total: int | None) -> Any:
    """A tqdm bar on stderr counting epochs (done/total, rate, time left)."""
    # The plain text bar (not tqdm.auto): it also works in notebooks without ipywidgets.
    from tqdm import tqdm

    return tqdm(total=total, unit="epoch", desc="ncanalysis", file=sys.stderr,
                dynamic_ncols=True)


@contextlib.contextmanager
def run_progress(total: int, enabled: bool) -> Iterator[Any]:
    """One bar for a run of ``total`` epochs analysed call by call (the command line).

    Yields the bar to pass as ``progress=`` to every call (each updates it once
    per epoch and leaves it open), or False when ``enabled`` is False; closes it
    at the end, also after an error.
    """
    if not enabled:
        yield False
        return
    bar = _bar(total)
    try:
        yield bar
    finally:
        bar.close()
