#!/usr/bin/env bash
# The runs behind benchmarks/RESULTS.md, in order, on a quiet machine.
# Needs the stores of generate.py: cifar10, cifar100, imagenet10, imagenet (--epochs 2);
# makes the 10x-rows cifar100 store for the memory-flat check. Writes JSON to benchmarks/data/final/ and logs to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
out=benchmarks/data/final
mkdir -p "$out"
$py benchmarks/run.py --scale cifar10 --scheduler threads,distributed --json "$out/cifar10.json"
$py benchmarks/run.py --scale cifar100 --scheduler threads --json "$out/cifar100.json"
[ -d benchmarks/data/cifar100-x10.zarr ] || $py benchmarks/generate.py --scale cifar100 \
    --rows 500000 --test-rows 100000 --epochs 1 --out benchmarks/data/cifar100-x10.zarr
$py benchmarks/run.py --store benchmarks/data/cifar100-x10.zarr --scheduler threads \
    --no-baseline --json "$out/cifar100-x10.json"
$py benchmarks/run.py --scale imagenet10 --scheduler threads,distributed --json "$out/imagenet10.json"
$py benchmarks/run.py --scale imagenet --scheduler threads --no-baseline --json "$out/imagenet.json"
$py benchmarks/run.py --scale imagenet --scheduler distributed --epochs 1 --no-baseline \
    --json "$out/imagenet-distributed.json"
# The whole command, start-up included, on one CIFAR-10-scale epoch (warm page cache):
# results to a JSON file, then into the store itself (the default), then the imports alone.
for i in 1 2 3 4 5; do
  /usr/bin/time -f "ncanalysis run cifar10 epoch 0 --output json: %e s wall" \
    ncanalysis run benchmarks/data/cifar10.zarr --epochs 0 --output "$(mktemp -d)/cli-cifar10.json" \
    --overwrite -q > /dev/null
  /usr/bin/time -f "ncanalysis run cifar10 epoch 0 (results in the store): %e s wall" \
    ncanalysis run benchmarks/data/cifar10.zarr --epochs 0 --overwrite -q > /dev/null
  /usr/bin/time -f "imports of numpy, zarr, numba, dask.array, xarray: %e s wall" \
    $py -c "import numpy, zarr, numba, dask.array, xarray"
done
