"""The extractor with real processes: 4 gloo ranks, a writer killed mid-epoch, a live reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import extract_workers as workers  # noqa: E402

from ncanalysis.errors import IncompleteEpochError, StoreFormatError  # noqa: E402
from ncanalysis.store import open_store, validate_store  # noqa: E402
from ncanalysis_extract import FeatureRecorder  # noqa: E402

WORKERS = os.path.join(os.path.dirname(__file__), "extract_workers.py")
TIMEOUT = 180


def _env() -> dict[str, str]:
    # One thread each: the ranks share the machine's cores; gloo on the loopback.
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKERS, *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker {proc.args} timed out\n{err}")
    assert proc.returncode == 0, f"worker {proc.args} failed ({proc.returncode}):\n{err}"


def _close(store_features: np.ndarray, expected: torch.Tensor, rtol: float = 2**-10) -> None:
    np.testing.assert_allclose(store_features.astype(np.float32), expected.numpy(), rtol=rtol,
                               atol=1e-6)


def test_four_gloo_ranks_write_each_row_once(tmp_path: Path) -> None:
    store_path, world = tmp_path / "ddp.zarr", 4
    procs = [
        _start("ddp", "--store", store_path, "--rank", rank, "--world", world,
               "--rendezvous", tmp_path / "rendezvous", "--out", tmp_path / f"rank{rank}.json",
               "--n-train", 203, "--n-test", 61, "--chunk-rows", 8)
        for rank in range(world)
    ]
    for proc in procs:
        _finish(proc)
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    # Contiguous ranges of whole 8-row units tile each split, in rank order.
    for split, n in (("train", 203), ("test", 61)):
        ranges = [tuple(s[0]["row_ranges"][split]) for s in summaries]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] and a[1] % 8 == 0 for a, b in zip(ranges, ranges[1:]))
        assert all(stop > start for start, stop in ranges)
    # Epoch 1 overflowed float16 on rank 2 only; all four ranks redid it in float32.
    assert [[e["feature_dtype"] for e in s] for s in summaries] == [["float16", "float32", "float32"]] * 4
    assert all(s[1]["retried_in_float32"] for s in summaries)

    model = workers.make_model()
    train, test = workers.IndexedData(203, 1), workers.IndexedData(61, 2)
    huge = workers.IndexedData(203, 1, huge=True)
    with open_store(store_path) as store:
        assert store.epochs() == [0, 1, 2] and store.incomplete_epochs() == []
        assert store.provenance["world_size"] == world
        for epoch, train_set in enumerate((train, huge, train)):
            dtype = np.float16 if epoch == 0 else np.float32
            for split, data in (("train", train_set), ("test", test)):
                features = store.features(epoch, split).compute()
                assert features.dtype == dtype
                # Every row once, in its place: values, labels and its own sample index.
                _close(features, workers.expected_features(model, data),
                       rtol=2**-10 if epoch == 0 else 1e-6)
                np.testing.assert_array_equal(store.labels(epoch, split), data.y.numpy())
                np.testing.assert_array_equal(store.sample_index(epoch, split), data.index.numpy())
            np.testing.assert_array_equal(store.weight(epoch), model.fc.weight.detach().numpy())
            np.testing.assert_array_equal(store.bias(epoch), model.fc.bias.detach().numpy())
    assert validate_store(store_path) == []


@pytest.mark.parametrize("name", ["crash.zarr", "crash.h5"])
def test_writer_killed_mid_epoch(tmp_path: Path, name: str) -> None:
    store_path, ready = tmp_path / name, tmp_path / "ready"
    proc = _start("crash", "--store", store_path, "--ready", ready, "--n-train", 203,
                  "--chunk-rows", 8)
    deadline = time.monotonic() + TIMEOUT
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the writer ended before epoch 2 ({proc.returncode}):\n{proc.stderr.read()}")
        assert time.monotonic() < deadline, "the writer never reached epoch 2"
        time.sleep(0.01)
    # Killed while it writes epoch 2's units, 20 ms apart.
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    model, data = workers.make_model(), workers.IndexedData(203, 1)
    expected = workers.expected_features(model, data)
    with open_store(store_path) as store:
        assert store.epochs() == [0, 1] and store.incomplete_epochs() == [2]
        for epoch in (0, 1):
            _close(store.features(epoch, "train").compute(), expected)
            np.testing.assert_array_equal(store.sample_index(epoch, "train"), data.index.numpy())
        with pytest.raises(IncompleteEpochError, match="epoch 2"):
            store.features(2, "train")
    # Recording epoch 2 again replaces the partial one.
    model.scale.fill_(3.0)
    with FeatureRecorder(store_path, model, mode="append", chunk_rows=8) as rec:
        rec.record_epoch(2, {"train": data})
    with open_store(store_path) as store:
        assert store.epochs() == [0, 1, 2] and store.incomplete_epochs() == []
        _close(store.features(2, "train").compute(), workers.expected_features(model, data))
        _close(store.features(1, "train").compute(), expected)
    assert validate_store(store_path) == []


@pytest.mark.parametrize("name", ["live.zarr", "live.h5"])
def test_reader_reads_complete_epochs_while_the_writer_appends(tmp_path: Path, name: str) -> None:
    store_path, epochs = tmp_path / name, 5
    proc = _start("live", "--store", store_path, "--epochs", epochs, "--pause", 0.3,
                  "--n-train", 203, "--chunk-rows", 16)
    model, data = workers.make_model(), workers.IndexedData(203, 1)
    base = workers.expected_features(model, data)
    store, checked, seen_while_live = None, set(), set()
    deadline = time.monotonic() + TIMEOUT
    while True:
        alive = proc.poll() is None
        assert time.monotonic() < deadline, "the writer did not finish"
        if store is None:
            try:
                store = open_store(store_path)
            except StoreFormatError:  # not created yet
                if not alive:
                    break
                time.sleep(0.02)
                continue
        complete = store.epochs()
        if alive:
            seen_while_live.add(len(complete))
        for epoch in set(complete) - checked:
            # The features of epoch e are scaled by e + 1 in the writer.
            _close(store.features(epoch, "train").compute(), base * (epoch + 1))
            np.testing.assert_array_equal(store.labels(epoch, "train"), data.y.numpy())
            np.testing.assert_array_equal(store.weight(epoch), model.fc.weight.detach().numpy())
            checked.add(epoch)
        if not alive:
            break
        time.sleep(0.02)
    _finish(proc)
    assert store is not None
    store.close()
    assert checked == set(range(epochs))
    # Epochs were read while later ones were still being written.
    assert any(0 < n < epochs for n in seen_while_live), seen_while_live
