"""Figures of a results Dataset, in the manner of Papyan, Han & Donoho (2020), Figs. 2-7.

Every function takes a results Dataset (from :func:`ncanalysis.analyze` or
:func:`ncanalysis.results.load_results`) and returns a
:class:`matplotlib.figure.Figure`.  Figures are built without ``pyplot``, so
nothing here touches the caller's backend or keeps figures alive; saving uses
matplotlib's non-interactive canvases (Agg for PNG).

Time series are drawn against epoch, from the first analysed epoch to the
last, one line per split (train solid, other splits dashed), with a dotted
vertical line at the start of the terminal phase of training (attribute
``tpt_start_epoch``: the first epoch of train accuracy 1) when it was reached,
and a dash-dotted one at :func:`~ncanalysis.metrics.tpt_stable_epoch` (from
which train accuracy stays 1) when train accuracy dipped below 1 after the TPT
started.  The plotted values are exactly the Dataset's values: NaN (a split
absent from an epoch) leaves a gap.

Quantities that reach exactly 0 and matter down to their last decades (the
error 1 - accuracy, self-duality, the NCC mismatch) are drawn on a log axis;
when some value is exactly 0, on a symmetric log axis (matplotlib's
``symlog``) instead: logarithmic from the decade of the smallest nonzero value
plotted upward, linear below it, so that 0 itself sits at the bottom of the
axis with a tick labelled "0" rather than being dropped, as a plain log axis
would drop it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .metrics import tpt_stable_epoch

__all__ = [
    "plot_error",
    "plot_nc1",
    "plot_equinorm",
    "plot_equiangularity",
    "plot_maxangle",
    "plot_self_duality",
    "plot_ncc_mismatch",
    "plot_classes",
    "tpt_epochs",
    "tpt_dips",
    "FIGURES",
    "save_figures",
]

_SIZE = (5.6, 3.8)
_WIDE = (10.0, 3.8)
_TPT_LABEL = "TPT start"
_STABLE_LABEL = "train acc. 1 from here"
_DIP_LABEL = "train error > 0 after TPT start"
#: Decades the linear stretch [0, linthresh] of a symlog axis takes: a short step down to 0.
_LINSCALE = 0.5
_STYLES = {"train": {"linestyle": "-", "marker": "o"}}
_OTHER_STYLE = {"linestyle": "--", "marker": "s"}
#: Longer series are drawn as lines only.
_MARKERS_UP_TO = 40


def _splits(ds: xr.Dataset) -> list[str]:
    return [str(s) for s in ds["split"].values]


def _style(split: str, num_epochs: int) -> dict:
    """Line style of a split: train solid, others dashed; markers on short series only."""
    style = dict(_STYLES.get(split, _OTHER_STYLE), markersize=3, linewidth=1.4)
    if num_epochs > _MARKERS_UP_TO:
        del style["marker"]  # markers would hide the curve
    return style


def _series(ax: Axes, ds: xr.Dataset, name: str) -> None:
    """One line per split of the (epoch, split) variable ``name``."""
    for split in _splits(ds):
        ax.plot(ds["epoch"].values, ds[name].sel(split=split).values, label=split,
                **_style(split, ds.sizes["epoch"]))


def _per_epoch(ds: xr.Dataset, name: str) -> np.ndarray:
    """A classifier metric per epoch: the value of the first split that has one.

    W and b belong to the epoch, not to a split, so every split holds the same
    value; taking the first present one fills epochs that lack the train split.
    """
    values = ds[name].transpose("epoch", "split").values
    first = np.argmax(np.isfinite(values), axis=1)
    return values[np.arange(values.shape[0]), first]


def _train_accuracy(ds: xr.Dataset) -> np.ndarray:
    """Train accuracy per epoch (all NaN when the results have no train split)."""
    if "train" not in _splits(ds):
        return np.full(ds.sizes["epoch"], np.nan)
    return ds["accuracy"].sel(split="train").values


def tpt_epochs(ds: xr.Dataset) -> tuple[int, int]:
    """The start of the TPT and the epoch from which train accuracy stays 1 (-1: none).

    The start is the results' attribute ``tpt_start_epoch`` (the paper's
    definition: the first epoch of train accuracy 1); the stable epoch is the
    attribute ``tpt_stable_epoch`` when the results carry it, else
    :func:`~ncanalysis.metrics.tpt_stable_epoch` of the train accuracy.
    """
    start = int(ds.attrs.get("tpt_start_epoch", -1))
    if "tpt_stable_epoch" in ds.attrs:
        return start, int(ds.attrs["tpt_stable_epoch"])
    return start, tpt_stable_epoch(ds["epoch"].values, _train_accuracy(ds))


def tpt_dips(ds: xr.Dataset) -> np.ndarray:
    """Epochs after the start of the TPT whose train accuracy is below 1."""
    start, _ = tpt_epochs(ds)
    epochs = ds["epoch"].values
    accuracy = _train_accuracy(ds)
    if start < 0:
        return epochs[:0]
    return epochs[(epochs > start) & np.isfinite(accuracy) & (accuracy < 1.0)]


def _log_with_zero(ax: Axes, values: np.ndarray) -> None:
    """A symlog y axis whose log part starts at the decade of the smallest value > 0.

    A plain log axis when no value is exactly 0.  Exact zeros (no training
    error, no NCC mismatch) stay on the plot at the bottom of the axis, on a
    tick labelled 0, instead of vanishing as they would on a log axis.  Every
    positive value lies in the logarithmic part.
    """
    values = np.asarray(values, dtype=np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and not (values == 0).any():
        ax.set_yscale("log")  # no zero to show: the stretch below the lowest decade is waste
        return
    linthresh = 10.0 ** np.floor(np.log10(positive.min())) if positive.size else 1.0
    ax.set_yscale("symlog", linthresh=linthresh, linscale=_LINSCALE)
    ax.set_ylim(bottom=0.0)


def _finish(ax: Axes, ds: xr.Dataset, title: str, ylabel: str) -> None:
    """Title, labels, grid, TPT markers, x range and legend of one time-series panel."""
    start, stable = tpt_epochs(ds)
    if start >= 0:
        ax.axvline(start, color="0.35", linestyle=":", linewidth=1.2, label=_TPT_LABEL)
    if stable > start >= 0:
        ax.axvline(stable, color="0.35", linestyle="-.", linewidth=1.0, label=_STABLE_LABEL)
    epochs = ds["epoch"].values
    if epochs.size > 1:
        # The axis ends at the last analysed epoch, not at the next tick.
        ax.set_xlim(int(epochs[0]), int(epochs[-1]))
    ax.set_title(title)
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")


def _figure(size: tuple[float, float] = _SIZE, ncols: int = 1,
            layout: Literal["constrained", "compressed", "tight"] | None = None,
            ) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=size, layout=layout)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    if layout is None:
        # Fixed margins that fit the labels of the time series: a layout engine
        # would measure every text again on each save, doubling the drawing time.
        fig.subplots_adjust(left=0.8 / size[0], right=1 - 0.15 / size[0], bottom=0.5 / size[1],
                            top=1 - 0.35 / size[1], wspace=0.25)
    return fig, list(axes)


def plot_error(ds: xr.Dataset) -> Figure:
    """Train and test error, 1 - accuracy, against epoch, on a symlog axis down to 0.

    The TPT starts where the train error first reaches 0.  Epochs after that
    where it is above 0 again (a few training samples misclassified) are
    marked with red crosses on the train line: a linear accuracy axis would
    hide them.
    """
    fig, (ax,) = _figure()
    error = 1.0 - ds["accuracy"]
    for split in _splits(ds):
        ax.plot(ds["epoch"].values, error.sel(split=split).values, label=split,
                **_style(split, ds.sizes["epoch"]))
    dips = tpt_dips(ds)
    if dips.size:
        ax.plot(dips, error.sel(split="train", epoch=dips).values, linestyle="none",
                marker="x", color="C3", markersize=5, zorder=3,
                label=f"{_DIP_LABEL} ({dips.size} epoch{'' if dips.size == 1 else 's'})")
    _log_with_zero(ax, error.values)
    _finish(ax, ds, "Error", "1 - accuracy")
    return fig


def plot_nc1(ds: xr.Dataset) -> Figure:
    """NC1 = Tr(Sigma_W Sigma_B^+)/C on a log scale (the paper's Figure 6)."""
    fig, (ax,) = _figure()
    _series(ax, ds, "nc1")
    ax.set_yscale("log", nonpositive="mask")
    _finish(ax, ds, "NC1: within-class variation collapses", r"Tr($\Sigma_W\Sigma_B^+$)/C")
    return fig


def _means_and_classifier(ds: xr.Dataset, stem: str, title: str, ylabel: str) -> Figure:
    """Two panels: ``{stem}_means`` per split, and ``{stem}_weights`` (one line)."""
    fig, (left, right) = _figure(_WIDE, ncols=2)
    _series(left, ds, f"{stem}_means")
    _finish(left, ds, f"{title}: class means", ylabel)
    right.plot(ds["epoch"].values, _per_epoch(ds, f"{stem}_weights"), label="classifier",
               color="C2", **_style("train", ds.sizes["epoch"]))
    _finish(right, ds, f"{title}: classifier", ylabel)
    return fig


def plot_equinorm(ds: xr.Dataset) -> Figure:
    """Std/Avg of the centred class-mean norms and of the classifier row norms (Fig. 2)."""
    return _means_and_classifier(ds, "equinorm", "Equinorm", "Std / Avg of norms")


def plot_equiangularity(ds: xr.Dataset) -> Figure:
    """Std of the pairwise cosines of class means and of classifiers (Fig. 3)."""
    return _means_and_classifier(ds, "equiangular", "Equiangularity", "Std of cosines")


def plot_maxangle(ds: xr.Dataset) -> Figure:
    """Avg |cos + 1/(C-1)| of class means and of classifiers (Fig. 4)."""
    return _means_and_classifier(ds, "maxangle", "Maximal angle", "Avg |cos + 1/(C-1)|")


def plot_self_duality(ds: xr.Dataset) -> Figure:
    """||W^T/||W|| - M~/||M~|| ||_F^2: classifier and class means align (Fig. 5)."""
    fig, (ax,) = _figure()
    _series(ax, ds, "self_duality")
    _log_with_zero(ax, ds["self_duality"].values)
    _finish(ax, ds, "Self-duality", r"$\|W^T/\|W\| - \tilde M/\|\tilde M\|\|_F^2$")
    return fig


def plot_ncc_mismatch(ds: xr.Dataset) -> Figure:
    """Fraction of samples where the network and the nearest class centre disagree (Fig. 7)."""
    fig, (ax,) = _figure()
    _series(ax, ds, "ncc_mismatch")
    _log_with_zero(ax, ds["ncc_mismatch"].values)
    _finish(ax, ds, "NCC mismatch", "fraction of samples")
    return fig


#: Per-class panels of :func:`plot_classes`: variable, title.
_CLASS_PANELS = (
    ("class_nc1", "Share of NC1 (sums to nc1)"),
    ("class_mean_norm", r"$\|\mu_c - \mu_G\|$"),
    ("class_within_var", r"Within-class variance $s_c^2$"),
)


def plot_classes(ds: xr.Dataset, epoch: int | None = None) -> Figure:
    """Per-class bar charts of one epoch (default: the last): which classes lag.

    One row per split analysed in that epoch, one column per variable: each
    class's share of NC1 (``class_nc1``), the norm of its centred mean
    (``class_mean_norm``) and its within-class variance (``class_within_var``).
    Splits get rows of their own because their scales differ: test NC1 is
    often ten times train NC1 late in training.

    Raises
    ------
    ValueError
        When the Dataset has no per-class variables (results read from CSV).
    """
    missing = [name for name, _ in _CLASS_PANELS if name not in ds.data_vars]
    if missing:
        raise ValueError(f"the results hold no per-class variables ({', '.join(missing)}); "
                         "CSV results keep only the scalar metrics")
    epoch = int(ds["epoch"].values[-1]) if epoch is None else int(epoch)
    sub = ds.sel(epoch=epoch)
    splits = [s for s in _splits(ds) if int(sub["n_samples"].sel(split=s)) >= 0]
    classes = np.arange(ds.sizes["class"])
    names = ([str(n) for n in ds["class_name"].values] if "class_name" in ds.coords
             else [str(c) for c in classes])
    # Constrained layout: the class names' length and rotation vary.
    fig = Figure(figsize=(max(10.0, 0.3 * len(classes) * len(_CLASS_PANELS)),
                          0.6 + 2.6 * len(splits)), layout="constrained")
    grid = fig.subplots(len(splits), len(_CLASS_PANELS), squeeze=False)
    for row, split in zip(grid, splits):
        for ax, (name, title) in zip(row, _CLASS_PANELS):
            ax.bar(classes, sub[name].sel(split=split).values, width=0.7, label=split,
                   color="C0" if split == "train" else "C1")
            ax.set_title(f"{title}: {split}", fontsize="medium")
            ax.set_xticks(classes, names, rotation=90 if len(classes) > 12 else 0)
            ax.grid(True, axis="y", alpha=0.3)
        row[0].set_ylabel(split)
    for ax in grid[-1]:
        ax.set_xlabel("class")
    fig.suptitle(f"Per class, epoch {epoch}")
    return fig


#: Every figure :func:`save_figures` writes, by file stem.
FIGURES: dict[str, Callable[[xr.Dataset], Figure]] = {
    "error": plot_error,
    "nc1": plot_nc1,
    "equinorm": plot_equinorm,
    "equiangularity": plot_equiangularity,
    "maxangle": plot_maxangle,
    "self_duality": plot_self_duality,
    "ncc_mismatch": plot_ncc_mismatch,
    "classes": plot_classes,
}


def save_figures(ds: xr.Dataset, output_dir: str | os.PathLike, *,
                 formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write every figure of :data:`FIGURES` as ``output_dir/<name>.<format>``.

    The per-class figure is skipped when the results have no per-class
    variables (CSV input).

    Returns
    -------
    list of pathlib.Path
        The files written, in order.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, make in FIGURES.items():
        if make is plot_classes and "class_nc1" not in ds.data_vars:
            continue
        fig = make(ds)
        for fmt in formats:
            path = output_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=dpi)
            written.append(path)
    return written
