"""The whole pipeline in one command, on scikit-learn's digits.

``python -m ncanalysis_extract.demo OUTDIR`` trains the small digits network of
:mod:`ncanalysis_extract.digits` far past zero training error while recording
every epoch into ``OUTDIR/digits.zarr``, then runs ``ncanalysis run`` on the
store (table on stdout, results in the store's ``results`` group) and
``ncanalysis plot`` with its default output directory (figures in
``OUTDIR/digits-figures``, next to the store and named after it, as ``plot``
names them for any store).
The analysis and the figures go through exactly the code of the command line
(:func:`ncanalysis.cli.main`).  About a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ncanalysis import cli

from .digits import DEFAULT_EPOCHS, train_and_record

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Train, record, analyse and plot; return the exit code of the first failing step."""
    parser = argparse.ArgumentParser(
        prog="python -m ncanalysis_extract.demo",
        description="Train a small network on scikit-learn's digits past zero training "
        "error, record every epoch, analyse Neural Collapse and draw the figures.",
    )
    parser.add_argument("outdir", metavar="OUTDIR", help="directory for the store, results "
                        "and figures (created; an earlier demo there is replaced)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default {DEFAULT_EPOCHS})")
    parser.add_argument("--record-every", type=int, default=1, metavar="K",
                        help="record every K-th epoch (default 1: every epoch)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--hdf5", action="store_true",
                        help="write an HDF5 store (digits.h5) instead of Zarr")
    args = parser.parse_args(argv)

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    store = outdir / ("digits.h5" if args.hdf5 else "digits.zarr")
    started = time.perf_counter()
    print(f"demo: training for {args.epochs} epochs, recording into {store}", file=sys.stderr)
    summary = train_and_record(store, epochs=args.epochs, seed=args.seed,
                               record_every=args.record_every, overwrite=True)
    print(f"demo: trained in {summary['seconds']:.1f} s; train accuracy first reached 1 at "
          f"epoch {summary['first_perfect_train_epoch']} and stays 1 from epoch "
          f"{summary['stable_perfect_train_epoch']} (-1: never)", file=sys.stderr)
    steps = (
        # Quiet: a progress bar per epoch on stderr would bury the table.
        ["run", str(store), "--quiet"],
        # plot's default directory: OUTDIR/digits-figures, where `ncanalysis plot STORE` writes.
        ["plot", str(store)],
    )
    for step in steps:
        code = cli.main(step)
        if code != cli.EXIT_OK:
            return code
    print(f"demo: done in {time.perf_counter() - started:.1f} s; figures in "
          f"{store.with_name(store.stem + '-figures')}", file=sys.stderr)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
