"""The installed ``ncanalysis`` command, run in subprocesses on small stores.

Every command, every output format (read back and compared with
``ncanalysis.analyze``), resuming, the dask.distributed options and every exit
code.  Independent commands run side by side (:func:`run_cli_many`); checks of
option parsing alone call ``cli.main`` in process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr


from cli_helpers import (  # noqa: E402
    C,
    D,
    append_epoch,
    assert_same_numbers,
    epoch_arrays,
    make_store,
    run_cli,
    run_cli_many,
)

import ncanalysis  # noqa: E402
from ncanalysis import cli, results  # noqa: E402

SENTINEL = 12345.0


def reference(store, **options) -> xr.Dataset:
    return ncanalysis.analyze(store, scheduler="sync", **options)


def ok(done) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def one_error_line(done, code: int) -> str:
    """Check the exit code and that stderr ends in one error line, without a traceback."""
    assert done.returncode == code, f"exit {done.returncode}, wanted {code}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "error:" in last
    return last


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A Zarr store with epochs 0-2 that no test writes to (tests that write copy it)."""
    return make_store(tmp_path_factory.mktemp("store") / "s.zarr")


@pytest.fixture
def store_copy(store, tmp_path):
    target = tmp_path / store.name
    shutil.copytree(store, target)
    return target


def test_run_then_resume(store_copy):
    # First run: a table on stdout, logs and a progress bar on stderr, results in the store.
    done = run_cli("run", store_copy)
    ok(done)
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["epoch", "split", "n", "acc"]
    assert len(lines) == 1 + 3 * 2 + 1  # header, (epoch, split) rows, TPT line
    assert "terminal phase" in lines[-1]
    assert "analysing epoch(s) 0-2" in done.stderr and "3/3" in done.stderr
    first = results.load_results(store_copy)
    assert_same_numbers(first, reference(store_copy), rtol=1e-12)
    assert f"{first['nc1'].sel(epoch=2, split='test').item():.3e}" in lines[-2]

    # Mark an old value: if the next run recomputed epoch 0, the mark would vanish.
    first["nc1"].loc[{"epoch": 0, "split": "train"}] = SENTINEL
    results.save_results(first, store_copy, in_store=True)
    append_epoch(store_copy, 3)
    append_epoch(store_copy, 4, finalize=False)  # a training run still writing epoch 4
    done = run_cli("run", store_copy)
    ok(done)
    assert "1 epoch(s) to analyse" in done.stderr
    assert "analysing epoch(s) 3\n" in done.stderr
    after = results.load_results(store_copy)
    assert after["epoch"].values.tolist() == [0, 1, 2, 3]
    assert after["nc1"].sel(epoch=0, split="train").item() == SENTINEL
    xr.testing.assert_identical(after.sel(epoch=[0, 1, 2]).drop_attrs(), first.drop_attrs())
    assert_same_numbers(after.sel(epoch=[3]), reference(store_copy, epochs=[3]), rtol=1e-12)

    # Nothing new: nothing is analysed, and --json prints the stored results.
    done = run_cli("run", store_copy, "--json")
    ok(done)
    assert "0 epoch(s) to analyse" in done.stderr and "epoch/s" not in done.stderr
    printed = results.from_json_dict(json.loads(done.stdout))
    xr.testing.assert_identical(printed, after)


# Each output format with other analysis options; expected = analyze() with the same.
FORMATS = [
    (".json", [], {}),
    (".nc", ["--epochs", "0,2", "--gemm-dtype", "float64"],
     {"epochs": [0, 2], "gemm_dtype": "float64"}),
    (".zarr", ["--splits", "train", "--rows-per-block", "40", "--pinv-rtol", "1e-8"],
     {"splits": ["train"], "pinv_rtol": 1e-8}),
    (".csv", ["--global-mean", "sample", "--no-ncc"], {"global_mean": "sample", "ncc": False}),
]


def test_output_formats_read_back(store, tmp_path):
    # Outputs holding another store's results (one epoch, a marked value): replaced
    # only with --overwrite, which recomputes everything.
    other = reference(store, epochs=[0]).assign_attrs(source="/elsewhere/other.zarr")
    other["nc1"][:] = SENTINEL
    taken, replaced = (results.save_results(other, tmp_path / f"{name}.json")
                       for name in ("taken", "replaced"))
    runs = run_cli_many(
        *(["run", store, "--output", tmp_path / f"r{suffix}", "--quiet", *options]
          for suffix, options, _ in FORMATS),
        ["run", store, "--output", taken, "--quiet"],
        ["run", store, "--output", replaced, "--quiet", "--overwrite"],
    )
    for (suffix, _, expected_options), done in zip(FORMATS, runs):
        ok(done)
        got = results.load_results(tmp_path / f"r{suffix}")
        expected = reference(store, **expected_options)
        assert_same_numbers(got, expected, rtol=1e-12)  # every variable the file holds
        # CSV keeps the scalar metrics only; the other forms hold everything.
        assert set(got.data_vars) == ({v for v in expected.data_vars if "class" not in
                                       expected[v].dims} if suffix == ".csv"
                                      else set(expected.data_vars)), suffix
        settings = {k: v for k, v in expected_options.items() if k != "epochs"}
        assert results.settings_of(got) == results.run_settings(**settings), suffix
    assert "--overwrite" in one_error_line(runs[-2], 2)
    xr.testing.assert_identical(results.load_results(taken), other)
    ok(runs[-1])
    assert_same_numbers(results.load_results(replaced), reference(store), rtol=1e-12)
    assert not results.has_store_results(store)  # --output leaves the store alone


def test_distributed_runs(store, tmp_path):
    """--scheduler against a LocalCluster started here, and --workers on an HDF5 store
    (whose h5py handles cannot travel: each task must open the file itself)."""
    from distributed import LocalCluster

    h5 = make_store(tmp_path / "s.h5", epochs=[0, 1])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        remote, local = run_cli_many(
            ["run", store, "--scheduler", cluster.scheduler_address,
             "--output", tmp_path / "r.nc"],
            ["run", h5, "--workers", "2"],
        )
    ok(remote)
    assert f"dask scheduler at {cluster.scheduler_address}" in remote.stderr
    assert_same_numbers(results.load_results(tmp_path / "r.nc"), reference(store), rtol=1e-12)
    ok(local)
    assert "local dask cluster of 2" in local.stderr
    assert_same_numbers(results.load_results(h5), reference(h5), rtol=1e-12)


def test_help_info_validate_and_exit_codes(store, store_copy, tmp_path):
    append_epoch(store_copy, 7, finalize=False)
    broken = tmp_path / "broken.zarr"
    shutil.copytree(store_copy, broken)
    # Break two arrays: a chunk of features gone, and a bias removed.
    features = broken / "epochs" / "1" / "train" / "features"
    chunk = next(p for p in sorted(features.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    shutil.rmtree(broken / "epochs" / "2" / "bias")

    helped, info, valid, invalid, usage, incomplete, runtime = run_cli_many(
        ["--help"],
        ["info", store_copy, "--json"],
        ["validate", store],
        ["validate", broken],
        ["run", store, "--workers", "0"],
        ["run", store, "--epochs", "2-9"],
        ["run", store, "--output", tmp_path / "no" / "such" / "dir" / "r.json", "--quiet"],
    )
    ok(helped)
    for command in ("run", "info", "validate", "plot"):
        assert command in helped.stdout

    ok(info)
    data = json.loads(info.stdout)
    assert (data["num_classes"], data["num_features"]) == (C, D)
    assert data["epochs"] == [0, 1, 2] and data["incomplete_epochs"] == [7]
    assert data["splits"] == ["train", "test"]
    assert data["samples"][0]["splits"] == {"train": 96, "test": 32}
    assert data["dtypes"]["features/train"] == "float32"
    assert data["size_bytes"] > 0

    ok(valid)
    assert valid.stdout.strip().endswith("valid")
    assert invalid.returncode == 3
    problems = invalid.stdout.strip().splitlines()
    assert len(problems) >= 2
    text = " ".join(problems)
    assert "epoch 1" in text and "epoch 2" in text and "bias" in text

    assert "positive integer" in one_error_line(usage, 2)
    assert "cannot analyse epoch(s) 3-9" in one_error_line(incomplete, 3)
    assert "r.json" in one_error_line(runtime, 1)


def test_info_text_and_validate_json(store_copy, capsys):
    append_epoch(store_copy, 7, finalize=False)
    assert cli.main(["info", str(store_copy)]) == 0
    text = capsys.readouterr().out
    assert "3 complete (0-2), incomplete: 7" in text
    assert "train: N = 96, features float32" in text
    assert cli.main(["validate", str(store_copy), "--json"]) == 3  # epoch 7 is unfinished
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and "epoch 7" in report["problems"][0]


def test_dump_file(tmp_path, capsys):
    arrays = epoch_arrays(3)
    path = tmp_path / "dump.npz"
    np.savez(path, h=arrays["train"][0], y=arrays["train"][1], w=arrays["weight"],
             b=arrays["bias"], ht=arrays["test"][0], yt=arrays["test"][1])
    output = tmp_path / "r.json"
    done = run_cli("run", path, "--features", "h", "--labels", "y", "--weight", "w", "--bias",
                   "b", "--test-features", "ht", "--test-labels", "yt", "--output", output)
    ok(done)
    expected = ncanalysis.analyze_arrays({s: arrays[s] for s in ("train", "test")},
                                         arrays["weight"], arrays["bias"], scheduler="sync")
    assert_same_numbers(results.load_results(output), expected, rtol=1e-12)
    assert cli.main(["run", str(path), "--features", "h", "--labels", "labels", "--weight",
                     "w"]) == 3
    err = capsys.readouterr().err
    assert "'labels'" in err and "b, h, ht, w, y, yt" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,code,message", [
    (["run", "{tmp}/missing.zarr"], 3, "missing.zarr"),
    (["plot", "{store}"], 3, "no results"),
    (["plot", "{tmp}/r.json"], 3, "no such file"),
])
def test_invalid_input_in_process(store, tmp_path, capsys, args, code, message):
    assert cli.main([a.format(store=store, tmp=tmp_path) for a in args]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["run", "x.zarr", "--output", "r.parquet"],
    ["run", "x.npz", "--features", "h"],
    ["run", "x.npz", "--features", "h", "--labels", "y", "--weight", "w", "--test-labels", "t"],
    ["run", "x.npz", "--features", "h", "--labels", "y", "--weight", "w", "--epochs", "1"],
    ["run", "x.zarr", "--scheduler", "tcp://a:1", "--workers", "2"],
    ["run", "x.zarr", "--pinv-rtol", "2"],
    ["run", "x.zarr", "--epochs", "3-1"],
    ["frobnicate"],
])
def test_usage_errors(args, capsys):
    assert cli.main(args) == 2
    assert "error" in capsys.readouterr().err


def test_parse_epochs():
    assert cli.parse_epochs("0,3,5-7,3") == [0, 3, 5, 6, 7]


def test_cli_reference_documents_every_option():
    """docs/cli.md names every command and option that argparse knows."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in commands.choices.items():
        assert f"## ncanalysis {name}" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"{name} {option}"
