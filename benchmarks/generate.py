#!/usr/bin/env python
"""Write synthetic float16 stores with planted Neural Collapse, block by block.

Features follow the planted model of shared/METRICS.md,

    h = rho * m_y + sigma_e * z,      z ~ N(0, I_d),

with m a unit simplex ETF (C vectors spanning a (C-1)-dimensional subspace of
R^d, randomly rotated), balanced shuffled labels, and sigma_e shrinking with the
epoch so that the planted NC1, sigma^2 (C-1)^2 / (rho^2 C), falls geometrically
from ``--nc1-first`` to ``--nc1-last``.  The classifier is W = alpha_e * M^T
plus noise that shrinks with the epoch, and b is small.

The store is written through the public writer API (create_store ->
begin_epoch -> create_split -> write_rows -> write_classifier -> finalize),
one row block at a time: memory stays bounded by a few blocks whatever N is.

Speed: the Gaussian noise is drawn as uniform 16-bit integers mapped through a
65,536-entry table of normal quantiles (mid-point rule, rescaled to unit
variance; tails truncated at 4.3 sigma).  This is ~3x faster than
``Generator.standard_normal`` here and is exact enough for benchmarking: the
within-class covariance is sigma^2 I in expectation.  The fused
``mean + sigma * noise`` is a numba kernel; ``--threads`` (2) threads generate
blocks in parallel and each writes its own block (whole write units, as the
format requires of concurrent writers); every block has its own seeded
generator, so the output does not depend on the thread count.  Blocks go to
``write_rows`` as float32 and the writer checks the float16 range and casts.

Usage::

    python benchmarks/generate.py --scale cifar10
    python benchmarks/generate.py --scale cifar100 --rows 500000   # N x10
    python benchmarks/generate.py --list

Prints a JSON summary (path, sizes, generation time) on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numba
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Scale:
    """A named problem size: train rows, feature dimension, classes, test rows."""

    rows: int
    dim: int
    classes: int
    test_rows: int


#: The named scales.  "mini" is a small stand-in for imagenet used to validate the
#: benchmarks (same d and C as ImageNet, 1/64 of the rows).
SCALES: dict[str, Scale] = {
    "cifar10": Scale(50_000, 512, 10, 10_000),
    "cifar100": Scale(50_000, 512, 100, 10_000),
    "mini": Scale(20_000, 2048, 1000, 5_000),
    "imagenet10": Scale(128_000, 2048, 1000, 10_000),
    "imagenet": Scale(1_281_167, 2048, 1000, 50_000),
}

#: Target float16 bytes per generated block (rounded to whole write units).
_BLOCK_BYTES = 16 * 2**20


# ---------------------------------------------------------------------------
# The planted model
# ---------------------------------------------------------------------------


def helmert_basis(c: int) -> np.ndarray:
    """(C, C-1) orthonormal basis of the vectors orthogonal to 1 (Helmert; closed form)."""
    k = np.arange(1, c)
    basis = (np.arange(c)[:, None] < k[None, :]).astype(np.float64)  # column k-1: ones in rows < k
    basis[k, k - 1] = -k
    return basis / np.sqrt(k * (k + 1))


def simplex_etf(num_classes: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(C, d) unit rows forming a simplex ETF, randomly rotated into R^d (needs d >= C-1).

    The one QR (random rotation) runs with one BLAS thread: on this 2-core machine
    under load, 2-thread OpenBLAS made LAPACK 10x slower (15 s instead of 1.5 s at
    d=2048, C=1000).
    """
    c = num_classes
    if dim < c - 1:
        raise SystemExit(f"a simplex ETF of C={c} vectors needs d >= C-1, got d={dim}")
    # Rows of (I - 11^T/C) in an orthonormal basis B of 1-perp are the rows of B itself.
    coords = np.sqrt(c / (c - 1)) * helmert_basis(c)  # (C, C-1): the ETF in R^{C-1}
    with _one_blas_thread():
        q, r = np.linalg.qr(rng.standard_normal((dim, c - 1)))
    embed = q * np.sign(np.diag(r))
    etf = coords @ embed.T
    return etf / np.linalg.norm(etf, axis=1, keepdims=True)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()


def normal_table() -> np.ndarray:
    """65,536 normal quantiles at mid-points, exactly zero-mean, unit-variance (float32)."""
    from statistics import NormalDist

    p = (np.arange(65536) + 0.5) / 65536
    try:
        from scipy.special import ndtri

        table = ndtri(p)
    except ImportError:  # pragma: no cover
        inv = NormalDist().inv_cdf
        table = np.array([inv(x) for x in p])
    table = table - table.mean()
    return (table / table.std()).astype(np.float32)


@numba.njit(nogil=True, cache=True)
def _fill(noise_index, labels, means, sigma, table, out):  # pragma: no cover - compiled
    """out[i, j] = means[labels[i], j] + sigma * table[noise_index[i, j]] (float32)."""
    for i in range(noise_index.shape[0]):
        c = labels[i]
        for j in range(noise_index.shape[1]):
            out[i, j] = means[c, j] + sigma * table[noise_index[i, j]]


@dataclass
class EpochPlan:
    """Planted parameters of one epoch."""

    epoch: int
    nc1_planted: float  # sigma^2 (C-1)^2 / (rho^2 C) of the train split
    sigma: float  # train within-class std per coordinate
    sigma_test: float
    alpha: float  # W = alpha * M^T + noise
    weight_noise: float  # std of W's noise relative to alpha / sqrt(d)


def epoch_plans(num_epochs: int, num_classes: int, rho: float, nc1_first: float,
                nc1_last: float, test_spread: float) -> list[EpochPlan]:
    plans = []
    for e in range(num_epochs):
        t = e / (num_epochs - 1) if num_epochs > 1 else 1.0
        nc1 = nc1_first * (nc1_last / nc1_first) ** t
        sigma = rho * math.sqrt(nc1 * num_classes) / (num_classes - 1)
        plans.append(EpochPlan(
            epoch=e, nc1_planted=nc1, sigma=sigma, sigma_test=test_spread * sigma,
            alpha=(2.0 + 6.0 * t) / rho, weight_noise=0.5 * (1.0 - t) + 0.05,
        ))
    return plans


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _block_rows(unit: int, dim: int, n: int) -> int:
    target = max(1, _BLOCK_BYTES // (2 * dim))
    return int(min(max(unit, (target // unit) * unit), max(n, 1)))


def write_split(epoch_writer, split: str, split_code: int, *, n: int, means32: np.ndarray,
                sigma: float, labels: np.ndarray, table: np.ndarray, seed: int, epoch: int,
                threads: int, parallel_writes: bool) -> None:
    """Generate and write one split, block by block, ``threads`` blocks at a time."""
    epoch_writer.create_split(split, n)
    unit = int(epoch_writer.write_unit_rows(split))
    rows = _block_rows(unit, means32.shape[1], n)
    starts = list(range(0, n, rows))
    write_lock = threading.Lock()
    local = threading.local()
    sigma32 = np.float32(sigma)

    def one(index: int) -> None:
        start = starts[index]
        stop = min(start + rows, n)
        rng = np.random.default_rng([seed, epoch, split_code, index])
        noise = rng.integers(0, 65536, size=(stop - start, means32.shape[1]), dtype=np.uint16)
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape[0] < stop - start:
            buf = local.buf = np.empty((rows, means32.shape[1]), dtype=np.float32)
        out = buf[: stop - start]
        _fill(noise, labels[start:stop], means32, sigma32, table, out)
        # float32 goes to the writer, which checks the float16 range and casts: checking
        # float32 is ~2x faster in numpy than checking an already-cast float16 block.
        block = out
        if parallel_writes:
            epoch_writer.write_rows(split, start, block, labels[start:stop])
        else:
            with write_lock:
                epoch_writer.write_rows(split, start, block, labels[start:stop])

    if threads <= 1:
        for i in range(len(starts)):
            one(i)
        return
    with ThreadPoolExecutor(threads) as pool:
        window = 2 * threads  # bounded number of blocks in flight
        pending = []
        for i in range(len(starts)):
            pending.append(pool.submit(one, i))
            if len(pending) >= window:
                pending.pop(0).result()
        for fut in pending:
            fut.result()


def generate(path: pathlib.Path, *, rows: int, dim: int, classes: int, test_rows: int,
             epochs: int, seed: int, rho: float | None, nc1_first: float, nc1_last: float,
             test_spread: float, bias_scale: float, chunk_rows: int | None, threads: int,
             parallel_writes: bool, overwrite: bool, scale_name: str,
             checksums: bool | None = None, log=lambda *a: None) -> dict:
    from ncanalysis.store import create_store

    if path.exists():
        if not overwrite:
            raise SystemExit(f"{path} exists; pass --overwrite")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".h5", ".hdf5"):
        threads = 1  # h5py serialises everything; keep it simple
    rho = float(math.sqrt(dim) if rho is None else rho)
    rng = np.random.default_rng(seed)
    etf = simplex_etf(classes, dim, rng)  # (C, d) float64
    means32 = np.ascontiguousarray(rho * etf, dtype=np.float32)
    table = normal_table()
    plans = epoch_plans(epochs, classes, rho, nc1_first, nc1_last, test_spread)
    split_rows = {"train": rows} | ({"test": test_rows} if test_rows > 0 else {})
    provenance = {
        "generator": "benchmarks/generate.py",
        "model": "h = rho * m_y + sigma * z, m unit simplex ETF, balanced classes",
        "scale": scale_name, "seed": seed, "rho": rho,
        "planted": [asdict(p) for p in plans],
        "nc1_formula": "sigma^2 (C-1)^2 / (rho^2 C) (train; test uses sigma_test)",
    }
    kwargs = dict(num_classes=classes, num_features=dim, feature_dtype="float16",
                  provenance=provenance, overwrite=overwrite)
    if chunk_rows:
        kwargs["chunk_rows"] = chunk_rows
    if checksums is not None:  # None: the store format's default
        kwargs["checksums"] = checksums
    timings = []
    t_all = time.perf_counter()
    writer = create_store(path, **kwargs)
    try:
        for plan in plans:
            t0 = time.perf_counter()
            ew = writer.begin_epoch(plan.epoch)
            for code, (split, n) in enumerate(split_rows.items()):
                lab_rng = np.random.default_rng([seed, plan.epoch, code, 2**31])
                labels = lab_rng.permutation(np.arange(n, dtype=np.int64) % classes)
                sigma = plan.sigma if split == "train" else plan.sigma_test
                write_split(ew, split, code, n=n, means32=means32, sigma=sigma, labels=labels,
                            table=table, seed=seed, epoch=plan.epoch, threads=threads,
                            parallel_writes=parallel_writes)
            w_rng = np.random.default_rng([seed, plan.epoch, 2**32])
            weight = plan.alpha * (etf + plan.weight_noise / math.sqrt(dim)
                                   * w_rng.standard_normal((classes, dim)))
            bias = bias_scale * plan.alpha * rho * w_rng.standard_normal(classes)
            ew.write_classifier(weight.astype(np.float32), bias.astype(np.float32))
            ew.finalize()
            dt = time.perf_counter() - t0
            timings.append(dt)
            nbytes = sum(split_rows.values()) * dim * 2
            log(f"generate: {path.name}: epoch {plan.epoch} written in {dt:.1f} s "
                f"({nbytes / dt / 1e6:.0f} MB/s of float16, planted nc1 {plan.nc1_planted:.3g})")
    finally:
        writer.close()
    total = time.perf_counter() - t_all
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size
    return {
        "path": os.fspath(path), "scale": scale_name,
        "rows": rows, "test_rows": test_rows, "dim": dim, "classes": classes, "epochs": epochs,
        "float16_bytes_per_epoch": sum(split_rows.values()) * dim * 2,
        "disk_bytes": disk, "generation_s": round(total, 3),
        "epoch_s": [round(t, 3) for t in timings], "threads": threads,
        "parallel_writes": parallel_writes,
        "planted_nc1": [p.nc1_planted for p in plans],
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_path(scale: str, rows: int | None) -> pathlib.Path:
    name = scale if rows is None else f"{scale}-n{rows}"
    return DATA / f"{name}.zarr"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="cifar10")
    parser.add_argument("--list", action="store_true", help="print the named scales and exit")
    parser.add_argument("--rows", type=int, help="train rows N (override; e.g. x10 for the "
                        "memory-flat check)")
    parser.add_argument("--dim", type=int, help="override d")
    parser.add_argument("--classes", type=int, help="override C")
    parser.add_argument("--test-rows", type=int, help="test rows (0: no test split)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path,
                        help="store path (default benchmarks/data/<scale>[-n<rows>].zarr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rho", type=float, help="class-mean norm (default sqrt(d))")
    parser.add_argument("--nc1-first", type=float, default=1.0)
    parser.add_argument("--nc1-last", type=float, default=0.01)
    parser.add_argument("--test-spread", type=float, default=1.5,
                        help="sigma_test / sigma_train")
    parser.add_argument("--bias-scale", type=float, default=0.01)
    parser.add_argument("--chunk-rows", type=int, help="stored chunk rows (default: the store's)")
    parser.add_argument("--threads", type=int, default=2, help="generator threads")
    parser.add_argument("--serial-writes", action="store_true",
                        help="one write_rows call at a time (default: the generator threads "
                        "write their own blocks, which own whole write units)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--checksums", choices=("on", "off"),
                        help="chunk checksums (crc32c) in the store (default: the format's "
                        "default, ncanalysis.store.DEFAULT_CHECKSUMS)")
    args = parser.parse_args(argv)
    if args.list:
        for name, s in SCALES.items():
            gb = (s.rows + s.test_rows) * s.dim * 2 / 1e9
            print(f"{name:11s} N={s.rows:>9,d} test={s.test_rows:>6,d} d={s.dim:5d} "
                  f"C={s.classes:5d}  {gb:6.2f} GB float16 per epoch")
        return 0
    scale = SCALES[args.scale]
    rows = args.rows or scale.rows
    path = args.out or default_path(args.scale, args.rows)
    summary = generate(
        path, rows=rows, dim=args.dim or scale.dim, classes=args.classes or scale.classes,
        test_rows=scale.test_rows if args.test_rows is None else args.test_rows,
        epochs=args.epochs, seed=args.seed, rho=args.rho, nc1_first=args.nc1_first,
        nc1_last=args.nc1_last, test_spread=args.test_spread, bias_scale=args.bias_scale,
        chunk_rows=args.chunk_rows, threads=args.threads, parallel_writes=not args.serial_writes,
        overwrite=args.overwrite, scale_name=args.scale,
        checksums=None if args.checksums is None else args.checksums == "on",
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(f"generate: {summary['path']}: {summary['generation_s']:.1f} s total, "
          f"{summary['disk_bytes'] / 1e9:.2f} GB on disk", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
