"""FeatureRecorder in one process (and in threads standing in for ranks)."""

from __future__ import annotations

import copy
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import extract_workers as workers  # noqa: E402

from ncanalysis.errors import NCAnalysisError  # noqa: E402
from ncanalysis.store import open_store, validate_store  # noqa: E402
from ncanalysis_extract import (  # noqa: E402
    CallbackCommunicator,
    FeatureRecorder,
    FeatureValueError,
    RankFailedError,
)

BACKENDS = ["run.zarr", "run.h5"]


@pytest.fixture(params=BACKENDS)
def path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return tmp_path / request.param


def f16(values: torch.Tensor) -> np.ndarray:
    return values.numpy().astype(np.float16)


def assert_features(stored: np.ndarray, expected: torch.Tensor) -> None:
    """Equal to float16 precision (the GEMM of another batch size may differ by an ulp)."""
    np.testing.assert_allclose(stored.astype(np.float32), expected.numpy(), rtol=2**-10, atol=1e-6)


def test_record_epoch_matches_direct_forward(path: Path) -> None:
    model = workers.make_model()
    train, test = workers.IndexedData(45, 1), workers.IndexedData(13, 2)
    plain = TensorDataset(test.x, test.y)  # (x, y): the row number is the index
    with FeatureRecorder(path, model, chunk_rows=8) as rec:
        assert (rec.layer_path, rec.num_classes, rec.num_features) == ("fc", 4, 8)
        summary = rec.record_epoch(
            3, {"train": train, "test": DataLoader(plain, batch_size=5)}, batch_size=6)
    assert summary["rows"] == {"train": 45, "test": 13}
    assert summary["bytes"] == (45 + 13) * 8 * 2 and summary["feature_dtype"] == "float16"
    with open_store(path) as store:
        assert store.epochs() == [3] and store.incomplete_epochs() == []
        assert store.splits(3) == ["train", "test"]
        features = store.features(3, "train").compute()
        assert features.dtype == np.float16
        assert_features(features, workers.expected_features(model, train))
        np.testing.assert_array_equal(store.labels(3, "train"), train.y.numpy())
        np.testing.assert_array_equal(store.sample_index(3, "train"), train.index.numpy())
        assert_features(store.features(3, "test").compute(), workers.expected_features(model, test))
        np.testing.assert_array_equal(store.sample_index(3, "test"), np.arange(13))
        # W and b exactly.
        np.testing.assert_array_equal(store.weight(3), model.fc.weight.detach().numpy())
        np.testing.assert_array_equal(store.bias(3), model.fc.bias.detach().numpy())
        prov = store.provenance
    assert prov["model_class"].endswith("TinyNet") and prov["layer"] == "fc"
    assert prov["feature_dtype"] == "float16" and prov["world_size"] == 1
    assert prov["library_versions"]["torch"] == torch.__version__
    assert "ncanalysis" in prov["library_versions"]
    assert validate_store(path) == []


def test_modes_restored_and_no_grad(tmp_path: Path) -> None:
    model = workers.make_model()
    model.train()
    model.body[0].eval()  # a submodule in its own mode stays so
    seen = []

    def forward(module: nn.Module, x: torch.Tensor) -> None:
        seen.append((module.training, torch.is_grad_enabled()))
        module(x)

    with FeatureRecorder(tmp_path / "s.zarr", model, forward=forward) as rec:
        rec.record_epoch(0, {"train": workers.IndexedData(10, 1)})
    assert seen == [(False, False)]
    assert model.training and model.fc.training and not model.body[0].training


def test_bias_free_layer_stores_zero_bias(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2, bias=False))
    data = TensorDataset(torch.randn(9, 3), torch.randint(0, 2, (9,)))
    with FeatureRecorder(tmp_path / "s.zarr", model) as rec:
        rec.record_epoch(0, {"train": data})
    with open_store(tmp_path / "s.zarr") as store:
        np.testing.assert_array_equal(store.bias(0), np.zeros(2, np.float32))
        np.testing.assert_array_equal(store.weight(0), model[1].weight.detach().numpy())


def test_overflow_is_an_error_naming_epoch_split_row(path: Path) -> None:
    model = workers.make_model()
    good, huge = workers.IndexedData(203, 1), workers.IndexedData(203, 1, huge=True)
    with FeatureRecorder(path, model, chunk_rows=16) as rec:
        rec.record_epoch(0, {"train": good})
        with pytest.raises(FeatureValueError) as info:
            rec.record_epoch(1, {"train": huge})
    err = info.value
    assert (err.epoch, err.split, err.row, err.overflow) == (1, "train", workers.HUGE_ROW, True)
    message = str(err)
    assert "epoch 1" in message and "'train'" in message and f"row {workers.HUGE_ROW}" in message
    assert "float16" in message and "on_overflow='float32'" in message
    with open_store(path) as store:
        assert store.epochs() == [0] and store.incomplete_epochs() == [1]
        assert_features(store.features(0, "train").compute(), workers.expected_features(model, good))


def test_overflow_falls_back_to_float32_for_good(path: Path) -> None:
    model = workers.make_model()
    good, huge = workers.IndexedData(203, 1), workers.IndexedData(203, 1, huge=True)
    with FeatureRecorder(path, model, chunk_rows=16, on_overflow="float32") as rec:
        first = rec.record_epoch(0, {"train": good})
        second = rec.record_epoch(1, {"train": huge, "test": good})
        third = rec.record_epoch(2, {"train": good})
    assert [s["feature_dtype"] for s in (first, second, third)] == ["float16", "float32", "float32"]
    assert second["retried_in_float32"] and not third["retried_in_float32"]
    with open_store(path) as store:
        assert store.epochs() == [0, 1, 2]
        stored = store.features(1, "train").compute()
        assert stored.dtype == np.float32 and np.isfinite(stored).all()
        np.testing.assert_allclose(stored, workers.expected_features(model, huge).numpy(), rtol=1e-6)
        assert store.features(1, "test").dtype == np.float32


def test_manual_epoch_overflow_switches_later_epochs(tmp_path: Path) -> None:
    model, huge = workers.make_model(), workers.IndexedData(203, 1, huge=True)

    def record(rec: FeatureRecorder) -> None:
        with rec.epoch(0, {"train": len(huge)}) as ep:
            for x, y, index in ep.loader("train", huge, batch_size=50):
                with ep.capture("train", y, index):
                    model(x)

    with FeatureRecorder(tmp_path / "s.zarr", model, on_overflow="float32", chunk_rows=16) as rec:
        with pytest.raises(FeatureValueError, match="left incomplete .* record this one again"):
            record(rec)  # the rows given cannot be given again: the caller redoes the epoch
        assert rec.feature_dtype == "float32"
        record(rec)
    with open_store(tmp_path / "s.zarr") as store:
        assert store.epochs() == [0] and store.features(0, "train").dtype == np.float32


def test_float32_fallback_refuses_one_shot_iterators(tmp_path: Path) -> None:
    data = workers.IndexedData(10, 1)
    with FeatureRecorder(tmp_path / "s.zarr", workers.make_model(), on_overflow="float32") as rec:
        with pytest.raises(ValueError, match="one-shot iterator cannot be read twice"):
            rec.record_epoch(0, {"train": iter([(data.x, data.y)])}, num_samples={"train": 10})
        rec.record_epoch(0, {"train": [(data.x, data.y)]}, num_samples={"train": 10})


def test_nan_is_always_an_error(tmp_path: Path) -> None:
    model = workers.make_model()
    data = workers.IndexedData(20, 1)
    data.x[7, 2] = float("nan")
    with FeatureRecorder(tmp_path / "s.zarr", model, on_overflow="float32") as rec:
        with pytest.raises(FeatureValueError, match=r"epoch 0, split 'train', row 7 .*NaN/inf") as info:
            rec.record_epoch(0, {"train": data})
    assert not info.value.overflow


def test_manual_epoch_add_and_capture(tmp_path: Path) -> None:
    model = workers.make_model()
    data = workers.IndexedData(37, 1)
    expected = workers.expected_features(model, data)
    with FeatureRecorder(tmp_path / "s.zarr", model, chunk_rows=8) as rec:
        with rec.epoch(0, {"train": 37, "test": 37}) as ep:
            assert ep.row_range("train") == (0, 37)
            for x, y, index in ep.loader("train", data, batch_size=5):
                with ep.capture("train", y, index):
                    model(x)
            ep.add("test", expected.numpy(), data.y.numpy())  # arrays, all at once
        # Too few rows: the epoch stays incomplete.
        with pytest.raises(ValueError, match=r"epoch 1, split 'train': rank 0 added 5 rows; "
                                             r"its range \[0, 37\) has 37"):
            with rec.epoch(1, {"train": 37}) as ep:
                ep.add("train", expected[:5], data.y[:5])
        with pytest.raises(ValueError, match="more than its range"):
            with rec.epoch(2, {"train": 3}) as ep:
                ep.add("train", expected[:5], data.y[:5])
        with pytest.raises(ValueError, match="no split 'valid'"):
            with rec.epoch(3, {"train": 3}) as ep:
                ep.add("valid", expected[:3], data.y[:3])
    with open_store(tmp_path / "s.zarr") as store:
        assert store.epochs() == [0] and store.incomplete_epochs() == [1, 2, 3]
        assert_features(store.features(0, "train").compute(), expected)
        assert_features(store.features(0, "test").compute(), expected)
        np.testing.assert_array_equal(store.sample_index(0, "train"), data.index.numpy())
        np.testing.assert_array_equal(store.sample_index(0, "test"), np.arange(37))


def test_record_again_replaces_and_append_mode(path: Path) -> None:
    model = workers.make_model()
    data = workers.IndexedData(30, 1)
    with FeatureRecorder(path, model) as rec:
        rec.record_epoch(0, {"train": data})
    with pytest.raises(FileExistsError):
        FeatureRecorder(path, model)
    model.scale.fill_(2.0)
    with FeatureRecorder(path, model, mode="append") as rec:
        rec.record_epoch(0, {"train": data})
        rec.record_epoch(1, {"train": data})
    with open_store(path) as store:
        assert store.epochs() == [0, 1]
        assert_features(store.features(0, "train").compute(), workers.expected_features(model, data))
    other = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    with pytest.raises(NCAnalysisError, match="C=4, d=8, but layer '1' has C=2, d=5"):
        FeatureRecorder(path, other, mode="append")


def test_iterables_need_their_size_and_batches_their_shape(tmp_path: Path) -> None:
    model = workers.make_model()
    data = workers.IndexedData(10, 1)
    batches = [(data.x[:6], data.y[:6]), (data.x[6:], data.y[6:])]
    with FeatureRecorder(tmp_path / "s.zarr", model) as rec:
        with pytest.raises(ValueError, match=r"pass num_samples=\{'train': N\}"):
            rec.record_epoch(0, {"train": iter(batches)})
        rec.record_epoch(0, {"train": iter(batches)}, num_samples={"train": 10})
        with pytest.raises(ValueError, match="a batch must be .* got a dict"):
            rec.record_epoch(1, {"train": [{"x": data.x}]}, num_samples={"train": 10})
        with pytest.warns(UserWarning, match="DataLoader shuffles"):
            rec.record_epoch(2, {"train": DataLoader(data, batch_size=4, shuffle=True)})
    with open_store(tmp_path / "s.zarr") as store:
        assert store.epochs() == [0, 2]
        # Shuffled, but each row keeps its own label and index.
        index = store.sample_index(2, "train")
        order = (index - 1000) // 3
        np.testing.assert_array_equal(store.labels(2, "train"), data.y.numpy()[order])
        assert sorted(order.tolist()) == list(range(10))


def _threads(world: int) -> list[CallbackCommunicator]:
    """Communicators for ``world`` threads of one process, standing in for ranks."""
    barrier = threading.Barrier(world, timeout=60)
    values = [0] * world

    def make(rank: int) -> CallbackCommunicator:
        def reduce_max(value: int) -> int:
            values[rank] = value
            barrier.wait()
            result = max(values)
            barrier.wait()
            return result

        return CallbackCommunicator(rank, world, barrier.wait, reduce_max)

    return [make(r) for r in range(world)]


def _run_ranks(world: int, target) -> list[object]:
    results: list[object] = [None] * world
    comms = _threads(world)

    def run(rank: int) -> None:
        try:
            results[rank] = target(comms[rank])
        except Exception as exc:
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_ranks_through_callbacks_and_failure_on_one_rank(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    model = workers.make_model()
    data = workers.IndexedData(203, 1)

    # One model per thread, as one per process: hooks on a shared layer would capture
    # the other threads' forward passes. Copies made here: seeding in threads would race.
    models = [copy.deepcopy(model) for _ in range(4)]

    def record(comm: CallbackCommunicator) -> dict:
        with FeatureRecorder(path, models[comm.rank], chunk_rows=8, communicator=comm) as rec:
            summary = rec.record_epoch(0, {"train": data}, batch_size=16)
            broken = workers.IndexedData(203, 1)
            if comm.rank == 3:
                broken.x[190, 0] = float("inf")
            try:
                rec.record_epoch(1, {"train": broken}, batch_size=16)
            except (FeatureValueError, RankFailedError) as exc:
                summary["epoch 1"] = type(exc).__name__
            return summary

    results = _run_ranks(4, record)
    assert [r["row_ranges"]["train"] for r in results] == [(0, 48), (48, 104), (104, 152), (152, 203)]
    assert [r["epoch 1"] for r in results] == ["RankFailedError"] * 3 + ["FeatureValueError"]
    with open_store(path) as store:
        assert store.epochs() == [0] and store.incomplete_epochs() == [1]
        assert_features(store.features(0, "train").compute(), workers.expected_features(model, data))
        np.testing.assert_array_equal(store.sample_index(0, "train"), data.index.numpy())


def test_several_processes_refuse_loaders_and_hdf5(tmp_path: Path) -> None:
    comm = CallbackCommunicator(0, 2, lambda: None)
    with pytest.raises(ValueError, match="HDF5 store has one writer process"):
        FeatureRecorder(tmp_path / "s.h5", workers.make_model(), communicator=comm)
    with pytest.raises(ValueError, match="needs them to agree"):
        FeatureRecorder(tmp_path / "s.zarr", workers.make_model(), communicator=comm,
                        on_overflow="float32")
    with pytest.raises(ValueError, match="needs a barrier callable"):
        FeatureRecorder(tmp_path / "s.zarr", workers.make_model(), world_size=2)
    data = workers.IndexedData(10, 1)
    with FeatureRecorder(tmp_path / "s.zarr", workers.make_model(), communicator=comm) as rec:
        with pytest.raises(ValueError, match="with 2 processes pass the map-style dataset"):
            rec.record_epoch(0, {"train": DataLoader(data)})
