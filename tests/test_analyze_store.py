"""`ncanalysis.analyze` on stores: backends, epochs, distributed, out of core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ncanalysis
from ncanalysis.errors import IncompleteEpochError
from ncanalysis.store import create_store, open_store

from test_engine import assert_same_results


def _epoch_data(epoch: int, n: int = 2400, d: int = 20, c: int = 6):
    rng = np.random.default_rng(epoch)
    means = rng.normal(size=(c, d)) * 2
    spread = 1.0 / (1 + epoch)
    out = {}
    for split, size in (("train", n), ("test", n // 4)):
        labels = rng.permutation(np.arange(size) % c)
        out[split] = ((means[labels] + spread * rng.normal(size=(size, d))).astype(np.float32), labels)
    weight = means + 0.1 * rng.normal(size=(c, d))
    return out, weight.astype(np.float32), rng.normal(size=c).astype(np.float32)


def _write_store(path: Path, epochs=(0, 1, 2), incomplete=None, dtype="float32", chunk_rows=256):
    data = {e: _epoch_data(e) for e in epochs}
    splits0, weight0, _ = data[epochs[0]]
    with create_store(
        path, num_classes=weight0.shape[0], num_features=weight0.shape[1],
        feature_dtype=dtype, chunk_rows=chunk_rows,
    ) as writer:
        for epoch, (splits, weight, bias) in data.items():
            ep = writer.begin_epoch(epoch)
            for name, (features, labels) in splits.items():
                ep.write_split(name, features, labels)
            ep.write_classifier(weight, bias)
            ep.finalize()
        if incomplete is not None:
            ep = writer.begin_epoch(incomplete)
            ep.create_split("train", 100)
    return data


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    data = _write_store(root / "run.zarr", incomplete=3)
    _write_store(root / "run.h5", incomplete=3)
    return root, data


def test_store_matches_arrays_on_both_backends(stores):
    root, data = stores
    from_zarr = ncanalysis.analyze(root / "run.zarr")
    from_h5 = ncanalysis.analyze(root / "run.h5")
    assert list(from_zarr.epoch.values) == [0, 1, 2]  # the incomplete epoch 3 is left out
    assert_same_results(from_zarr, from_h5)
    for epoch, (splits, weight, bias) in data.items():
        direct = ncanalysis.analyze_arrays(splits, weight, bias, epoch=epoch)
        assert_same_results(from_zarr.sel(epoch=[epoch]), direct)


def test_epoch_and_split_selection(stores):
    root, _ = stores
    result = ncanalysis.analyze(root / "run.zarr", epochs=[2], splits=["train"])
    assert list(result.epoch.values) == [2]
    assert list(result.split.values) == ["train"]
    with pytest.raises(IncompleteEpochError, match="3"):
        ncanalysis.analyze(root / "run.zarr", epochs=[3])


def test_float16_store_matches_to_float16_precision(tmp_path, stores):
    root, _ = stores
    _write_store(tmp_path / "half.zarr", dtype="float16")
    half = ncanalysis.analyze(tmp_path / "half.zarr")
    full = ncanalysis.analyze(root / "run.zarr")
    for name in ("nc1", "equinorm_means", "equiangular_means", "self_duality", "nc1_trace_ratio"):
        np.testing.assert_allclose(half[name], full[name], rtol=3e-3, err_msg=name)


def test_distributed_store_run(stores, cluster_client):
    root, _ = stores
    local = ncanalysis.analyze(root / "run.h5", scheduler="threads")
    for name in ("run.zarr", "run.h5"):
        remote = ncanalysis.analyze(root / name, scheduler=cluster_client)
        assert_same_results(local, remote)


def test_tpt_start_epoch_marks_first_perfect_train_accuracy(tmp_path):
    # Well separated classes (means 10 e_c, noise 0.1); by construction, train accuracy is
    # 0 at epoch 0 (negated classifier), 1 at epochs 1 and 3, 1/c at epoch 2 (a bias for
    # class 0), and test labels are off by one class (test accuracy 0): TPT starts at 1.
    c, d = 4, 8
    rng = np.random.default_rng(0)
    means = 10.0 * np.eye(c, d)
    labels = np.arange(40) % c
    features = (means[labels] + 0.1 * rng.normal(size=(40, d))).astype(np.float32)
    classifiers = {0: (-means, np.zeros(c)), 1: (means, np.zeros(c)),
                   2: (means, np.array([1e3, 0, 0, 0])), 3: (means, np.zeros(c))}
    with create_store(tmp_path / "tpt.zarr", num_classes=c, num_features=d) as writer:
        for epoch, (weight, bias) in classifiers.items():
            ep = writer.begin_epoch(epoch)
            ep.write_split("train", features, labels)
            ep.write_split("test", features, (labels + 1) % c)
            ep.write_classifier(weight, bias)
            ep.finalize()
    result = ncanalysis.analyze(tmp_path / "tpt.zarr")
    np.testing.assert_array_equal(result.accuracy.sel(split="train"), [0.0, 1.0, 0.25, 1.0])
    assert result.attrs["tpt_start_epoch"] == 1


MEMORY_CAP = 450 * 2**20


def test_out_of_core_store_several_times_the_memory_cap(tmp_path):
    """A subprocess analyses a store 4x larger than the cap and its peak RSS stays under it."""
    n_features, n_classes, block = 256, 10, 65_536
    rows = (4 * MEMORY_CAP) // (n_features * 4) + 1
    rng = np.random.default_rng(0)
    means = rng.normal(size=(n_classes, n_features)).astype(np.float32)
    noise = rng.normal(size=(block, n_features)).astype(np.float32)
    path = tmp_path / "big.zarr"
    with create_store(
        path, num_classes=n_classes, num_features=n_features, feature_dtype="float32",
        chunk_rows=8192,
    ) as writer:
        ep = writer.begin_epoch(0)
        ep.create_split("train", rows)
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            labels = np.arange(start, stop) % n_classes
            # Rolling one noise block keeps the writer fast; rows still differ.
            shifted = np.roll(noise, start // block, axis=1)[: stop - start]
            ep.write_rows("train", start, means[labels] + shifted, labels)
        ep.write_classifier(means, np.zeros(n_classes, dtype=np.float32))
        ep.finalize()
    stored = open_store(path).features(0, "train").nbytes
    assert stored >= 4 * MEMORY_CAP
    worker = Path(__file__).with_name("out_of_core_worker.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, str(worker), str(path), "32768"],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["peak_rss"] < MEMORY_CAP, (report, stored)
    assert np.isfinite(report["nc1"]) and report["nc1"] > 0
