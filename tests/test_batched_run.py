"""`ncanalysis run` computes small epochs in batches: same numbers, exact per-epoch errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import append_epoch, assert_same_numbers, make_store

from ncanalysis import cli, engine, results
from ncanalysis.errors import InputError


def _count_computes(monkeypatch) -> list[int]:
    """Record the number of ``_compute`` calls (one per dask compute)."""
    calls: list[int] = []
    real = engine._compute
    monkeypatch.setattr(engine, "_compute",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _poison_weight(store: Path, epoch: int) -> None:
    zarr.open_group(store, mode="r+")[f"epochs/{epoch}/weight"][0, 0] = np.nan


def test_batched_run_gives_the_numbers_of_one_epoch_per_compute(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.zarr", range(5))
    append_epoch(store, 5, splits=("train",))  # a batch holds epochs with other splits
    calls = _count_computes(monkeypatch)
    assert cli.main(["run", str(store), "-q", "--output", str(tmp_path / "batched.nc")]) == 0
    assert len(calls) == 1  # 6 tiny epochs: one compute
    batched = results.load_results(tmp_path / "batched.nc")
    monkeypatch.setenv("DASK_NCANALYSIS__BATCH_EPOCHS", "1")
    import dask

    dask.config.refresh()
    try:
        assert cli.main(["run", str(store), "-q", "--output", str(tmp_path / "one.nc")]) == 0
    finally:
        monkeypatch.delenv("DASK_NCANALYSIS__BATCH_EPOCHS")
        dask.config.refresh()
    assert len(calls) == 1 + 6  # then one compute per epoch
    single = results.load_results(tmp_path / "one.nc")
    assert batched["epoch"].values.tolist() == list(range(6))
    assert_same_numbers(batched, single)
    assert batched.attrs["tpt_start_epoch"] == single.attrs["tpt_start_epoch"]
    assert batched.attrs["tpt_stable_epoch"] == single.attrs["tpt_stable_epoch"]
    # The journal entries of a batch are per epoch, as analysing each alone makes them.
    assert int(batched["n_samples"].sel(epoch=5, split="test")) == -1


def test_keep_going_skips_exactly_the_bad_epoch_of_a_batch(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr", range(5))
    _poison_weight(store, 2)
    assert cli.main(["run", str(store)]) == 3
    err = capsys.readouterr().err
    # Retried one by one: epochs 0 and 1 are saved and the stop names epoch 2.
    assert "stopped at epoch 2; epoch(s) 0-1 analysed and saved" in err
    assert "epoch 2" in err and "weight holds NaN" in err
    assert results.load_results(store)["epoch"].values.tolist() == [0, 1]
    assert cli.main(["run", str(store), "--keep-going"]) == 3
    err = capsys.readouterr().err
    assert "epoch 2 skipped" in err and "1 epoch(s) could not be analysed (2)" in err
    assert results.load_results(store)["epoch"].values.tolist() == [0, 1, 3, 4]


def test_batches_follow_the_byte_and_epoch_limits(tmp_path, monkeypatch):
    store_path = make_store(tmp_path / "s.zarr", range(6))
    from ncanalysis.store import open_store

    with open_store(store_path) as store:
        per_epoch = cli._feature_bytes(store, 0)
        assert per_epoch == (96 + 32) * 6 * 4  # rows x d x float32, both splits
        assert cli._batches(store, range(6)) == [list(range(6))]
        monkeypatch.setattr(cli, "BATCH_FEATURE_BYTES", 2 * per_epoch)
        assert cli._batches(store, range(6)) == [[0, 1], [2, 3], [4, 5]]
        monkeypatch.setattr(cli, "BATCH_FEATURE_BYTES", per_epoch - 1)  # every epoch "big"
        assert cli._batches(store, range(6)) == [[e] for e in range(6)]
        monkeypatch.setattr(cli, "BATCH_FEATURE_BYTES", 2**40)
        with dask_config(**{"ncanalysis.batch-epochs": 4}):
            assert cli._batches(store, range(6)) == [[0, 1, 2, 3], [4, 5]]
        with dask_config(**{"ncanalysis.batch-epochs": 0}), \
                pytest.raises(InputError, match="ncanalysis.batch-epochs"):
            cli._batches(store, range(6))


def dask_config(**values):
    import dask

    return dask.config.set(values)


def test_engine_batch_counts_epochs_on_the_progress_callback(tmp_path):
    import ncanalysis

    store = make_store(tmp_path / "s.zarr", range(4))
    seen: list[tuple[int, int]] = []
    together = ncanalysis.analyze(store, epochs_per_compute=3,
                                  progress=lambda done, total: seen.append((done, total)))
    assert seen == [(d, 4) for d in range(5)]  # 0 at the start, then per epoch
    alone = ncanalysis.analyze(store)
    assert_same_numbers(together, alone)
    with pytest.raises(InputError, match="epochs_per_compute"):
        ncanalysis.analyze(store, epochs_per_compute=0)


def test_a_batch_is_one_compute_whose_errors_name_its_epochs(tmp_path, monkeypatch):
    import ncanalysis

    store = make_store(tmp_path / "s.zarr", range(5))
    wheres: list[str] = []
    real = engine._compute
    monkeypatch.setattr(engine, "_compute",
                        lambda graph, scheduler, where="arrays": wheres.append(where)
                        or real(graph, scheduler, where))
    ncanalysis.analyze(store, epochs=[0, 1, 2, 4], epochs_per_compute=3)
    # The `where` of ClusterError (no worker, KilledWorker) names the batch's epochs.
    assert wheres == [f"{store}: epochs 0-2", f"{store}: epoch 4"]
