"""The analyser's execution properties: chunking, input kinds, schedulers, laziness.

The numbers themselves are checked against the independent reference in
test_metrics_vs_reference.py; here the question is whether *how* the graph runs
changes them.  It must not, beyond float64 round-off, and counts must be equal.
"""

from __future__ import annotations

import collections
import pickle
import subprocess
import sys
import threading

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import zarr

import ncanalysis
from ncanalysis.engine import EpochInput, epoch_graph
from ncanalysis.metrics import CLASS_METRICS, SCALAR_METRICS
from ncanalysis.sources import RowBlocks, as_row_blocks

from reference import reference_metrics

INT_VARS = ("n_samples", "nc1_rank", "class_count", "class_ncc_mismatch")


def _data(seed: int = 0, n: int = 3000, d: int = 24, c: int = 7, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d)) * 3
    labels = rng.permutation(np.arange(n) % c)
    features = means[labels] + spread * rng.normal(size=(n, d))
    test_labels = rng.permutation(np.arange(n // 3) % c)
    test = means[test_labels] + 1.5 * spread * rng.normal(size=(n // 3, d))
    weight = means + 0.5 * rng.normal(size=(c, d))
    bias = rng.normal(size=c)
    return {"train": (features, labels), "test": (test, test_labels)}, weight, bias


def assert_same_results(a, b, rtol: float = 1e-6) -> None:
    """Every metric equal to rtol (relative, with a tiny absolute floor); counts exactly.

    1e-6 is the bar with float32 GEMMs, whose BLAS round-off depends on block
    shapes (about 1e-8 here); float64 GEMMs are held to float64 round-off.
    """
    for name in SCALAR_METRICS + CLASS_METRICS + ("n_samples", "nc1_rank"):
        x, y = a[name].values, b[name].values
        if name in INT_VARS:
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-13, err_msg=name)


@pytest.fixture(scope="module")
def baseline():
    splits, weight, bias = _data()
    return ncanalysis.analyze_arrays(splits, weight, bias, scheduler="synchronous")


@pytest.mark.parametrize("rows", [3, 97, 500, 2999, 10_000])
def test_chunk_size_does_not_change_results(baseline, rows):
    splits, weight, bias = _data()
    result = ncanalysis.analyze_arrays(splits, weight, bias, rows_per_block=rows)
    assert_same_results(baseline, result)


@pytest.mark.parametrize("rows", [3, 1000])
def test_chunk_size_float64_gemm_to_round_off(rows):
    splits, weight, bias = _data()
    one_block = ncanalysis.analyze_arrays(splits, weight, bias, gemm_dtype="float64")
    result = ncanalysis.analyze_arrays(
        splits, weight, bias, gemm_dtype="float64", rows_per_block=rows
    )
    assert_same_results(one_block, result, rtol=1e-11)


def test_irregular_dask_chunks(baseline):
    splits, weight, bias = _data()
    features, labels = splits["train"]
    irregular = da.from_array(features, chunks=((1, 700, 1299, 1000), (10, 14)))
    labels_dask = da.from_array(labels, chunks=400)
    splits = dict(splits, train=(irregular, labels_dask))
    assert_same_results(baseline, ncanalysis.analyze_arrays(splits, weight, bias))


def test_zarr_and_hdf5_inputs(baseline, tmp_path):
    splits, weight, bias = _data()
    group = zarr.open_group(tmp_path / "dump.zarr", mode="w")
    with h5py.File(tmp_path / "dump.h5", "w") as handle:
        for name, (features, labels) in splits.items():
            group.create_array(name, data=features, chunks=(256, features.shape[1]))
            group.create_array(f"{name}_labels", data=labels, chunks=(256,))
            handle.create_dataset(name, data=features, chunks=(300, features.shape[1]))
            handle.create_dataset(f"{name}_labels", data=labels)
    from_zarr = ncanalysis.analyze_arrays(
        {s: (group[s], group[f"{s}_labels"]) for s in splits}, weight, bias
    )
    assert_same_results(baseline, from_zarr)
    with h5py.File(tmp_path / "dump.h5", "r") as handle:
        from_h5 = ncanalysis.analyze_arrays(
            {s: (handle[s], handle[f"{s}_labels"]) for s in splits}, weight, bias
        )
    assert_same_results(baseline, from_h5)


def test_float16_storage_matches_to_float16_precision(baseline):
    splits, weight, bias = _data()
    half = {s: (f.astype(np.float16), y) for s, (f, y) in splits.items()}
    as_half = ncanalysis.analyze_arrays(half, weight, bias)
    # The float16 values themselves, upcast exactly: the kernels decode float16
    # bit-exactly, so this must agree to float64 round-off.
    widened = {s: (f.astype(np.float32), y) for s, (f, y) in half.items()}
    assert_same_results(as_half, ncanalysis.analyze_arrays(widened, weight, bias))
    # Against the unrounded features: float16 keeps ~3 decimal digits.
    # (Not the loss: at 1e-24 it moves exponentially with float16-rounded logits.)
    for name in ("nc1", "equinorm_means", "self_duality", "accuracy", "cdnv"):
        np.testing.assert_allclose(as_half[name], baseline[name], rtol=2e-3, err_msg=name)


@pytest.mark.parametrize("scheduler", ["threads", "processes", "synchronous"])
def test_local_schedulers(baseline, scheduler):
    splits, weight, bias = _data()
    result = ncanalysis.analyze_arrays(
        splits, weight, bias, scheduler=scheduler, rows_per_block=700
    )
    assert_same_results(baseline, result)


def test_distributed_client_passed_and_active(baseline, cluster_client, tmp_path):
    splits, weight, bias = _data()
    with h5py.File(tmp_path / "dump.h5", "w") as handle:
        for name, (features, labels) in splits.items():
            handle.create_dataset(name, data=features, chunks=(300, features.shape[1]))
            handle.create_dataset(f"{name}_labels", data=labels)
    with h5py.File(tmp_path / "dump.h5", "r") as handle:
        # h5py objects cannot be pickled: this only works if tasks open the file themselves.
        h5_splits = {s: (handle[s], handle[f"{s}_labels"]) for s in splits}
        passed = ncanalysis.analyze_arrays(
            h5_splits, weight, bias, scheduler=cluster_client, rows_per_block=600
        )
    assert_same_results(baseline, passed)
    # A Client made active by the caller is picked up without naming it.
    with cluster_client.as_current():
        active = ncanalysis.analyze_arrays(splits, weight, bias, rows_per_block=900)
    assert_same_results(baseline, active)
    assert sum(cluster_client.run(lambda: 1).values()) == 2


def test_graph_is_lazy_and_carries_no_feature_data(tmp_path, raise_if_dask_computes):
    splits, weight, bias = _data(n=20_000, d=64)
    group = zarr.open_group(tmp_path / "dump.zarr", mode="w")
    arrays = {}
    for name, (features, labels) in splits.items():
        group.create_array(name, data=features, chunks=(1000, features.shape[1]))
        arrays[name] = (da.from_zarr(group[name]), labels)
    item = EpochInput(epoch=0, splits=arrays, weight=weight, bias=bias)
    with raise_if_dask_computes():
        graph = epoch_graph(item)
    payload = len(pickle.dumps(dict(graph.__dask_graph__())))
    feature_bytes = sum(f.nbytes for f, _ in splits.values())
    # Labels and the classifier travel with the graph; the features stay in the store.
    assert payload < feature_bytes / 10, (payload, feature_bytes)


class CountingRows:
    """An array-like that records which row ranges are read, and how often."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.reads: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def __getitem__(self, rows: slice) -> np.ndarray:
        with self._lock:
            self.reads[rows.start, rows.stop] += 1
        return self.data[rows]


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_row_blocks_are_read_once_per_pass_and_not_while_building(
    baseline, scheduler, raise_if_dask_computes
):
    splits, weight, bias = _data()
    sources = {name: CountingRows(features) for name, (features, _) in splits.items()}
    item = EpochInput(
        epoch=0,
        splits={name: (RowBlocks.of(sources[name], 400), labels)
                for name, (_, labels) in splits.items()},
        weight=weight,
        bias=bias,
    )
    with raise_if_dask_computes():
        graph = epoch_graph(item)
    assert all(not source.reads for source in sources.values())
    result = dask.compute(graph, scheduler=scheduler)[0]
    for name, source in sources.items():
        expected = {(a, b): 2 for a, b in item.splits[name][0].ranges()}
        assert dict(source.reads) == expected, name
    # The same numbers as the baseline, which went through analyze_arrays.
    for name in ("nc1", "ncc_mismatch", "accuracy"):
        assert result["train"][name] == pytest.approx(float(baseline[name].sel(split="train")[0]),
                                                      rel=1e-6)


def test_row_blocks_bounds():
    data = np.zeros((10, 3), dtype=np.float16)
    blocks = RowBlocks.of(data, 4)
    assert blocks.bounds == (0, 4, 8, 10)
    assert blocks.block_rows == (4, 4, 2)
    assert blocks.ranges() == [(0, 4), (4, 8), (8, 10)]
    assert (blocks.shape, blocks.dtype, blocks.ndim) == ((10, 3), np.float16, 2)
    assert RowBlocks.of(data[:0], 4).ranges() == [(0, 0)]
    # Anything but a dask array becomes RowBlocks; a dask array stays one.
    assert isinstance(as_row_blocks(data, rows_per_block=4), RowBlocks)
    assert isinstance(as_row_blocks(da.from_array(data, chunks=5)), da.Array)


def test_progress_goes_to_stderr(capsys):
    splits, weight, bias = _data(n=600)
    ncanalysis.analyze_arrays(splits, weight, bias, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "100%" in captured.err


def test_results_layout(baseline):
    assert set(baseline.dims) == {"epoch", "split", "class"}
    assert list(baseline.split.values) == ["train", "test"]
    assert baseline.attrs["accumulation_dtype"] == "float64"
    assert baseline.attrs["global_mean"] == "class"
    assert baseline.attrs["etf_exists"] == 1
    np.testing.assert_array_equal(baseline.n_samples.values, [[3000, 1000]])
    # Per-class NC1 shares against the independent float64 reference (float32 GEMM).
    expected = reference_metrics(*_data())
    for split in ("train", "test"):
        np.testing.assert_allclose(baseline.class_nc1.sel(epoch=0, split=split),
                                   expected[split]["class_nc1"], rtol=1e-5, err_msg=split)


@pytest.mark.parametrize("scheduler", ["None", "'threads'", "'sync'"])
def test_local_runs_do_not_import_distributed(scheduler):
    """Naming a local scheduler (or none) must not cost dask.distributed's import."""
    code = (
        "import sys, numpy as np, ncanalysis\n"
        "x = np.random.default_rng(0).normal(size=(60, 4)); y = np.arange(60) % 3\n"
        "ds = ncanalysis.analyze_arrays({'train': (x, y)}, np.eye(3, 4),\n"
        f"                                scheduler={scheduler})\n"
        "assert int(ds.n_samples.values[0, 0]) == 60\n"
        "assert 'distributed' not in sys.modules, 'distributed imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_block_tasks_form_their_own_task_group():
    """dask.distributed spreads a pass's block tasks only if no merge shares their group."""
    from distributed.utils import key_split_group

    splits, weight, bias = _data(n=3000)
    item = EpochInput(
        epoch=0,
        splits={name: (RowBlocks.of(features, 300), labels)
                for name, (features, labels) in splits.items()},
        weight=weight,
        bias=bias,
    )
    graph = dict(epoch_graph(item).__dask_graph__())
    for task in ("block_scatter", "_class_sums_task"):
        groups = {key_split_group(k) for k, v in graph.items()
                  if task in repr(getattr(v, "func", ""))}
        assert len(groups) == 2, (task, groups)  # one group per split
        for group in groups:  # the blocks of one split and pass, and nothing else
            members = [v for k, v in graph.items() if key_split_group(k) == group]
            assert all(task in repr(getattr(v, "func", "")) for v in members), group
        assert sum(len(f.ranges()) for f, _ in item.splits.values()) == sum(
            task in repr(getattr(v, "func", "")) for v in graph.values())
