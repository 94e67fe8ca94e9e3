"""The options of an analysis, in one place: checked once, recorded once, parsed once.

:class:`AnalysisOptions` is what :func:`ncanalysis.analyze`,
:func:`~ncanalysis.analyze_arrays`, :func:`~ncanalysis.analyze_file` and the
``ncanalysis run`` command line take.  It checks its values when made
(:class:`~ncanalysis.errors.InputError`), gives the attributes a results Dataset
carries (:meth:`AnalysisOptions.attrs`), the settings that decide whether stored
results can be resumed (:meth:`AnalysisOptions.settings`, :func:`settings_of`),
and its own command-line options (:meth:`AnalysisOptions.add_arguments`,
:meth:`AnalysisOptions.from_args`).

Only the standard library is imported: the command line loads this module at start.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, get_args

from ._version import __version__
from .errors import InputError

if TYPE_CHECKING:
    import argparse

__all__ = [
    "ALL_SPLITS",
    "GEMM_DTYPES",
    "GLOBAL_MEAN_CHOICES",
    "SETTINGS",
    "AnalysisOptions",
    "resolve_options",
    "settings_of",
]

GlobalMean = Literal["class", "sample"]
GemmDtype = Literal["float32", "float64"]
GLOBAL_MEAN_CHOICES: tuple[str, ...] = get_args(GlobalMean)
GEMM_DTYPES: tuple[str, ...] = get_args(GemmDtype)

#: Value of the ``splits_selected`` attribute when every split was analysed
#: (not a valid split name, see docs/store-format.md).
ALL_SPLITS = "*"
#: The attributes that make two analyses comparable: an epoch analysed with the
#: same values need not be analysed again.  Their names and values are those of
#: every results file written so far, so old results still resume.
SETTINGS = ("global_mean", "pinv_rtol", "gemm_dtype", "ncc_reference_split", "splits_selected")


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse: the choices that change results, and the block size and progress bar.

    Parameters
    ----------
    global_mean : {"class", "sample"}
        mu_G as the mean of the class means (default) or of all samples.
    pinv_rtol : float
        Eigenvalues of Sigma_B at or below ``pinv_rtol`` times the largest are
        dropped from its pseudo-inverse; in (0, 1).
    gemm_dtype : {"float32", "float64"}
        Dtype of the large matrix products; sums are always float64.
    ncc : bool
        Compute the NCC mismatch (NC4; needs a "train" split).
    splits : sequence of str, optional
        Splits to analyse (default: all); kept as a tuple without repeats.
    rows_per_block : int, optional
        Rows per dask block (default: about 1/32 of the split, 4 to 32 MiB of
        stored features); does not change the results beyond rounding.
    progress : bool, callable or tqdm-like
        ``True``: one progress bar on stderr per call; ``callback(done, total)``; or an
        object with ``update(n)`` (see :mod:`ncanalysis.progress`); does not change the
        results.

    Raises
    ------
    InputError
        A value outside its choices or range, naming the option and the value.
    """

    global_mean: GlobalMean = "class"
    pinv_rtol: float = 1e-10
    gemm_dtype: GemmDtype = "float32"
    ncc: bool = True
    splits: tuple[str, ...] | None = None
    rows_per_block: int | None = None
    progress: Any = False

    def __post_init__(self) -> None:
        if self.global_mean not in GLOBAL_MEAN_CHOICES:
            raise InputError(
                f"global_mean must be one of {GLOBAL_MEAN_CHOICES}, not {self.global_mean!r}"
            )
        if self.gemm_dtype not in GEMM_DTYPES:
            raise InputError(f"gemm_dtype must be one of {GEMM_DTYPES}, not {self.gemm_dtype!r}")
        rtol = self.pinv_rtol
        if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
            raise InputError(f"pinv_rtol must be a number in (0, 1), not {rtol!r}")
        value = float(rtol)
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise InputError(f"pinv_rtol must lie in (0, 1), not {rtol!r}")
        object.__setattr__(self, "pinv_rtol", value)
        for name in ("ncc", "progress"):
            flag = getattr(self, name)
            if name == "progress" and _is_reporter(flag):
                continue  # a callback or a bar: ncanalysis.progress takes it as it is
            # bool or numpy's bool scalar; 0, 1 and "yes" are refused.
            if not (isinstance(flag, bool) or getattr(getattr(flag, "dtype", None), "kind", "")
                    == "b" and getattr(flag, "ndim", 1) == 0):
                if name == "progress":
                    raise InputError(
                        "progress must be True, False, a callable callback(done, total) or an "
                        f"object with update(n) (a tqdm bar), not {flag!r}")
                raise InputError(f"{name} must be True or False, not {flag!r}")
            object.__setattr__(self, name, bool(flag))
        object.__setattr__(self, "splits", _split_names(self.splits))
        rows = self.rows_per_block
        if rows is not None:
            if isinstance(rows, bool) or not hasattr(rows, "__index__") or int(rows) < 1:
                raise InputError(f"rows_per_block must be a positive integer, not {rows!r}")
            object.__setattr__(self, "rows_per_block", int(rows))

    def attrs(self) -> dict[str, Any]:
        """The attributes a results Dataset made with these options carries."""
        return {
            **self.settings(),
            "accumulation_dtype": "float64",
            "ncanalysis_version": __version__,
        }

    def settings(self) -> dict[str, Any]:
        """The values of :data:`SETTINGS`: equal settings, interchangeable results."""
        return {
            "global_mean": self.global_mean,
            "pinv_rtol": float(self.pinv_rtol),
            "gemm_dtype": self.gemm_dtype,
            "ncc_reference_split": "train" if self.ncc else "none",
            "splits_selected": (ALL_SPLITS if self.splits is None
                                else ",".join(sorted(self.splits))),
        }

    def replace(self, **changes: Any) -> AnalysisOptions:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @staticmethod
    def add_arguments(parser: Any, *, selection: Any = None) -> None:
        """Add the options to an argparse parser (``ncanalysis run``).

        Parameters
        ----------
        parser : argparse.ArgumentParser
            Receives an "analysis settings" group.
        selection : argparse argument group, optional
            Where ``--splits`` goes (default: ``parser``).

        The progress bar is the caller's: ``ncanalysis run`` turns it off with ``--quiet``.
        """
        (selection or parser).add_argument(
            "--splits", type=_split_list, metavar="LIST",
            help="splits to analyse, e.g. train,test (default: all)")
        group = parser.add_argument_group("analysis settings")
        group.add_argument("--global-mean", choices=GLOBAL_MEAN_CHOICES, default="class",
                           help="mu_G as the mean of the class means (default) or of all "
                           "samples")
        group.add_argument("--pinv-rtol", type=_relative_tolerance, default=1e-10, metavar="X",
                           help="relative eigenvalue cut-off of the Sigma_B pseudo-inverse "
                           "(default: 1e-10)")
        group.add_argument("--gemm-dtype", choices=GEMM_DTYPES, default="float32",
                           help="dtype of the large matrix products; sums are always float64 "
                           "(default: float32)")
        group.add_argument("--no-ncc", dest="ncc", action="store_false",
                           help="skip the NCC mismatch (NC4), which needs a train split")
        group.add_argument("--rows-per-block", type=_positive_int, metavar="N",
                           help="rows per dask block (default: about 1/32 of a split, 4 to "
                           "32 MiB of stored features)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, progress: bool = False) -> AnalysisOptions:
        """The options parsed by a parser that :meth:`add_arguments` set up."""
        return cls(global_mean=args.global_mean, pinv_rtol=args.pinv_rtol,
                   gemm_dtype=args.gemm_dtype, ncc=args.ncc, splits=args.splits,
                   rows_per_block=args.rows_per_block, progress=progress)


def _is_reporter(value: Any) -> bool:
    """A progress callback, a bar with ``update(n)`` or an already made reporter."""
    return not isinstance(value, bool) and (
        callable(value) or hasattr(value, "update") or hasattr(value, "epoch_done"))


def resolve_options(options: AnalysisOptions | None, **keywords: Any) -> AnalysisOptions:
    """``options`` (default: the defaults) with the keyword arguments that are not None.

    The public functions take both ``options=`` and the separate keywords (as
    before there was an options object); a keyword given overrides the field.
    """
    if options is not None and not isinstance(options, AnalysisOptions):
        raise InputError(f"options must be an AnalysisOptions, not {type(options).__name__}")
    base = AnalysisOptions() if options is None else options
    changes = {key: value for key, value in keywords.items() if value is not None}
    return dataclasses.replace(base, **changes) if changes else base


def settings_of(attrs: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The :data:`SETTINGS` recorded in a results Dataset's attributes.

    ``attrs``: the attributes, or the Dataset itself.

    Results saved by a library call before ``splits_selected`` was recorded
    carry none; they are taken to cover every split.
    """
    attrs = getattr(attrs, "attrs", attrs)
    found = {key: attrs.get(key) for key in SETTINGS}
    if found["splits_selected"] is None:
        found["splits_selected"] = ALL_SPLITS
    if found["pinv_rtol"] is not None:
        found["pinv_rtol"] = float(found["pinv_rtol"])
    return found


def _split_names(splits: Iterable[str] | None) -> tuple[str, ...] | None:
    """Splits as a tuple of names without repeats, in the order given."""
    if splits is None:
        return None
    if isinstance(splits, str):
        raise InputError(f"splits must be a list of split names, not the string {splits!r}")
    names = tuple(dict.fromkeys(splits))
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise InputError(f"splits must be non-empty strings, got {bad!r}")
    if not names:
        raise InputError("splits is empty: give at least one split, or None for all")
    return names


def _split_list(text: str) -> list[str]:
    import argparse

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of split names")
    return names


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _relative_tolerance(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text!r}")
    return value
