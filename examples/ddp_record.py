"""Record penultimate features from every rank of a DistributedDataParallel job.

    torchrun --nproc_per_node 4 examples/ddp_record.py /tmp/ddp-example.zarr

Training uses a DistributedSampler as usual. The recording pass does not: each rank
reads its own contiguous rows, whole write units of the store, so the ranks write one
epoch concurrently without sharing a stored chunk (`ncanalysis_extract.rank_row_range`).
Synthetic data keeps the example self-contained; gloo on CPU, NCCL when CUDA is there.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ncanalysis_extract import FeatureRecorder


def main(store: str, epochs: int = 3) -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    g = torch.Generator().manual_seed(0)  # the same data on every rank
    centres = 3 * torch.randn(5, 20, generator=g)
    y = torch.randint(0, 5, (5000,), generator=g)
    x = centres[y] + torch.randn(5000, 20, generator=g)
    train_set, test_set = TensorDataset(x[:4000], y[:4000]), TensorDataset(x[4000:], y[4000:])

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
    model = DistributedDataParallel(net.to(device), device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sampler = DistributedSampler(train_set, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=64, sampler=sampler)

    # torch.distributed is initialized, so the recorder uses its rank, world size and
    # collectives; rank 0 creates the store, the classifier is found as the last Linear.
    # chunk_rows sets the write unit; the default (about 8 MiB of features) would make
    # each of these small splits a single unit, written by one rank alone.
    with FeatureRecorder(store, model, mode="overwrite", on_overflow="float32",
                         chunk_rows=256) as recorder:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            model.train()
            for xb, yb in loader:
                loss = nn.functional.cross_entropy(model(xb.to(device)), yb.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            summary = recorder.record_epoch(epoch, {"train": train_set, "test": test_set},
                                            batch_size=500)
            print(f"rank {rank}: epoch {epoch} rows {summary['row_ranges']}", file=sys.stderr)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
