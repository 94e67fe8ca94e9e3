"""The digits example end to end (short), and the import boundary of the two packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncanalysis.store import open_store, validate_store
from ncanalysis_extract import digits


@pytest.mark.parametrize("name", ["digits.zarr", "digits.h5"])
def test_short_run_stores_what_the_model_computes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    summary = digits.train_and_record(path, epochs=3, seed=1, record_every=2)
    assert summary["recorded_epochs"] == [0, 2, 3]
    assert summary["backend"] == ("hdf5" if name.endswith(".h5") else "zarr")
    assert len(summary["train_accuracy"]) == 4 and summary["train_accuracy"][-1] > 0.9
    model = summary["model"]
    data = digits.load_data()
    assert (len(data.y_train), len(data.y_test)) == (1347, 450)
    model.eval()
    with torch.no_grad():
        expected = {"train": model.body(data.x_train), "test": model.body(data.x_test)}
    with open_store(path) as store:
        assert store.epochs() == [0, 2, 3]
        assert (store.num_classes, store.num_features) == (10, 128)
        assert store.provenance["layer"] == "fc"
        assert store.provenance["model_class"].endswith("DigitsMLP")
        for split, index, labels in (("train", data.index_train, data.y_train),
                                     ("test", data.index_test, data.y_test)):
            features = store.features(3, split).compute()
            assert features.dtype == np.float16
            # float16 keeps 11 significant bits; ReLU features >= 0.
            np.testing.assert_allclose(features.astype(np.float32), expected[split].numpy(),
                                       rtol=2**-11, atol=2**-24)
            np.testing.assert_array_equal(store.labels(3, split), labels.numpy())
            np.testing.assert_array_equal(store.sample_index(3, split), index.numpy())
        np.testing.assert_array_equal(store.weight(3), model.fc.weight.detach().numpy())
        np.testing.assert_array_equal(store.bias(3), model.fc.bias.detach().numpy())
    assert validate_store(path) == []


def test_seeded_runs_are_identical(tmp_path: Path) -> None:
    first = digits.train_and_record(tmp_path / "a.zarr", epochs=2, seed=3)
    second = digits.train_and_record(tmp_path / "b.zarr", epochs=2, seed=3)
    assert first["train_loss"] == second["train_loss"]
    with open_store(tmp_path / "a.zarr") as a, open_store(tmp_path / "b.zarr") as b:
        np.testing.assert_array_equal(a.features(2, "train").compute(),
                                      b.features(2, "train").compute())


def test_main_prints_a_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.zarr"
    assert digits.main([str(path), "--epochs", "1", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recorded_epochs"] == [0, 1] and "model" not in summary
    assert digits.main([str(path), "--epochs", "1", "--quiet"]) == 1  # exists
    assert "already exists" in capsys.readouterr().err


def test_ncanalysis_never_imports_torch() -> None:
    code = ("import sys, ncanalysis, ncanalysis.store; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
