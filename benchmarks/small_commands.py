"""Wall time of the small commands (``info``, ``validate``, ``run``) on a tiny store.

Each command runs in a fresh subprocess, ``--repeats`` times, alternating the code
trees given with ``--tree`` (so that a slow minute of a shared machine hits every
tree alike); the median and the range per command and tree are printed as a
Markdown table.  A tree is a checkout of this repository: its directory goes first
on ``PYTHONPATH``, so the same Python and packages run every tree's ncanalysis.

Example (the figures of RESULTS.md, "Small commands")::

    git worktree add --detach /tmp/old <commit before>
    python benchmarks/small_commands.py --tree old=/tmp/old --tree new=. --repeats 9

and of "Batched small epochs" (50 epochs, C=5, d=16, 200 + 66 rows; ``run`` only)::

    python benchmarks/small_commands.py --tree old=/tmp/old --tree new=. --repeats 3 \
        --epochs 50 --classes 5 --dim 16 --rows 200 --commands run

The tiny store (3 epochs, C=4, d=6, 96 + 32 rows, Zarr) is written once, into a
temporary directory, with the newest tree's writer.  ``run`` writes its results
next to the store (``--output``), removed before every repeat.
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

_COMMANDS = ("info", "validate", "run")


def _write_store(path: Path, epochs: int, c: int = 4, d: int = 6, rows: int = 96) -> None:
    """A tiny store with the public writer API (features: class means plus noise).

    ``rows`` train rows and a third as many test rows per epoch.
    """
    from ncanalysis import create_store

    rng = np.random.default_rng(0)
    means = rng.normal(size=(c, d)) * 2
    with create_store(path, num_classes=c, num_features=d, feature_dtype="float32") as writer:
        for epoch in range(epochs):
            ep = writer.begin_epoch(epoch)
            for split, n in (("train", rows), ("test", rows // 3)):
                labels = np.arange(n) % c
                ep.write_split(split, means[labels] + 0.5**epoch * rng.normal(size=(n, d)), labels)
            ep.write_classifier(means - means.mean(axis=0), 0.01 * rng.normal(size=c))
            ep.finalize()


def _argv(command: str, store: Path, output: Path) -> list[str]:
    if command == "run":
        return ["run", str(store), "--output", str(output), "--quiet"]
    return [command, str(store)]


def _time_once(tree: Path, argv: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    code = "from ncanalysis.cli import entry_point; entry_point()"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=tree, capture_output=True,
                          text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: ncanalysis {' '.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                        help="a checkout to time (repeat the option to compare several)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the tiny store")
    parser.add_argument("--classes", type=int, default=4, help="C of the tiny store")
    parser.add_argument("--dim", type=int, default=6, help="d of the tiny store")
    parser.add_argument("--rows", type=int, default=96,
                        help="train rows per epoch (test: a third as many)")
    parser.add_argument("--commands", default=",".join(_COMMANDS),
                        help="comma-separated commands to time (default: all)")
    args = parser.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    if unknown := sorted(set(commands) - set(_COMMANDS)):
        parser.error(f"unknown command(s) {unknown}; choose from {list(_COMMANDS)}")
    trees = dict(item.split("=", 1) for item in args.tree)
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "tiny.zarr"
        output = Path(tmp) / "results.zarr"
        _write_store(store, args.epochs, args.classes, args.dim, args.rows)
        for _ in range(args.repeats):
            for command in commands:
                for name, tree in trees.items():
                    shutil.rmtree(output, ignore_errors=True)
                    elapsed = _time_once(Path(tree), _argv(command, store, output))
                    times.setdefault((command, name), []).append(elapsed)
    print(f"| command | {' | '.join(f'{n}: median s (min-max)' for n in trees)} |")
    print(f"|---|{'---|' * len(trees)}")
    for command in commands:
        cells = []
        for name in trees:
            t = times[(command, name)]
            cells.append(f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})")
        print(f"| {command} (store of {args.epochs} epochs) | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
