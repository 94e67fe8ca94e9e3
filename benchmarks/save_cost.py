"""Cost of saving results after every epoch: a whole rewrite per epoch vs the journal.

Two measurements, printed as Markdown tables (see RESULTS.md, "Saving results per epoch"):

1. ``saves``: for C classes and E epochs, the results of one epoch are saved E times to a
   destination, as a run does, and each save is timed:

   - ``rewrite``: :func:`ncanalysis.results.update_results` per epoch (what ``ncanalysis
     run`` did before the journal: read the results, merge, rewrite everything);
   - ``journal``: :func:`ncanalysis.results.journal_results` per epoch, then one
     :func:`ncanalysis.results.fold_results` at the end (what it does now).

   Destinations: the ``results`` group of a Zarr store and of an HDF5 store, and an
   ``--output`` ``.nc`` file.  The one-epoch results are those of a real analysis of a
   tiny store (C=4) with the class dimension repeated to C, so every variable is there with
   its real dtype.  Also printed: the HDF5 store's growth (HDF5 does not reclaim replaced
   groups).

2. ``run``: the wall time of a whole ``ncanalysis run`` (one process, ``-q``) over a small
   store with many tiny epochs, with the code of a given git commit (``--old``, checked
   out with ``git archive`` into a temporary directory) and with this tree, alternated.

Usage (from the repository root)::

    python benchmarks/save_cost.py saves --epochs 50 --classes 10 1000
    python benchmarks/save_cost.py run --epochs 100 --old f7c0e7e --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RUN = "import sys; from ncanalysis.cli import main; sys.exit(main(sys.argv[1:]))"


def _one_epoch_results(classes: int, tmp: Path):
    """A one-epoch results Dataset with ``classes`` classes (from a real C=4 analysis)."""
    from cli_helpers import make_store

    from ncanalysis import analyze
    from ncanalysis.store import open_store

    store = make_store(tmp / "seed.zarr", [0])
    with open_store(store) as opened:
        base = analyze(opened, epochs=[0], progress=False)
    picked = base.isel({"class": np.arange(classes) % base.sizes["class"]})
    picked = picked.assign_coords({"class": np.arange(classes),
                                   "class_name": ("class", [f"c{i}" for i in range(classes)])})
    picked.attrs.update(num_classes=classes, source=str(tmp / "source"), splits_selected="*")
    return picked


def _destination(kind: str, tmp: Path, name: str) -> tuple[Path, bool]:
    from cli_helpers import make_store

    if kind == "zarr store":
        return make_store(tmp / f"{name}.zarr", [0]), True
    if kind == "hdf5 store":
        return make_store(tmp / f"{name}.h5", [0]), True
    return tmp / f"{name}.nc", False


def _saves(args: argparse.Namespace) -> None:
    from ncanalysis import results

    print(f"| C | destination | method | per-epoch save, mean (s) | last epoch (s) | "
          f"final fold (s) | total for {args.epochs} epochs (s) | HDF5 growth (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for classes in args.classes:
        with tempfile.TemporaryDirectory(dir=args.tmp) as name:
            tmp = Path(name)
            one = _one_epoch_results(classes, tmp)
            for kind in ("zarr store", "hdf5 store", "--output .nc"):
                for method in args.methods:
                    path, in_store = _destination(kind, tmp, f"{method}-{kind[:4]}")
                    size0 = path.stat().st_size if path.is_file() else 0
                    times = []
                    for epoch in range(args.epochs):
                        new = one.assign_coords(epoch=[epoch])
                        start = time.perf_counter()
                        if method == "rewrite":
                            results.update_results(new, path, in_store=in_store)
                        else:
                            results.journal_results(new, path, in_store=in_store)
                        times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    if method == "journal":
                        results.fold_results(path, in_store=in_store)
                    fold = time.perf_counter() - start
                    back = results.load_results(path)
                    assert back["epoch"].values.tolist() == list(range(args.epochs))
                    growth = ((path.stat().st_size - size0) / 1e6 if kind == "hdf5 store"
                              else float("nan"))
                    print(f"| {classes} | {kind} | {method} | {statistics.mean(times):.4f} | "
                          f"{times[-1]:.4f} | {fold:.3f} | {sum(times) + fold:.2f} | "
                          f"{growth:.2f} |", flush=True)


def _run(args: argparse.Namespace) -> None:
    from cli_helpers import make_store

    with tempfile.TemporaryDirectory(dir=args.tmp) as name:
        tmp = Path(name)
        old = tmp / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        codes = {f"old ({args.old})": old, "new (this tree)": ROOT}
        print(f"| code | store | epochs | wall time of `ncanalysis run` (s), each try | "
              f"mean (s) |")
        print("|---|---|---|---|---|")
        for suffix in args.backends:
            seed = make_store(tmp / f"seed{suffix}", range(args.epochs))
            walls: dict[str, list[float]] = {code: [] for code in codes}
            for _ in range(args.repeat):
                for code, tree in codes.items():
                    work = tmp / f"work{suffix}"
                    if seed.is_dir():
                        shutil.copytree(seed, work)
                    else:
                        shutil.copy(seed, work)
                    # Run from tmp: Python puts the working directory (the repository
                    # root here) ahead of PYTHONPATH.
                    env = dict(os.environ, PYTHONPATH=str(tree))
                    check = subprocess.run([sys.executable, "-c",
                                            "import ncanalysis; print(ncanalysis.__file__)"],
                                           env=env, cwd=tmp, capture_output=True, text=True,
                                           check=True)
                    assert check.stdout.startswith(str(tree)), check.stdout
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-c", RUN, "run", str(work), "-q"],
                                   env=env, cwd=tmp, check=True, capture_output=True)
                    walls[code].append(time.perf_counter() - start)
                    shutil.rmtree(work) if work.is_dir() else work.unlink()
                    for leftover in tmp.glob(f".work{suffix}*"):
                        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            for code, values in walls.items():
                print(f"| {code} | {suffix} | {args.epochs} | "
                      f"{', '.join(f'{v:.1f}' for v in values)} | "
                      f"{statistics.mean(values):.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    saves = sub.add_parser("saves", help="time each per-epoch save (rewrite vs journal)")
    saves.add_argument("--epochs", type=int, default=50)
    saves.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    saves.add_argument("--methods", nargs="+", default=["rewrite", "journal"],
                       choices=["rewrite", "journal"])
    run = sub.add_parser("run", help="wall time of `ncanalysis run`, old commit vs this tree")
    run.add_argument("--epochs", type=int, default=100)
    run.add_argument("--old", default="f7c0e7e", help="git commit of the old code")
    run.add_argument("--repeat", type=int, default=1)
    run.add_argument("--backends", nargs="+", default=[".zarr", ".h5"])
    for p in (saves, run):
        p.add_argument("--tmp", default=None, help="directory for the temporary files")
    args = parser.parse_args()
    _saves(args) if args.what == "saves" else _run(args)


if __name__ == "__main__":
    main()
