"""Measure the write throughput of the extractor path: forward, hook, checks, store.

A synthetic model whose classifier reads its input directly (so the forward pass costs
almost nothing) runs over N x d float32 features held in memory; the recorder hooks the
classifier, checks the values against float16's range, casts them and writes them into
a fresh store. Printed: MB/s of stored features for the whole `record_epoch`, and for
the store alone (`EpochWriter.write_split` of the same array) as the floor.

    python examples/extract_throughput.py /tmp/bench --rows 100000 --dim 512
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from ncanalysis.store import create_store
from ncanalysis_extract import FeatureRecorder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--backend", default="zarr", choices=("zarr", "h5"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    suffix = ".h5" if args.backend == "h5" else ".zarr"

    torch.manual_seed(0)
    x = torch.randn(args.rows, args.dim)
    y = torch.randint(0, args.classes, (args.rows,))
    data = TensorDataset(x, y)
    # Whole batches per dataset call, so the loader is not what is measured.
    loader = DataLoader(data, batch_size=None,
                        sampler=BatchSampler(SequentialSampler(data), args.batch, False))
    model = nn.Sequential(nn.Identity(), nn.Linear(args.dim, args.classes))
    mb = args.rows * args.dim * np.dtype(args.dtype).itemsize / 1e6

    best = {"record_epoch": float("inf"), "store only": float("inf")}
    for _ in range(args.repeat):
        path = args.outdir / f"recorder{suffix}"
        with FeatureRecorder(path, model, feature_dtype=args.dtype, mode="overwrite") as rec:
            t0 = time.perf_counter()
            rec.record_epoch(0, {"train": loader})
            best["record_epoch"] = min(best["record_epoch"], time.perf_counter() - t0)
        path = args.outdir / f"store{suffix}"
        features, labels = x.numpy(), y.numpy()
        with create_store(path, num_classes=args.classes, num_features=args.dim,
                          feature_dtype=args.dtype, overwrite=True) as writer:
            t0 = time.perf_counter()
            epoch = writer.begin_epoch(0)
            epoch.write_split("train", features, labels)
            w = model[1].weight.detach().numpy()
            epoch.write_classifier(w, model[1].bias.detach().numpy())
            epoch.finalize()
            best["store only"] = min(best["store only"], time.perf_counter() - t0)
    print(f"N={args.rows} d={args.dim} {args.dtype} ({mb:.0f} MB stored), {args.backend}, "
          f"batch {args.batch}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    for name, seconds in best.items():
        print(f"  {name:13s} {seconds:6.2f} s  {mb / seconds:7.0f} MB/s")
    shutil.rmtree(args.outdir / f"recorder{suffix}", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
