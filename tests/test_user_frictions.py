"""What a new user trips over: a closed pipe, error messages that name options, the
digits command's summary."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import extract_workers as workers  # noqa: E402
from cli_helpers import ENTRY_POINT, epoch_arrays, make_store  # noqa: E402
from ncanalysis_extract import FeatureRecorder, digits  # noqa: E402

import ncanalysis  # noqa: E402
from ncanalysis import cli  # noqa: E402
from ncanalysis.errors import InputError  # noqa: E402
from ncanalysis.store import open_store  # noqa: E402

# --------------------------------------------------------------------------- closed pipe


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("pipe") / "run.zarr", epochs=range(4))


@pytest.mark.parametrize("args", [["run", "--quiet"], ["run", "--json", "--quiet"],
                                  ["info"], ["validate"]])
def test_a_closed_pipe_ends_quietly(store, tmp_path, args):
    """``ncanalysis run STORE | head -1``: the reader is gone before the result is written."""
    command, *options = args
    target = store if command != "run" else _copy(store, tmp_path)
    proc = subprocess.Popen([str(ENTRY_POINT), command, str(target), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `head` does once it has its lines: every write now fails (EPIPE)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert stderr == ""  # no "error: BrokenPipeError", no traceback


def test_head_of_a_real_shell_pipe(store, tmp_path):
    target = _copy(store, tmp_path)
    done = subprocess.run(f"'{ENTRY_POINT}' run '{target}' --quiet | head -1; "
                          "echo \"status ${PIPESTATUS[0]}\" >&2",
                          shell=True, executable="/bin/bash", capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.stdout.split()[0] == "epoch"  # the table's header line, and only it
    assert len(done.stdout.splitlines()) == 1
    assert done.stderr.strip() == "status 0", done.stderr


def _copy(store: Path, tmp_path: Path) -> Path:
    """A fresh copy, so that each run has epochs to analyse and a table to print."""
    return Path(shutil.copytree(store, tmp_path / store.name))


# --------------------------------------------------------------------------- messages


def test_recorder_over_an_existing_store_names_its_own_option(tmp_path):
    path = tmp_path / "run.zarr"
    model = workers.make_model()
    data = workers.IndexedData(20, 1)
    with FeatureRecorder(path, model) as rec:
        rec.record_epoch(0, {"train": data})
    with pytest.raises(FileExistsError) as caught:
        FeatureRecorder(path, model)
    message = str(caught.value)
    assert str(path) in message and "mode='overwrite'" in message and "mode='append'" in message
    assert "overwrite=True" not in message  # the recorder has no such option
    # ... and what it names works.
    assert "mode" in inspect.signature(FeatureRecorder).parameters
    with FeatureRecorder(path, model, mode="overwrite") as rec:
        rec.record_epoch(1, {"train": data})
    with FeatureRecorder(path, model, mode="append") as rec:
        rec.record_epoch(2, {"train": data})


def test_ncc_without_train_names_the_option_and_the_flag():
    arrays = epoch_arrays(0)
    with pytest.raises(InputError) as caught:
        ncanalysis.analyze_arrays({"test": arrays["test"]}, arrays["weight"], arrays["bias"],
                                  scheduler="sync")
    message = str(caught.value)
    assert "ncc=False" in message and "--no-ncc" in message
    assert "ncc" in inspect.signature(ncanalysis.analyze_arrays).parameters
    run_options = [a.option_strings for a in cli.build_parser()._subparsers._group_actions[0]
                   .choices["run"]._actions]
    assert ["--no-ncc"] in run_options


# --------------------------------------------------------------------------- digits command


def test_digits_command_prints_a_summary_a_person_reads(tmp_path, capsys):
    path = tmp_path / "cli.zarr"
    assert digits.main([str(path), "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 4 and not out.lstrip().startswith("{")
    assert f"recorded 3 epochs (0..2) into {path}" in out
    assert "final accuracy: train" in out
    # The whole summary, for machines, behind --json.
    assert digits.main([str(path), "--epochs", "2", "--quiet", "--json", "--overwrite"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recorded_epochs"] == [0, 1, 2] and len(summary["train_accuracy"]) == 3
    train = np.array(summary["train_accuracy"])
    perfect = np.flatnonzero(train == 1.0)
    stable = [e for e in range(3) if (train[e:] == 1.0).all()]
    assert summary["first_perfect_train_epoch"] == (perfect[0] if perfect.size else -1)
    assert summary["stable_perfect_train_epoch"] == (stable[0] if stable else -1)


def test_digits_command_over_an_existing_store_names_its_flag(tmp_path, capsys):
    path = tmp_path / "cli.zarr"
    assert digits.main([str(path), "--epochs", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert digits.main([str(path), "--epochs", "0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "mode=" not in err


def test_summary_text_counts_the_dips():
    summary = {"recorded_epochs": [0, 1, 2, 3, 4, 5], "store": "s.zarr", "store_bytes": 2e6,
               "backend": "zarr", "seconds": 1.0, "train_accuracy": [0.1, 1, 0.99, 1, 0.98, 1],
               "test_accuracy": [0.1] * 6, "first_perfect_train_epoch": 1,
               "stable_perfect_train_epoch": 5}
    text = digits.summary_text(summary)
    assert "first 1 at epoch 1 (TPT start); below 1 in 2 later epoch(s); 1 from epoch 5 on" in text




# --------------------------------------------------------------------------- demo


def test_demo_writes_its_figures_where_plot_does(tmp_path, capsys):
    from ncanalysis_extract import demo

    assert demo.main([str(tmp_path / "out"), "--epochs", "2", "--record-every", "2"]) == 0
    captured = capsys.readouterr()
    store = tmp_path / "out" / "digits.zarr"
    lines = captured.out.splitlines()
    assert lines[0].split()[:2] == ["epoch", "split"]  # the table, for a person
    figures = [Path(line) for line in lines if line.endswith((".png", ".pdf"))]
    assert {p.parent for p in figures} == {tmp_path / "out" / "digits-figures"}
    assert {p.stem for p in figures} >= {"error", "nc1", "self_duality", "ncc_mismatch"}
    assert all(p.is_file() for p in figures)
    assert "figures in " + str(tmp_path / "out" / "digits-figures") in captured.err
    with open_store(store) as opened:
        assert opened.epochs() == [0, 2]  # --record-every 2: epoch 0, every 2nd, the last
    # `ncanalysis plot STORE` with no --output-dir writes the same files.
    assert cli.main(["plot", str(store)]) == 0
    assert [Path(line) for line in capsys.readouterr().out.splitlines()] == figures
