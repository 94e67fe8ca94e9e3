"""Figures: the plotted data are the results' values, and the files are real images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread


from cli_helpers import CLASS_NAMES, epoch_arrays, run_cli  # noqa: E402

import ncanalysis  # noqa: E402
from ncanalysis import metrics, plot, results  # noqa: E402

from reference import reference_metrics

EPOCHS = 5  # the planted collapse reaches train accuracy 1 at epoch 4


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    merged = None
    for epoch in range(EPOCHS):
        arrays = epoch_arrays(epoch)
        # Epoch 1 has no test split: the plots must leave a gap, not invent a value.
        splits = ("train",) if epoch == 1 else ("train", "test")
        new = ncanalysis.analyze_arrays({s: arrays[s] for s in splits}, arrays["weight"],
                                        arrays["bias"], epoch=epoch, class_names=CLASS_NAMES,
                                        scheduler="sync")
        merged = new if merged is None else results.merge_results(merged, new)
    assert merged.attrs["tpt_start_epoch"] == 4
    return merged


MARKER_LABELS = ("TPT start", plot._STABLE_LABEL)


def data_lines(ax):
    """The lines of an axes that carry data, by label (the TPT markers excluded)."""
    return {line.get_label(): line for line in ax.get_lines()
            if line.get_label() not in MARKER_LABELS}


def check_series(ax, ds, name, splits=None):
    lines = data_lines(ax)
    for split in splits or ds["split"].values.tolist():
        line = lines.pop(split)
        np.testing.assert_array_equal(line.get_xdata(), ds["epoch"].values)
        np.testing.assert_array_equal(line.get_ydata(), ds[name].sel(split=split).values)
    assert not lines, f"unexpected lines {list(lines)}"


def check_tpt_marker(ax, ds):
    markers = [line for line in ax.get_lines() if line.get_label() == "TPT start"]
    assert len(markers) == 1
    assert list(markers[0].get_xdata()) == [ds.attrs["tpt_start_epoch"]] * 2


@pytest.mark.parametrize("name,function", [
    ("nc1", plot.plot_nc1),
    ("self_duality", plot.plot_self_duality),
    ("ncc_mismatch", plot.plot_ncc_mismatch),
])
def test_single_series_figures_plot_the_results(ds, name, function):
    (ax,) = function(ds).axes
    check_series(ax, ds, name)
    check_tpt_marker(ax, ds)
    assert ax.get_xlabel() == "Epoch"
    # A split missing from an epoch is a gap, not a value.
    assert np.isnan(data_lines(ax)["test"].get_ydata()[1])


def test_nc1_is_on_a_log_scale(ds):
    (ax,) = plot.plot_nc1(ds).axes
    assert ax.get_yscale() == "log"
    train = ds["nc1"].sel(split="train").values
    assert train[-1] < train[0] / 100  # the collapse spans orders of magnitude


@pytest.mark.parametrize("stem,function", [
    ("equinorm", plot.plot_equinorm),
    ("equiangular", plot.plot_equiangularity),
    ("maxangle", plot.plot_maxangle),
])
def test_means_and_classifier_figures(ds, stem, function):
    means_ax, weights_ax = function(ds).axes
    check_series(means_ax, ds, f"{stem}_means")
    (line,) = data_lines(weights_ax).values()
    assert line.get_label() == "classifier"
    np.testing.assert_array_equal(line.get_ydata(), ds[f"{stem}_weights"].sel(split="train"))
    # W belongs to the epoch: an epoch without a train split takes another split's value.
    test_only = ds.copy(deep=True)
    test_only[f"{stem}_weights"].loc[{"epoch": 3, "split": "train"}] = np.nan
    (line,) = data_lines(function(test_only).axes[1]).values()
    np.testing.assert_array_equal(line.get_ydata(), ds[f"{stem}_weights"].sel(split="train"))
    for ax in (means_ax, weights_ax):
        check_tpt_marker(ax, ds)


def test_no_tpt_marker_before_the_terminal_phase(ds):
    early = ds.sel(epoch=[0, 1, 2]).assign_attrs(tpt_start_epoch=-1)
    (ax,) = plot.plot_error(early).axes
    assert "TPT start" not in [line.get_label() for line in ax.get_lines()]


def test_per_class_bars_are_the_last_epoch(ds):
    fig = plot.plot_classes(ds)
    last = ds.sel(epoch=EPOCHS - 1)
    names = ("class_nc1", "class_mean_norm", "class_within_var")
    axes = np.array(fig.axes).reshape(2, len(names))  # a row per split
    for row, split in zip(axes, ("train", "test")):
        for ax, name in zip(row, names):
            (bars,) = ax.containers
            assert bars.get_label() == split
            heights = [patch.get_height() for patch in bars]
            np.testing.assert_array_equal(heights, last[name].sel(split=split).values)
            assert [t.get_text() for t in ax.get_xticklabels()] == CLASS_NAMES
    # The plotted shares are the per-class NC1 of METRICS.md (float64 reference; float32 GEMM).
    arrays = epoch_arrays(EPOCHS - 1)
    expected = reference_metrics({s: arrays[s] for s in ("train", "test")}, arrays["weight"],
                                 arrays["bias"])
    for split in ("train", "test"):
        np.testing.assert_allclose(last["class_nc1"].sel(split=split),
                                   expected[split]["class_nc1"], rtol=1e-5, err_msg=split)
    # An epoch without a test split gets one row.
    assert len(plot.plot_classes(ds, epoch=1).axes) == len(names)


def test_per_class_needs_class_variables(ds):
    with pytest.raises(ValueError, match="per-class"):
        plot.plot_classes(ds.drop_dims("class"))


def check_png(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, image.shape
    assert image[..., :3].std() > 0.05, f"{path} looks blank"


def check_pdf(path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:] and len(data) > 5000, path


def test_cli_plot_writes_real_images(tmp_path, ds):
    source = results.save_results(ds, tmp_path / "run.json")
    done = run_cli("plot", source, "--output-dir", tmp_path / "figs")
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.splitlines()]
    assert all(p.parent == tmp_path / "figs" for p in written)
    assert {p.stem for p in written} == set(plot.FIGURES)
    assert {p.suffix for p in written} == {".png", ".pdf"}
    for path in written:
        check_png(path) if path.suffix == ".png" else check_pdf(path)


def test_save_figures_from_csv_skips_the_class_view(tmp_path, ds):
    source = results.load_results(results.save_results(ds, tmp_path / "run.csv"))
    written = plot.save_figures(source, tmp_path / "figs", formats=("png",))
    assert {p.stem for p in written} == set(plot.FIGURES) - {"classes"}
    check_png(tmp_path / "figs" / "nc1.png")


# --------------------------------------------------------------------------- TPT, error, log axes


@pytest.mark.parametrize("accuracy,expected", [
    ([0.1, 0.5, 1.0, 1.0, 1.0], 20),                 # reached once and for all
    ([0.1, 1.0, 0.99, 1.0, 1.0], 30),                # a dip after the first 1
    ([0.1, 1.0, 1.0, 1.0, 0.999], -1),               # the last epoch is a dip
    ([1.0, 1.0, 1.0, 1.0, 1.0], 0),                  # perfect from the first epoch
    ([0.1, 0.2, 0.3, 0.4, 0.5], -1),                 # never reached
    ([0.1, 1.0, np.nan, 1.0, 1.0], 10),              # a missing train split is no dip
    ([0.1, np.nan, 0.9, np.nan, 1.0], 40),           # ... nor a start
    ([0.1, 1.0, 0.99, 1.0, np.nan], 30),             # nor an end
    ([np.nan] * 5, -1),
])
def test_tpt_stable_epoch_on_hand_built_runs(accuracy, expected):
    epochs = np.array([0, 10, 20, 30, 40])  # not every epoch analysed
    assert metrics.tpt_stable_epoch(epochs, np.array(accuracy)) == expected


def test_tpt_stable_epoch_edge_cases():
    assert metrics.tpt_stable_epoch(np.array([], dtype=int), np.array([])) == -1
    with pytest.raises(ValueError, match="same length"):
        metrics.tpt_stable_epoch(np.arange(3), np.ones(4))


@pytest.fixture(scope="module")
def dipping(ds) -> xr.Dataset:
    """The fixture's results with train accuracy 1 at epoch 1, a dip at 2, 1 from 3 on."""
    out = ds.copy(deep=True)
    n = int(out["n_samples"].sel(split="train", epoch=0))
    out["accuracy"].loc[{"split": "train"}] = [0.5, 1.0, 1.0 - 3 / n, 1.0, 1.0]
    out["accuracy"].loc[{"split": "test"}] = [0.4, np.nan, 0.9, 0.95, 1.0]
    # The analysis recorded the stable epoch of the old accuracies: drop it, the
    # figures then take it from the accuracies set here.
    out.attrs.pop("tpt_stable_epoch", None)
    return out.assign_attrs(tpt_start_epoch=1)  # the paper's start: first accuracy 1


def drawn(fig):
    FigureCanvasAgg(fig).draw()  # tick labels exist only once drawn
    return fig


def zero_tick(ax):
    """The tick of y = 0 is on the axis, at its bottom, labelled 0."""
    assert ax.get_ylim()[0] == 0.0
    labels = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
    assert 0.0 in labels and labels[0.0].replace("$", "").replace(r"\mathdefault{", "")[:1] == "0"


def test_error_figure_plots_one_minus_accuracy_on_a_symlog_axis(dipping):
    (ax,) = drawn(plot.plot_error(dipping)).axes
    lines = data_lines(ax)
    n = int(dipping["n_samples"].sel(split="train", epoch=0))
    train = lines.pop("train")
    np.testing.assert_array_equal(train.get_xdata(), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(train.get_ydata(), [0.5, 0.0, 3 / n, 0.0, 0.0], atol=1e-15)
    test = lines.pop("test")
    np.testing.assert_allclose(test.get_ydata(), [0.6, np.nan, 0.1, 0.05, 0.0], atol=1e-15)
    # The dip after the TPT start is marked on the train line, and only it.
    (dips,) = [line for label, line in lines.items() if label.startswith(plot._DIP_LABEL)]
    np.testing.assert_array_equal(dips.get_xdata(), [2])
    np.testing.assert_allclose(dips.get_ydata(), [3 / n])
    assert dips.get_label().endswith("(1 epoch)")
    # Log axis whose log part begins at the decade of the smallest error > 0; 0 at the bottom.
    assert ax.get_yscale() == "symlog"
    linthresh = ax.yaxis.get_transform().linthresh
    assert linthresh <= 3 / n < 10 * linthresh
    zero_tick(ax)
    # The paper's TPT start and the epoch from which train accuracy stays 1.
    marks = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
    assert marks["TPT start"] == [1, 1] and marks[plot._STABLE_LABEL] == [3, 3]
    assert ax.get_xlim() == (0.0, 4.0)


def test_no_dips_no_stable_marker(ds):
    (ax,) = plot.plot_error(ds).axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert "TPT start" in labels and plot._STABLE_LABEL not in labels
    assert not any(label.startswith(plot._DIP_LABEL) for label in labels)
    assert plot.tpt_epochs(ds) == (4, 4)


def test_stable_epoch_attribute_wins_when_the_results_carry_it(dipping):
    assert plot.tpt_epochs(dipping) == (1, 3)
    assert plot.tpt_epochs(dipping.assign_attrs(tpt_stable_epoch=4)) == (1, 4)


@pytest.mark.parametrize("name,function", [
    ("self_duality", plot.plot_self_duality),
    ("ncc_mismatch", plot.plot_ncc_mismatch),
])
def test_self_duality_and_ncc_on_symlog_axes_keep_zeros(ds, name, function):
    with_zero = ds.copy(deep=True)
    with_zero[name].loc[{"split": "train", "epoch": 3}] = 0.0
    (ax,) = drawn(function(with_zero)).axes
    assert ax.get_yscale() == "symlog"
    values = with_zero[name].values
    smallest = values[np.isfinite(values) & (values > 0)].min()
    linthresh = ax.yaxis.get_transform().linthresh
    assert linthresh <= smallest < 10 * linthresh
    # The zero is plotted (a log axis would drop it), at the bottom, on a tick labelled 0.
    assert data_lines(ax)["train"].get_ydata()[3] == 0.0
    zero_tick(ax)


@pytest.mark.parametrize("function", [f for name, f in plot.FIGURES.items() if name != "classes"])
def test_time_axes_end_at_the_last_epoch(ds, function):
    for ax in function(ds).axes:
        assert ax.get_xlim() == (0.0, EPOCHS - 1.0)


def test_without_zeros_the_axis_is_plainly_logarithmic(ds):
    positive = ds.copy(deep=True)
    positive["self_duality"] = positive["self_duality"] + 1e-3
    assert (positive["self_duality"].values[np.isfinite(positive["self_duality"].values)] > 0).all()
    (ax,) = plot.plot_self_duality(positive).axes
    assert ax.get_yscale() == "log"
