#!/usr/bin/env python
"""Cost of chunk checksums: the analysis of the same epoch with and without them.

Two stores generated with the same seed (``generate.py --checksums on|off``) hold
the same features; one has a crc32c after every chunk.  In one process (so both
see the same machine state), after a warm-up of each, ``analyze(store,
epochs=[e])`` runs on A and B alternately (A B B A A B ...), ``--repeats`` times
each, with the threads scheduler.  Prints the median of each, the ratio and every
time as JSON.  The machine is shared and noisy: the interleaving spreads its
load over both arms.

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
    args = parser.parse_args(argv)

    from ncanalysis import analyze
    from ncanalysis.store import open_store

    stores = {"off": args.off, "on": args.on}
    for name, path in stores.items():
        with open_store(path) as store:
            checked = store.feature_blocks(args.epoch, "train").array
            print(f"{name}: {path}: {type(checked).__name__}, "
                  f"checksum={getattr(checked, 'checksum', None)}", file=sys.stderr)
        analyze(path, epochs=[args.epoch], scheduler="threads")  # warm-up (numba, page cache)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.repeats):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for name in order:
            t0 = time.perf_counter()
            analyze(stores[name], epochs=[args.epoch], scheduler="threads")
            times[name].append(time.perf_counter() - t0)
            print(f"repeat {r} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({"median_s": med, "ratio_on_off": med["on"] / med["off"], "times_s": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
