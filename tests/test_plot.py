"""Figures: the plotted data are the results' values, and the files are real images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread


from cli_helpers import CLASS_NAMES, epoch_arrays, run_cli  # noqa: E402

import ncanalysis  # noqa: E402
from ncanalysis import plot, results  # noqa: E402

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


def data_lines(ax):
    """The lines of an axes that carry data, by label (the TPT marker excluded)."""
    return {line.get_label(): line for line in ax.get_lines() if line.get_label() != "TPT start"}


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
    ("accuracy", plot.plot_accuracy),
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
    (ax,) = plot.plot_accuracy(early).axes
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
