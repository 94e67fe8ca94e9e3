"""Processes for the extractor tests: DDP ranks, a writer killed mid-epoch, a live writer.

Run as ``python tests/extract_workers.py ROLE ...``; the tests import the same file for
the model and data, so that they can compute the expected features directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

IN_FEATURES, NUM_FEATURES, NUM_CLASSES = 6, 8, 4
#: Row whose input is scaled so far up that its features overflow float16.
HUGE_ROW, HUGE_SCALE = 150, 1e6


class TinyNet(nn.Module):
    """Linear -> leaky ReLU -> Linear -> fc; the input of fc is the features.

    Unbounded in x (a huge input gives huge features) and with no activation after the
    last body layer, so no row of features is all zeros (the store's fill value).
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN_FEATURES, 16), nn.LeakyReLU(0.1),
                                  nn.Linear(16, NUM_FEATURES))
        self.fc = nn.Linear(NUM_FEATURES, NUM_CLASSES)
        # Multiplies the features; a test sets it per epoch so that epochs differ.
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x) * self.scale)


def make_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


class IndexedData(Dataset):
    """Items (x, y, index) with index = 1000 + 3 i, so a misplaced row shows."""

    def __init__(self, n: int, seed: int, huge: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, IN_FEATURES, generator=g)
        if huge:
            self.x[HUGE_ROW] *= HUGE_SCALE
        self.y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        self.index = 1000 + 3 * torch.arange(n)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i], self.index[i]


def expected_features(model: TinyNet, data: IndexedData) -> torch.Tensor:
    """Features computed directly: the input of ``fc``, float32."""
    with torch.no_grad():
        return model.body(data.x) * model.scale


def ddp(args: argparse.Namespace) -> None:
    """One rank of a gloo job recording three epochs; epoch 1 overflows float16 on rank 2."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ncanalysis_extract import FeatureRecorder

    dist.init_process_group("gloo", init_method=f"file://{args.rendezvous}",
                            rank=args.rank, world_size=args.world)
    model = DistributedDataParallel(make_model())
    train, test = IndexedData(args.n_train, 1), IndexedData(args.n_test, 2)
    huge = IndexedData(args.n_train, 1, huge=True)
    summaries = []
    with FeatureRecorder(args.store, model, chunk_rows=args.chunk_rows,
                         on_overflow="float32") as rec:
        for epoch, train_set in enumerate((train, huge, train)):
            summaries.append(rec.record_epoch(epoch, {"train": train_set, "test": test},
                                              batch_size=7))
    Path(args.out).write_text(json.dumps(summaries))
    dist.destroy_process_group()


def crash(args: argparse.Namespace) -> None:
    """Record epochs 0 and 1, then write epoch 2 slowly until killed."""
    from ncanalysis_extract import FeatureRecorder

    model, data = make_model(), IndexedData(args.n_train, 1)
    rec = FeatureRecorder(args.store, model, chunk_rows=args.chunk_rows)
    for epoch in (0, 1):
        rec.record_epoch(epoch, {"train": data}, batch_size=16)
    with rec.epoch(2, {"train": len(data)}) as ep:
        for i, (x, y, index) in enumerate(ep.loader("train", data, batch_size=args.chunk_rows)):
            with ep.capture("train", y, index):
                model(x)
            if i == 3:
                # Four write units are in the store; tell the parent to kill us.
                Path(args.ready).write_text("ready")
            if i >= 3:
                time.sleep(0.02)
        time.sleep(600)


def live(args: argparse.Namespace) -> None:
    """Record epochs 0 .. E-1, the features scaled by epoch + 1, pausing between them."""
    from ncanalysis_extract import FeatureRecorder

    model, data = make_model(), IndexedData(args.n_train, 1)
    with FeatureRecorder(args.store, model, chunk_rows=args.chunk_rows) as rec:
        for epoch in range(args.epochs):
            model.scale.fill_(epoch + 1)
            rec.record_epoch(epoch, {"train": data}, batch_size=32)
            time.sleep(args.pause)


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("ddp", "crash", "live"))
    parser.add_argument("--store", required=True)
    parser.add_argument("--n-train", type=int, default=203)
    parser.add_argument("--n-test", type=int, default=61)
    parser.add_argument("--chunk-rows", type=int, default=8)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--rendezvous")
    parser.add_argument("--out")
    parser.add_argument("--ready")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.3)
    args = parser.parse_args(argv)
    {"ddp": ddp, "crash": crash, "live": live}[args.role](args)


if __name__ == "__main__":
    main()
