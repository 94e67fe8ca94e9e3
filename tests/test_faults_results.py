"""Fault injection on the results of a run (issue 10): never destroy, never lose, never stale.

- destinations that are not ncanalysis results are refused (exit 3), whatever the flags;
- real ``ncanalysis run`` processes are SIGKILLed at every step of a results write
  (after each rename, each HDF5 link move or delete, each group written), and the earlier
  results must still read back, and the next run must finish the work and leave nothing
  behind;
- a run killed part-way keeps the epochs it finished; a bad epoch keeps the others;
- an HDF5 store held open by another process (training) is waited for;
- two runs at once keep each other's epochs;
- an epoch rewritten in the store after its analysis is analysed again;
- epochs are journalled one small file each and folded into the results with one write
  per run; kills while journalling and while folding lose and double-count nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr
from cli_helpers import append_epoch, epoch_arrays, make_store, run_cli_many

from ncanalysis import cli, results
from ncanalysis.errors import InputError, NCAnalysisError
from ncanalysis.store import open_store

BACKENDS = (".zarr", ".h5")

#: A wrapper around ``ncanalysis.cli.main`` that SIGKILLs its own process right after
#: the k-th call of any of the functions that make a results write's steps.
KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    import h5py, xarray
    import ncanalysis.engine, ncanalysis.results

    k, count = int(sys.argv[1]), [0]

    def after(owner, name):
        original = getattr(owner, name)
        def wrapped(*args, **kwargs):
            value = original(*args, **kwargs)
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return value
        setattr(owner, name, wrapped)

    for owner, name in [(os, "replace"), (shutil, "rmtree"), (h5py.Group, "move"),
                        (h5py.Group, "__delitem__"), (xarray.Dataset, "to_zarr"),
                        (xarray.Dataset, "to_netcdf"), (ncanalysis.engine, "_compute"),
                        (os, "fsync"), (ncanalysis.results.saveload, "_save_unlocked"),
                        (ncanalysis.results.saveload.Path, "unlink")]:
        if sys.argv[2] == "all" or name == sys.argv[2]:
            after(owner, name)
    from ncanalysis.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def run_killed(k: int, what: str, *args) -> subprocess.CompletedProcess:
    """``ncanalysis`` with ``args`` in a process that SIGKILLs itself after the k-th step."""
    return subprocess.run([sys.executable, "-c", KILLER, str(k), what, *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False)


def leftovers(store: Path) -> list[str]:
    """Temporaries and backups of results writes, in a Zarr store directory or HDF5 file."""
    if store.is_file():
        with h5py.File(store, "r") as handle:
            return [name for name in handle if name.startswith(".results.")]
    return [p.name for p in store.iterdir() if p.name.startswith(".results.")]


def numbers(ds: xr.Dataset, epochs) -> xr.Dataset:
    return ds.sel(epoch=list(epochs))[["nc1", "accuracy", "epoch_identity"]]


# --------------------------------------------------------------------------- never destroy


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    path = tmp_path_factory.mktemp("analysed") / "s.zarr"
    make_store(path, range(2))
    assert cli.main(["run", str(path), "-q"]) == 0
    return path


def _fingerprint(path: Path) -> dict:
    """Every file under ``path`` and its bytes."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _foreign_targets(tmp: Path, analysed: Path) -> list[Path]:
    other = make_store(tmp / "other_training.zarr", range(1), seed=3)
    folder = tmp / "thesis.zarr"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    plain = tmp / "notes.json"
    plain.write_text('{"mine": true}')
    table = tmp / "table.csv"
    table.write_text("a,b\n1,2\n")
    netcdf = tmp / "data.nc"
    xr.Dataset({"x": ("t", np.arange(3.0))}).to_netcdf(netcdf, engine="h5netcdf")
    h5store = make_store(tmp / "other.h5", range(1))
    renamed_store = tmp / "store_named.nc"
    os.replace(h5store, renamed_store)
    return [analysed, other, folder, plain, table, netcdf, renamed_store]


def test_output_never_replaces_what_ncanalysis_did_not_write(analysed, tmp_path, capsys):
    targets = _foreign_targets(tmp_path, analysed)
    dump = tmp_path / "dump.npz"
    arrays = epoch_arrays(0)
    np.savez(dump, X=arrays["train"][0], y=arrays["train"][1], W=arrays["weight"])
    before = {t: _fingerprint(t) for t in targets}
    for target in targets:
        for args in (["run", str(analysed), "-q", "--output", str(target), "--overwrite"],
                     ["run", str(analysed), "-q", "--output", str(target)],
                     ["run", str(dump), "-q", "--features", "X", "--labels", "y",
                      "--weight", "W", "--output", str(target)]):
            if Path(target).suffix not in (".zarr", ".nc", ".json", ".csv"):
                continue
            code = cli.main(args)
            err = capsys.readouterr().err
            assert code == 3, (args, err)
            assert str(target) in err and "refusing to replace" in err, err
        assert _fingerprint(target) == before[target], target
    # The library refuses too, and never touches the analysed store's own data.
    ds = results.load_results(analysed)
    for target in targets:
        with pytest.raises(InputError, match="refusing to replace"):
            results.save_results(ds, target if target.suffix else target.with_suffix(".zarr"))
    assert _fingerprint(analysed) == before[analysed]


def test_results_are_still_replaced(analysed, tmp_path):
    ds = results.load_results(analysed)
    for suffix in (".zarr", ".nc", ".json", ".csv"):
        path = tmp_path / f"r{suffix}"
        results.save_results(ds, path)
        results.save_results(ds.isel(epoch=[0]), path)
        assert results.load_results(path)["epoch"].values.tolist() == [0]
    # The in-store results group is ours and is replaced; a foreign group there is not.
    copy = tmp_path / "copy.zarr"
    make_store(copy, range(1))
    results.save_results(ds, copy, in_store=True)
    results.save_results(ds.isel(epoch=[1]), copy, in_store=True)
    assert results.load_results(copy)["epoch"].values.tolist() == [1]


def test_stale_temporaries_are_cleaned_only_when_ours(analysed, tmp_path):
    ds = results.load_results(analysed)
    out = tmp_path / "r.zarr"
    results.save_results(ds, out)
    ours = tmp_path / ".r.zarr.tmp-0123abcd"
    ours.mkdir()
    (ours / "zarr.json").write_text("{}")
    theirs = [tmp_path / ".r.zarr.tmp-mine", tmp_path / "r.zarr.tmp-0123abcd"]
    for path in theirs:
        path.write_text("not ours")
    results.save_results(ds, out)
    assert not ours.exists()
    assert all(path.read_text() == "not ours" for path in theirs)


def test_backup_left_between_two_renames_is_read_and_restored(analysed, tmp_path):
    ds = results.load_results(analysed)
    out = tmp_path / "r.zarr"
    results.save_results(ds, out)
    # What a kill between the two renames of a directory swap leaves.
    os.replace(out, tmp_path / ".r.zarr.old-89abcdef")
    xr.testing.assert_identical(results.load_results(out), ds)
    merged = results.update_results(ds.isel(epoch=[1]), out)
    assert merged["epoch"].values.tolist() == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.zarr.lock", "r.zarr"]


# --------------------------------------------------------------------------- kills


@pytest.mark.parametrize("suffix", BACKENDS)
def test_kill_at_every_step_of_a_results_write(tmp_path, suffix):
    store = make_store(tmp_path / f"s{suffix}", range(2))
    assert cli.main(["run", str(store), "-q"]) == 0
    earlier = results.load_results(store)
    append_epoch(store, 2)
    kills = 0
    for k in range(1, 20):
        work = tmp_path / f"k{k}{suffix}"
        if store.is_dir():
            import shutil

            shutil.copytree(store, work)
        else:
            work.write_bytes(store.read_bytes())
        done = run_killed(k, "all", "run", work, "-q")
        # The earlier results read back, whatever the moment of the kill.
        now = results.load_results(work)
        xr.testing.assert_equal(numbers(now, [0, 1]), numbers(earlier, [0, 1]))
        if done.returncode == 0:
            assert not leftovers(work)
            break
        assert done.returncode == -9, done.stderr
        kills += 1
        # The next run finishes the work and cleans up after the killed one.
        assert cli.main(["run", str(work), "-q"]) == 0
        final = results.load_results(work)
        assert final["epoch"].values.tolist() == [0, 1, 2]
        assert not leftovers(work), leftovers(work)
        assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert kills >= 4  # the run was killed after each step of the write, then let finish


def test_killed_run_keeps_finished_epochs_and_rerun_continues(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr", range(4))
    # Killed while computing epoch 2: epochs 0 and 1 are saved (one epoch per compute).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASK_NCANALYSIS__BATCH_EPOCHS", "1")
        done = run_killed(3, "_compute", "run", store, "-q")
    assert done.returncode == -9
    assert results.load_results(store)["epoch"].values.tolist() == [0, 1]
    assert cli.main(["run", str(store)]) == 0
    err = capsys.readouterr().err
    assert "2 epoch(s) to analyse, 2 epoch(s) already analysed" in err
    assert results.load_results(store)["epoch"].values.tolist() == [0, 1, 2, 3]


def _poison_weight(store: Path, epoch: int) -> None:
    zarr.open_group(store, mode="r+")[f"epochs/{epoch}/weight"][0, 0] = np.nan


def test_bad_epoch_stops_keeping_finished_ones_and_keep_going_skips_it(tmp_path, capsys):
    store = make_store(tmp_path / "s.zarr", range(3))
    _poison_weight(store, 1)
    assert cli.main(["run", str(store)]) == 3
    err = capsys.readouterr().err
    assert "epoch 1" in err and "weight holds NaN" in err
    assert results.load_results(store)["epoch"].values.tolist() == [0]
    assert cli.main(["run", str(store), "--keep-going"]) == 3
    out, err = capsys.readouterr()
    assert "epoch 1 skipped" in err and "1 epoch(s) could not be analysed (1)" in err
    assert "     2 train" in out  # the table of what was analysed is still printed
    assert results.load_results(store)["epoch"].values.tolist() == [0, 2]


# --------------------------------------------------------------------------- HDF5 lock


HOLDER = textwrap.dedent("""
    import sys, time, h5py
    with h5py.File(sys.argv[1], "a"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_hdf5_results_write_waits_for_the_file_lock(tmp_path):
    store = make_store(tmp_path / "s.h5", range(2))
    assert cli.main(["run", str(store), "-q"]) == 0
    ds = results.load_results(store)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), "3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        results.save_results(ds.isel(epoch=[0]), store, in_store=True)
        assert time.monotonic() - start > 1.0  # it waited for the holder
    finally:
        holder.wait(timeout=60)
    assert results.load_results(store)["epoch"].values.tolist() == [0]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), "5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NCAnalysisError, match="stayed locked by another process"):
            results.save_results(ds, store, in_store=True, lock_timeout=0.5)
    finally:
        holder.wait(timeout=60)
    assert results.load_results(store)["epoch"].values.tolist() == [0]


# --------------------------------------------------------------------------- concurrent runs


@pytest.mark.parametrize("suffix", BACKENDS)
def test_two_runs_at_once_keep_each_others_epochs(tmp_path, suffix):
    store = make_store(tmp_path / f"s{suffix}", range(4))
    first, second = run_cli_many(["run", store, "-q", "--epochs", "0-1"],
                                 ["run", store, "-q", "--epochs", "2-3"])
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert results.load_results(store)["epoch"].values.tolist() == [0, 1, 2, 3]
    assert results.results_lock_path(store, in_store=True).name == f".s{suffix}.results.lock"


# --------------------------------------------------------------------------- epoch identity


@pytest.mark.parametrize("suffix", BACKENDS)
def test_rewritten_epoch_is_analysed_again(tmp_path, suffix, capsys):
    store = make_store(tmp_path / f"s{suffix}", range(3))
    assert cli.main(["run", str(store), "-q"]) == 0
    before = results.load_results(store)
    with open_store(store) as opened:
        identities = [opened.epoch_identity(e) for e in range(3)]
    assert before["epoch_identity"].values.tolist() == identities
    assert len(set(identities)) == 3 and all(len(i) == 32 for i in identities)
    # A training run restarted from a checkpoint rewrites epoch 1 with other data.
    append_epoch(store, 1, seed=7)
    assert cli.main(["run", str(store)]) == 0
    err = capsys.readouterr().err
    assert "epoch(s) 1 were rewritten" in err
    after = results.load_results(store)
    fresh = tmp_path / "fresh.zarr"
    make_store(fresh, [1], seed=7)
    assert cli.main(["run", str(fresh), "-q"]) == 0
    expected = results.load_results(fresh)
    np.testing.assert_array_equal(after["nc1"].sel(epoch=1).values,
                                  expected["nc1"].sel(epoch=1).values)
    assert not np.array_equal(after["nc1"].sel(epoch=1).values,
                              before["nc1"].sel(epoch=1).values)
    xr.testing.assert_identical(after.sel(epoch=[0, 2])["nc1"], before.sel(epoch=[0, 2])["nc1"])
    with open_store(store) as opened:
        assert after["epoch_identity"].values.tolist()[1] == opened.epoch_identity(1)


def test_epoch_identity_round_trips_every_format(analysed, tmp_path):
    ds = results.load_results(analysed)
    ids = ds["epoch_identity"].values.tolist()
    assert all(len(i) == 32 for i in ids)
    for suffix in (".zarr", ".nc", ".json", ".csv"):
        back = results.load_results(results.save_results(ds, tmp_path / f"r{suffix}"))
        assert back["epoch_identity"].values.tolist() == ids, suffix
        assert back["epoch_identity"].dtype.kind == "U", suffix
    copy = make_store(tmp_path / "s.h5", range(2))
    results.save_results(ds, copy, in_store=True)
    assert results.load_results(copy)["epoch_identity"].values.tolist() == ids


def test_store_without_identity(tmp_path):
    store = make_store(tmp_path / "s.zarr", range(1))
    meta = store / "epochs" / "0" / "zarr.json"
    data = json.loads(meta.read_text())
    del data["attributes"]["epoch_identity"]
    meta.write_text(json.dumps(data))
    with open_store(store) as opened:
        assert opened.epoch_identity(0) is None
    assert cli.main(["run", str(store), "-q"]) == 0
    assert results.load_results(store)["epoch_identity"].values.tolist() == [""]


# --------------------------------------------------------------------------- journal


def _journal(store: Path) -> Path:
    return results.results_journal_path(store, in_store=True)


def test_a_run_rewrites_the_results_once(tmp_path, monkeypatch):
    # Before the journal every epoch rewrote the whole results (5 writes here).
    store = make_store(tmp_path / "s.zarr", range(5))
    writes = []
    original = results.saveload._save_unlocked
    monkeypatch.setattr(results.saveload, "_save_unlocked",
                        lambda ds, *a, **k: writes.append(ds.sizes["epoch"]) or original(ds, *a, **k))
    assert cli.main(["run", str(store), "-q"]) == 0
    assert writes == [5]
    append_epoch(store, 5)
    append_epoch(store, 6)
    out = tmp_path / "out.nc"
    assert cli.main(["run", str(store), "-q"]) == 0
    assert cli.main(["run", str(store), "-q", "--output", str(out)]) == 0
    assert writes == [5, 7, 7]
    assert results.load_results(store)["epoch"].values.tolist() == list(range(7))
    assert not _journal(store).exists() and not results.results_journal_path(out).exists()


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_kill_while_journalling_an_epoch(tmp_path, k):
    # fsync 1: the new journal directory's parent; 2: the first entry's temporary (not
    # renamed yet); 3: the journal directory after the rename; 5: the second entry's.
    store = make_store(tmp_path / "s.zarr", range(3))
    done = run_killed(k, "fsync", "run", store, "-q")
    assert done.returncode == -9, done.stderr
    journal = _journal(store)
    entries = sorted(p.name for p in journal.iterdir()) if journal.exists() else []
    expected = {1: 0, 2: 0, 3: 1, 5: 2}[k]
    assert len([e for e in entries if e.endswith(".json")]) == expected, entries
    if expected:
        assert results.load_results(store)["epoch"].values.tolist() == list(range(expected))
    else:
        assert not results.has_store_results(store)
    assert cli.main(["run", str(store), "-q"]) == 0
    final = results.load_results(store)
    assert final["epoch"].values.tolist() == [0, 1, 2]
    fresh = make_store(tmp_path / "fresh.zarr", range(3))
    assert cli.main(["run", str(fresh), "-q"]) == 0
    # (Epoch identities differ between two stores: the numbers are compared.)
    xr.testing.assert_equal(final[["nc1", "accuracy"]],
                            results.load_results(fresh)[["nc1", "accuracy"]])
    # Only the temporary of the killed write may be left (removed once stale).
    left = sorted(p.name for p in journal.iterdir()) if journal.exists() else []
    assert all(name.startswith(".") and name.endswith(".json.tmp") for name in left), left
    assert not leftovers(store)


@pytest.mark.parametrize("what", ["_save_unlocked", "unlink"])
def test_kill_between_the_fold_write_and_the_journal_cleanup(tmp_path, what):
    # _save_unlocked: the folded results are written, no entry removed yet;
    # unlink: the oldest entry removed, the others not.
    store = make_store(tmp_path / "s.h5", range(3))
    done = run_killed(1, what, "run", store, "-q")
    assert done.returncode == -9, done.stderr
    left = [p for p in _journal(store).iterdir() if p.name.endswith(".json")]
    assert len(left) == {"_save_unlocked": 3, "unlink": 2}[what]
    with h5py.File(store, "r") as handle:
        assert handle["results"]["epoch"][:].tolist() == [0, 1, 2]  # the fold's write
    twice = results.load_results(store)  # the entries replayed onto what holds them
    assert twice["epoch"].values.tolist() == [0, 1, 2]
    assert cli.main(["run", str(store), "-q"]) == 0
    final = results.load_results(store)
    xr.testing.assert_identical(final, twice)
    assert not _journal(store).exists()


def test_the_later_journal_entry_for_an_epoch_wins(analysed, tmp_path):
    ds = results.load_results(analysed)
    out = tmp_path / "r.zarr"
    results.save_results(ds, out)
    first = ds.isel(epoch=[1])
    second = first.copy(deep=True)
    second["nc1"][:] = 42.0
    results.journal_results(first, out)
    results.journal_results(second, out)
    journal = results.results_journal_path(out)
    entries = sorted(journal.iterdir())
    saved = {p: p.read_bytes() for p in entries}
    assert results.load_results(out)["nc1"].sel(epoch=1).values.tolist() == [42.0, 42.0]
    folded = results.fold_results(out)
    assert folded["nc1"].sel(epoch=1).values.tolist() == [42.0, 42.0]
    assert not journal.exists()
    # A fold killed before its cleanup, or part-way (oldest entry removed first):
    # replaying what is left onto the folded results changes nothing.
    for kept in (entries, entries[1:]):
        journal.mkdir()
        for p in kept:
            p.write_bytes(saved[p])
        xr.testing.assert_identical(results.load_results(out), folded)
        xr.testing.assert_identical(results.fold_results(out), folded)
        assert not journal.exists()
    # update_results folds the journal before its own epochs; save_results drops it.
    results.journal_results(first, out)
    assert results.update_results(ds.isel(epoch=[0]), out)["nc1"].sel(epoch=1).values.tolist() \
        == first["nc1"].values[0].tolist()
    results.journal_results(second, out)
    results.save_results(ds.isel(epoch=[0]), out)
    assert results.load_results(out)["epoch"].values.tolist() == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.zarr.lock", "r.zarr"]


def test_a_replacing_entry_drops_what_came_before(analysed, tmp_path):
    ds = results.load_results(analysed)
    out = tmp_path / "r.json"
    results.save_results(ds, out)
    results.journal_results(ds.isel(epoch=[0]), out)
    results.journal_results(ds.isel(epoch=[1]), out, replace=True)
    assert results.load_results(out)["epoch"].values.tolist() == [1]
    assert results.fold_results(out)["epoch"].values.tolist() == [1]
    assert results.fold_results(out) is None  # nothing left to fold


def test_overwrite_run_killed_then_resumed(tmp_path):
    store = make_store(tmp_path / "s.zarr", range(3))
    out = tmp_path / "out.nc"
    other = make_store(tmp_path / "o.zarr", range(3), seed=5)
    assert cli.main(["run", str(other), "-q", "--output", str(out)]) == 0
    # Killed while computing epoch 1 of an --overwrite run: epoch 0 replaces the others.
    with pytest.MonkeyPatch.context() as mp:  # one epoch per compute
        mp.setenv("DASK_NCANALYSIS__BATCH_EPOCHS", "1")
        done = run_killed(2, "_compute", "run", store, "-q", "--output", out, "--overwrite")
    assert done.returncode == -9, done.stderr
    now = results.load_results(out)
    assert now["epoch"].values.tolist() == [0]
    assert now.attrs["source"] == str(store.absolute())
    assert cli.main(["run", str(store), "-q", "--output", str(out)]) == 0
    assert results.load_results(out)["epoch"].values.tolist() == [0, 1, 2]


def test_a_fold_gives_what_saving_each_epoch_at_once_gave(analysed):
    # The fold concatenates compatible entries at once; the reference merges them one by
    # one, as update_results did after each epoch.
    ds = results.load_results(analysed)
    e0, e1 = ds.isel(epoch=[0]), ds.isel(epoch=[1])
    e0b = e0.copy(deep=True)
    e0b["nc1"][:] = 7.0
    train_only = e1.sel(split=["train"]).copy(deep=True)
    train_only["accuracy"][:] = 0.5
    e2 = e1.assign_coords(epoch=[2])
    steps = [e0, e1, e0b, train_only, e2]
    expected = steps[0]
    for new in steps[1:]:
        expected = results.merge_results(expected, new)
    got = results.journal._replay(None, [(False, s) for s in steps], in_store=False)
    xr.testing.assert_identical(got, expected)
    assert got["nc1"].sel(epoch=0).values.tolist() == [7.0, 7.0]
    assert got["n_samples"].sel(epoch=1, split="test").item() == -1
    based = results.journal._replay(ds, [(False, s) for s in steps[2:]], in_store=False)
    xr.testing.assert_identical(based, results.merge_results(
        results.merge_results(results.merge_results(ds, e0b), train_only), e2))
