#!/usr/bin/env python
"""Cost of chunk checksums: the analysis of the same epoch with and without them.

Two stores generated with the same seed (``generate.py --checksums on|off``) hold
the same features; one has a crc32c after every chunk.  In one process (so both
see the same machine state), after a warm-up of each, ``analyze(store,
epochs=[e])`` runs on A and B alternately (A B B A A B ...), ``--repeats`` times
each, with the threads scheduler, timing wall and CPU seconds (``process_time``:
all threads of the process, less sensitive to other jobs on a shared machine).
Then ``--read-repeats`` alternated reads of every feature block of the epoch
(``RowBlocks`` as the analysis reads them, one thread), in CPU seconds: the part
of the analysis that checksums can slow.  Prints the medians, the ratios and
every time as JSON.  The machine is shared and noisy: the interleaving spreads
its load over both arms.

    python benchmarks/generate.py --scale imagenet10 --epochs 1 --checksums off \\
        --out benchmarks/data/ck-off.zarr
    python benchmarks/generate.py --scale imagenet10 --epochs 1 --checksums on \\
        --out benchmarks/data/ck-on.zarr
    python benchmarks/checksum_ab.py benchmarks/data/ck-off.zarr benchmarks/data/ck-on.zarr
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("off", help="store without checksums (A)")
    parser.add_argument("on", help="store with checksums (B)")
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--read-repeats", type=int, default=7)
    args = parser.parse_args(argv)

    from ncanalysis import analyze
    from ncanalysis.sources import store_row_blocks
    from ncanalysis.store import open_store

    stores = {"off": args.off, "on": args.on}
    for name, path in stores.items():
        with open_store(path) as store:
            checked = store_row_blocks(store, args.epoch, "train").array
            print(f"{name}: {path}: {type(checked).__name__}, "
                  f"checksum={getattr(checked, 'checksum', None)}", file=sys.stderr)
        analyze(path, epochs=[args.epoch], scheduler="threads")  # warm-up (numba, page cache)
    times: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.repeats):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            analyze(stores[name], epochs=[args.epoch], scheduler="threads")
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"repeat {r} {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU",
                  file=sys.stderr, flush=True)
    reads: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.read_repeats):
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            reads[name].append(_read_epoch_cpu(stores[name], args.epoch))
    summary = {}
    for label, series in (("analysis_wall_s", times), ("analysis_cpu_s", cpu),
                          ("read_cpu_s", reads)):
        if series["off"]:
            med = {name: statistics.median(t) for name, t in series.items()}
            summary[label] = {"median": med, "ratio_on_off": med["on"] / med["off"],
                              "all": series}
    print(json.dumps(summary))
    return 0


def _read_epoch_cpu(path: str, epoch: int) -> float:
    """CPU seconds to read every feature block of every split of ``epoch`` once."""
    from ncanalysis.sources import read_rows, store_row_blocks
    from ncanalysis.store import open_store

    c0 = time.process_time()
    with open_store(path) as store:
        for split in store.splits(epoch):
            blocks = store_row_blocks(store, epoch, split)
            for start, stop in blocks.ranges():
                read_rows(blocks.array, start, stop)
    return time.process_time() - c0


if __name__ == "__main__":
    sys.exit(main())
