#!/usr/bin/env bash
# The small-scale validation suite behind benchmarks/RESULTS.md (preliminary numbers).
# Usage: bash benchmarks/small_suite.sh [output-dir]     (from the repository root)
# Needs ~1 GB of disk under benchmarks/data/ and 30-60 minutes on a quiet 2-core machine.
# A/B comparisons time epoch 0 only; the scheduler runs time every epoch.
set -euo pipefail
PY=${PY:-/work/venv/bin/python}
OUT=${1:-benchmarks/data/results}
mkdir -p "$OUT"
log() { echo "== $(date +%T) load $(cut -d' ' -f1 /proc/loadavg): $*" >&2; }
run() {  # name, then run.py arguments
  local name=$1; shift
  log "run.py $*"
  "$PY" benchmarks/run.py "$@" --json "$OUT/$name.json" | tee "$OUT/$name.md"
}

{ lscpu | head -20; free -g; } > "$OUT/machine.txt"

if [ -z "${SKIP_GENERATE:-}" ]; then
  for scale in cifar10 cifar100 mini; do
    log "generate $scale"
    "$PY" benchmarks/generate.py --scale "$scale" --overwrite > "$OUT/generate-$scale.json"
  done
fi

# Schedulers (OpenBLAS at its default, 2 threads; distributed workers get 1 from distributed).
run cifar10-sched   --scale cifar10  --scheduler threads,distributed
run cifar100-sched  --scale cifar100 --scheduler threads,distributed,processes
run mini-sched      --scale mini     --scheduler threads,distributed
# BLAS threads: 1 OpenBLAS thread per dask thread.
run cifar100-blas1  --scale cifar100 --blas-threads 1 --no-baseline --scheduler threads,sync --epochs 0
run mini-blas1      --scale mini     --blas-threads 1 --no-baseline --scheduler threads,sync --epochs 0
run mini-sync       --scale mini     --no-baseline --scheduler sync --epochs 0
# Block size (cifar100's default block holds the whole 50,000-row train split: one task).
run cifar100-rpb8k  --scale cifar100 --blas-threads 1 --no-baseline --rows-per-block 8192 --epochs 0
run cifar100-rpb16k --scale cifar100 --blas-threads 1 --no-baseline --rows-per-block 16384 --epochs 0
run mini-rpb4k      --scale mini     --blas-threads 1 --no-baseline --rows-per-block 4096 --epochs 0
# Fresh-page cost of per-sub-block temporaries: keep freed memory in the heap.
MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 \
  run mini-malloc   --scale mini     --blas-threads 1 --no-baseline --epochs 0
# float64 GEMMs.
run mini-f64        --scale mini     --blas-threads 1 --no-baseline --gemm-dtype float64 --epochs 0

# Stage profiles (synchronous scheduler).
for scale in cifar100 mini; do
  log "profile $scale"
  "$PY" benchmarks/run.py --scale $scale --profile --json "$OUT/profile-$scale.json" \
    | tee "$OUT/profile-$scale.md"
  "$PY" benchmarks/run.py --scale $scale --profile --blas-threads 1 \
    --json "$OUT/profile-$scale-blas1.json" | tee "$OUT/profile-$scale-blas1.md"
done

# Memory-flat check: N x10 (one epoch), peak RSS against N=50,000. With the default 64 MiB
# blocks the 50,000-row train split is a single block (one task at a time), so compare also
# at 8,192 rows per block, where both sizes have many blocks.
log "generate cifar100 x10"
"$PY" benchmarks/generate.py --scale cifar100 --rows 500000 --test-rows 100000 --epochs 1 \
  --overwrite > "$OUT/generate-cifar100-x10.json"
run cifar100-x10 --store benchmarks/data/cifar100-n500000.zarr --no-baseline \
  --scheduler threads,distributed
run cifar100-x10-rpb8k --store benchmarks/data/cifar100-n500000.zarr --no-baseline \
  --rows-per-block 8192
run cifar100-x1-rpb8k --scale cifar100 --no-baseline --rows-per-block 8192 --epochs 0
rm -rf benchmarks/data/cifar100-n500000.zarr
log done
