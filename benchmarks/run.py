#!/usr/bin/env python
"""Time ``ncanalysis.analyze`` on the synthetic stores of ``generate.py``.

Per scale and scheduler, every epoch is measured in a fresh subprocess:

1. this machine's GEMM rate (numpy matmul 4096x2048 @ 2048x1000, float32 and
   float64, best of 7), in a separate process just before, and in that process;
2. a warm-up (``analyze_arrays`` on a tiny float16 problem in every process that
   will run tasks) so that numba's compiled kernels are loaded;
3. the peak-RSS marks are reset (``/proc/<pid>/clear_refs``), read counters noted;
4. ``analyze(store, epochs=[e])`` timed; then bytes read, peak RSS, etc.

Reported per measurement:

- ``epoch_s``: wall time of one epoch (all its splits, both passes, metrics);
- ``passes``: feature bytes read / feature bytes of the rows (N x d x itemsize;
  zarr's own reads also read the padding of a split's last chunk, so they count
  slightly more), from a log of every ``zarr.storage.LocalStore.get`` and every
  direct chunk-file read in every process that runs tasks (runner,
  pool processes, distributed workers), which also gives the min/max reads per
  stored feature chunk; cross-checked with ``read_chars`` of /proc/<pid>/io
  summed over the process tree (which also counts pipe reads, so it overstates
  the processes scheduler's reads) and with the number of read tasks in the
  dask graph;
- ``peak_rss_mb``: VmHWM of the runner during the epoch (threads/sync), and the
  sum over worker processes (processes/distributed);
- ``gflops``: the engine's GEMM flops / epoch time.  The count is exactly the
  GEMMs ``ncanalysis.stats.block_scatter`` does: per split,
  ``2 N d K + 2 N r_t C`` with ``K = r_s + C`` on the train split (its own
  basis serves NC1 and NCC) and ``K = r_s + r_t + C`` on other splits;
- ``floor_s``: ``4 N d C / GEMM rate`` (N summed over splits; the rate of the
  GEMM dtype used, from a separate process with OpenBLAS at its default run just
  before the epoch: the best of one all-cores matmul, one single-thread matmul
  and one single-thread matmul per core at once), and ``x_floor`` = epoch_s /
  floor_s; the rate measured inside the epoch's own process (with its BLAS
  setting) is in the JSON;
- ``baseline_s``: a straightforward in-memory float64 numpy implementation
  (load all features, Sigma_W d x d, pinv, logits, NCC distances), in its own
  subprocess, skipped when it would not fit in memory (full ImageNet).

Usage::

    python benchmarks/run.py --scale cifar10
    python benchmarks/run.py --scale cifar100 --scheduler threads,distributed --json out.json
    python benchmarks/run.py --store benchmarks/data/cifar100-n500000.zarr --no-baseline
    python benchmarks/run.py --scale mini --profile          # stage breakdown, sync scheduler

Markdown table on stdout (``--json -``: JSON instead); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GEMM_SHAPE = (4096, 2048, 1000)  # (m, k, n): the float32 GEMM whose rate sets the floor
SCHEDULERS = ("threads", "processes", "distributed", "sync")

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Store access
# ---------------------------------------------------------------------------


def _open(path: str):
    """The store at ``path``, opened with ``ncanalysis.store.open_store``."""
    from ncanalysis.store import open_store

    return open_store(path)


def _feature_files(path: str, epoch: int, split: str) -> list[pathlib.Path]:
    """The chunk files of one feature array (Zarr directory layout); [] for HDF5."""
    root = pathlib.Path(path) / "epochs" / str(epoch) / split / "features"
    return [f for f in root.rglob("*") if f.is_file() and f.name != "zarr.json"]


def describe(path: str, epochs: list[int] | None = None) -> dict:
    """Sizes of a store: d, C, epochs, per-epoch split rows and feature bytes."""
    store = _open(path)
    out = {
        "path": os.fspath(path), "backend": store.backend,
        "dim": store.num_features, "classes": store.num_classes,
        "epochs": store.epochs(), "provenance": store.provenance, "per_epoch": {},
    }
    for e in epochs if epochs is not None else out["epochs"]:
        splits = {}
        for s in store.splits(e):
            n = store.num_samples(e, s)
            files = _feature_files(path, e, s)
            disk = sum(f.stat().st_size for f in files) if files else None
            splits[s] = {"rows": n, "float16_bytes": n * store.num_features * 2,
                         "disk_bytes": disk}
        out["per_epoch"][str(e)] = splits
    store.close()
    return out


# ---------------------------------------------------------------------------
# Process measurements (/proc)
# ---------------------------------------------------------------------------


def _tree() -> list:
    import psutil

    me = psutil.Process()
    return [me] + me.children(recursive=True)


def _read_chars(procs) -> int:
    total = 0
    for p in procs:
        try:
            total += p.io_counters().read_chars
        except Exception:
            pass
    return total


def _status_kb(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak(pid: int | str = "self") -> bool:
    """Reset VmHWM of a process to its current RSS (Linux clear_refs '5')."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _loadavg() -> float:
    return os.getloadavg()[0]


def gemm_rate(dtype: str, repeats: int = 7) -> float:
    """Best GFLOP/s of numpy matmul (m x k) @ (k x n) in ``dtype``."""
    import numpy as np

    m, k, n = GEMM_SHAPE
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = np.empty((m, n), dtype=dtype)
    np.matmul(a, b, out=c)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def machine_gemm_rates(repeats: int = 7) -> dict:
    """This machine's GEMM rates, measured in a process with OpenBLAS at its default.

    ``blas_all``: one matmul with OpenBLAS's default threads (one per core);
    ``blas1``: one matmul on one BLAS thread; ``blas1_x_cores``: one single-thread
    matmul per core at once (what dask threads with OPENBLAS_NUM_THREADS=1 get),
    aggregate rate.  ``best`` (the floor's rate) is the largest of the three: under
    load from other jobs the single-thread forms often win.
    """
    import threading

    from threadpoolctl import threadpool_limits

    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"cores": cores}
    for dtype in ("float32", "float64"):
        rates = {"blas_all": gemm_rate(dtype, repeats)}
        with threadpool_limits(1, user_api="blas"):
            rates["blas1"] = gemm_rate(dtype, repeats)
            import numpy as np

            m, k, n = GEMM_SHAPE
            rng = np.random.default_rng(0)
            mats = [(rng.standard_normal((m, k)).astype(dtype),
                     rng.standard_normal((k, n)).astype(dtype)) for _ in range(cores)]
            best = math.inf
            for _ in range(max(3, repeats // 2)):
                threads = [threading.Thread(target=lambda a=a, b=b: a @ b) for a, b in mats]
                t = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                best = min(best, time.perf_counter() - t)
            rates["blas1_x_cores"] = cores * 2 * m * k * n / best / 1e9
        rates["best"] = max(rates.values())
        out[dtype] = rates
    out["loadavg"] = _loadavg()
    return out


# ---------------------------------------------------------------------------
# Child: one epoch, one scheduler
# ---------------------------------------------------------------------------


def warm_up(gemm_dtype: str = "float32") -> None:
    """Load numba's kernels (compiled on first use, cached on disk) for float16 inputs."""
    import numpy as np

    from ncanalysis import analyze_arrays

    rng = np.random.default_rng(1)
    c, d, n = 4, 8, 64
    y = np.arange(n) % c
    x = (rng.standard_normal((c, d))[y] + 0.1 * rng.standard_normal((n, d))).astype(np.float16)
    analyze_arrays({"train": (x, y), "test": (x[:32], y[:32])}, rng.standard_normal((c, d)),
                   scheduler="sync", gemm_dtype=gemm_dtype)


_READ_LOG_ENV = "NCBENCH_READ_LOG"


def install_read_log(path: str | None = None) -> None:
    """Log every chunk read (key, bytes) of this process to a shared file.

    Both read paths are logged: zarr's ``LocalStore.get`` and the store's direct
    reader of uncompressed chunk files (``ncanalysis.store._rawzarr``).

    Installed in the runner (threads/sync), in every pool process (processes) and
    every worker (distributed); lines are appended with O_APPEND, so several
    processes can share the file.  The cost is one small write per stored chunk
    (8 MiB by default).
    """
    import zarr.storage

    path = path or os.environ.get(_READ_LOG_ENV)
    if not path:
        return
    cls = zarr.storage.LocalStore
    if getattr(cls.get, "_ncbench", False):
        return
    orig = cls.get

    def log(nbytes: int, key: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {nbytes} {key}\n".encode())
        finally:
            os.close(fd)

    async def get(self, key, prototype=None, byte_range=None):
        buf = await orig(self, key, prototype, byte_range)
        if buf is not None:
            log(len(buf), key)
        return buf

    get._ncbench = True
    cls.get = get

    from ncanalysis.store import _rawzarr

    orig_raw = _rawzarr.read_chunk_bytes

    def read_chunk_bytes(file_path, offset, target, *args, **kwargs):
        found = orig_raw(file_path, offset, target, *args, **kwargs)
        if found:
            log(len(target), file_path)
        return found

    _rawzarr.read_chunk_bytes = read_chunk_bytes


def read_log_features(path: str) -> tuple[int, list[int], int]:
    """(feature bytes, reads per feature chunk, processes that read) from a read log."""
    reads: dict[str, int] = {}
    total = 0
    pids = set()
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                pid, nbytes, key = line.split(" ", 2)
                if "/features/c" in key:
                    reads[key] = reads.get(key, 0) + 1
                    total += int(nbytes)
                    pids.add(pid)
    return total, list(reads.values()), len(pids)


def _graph_read_tasks(store, epoch: int, splits: list[str], rows_per_block,
                      gemm_dtype: str) -> dict:
    """Count the feature reads in the epoch graph (2 per block expected).

    The analyser's tasks read their own rows: each pass's task of a block holds
    one nested ``read_rows`` task.
    """
    from ncanalysis.engine import EpochInput, epoch_graph
    from ncanalysis.sources import read_rows, store_row_blocks

    inputs = {s: (store_row_blocks(store, epoch, s, rows_per_block=rows_per_block),
                  store.labels(epoch, s)) for s in splits}
    item = EpochInput(epoch=epoch, splits=inputs, weight=store.weight(epoch),
                      bias=store.bias(epoch))
    hlg = epoch_graph(item, gemm_dtype=gemm_dtype).__dask_graph__()

    def reads_in(task: Any) -> int:
        nested = [a for a in getattr(task, "args", ()) if hasattr(a, "func")]
        return int(getattr(task, "func", None) is read_rows) + sum(map(reads_in, nested))

    blocks = sum(len(f.ranges()) for f, _ in inputs.values())
    reads = sum(reads_in(task) for task in dict(hlg).values())
    return {"blocks": blocks, "read_tasks": reads, "tasks": len(hlg)}


def engine_fingerprint() -> dict:
    """The git commit and a hash of the working tree's ncanalysis/*.py (it changes under us)."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted((REPO / "ncanalysis").rglob("*.py")):
        digest.update(f.read_bytes())
    try:
        head = subprocess.run(["git", "-C", os.fspath(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        head = "?"
    return {"git_head": head, "ncanalysis_sha256": digest.hexdigest()[:12]}


def child(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    malloc_env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    rate32 = gemm_rate("float32")
    rate64 = gemm_rate("float64")
    store = _open(args.store)
    epoch = args.epoch
    splits = store.splits(epoch)
    gemm_dtype = args.gemm_dtype
    warm_up(gemm_dtype)
    import tempfile

    fd, read_log = tempfile.mkstemp(prefix="ncbench-reads-", suffix=".log")
    os.close(fd)
    os.environ[_READ_LOG_ENV] = read_log  # inherited by pool and cluster processes
    install_read_log(read_log)

    scheduler: Any = args.scheduler
    cluster = client = pool = None
    worker_info: dict = {}
    if args.scheduler == "distributed":
        import dask
        from distributed import Client, LocalCluster

        if args.blas_threads:
            n = str(args.blas_threads)
            dask.config.set({"distributed.nanny.pre-spawn-environ": {
                "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
                "MALLOC_TRIM_THRESHOLD_": 65536}})
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        client.run(warm_up, gemm_dtype)
        client.run(install_read_log, read_log)
        worker_info = client.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS", "default"))
        scheduler = client
    elif args.scheduler == "processes":
        import dask
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing

        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_pool_init, initargs=(str(REPO), gemm_dtype))
        list(pool.map(_noop, range(4 * args.workers)))  # start and warm every worker
        dask.config.set(pool=pool)

    graph_info = _graph_read_tasks(store, epoch, splits, args.rows_per_block, gemm_dtype)

    if args.cold:  # evict this epoch's feature files from the page cache
        for s in splits:
            for f in _feature_files(args.store, epoch, s):
                fd = os.open(f, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)

    procs = _tree()
    for p in procs:
        _reset_peak(p.pid)
    rss_before = {p.pid: _status_kb(p.pid, "VmRSS") for p in procs}
    open(read_log, "w").close()  # only the timed epoch's reads count
    chars0 = _read_chars(procs)
    cpu_tree0 = _cpu_seconds(procs)
    load0 = _loadavg()
    cpu0 = os.times()

    profile = None
    t0 = time.perf_counter()
    if args.cprofile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    result = _analyze(args.store, epoch, scheduler, gemm_dtype,
                      args.rows_per_block)
    if profile is not None:
        profile.disable()
    epoch_s = time.perf_counter() - t0
    cpu1 = os.times()

    procs_after = _tree()
    chars1 = _read_chars(procs_after)
    cpu_tree = _cpu_seconds(procs_after) - cpu_tree0
    peaks = {p.pid: _status_kb(p.pid, "VmHWM") for p in procs_after}
    main_peak = peaks.get(os.getpid(), 0)
    workers_peak = sum(v for pid, v in peaks.items() if pid != os.getpid())
    load1 = _loadavg()
    feat_bytes, chunk_reads, reader_procs = read_log_features(read_log)
    os.unlink(read_log)

    out: dict[str, Any] = {
        "epoch": epoch, "scheduler": args.scheduler, "gemm_dtype": gemm_dtype,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "worker_blas_threads": sorted(set(worker_info.values())) if worker_info else None,
        "rows_per_block": args.rows_per_block, "cold": args.cold,
        # No benchmark-side engine patches exist any more; kept for older result files.
        "experiments": [], "engine": engine_fingerprint(),
        "malloc_env": malloc_env,
        "epoch_s": epoch_s,
        "cpu_s_main": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "cpu_s_all_processes": cpu_tree,
        "reader_processes": reader_procs,
        "gemm_gflops_float32": rate32, "gemm_gflops_float64": rate64,
        "read_chars": chars1 - chars0,
        "zarr_feature_bytes": feat_bytes if chunk_reads else None,
        "chunk_reads_min": min(chunk_reads) if chunk_reads else None,
        "chunk_reads_max": max(chunk_reads) if chunk_reads else None,
        "graph": graph_info,
        "peak_rss_mb_main": main_peak / 1024,
        "peak_rss_mb_workers": workers_peak / 1024,
        "rss_mb_before": sum(rss_before.values()) / 1024,
        "rss_mb_before_main": rss_before.get(os.getpid(), 0) / 1024,
        "ru_maxrss_mb": _ru_maxrss_mb(),
        "loadavg": [load0, load1],
        "metrics": result,
        "child_total_s": time.perf_counter() - t_start,
    }
    if profile is not None:
        import io
        import pstats

        buf = io.StringIO()
        stats = pstats.Stats(profile, stream=buf).sort_stats("tottime")
        stats.print_stats(25)
        out["cprofile"] = buf.getvalue()
    if client is not None:
        client.close()
        cluster.close()
    if pool is not None:
        pool.shutdown()
    store.close()
    return out


def _ru_maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pool_init(repo: str, gemm_dtype: str) -> None:
    if repo not in sys.path:
        sys.path.insert(0, repo)
    warm_up(gemm_dtype)
    install_read_log()


def _cpu_seconds(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:
            pass
    return total


def _noop(i: int) -> int:
    time.sleep(0.05)
    return i


def _analyze(path: str, epoch: int, scheduler, gemm_dtype: str, rows_per_block) -> dict:
    """Run ``ncanalysis.analyze`` on one epoch; return the small metrics we check."""
    import ncanalysis

    ds = ncanalysis.analyze(path, epochs=[epoch], scheduler=scheduler, gemm_dtype=gemm_dtype,
                            rows_per_block=rows_per_block)
    out = {}
    for s in ds["split"].values.tolist():
        row = ds.sel(epoch=epoch, split=s)
        out[s] = {k: float(row[k]) for k in (
            "nc1", "nc1_rank", "n_samples", "accuracy", "loss", "ncc_mismatch",
            "nc1_trace_ratio", "equinorm_means", "self_duality")}
    return out


# ---------------------------------------------------------------------------
# Baseline: straightforward in-memory float64 numpy
# ---------------------------------------------------------------------------


def baseline_bytes(rows: dict[str, int], dim: int, classes: int) -> int:
    """Peak memory estimate of the baseline (float64 H and residual, logits, distances)."""
    n = max(rows.values())
    return n * dim * (8 + 8 + 2) + 2 * n * classes * 8 + 2 * dim * dim * 8


def baseline(args: argparse.Namespace) -> dict:
    import numpy as np

    store = _open(args.store)
    epoch = args.epoch
    splits = store.splits(epoch)
    weight = store.weight(epoch).astype(np.float64)
    bias = store.bias(epoch).astype(np.float64)
    num_classes = weight.shape[0]
    t_all = time.perf_counter()
    load_s = 0.0
    out: dict[str, Any] = {}
    train_means = train_mu = None
    for s in ["train"] + [x for x in splits if x != "train"]:
        t = time.perf_counter()
        raw = store.features(epoch, s).compute(scheduler="sync")
        h = np.asarray(raw, dtype=np.float64)
        del raw
        y = np.asarray(store.labels(epoch, s))
        load_s += time.perf_counter() - t
        n, d = h.shape
        means = np.stack([h[y == c].mean(axis=0) for c in range(num_classes)])
        mu_g = means.mean(axis=0)
        m_tilde = means - mu_g  # (C, d)
        resid = h - means[y]
        sigma_w = resid.T @ resid / n
        del resid
        sigma_b = m_tilde.T @ m_tilde / num_classes
        sigma_b_pinv = np.linalg.pinv(sigma_b, rtol=1e-10, hermitian=True)
        nc1 = float(np.trace(sigma_w @ sigma_b_pinv) / num_classes)
        trace_ratio = float(np.trace(sigma_w) / np.trace(sigma_b))
        logits = h @ weight.T + bias
        pred = logits.argmax(axis=1)
        top = logits.max(axis=1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        loss = float(np.mean(lse - logits[np.arange(n), y]))
        del logits
        if s == "train":
            train_means, train_mu = means, mu_g
        centred = h - train_mu
        tc = train_means - train_mu
        dist = (centred * centred).sum(axis=1)[:, None] - 2 * centred @ tc.T + (tc * tc).sum(1)
        ncc = dist.argmin(axis=1)
        del dist, centred, h
        out[s] = {"nc1": nc1, "accuracy": float(np.mean(pred == y)), "loss": loss,
                  "ncc_mismatch": float(np.mean(pred != ncc)), "nc1_trace_ratio": trace_ratio}
    total = time.perf_counter() - t_all
    store.close()
    return {"epoch": epoch, "baseline_s": total, "load_s": load_s,
            "compute_s": total - load_s, "peak_rss_mb": _ru_maxrss_mb(), "metrics": out,
            "loadavg": _loadavg()}


# ---------------------------------------------------------------------------
# Profile: stage breakdown with the synchronous scheduler
# ---------------------------------------------------------------------------


def profile_stages(args: argparse.Namespace) -> dict:
    """Time the stages of one epoch with scheduler='sync' (stages are then additive).

    Library functions are wrapped with timers (module attributes and class
    methods, nothing edited).  The GEMMs inside ``block_scatter`` are inline
    ``@`` products, so their time is the block total minus its timed parts
    (upcast, numba kernels); the two GEMM shapes are also timed standalone.
    """
    import numpy as np
    import zarr

    import ncanalysis.engine as engine
    from ncanalysis import kernels, stats

    store = _open(args.store)
    epoch = args.epoch
    warm_up(args.gemm_dtype)
    acc: dict[str, float] = {}
    cpu: dict[str, float] = {}
    calls: dict[str, int] = {}
    state = {"pass": "graph/other"}

    def add(name: str, dt: float, dc: float) -> None:
        acc[name] = acc.get(name, 0.0) + dt
        cpu[name] = cpu.get(name, 0.0) + dc
        calls[name] = calls.get(name, 0) + 1

    def timed(name, fn, per_pass=False, sets_pass=None):
        # Wall time and process CPU time (all threads: zarr's I/O threads, BLAS threads).
        def wrapper(*a, **k):
            previous = state["pass"]
            if sets_pass:
                state["pass"] = sets_pass
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                label = f"{name} ({state['pass']})" if per_pass else name
                add(label, time.perf_counter() - t, time.process_time() - c)
                state["pass"] = previous
        return wrapper

    zarr.Array.__getitem__ = timed("read: zarr getitem", zarr.Array.__getitem__)
    try:  # engines since 926b9fe read uncompressed chunk files directly
        from ncanalysis.store._rawzarr import RawRowChunks
    except ImportError:
        pass
    else:
        RawRowChunks.__getitem__ = timed("read: direct chunk files", RawRowChunks.__getitem__)
    # Input preparation: older engines upcast float16 with numpy (stats._upcast), newer
    # ones pass the uint16 bits to the kernels (kernels.kernel_input, a view).
    if hasattr(stats, "_upcast"):
        stats._upcast = timed("input: numpy upcast float16->float32", stats._upcast,
                              per_pass=True)
    if hasattr(kernels, "kernel_input"):
        kernels.kernel_input = timed("input: kernel_input", kernels.kernel_input, per_pass=True)
    # Every numba kernel the engine has now (the set changes as the engine evolves).
    for name in dir(kernels):
        obj = getattr(kernels, name)
        if hasattr(obj, "py_func") and hasattr(obj, "signatures"):
            setattr(kernels, name, timed(f"kernel {name}", obj, per_pass=True))
    stats.block_class_sums = timed("pass 1 block", stats.block_class_sums, sets_pass="pass 1")
    stats.block_scatter = timed("pass 2 block", stats.block_scatter, sets_pass="pass 2")
    stats.split_geometry = timed("split_geometry (means, eigh, basis)", stats.split_geometry)
    stats.block_plan = timed("block_plan", stats.block_plan)
    stats.ClassSums.__add__ = timed("tree merge: ClassSums", stats.ClassSums.__add__)
    stats.ScatterSums.__add__ = timed("tree merge: ScatterSums", stats.ScatterSums.__add__)
    engine.split_metrics = timed("split_metrics", engine.split_metrics)

    t0, c0 = time.perf_counter(), time.process_time()
    metrics = _analyze(args.store, epoch, "sync", args.gemm_dtype,
                       args.rows_per_block)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0

    def derive(table: dict, whole: float) -> dict:
        g = table.get

        def inside(which: str) -> float:  # timed leaves inside a block of that pass
            return sum(v for k, v in table.items() if k.endswith(which))

        out = {
            "pass 1: other (checks, zeros, labels)": g("pass 1 block", 0) - inside("(pass 1)"),
            "pass 2: GEMMs + temporaries + numpy bookkeeping": g("pass 2 block", 0)
            - inside("(pass 2)"),
        }
        leaves = [k for k in table if k not in ("pass 1 block", "pass 2 block")]
        accounted = sum(table[k] for k in leaves) + sum(out.values())
        out["dask scheduling, graph build, label rechunk, rest"] = whole - accounted
        return out

    derived = derive(acc, total)
    derived_cpu = derive(cpu, total_cpu)
    # Standalone GEMM timings of the shapes block_scatter uses, per 4096-row sub-block.
    d, c = store.num_features, store.num_classes
    dtype = np.dtype(args.gemm_dtype)
    rng = np.random.default_rng(0)
    gemm = {}
    r_t = int(metrics["train"]["nc1_rank"])
    for s, m in metrics.items():
        n, r_s = int(m["n_samples"]), int(m["nc1_rank"])
        k = r_s + c + (0 if s == "train" else r_t)
        sub = min(4096, n)
        a = rng.standard_normal((sub, d)).astype(dtype)
        b = rng.standard_normal((d, k)).astype(dtype)
        p = rng.standard_normal((sub, r_t)).astype(dtype)
        q = rng.standard_normal((r_t, c)).astype(dtype)
        t1 = min(_timeit(lambda: a @ b) for _ in range(3))
        t2 = min(_timeit(lambda: p @ q) for _ in range(3))
        gemm[s] = {"main_gemm_s": t1 * n / sub, "ncc_gemm_s": t2 * n / sub,
                   "flops": 2 * n * d * k + 2 * n * r_t * c}
    rate = gemm_rate(args.gemm_dtype)
    flops = sum(v["flops"] for v in gemm.values())
    return {"epoch": epoch, "engine": engine_fingerprint(), "total_s": total,
            "total_cpu_s": total_cpu, "stages_s": acc,
            "stages_cpu_s": cpu, "derived_s": derived, "derived_cpu_s": derived_cpu,
            "calls": calls, "loadavg": _loadavg(), "standalone_gemm": gemm, "gemm_rate_gflops": rate,
            "gemm_flops": flops, "gemm_at_rate_s": flops / rate / 1e9,
            "floor_s": 4 * sum(int(m["n_samples"]) for m in metrics.values()) * d * c
            / rate / 1e9}


def _timeit(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------
# Parent: orchestration and reporting
# ---------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    """A measuring subprocess failed; the message ends with its stderr."""


def _spawn(mode: str, argv: list[str], env: dict) -> dict:
    cmd = [sys.executable, os.fspath(pathlib.Path(__file__).resolve()), mode] + argv
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChildFailed(f"{mode} exited with {proc.returncode}: {' '.join(cmd)}\n"
                          f"{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ChildFailed(f"{mode} printed no JSON\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(lines[-1])


def engine_flops(metrics: dict, dim: int, classes: int) -> float:
    """GEMM flops of block_scatter for one epoch (see the module docstring)."""
    r_t = int(metrics["train"]["nc1_rank"]) if "train" in metrics else 0
    total = 0.0
    for s, m in metrics.items():
        n, r_s = m["n_samples"], int(m["nc1_rank"])
        k = r_s + classes + (0 if s == "train" else r_t)
        total += 2 * n * dim * k + 2 * n * r_t * classes
    return total


def summarise(info: dict, runs: list[dict], base: dict | None) -> dict:
    d, c = info["dim"], info["classes"]
    rows_total = sum(v["rows"] for v in next(iter(info["per_epoch"].values())).values())
    per_epoch = []
    for r in runs:
        splits = info["per_epoch"][str(r["epoch"])]
        stored = sum(v["float16_bytes"] for v in splits.values())
        machine = r.get("machine_gemm")
        rate = (machine[r["gemm_dtype"]]["best"] if machine
                else r[f"gemm_gflops_{r['gemm_dtype']}"])
        flops = engine_flops(r["metrics"], d, c)
        floor = 4 * rows_total * d * c / (rate * 1e9)
        planted = info["provenance"].get("planted", [])
        planted_nc1 = next((p["nc1_planted"] for p in planted if p["epoch"] == r["epoch"]),
                           None)
        per_epoch.append({
            "rss_mb_before_main": r.get("rss_mb_before_main"),
            **{k: r[k] for k in ("epoch", "epoch_s", "peak_rss_mb_main", "peak_rss_mb_workers",
                                 "loadavg", "chunk_reads_min", "chunk_reads_max")},
            "passes_read_chars": r["read_chars"] / stored,
            "passes_zarr": (r["zarr_feature_bytes"] / stored
                            if r["zarr_feature_bytes"] else None),
            "passes": (r["zarr_feature_bytes"] or r["read_chars"]) / stored,
            "feature_bytes_read": r["zarr_feature_bytes"] or None,
            "cpu_s_all_processes": r["cpu_s_all_processes"],
            "reader_processes": r["reader_processes"],
            "graph_read_tasks_per_block": r["graph"]["read_tasks"] / r["graph"]["blocks"],
            "bytes_read": r["read_chars"], "stored_feature_bytes": stored,
            "gemm_flops": flops, "gflops": flops / r["epoch_s"] / 1e9,
            "gemm_rate_gflops": rate, "machine_gemm": r.get("machine_gemm"),
            "gemm_rate_in_process_float32": r["gemm_gflops_float32"],
            "gemm_rate_float64": r["gemm_gflops_float64"],
            "floor_s": floor, "x_floor": r["epoch_s"] / floor,
            "nc1_train": r["metrics"]["train"]["nc1"], "nc1_planted": planted_nc1,
            "metrics": r["metrics"],
        })
    med = lambda key: statistics.median(p[key] for p in per_epoch)
    summary = {
        "store": info["path"],
        "rows_total": rows_total,
        "rows": {s: v["rows"] for s, v in next(iter(info["per_epoch"].values())).items()},
        "dim": d, "classes": c, "scheduler": runs[0]["scheduler"],
        "blas_threads": runs[0]["blas_threads"], "experiments": runs[0]["experiments"],
        "malloc_env": runs[0]["malloc_env"],
        "engine": sorted({json.dumps(r["engine"], sort_keys=True) for r in runs}),
        "worker_blas_threads": runs[0]["worker_blas_threads"],
        "gemm_dtype": runs[0]["gemm_dtype"], "rows_per_block": runs[0]["rows_per_block"],
        "cold_cache": runs[0]["cold"],
        "epoch_s_median": med("epoch_s"), "gflops_median": med("gflops"),
        "gemm_rate_median": med("gemm_rate_gflops"), "floor_s": med("floor_s"),
        "x_floor_median": med("x_floor"), "passes_median": med("passes"),
        "cpu_s_median": med("cpu_s_all_processes"),
        "loadavg_max": max(max(p["loadavg"]) for p in per_epoch),
        "peak_rss_mb_max": max(p["peak_rss_mb_main"] for p in per_epoch),
        "peak_rss_mb_workers_max": max(p["peak_rss_mb_workers"] for p in per_epoch),
        "epochs": per_epoch,
    }
    if base is not None:
        summary["baseline"] = base
        if "baseline_s" in base:
            summary["baseline_speedup"] = base["baseline_s"] / summary["epoch_s_median"]
            same = [p for p in per_epoch if p["epoch"] == base["epoch"]]
            ref = same[0]["metrics"] if same else None
            diffs = {}
            for s, m in base["metrics"].items() if ref is not None else ():
                for k, v in m.items():
                    e = ref[s][k]
                    diffs[f"{s}.{k}"] = abs(e - v) / max(abs(v), 1e-12)
            if diffs:
                summary["engine_vs_baseline_max_rel_diff"] = max(diffs.values())
                summary["engine_vs_baseline_rel_diff"] = diffs
    return summary


HEADER = ("| store | N (splits) | d | C | scheduler | BLAS thr | GEMM | epoch s (median) "
          "| CPU s | passes (reads/chunk) | GB read | peak RSS MB | GFLOP/s | GEMM rate GFLOP/s "
          "| floor s | x floor | baseline s | nc1 e0 (planted) | load avg |")


def markdown_row(s: dict) -> str:
    ep0 = s["epochs"][0]
    rows = "+".join(f"{v:,}" for v in s["rows"].values())
    blas = s["blas_threads"] if s["worker_blas_threads"] is None else \
        f"{s['blas_threads']} (workers {','.join(s['worker_blas_threads'])})"
    rss = f"{s['peak_rss_mb_max']:.0f}"
    if s["peak_rss_mb_workers_max"]:
        rss += f" + workers {s['peak_rss_mb_workers_max']:.0f}"
    base = s.get("baseline") or {}
    base_txt = f"{base['baseline_s']:.2f}" if "baseline_s" in base else base.get("skipped", "-")
    planted = f" ({ep0['nc1_planted']:.3g})" if ep0["nc1_planted"] is not None else ""
    name = pathlib.Path(s["store"]).name
    if ep0["chunk_reads_min"] is not None:
        per_chunk = f" ({ep0['chunk_reads_min']}-{ep0['chunk_reads_max']})"
    else:
        per_chunk = ""
    read = ep0["feature_bytes_read"] or ep0["bytes_read"]
    if s["rows_per_block"]:
        name += f", {s['rows_per_block']} rows/block"
    if s["cold_cache"]:
        name += ", cold"
    for x in s.get("experiments", []):
        name += f", +{x}"
    for k, v in s["malloc_env"].items():
        name += f", {k}={v}"
    if s.get("failures"):
        name += f", **{len(s['failures'])} epoch(s) FAILED**"
    return (f"| {name} | {rows} | {s['dim']} | {s['classes']} | {s['scheduler']} | {blas} | "
            f"{s['gemm_dtype']} | {s['epoch_s_median']:.3f} | {s['cpu_s_median']:.2f} | "
            f"{s['passes_median']:.2f}{per_chunk} | {read / 1e9:.3f} | {rss} | "
            f"{s['gflops_median']:.1f} | {s['gemm_rate_median']:.0f} | {s['floor_s']:.3f} | "
            f"{s['x_floor_median']:.1f} | {base_txt} | {ep0['nc1_train']:.4g}{planted} | "
            f"{s['loadavg_max']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_gemm":
        print(json.dumps(machine_gemm_rates()))
        return 0
    if argv and argv[0] in ("_child", "_baseline", "_profile"):
        mode, rest = argv[0], argv[1:]
        p = argparse.ArgumentParser()
        p.add_argument("--store", required=True)
        p.add_argument("--epoch", type=int, required=True)
        p.add_argument("--scheduler", default="threads")
        p.add_argument("--gemm-dtype", default="float32")
        p.add_argument("--rows-per-block", type=int)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--blas-threads", type=int)
        p.add_argument("--cold", action="store_true")
        p.add_argument("--cprofile", action="store_true")
        a = p.parse_args(rest)
        fn = {"_child": child, "_baseline": baseline, "_profile": profile_stages}[mode]
        print(json.dumps(fn(a)))
        return 0

    from benchmarks.generate import SCALES, default_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES),
                        help="use benchmarks/data/<scale>.zarr (generate.py's default path)")
    parser.add_argument("--store", help="a store path (instead of --scale)")
    parser.add_argument("--scheduler", default="threads",
                        help="comma-separated: " + ",".join(SCHEDULERS))
    parser.add_argument("--gemm-dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--epochs", help="comma-separated epochs (default: all)")
    parser.add_argument("--rows-per-block", type=int, help="dask block rows (default: engine's)")
    parser.add_argument("--blas-threads", type=int,
                        help="OPENBLAS_NUM_THREADS for the measurement processes "
                        "(default: OpenBLAS's own, = cores; distributed workers default to 1)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for processes/distributed")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--cold", action="store_true",
                        help="evict the epoch's feature files from the page cache first")
    parser.add_argument("--profile", action="store_true",
                        help="stage breakdown of one epoch (sync scheduler) instead")
    parser.add_argument("--cprofile", action="store_true",
                        help="cProfile the timed epoch (top 25 by tottime, to stderr)")
    parser.add_argument("--read-path", choices=("direct", "zarr"),
                        help="how Zarr features are read: the direct chunk-file reader or "
                        "zarr only (sets NCANALYSIS_DIRECT_READS for every measuring "
                        "process; default: the environment's, i.e. direct)")
    parser.add_argument("--json", metavar="PATH", help="write JSON here ('-': stdout)")
    args = parser.parse_args(argv)
    if not args.store and not args.scale:
        parser.error("give --scale or --store")
    path = args.store or os.fspath(default_path(args.scale, None))
    if not pathlib.Path(path).exists():
        parser.error(f"{path} does not exist; run: python benchmarks/generate.py --scale "
                     f"{args.scale}")
    info = describe(path)
    epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else info["epochs"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.fspath(REPO), env.get("PYTHONPATH", "")])
    if args.read_path:  # the engine's own switch (ncanalysis.store.DIRECT_READS_ENV)
        env["NCANALYSIS_DIRECT_READS"] = "1" if args.read_path == "direct" else "0"
    if args.blas_threads:
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(args.blas_threads)
    gemm_env = {k: v for k, v in env.items()
                if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    common = ["--store", path, "--gemm-dtype", args.gemm_dtype, "--workers", str(args.workers)]
    if args.rows_per_block:
        common += ["--rows-per-block", str(args.rows_per_block)]
    if args.blas_threads:
        common += ["--blas-threads", str(args.blas_threads)]

    if args.profile:
        out = _spawn("_profile", common + ["--epoch", str(epochs[0])], env)
        total = out["total_s"]
        lines = [f"Stage breakdown: {pathlib.Path(path).name}, epoch {out['epoch']}, "
                 f"scheduler=sync, gemm {args.gemm_dtype}: {total:.3f} s "
                 f"(GEMM floor 4NdC/rate = {out['floor_s']:.3f} s; the engine's GEMM flops at "
                 f"the measured rate {out['gemm_rate_gflops']:.0f} GFLOP/s = "
                 f"{out['gemm_at_rate_s']:.3f} s); process CPU {out['total_cpu_s']:.3f} s; "
                 f"load average {out['loadavg']:.1f}", "",
                 "| stage | wall s | share | CPU s (all threads) | calls |",
                 "|---|---|---|---|---|"]
        rows = {k: (v, out["stages_cpu_s"][k], out["calls"][k])
                for k, v in out["stages_s"].items() if k not in ("pass 1 block", "pass 2 block")}
        rows.update({k: (v, out["derived_cpu_s"][k], "") for k, v in out["derived_s"].items()})
        for k, (v, c, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            lines.append(f"| {k} | {v:.3f} | {v / total:.0%} | {c:.3f} | {n} |")
        for key, label in (("pass 1 block", "pass 1 blocks"), ("pass 2 block", "pass 2 blocks")):
            v = out["stages_s"].get(key, 0.0)
            lines.append(f"| ({label}, total) | {v:.3f} | {v / total:.0%} | "
                         f"{out['stages_cpu_s'].get(key, 0.0):.3f} | |")
        for s, g in out["standalone_gemm"].items():
            lines.append(f"\nstandalone GEMMs, split {s}: main {g['main_gemm_s']:.3f} s, "
                         f"NCC {g['ncc_gemm_s']:.3f} s")
        print("\n".join(lines))
        if args.json:
            _write_json(args.json, out)
        return 0

    summaries: list[dict] = []
    failures: list[dict] = []
    base: dict | None = None
    for sched in args.scheduler.split(","):
        if sched not in SCHEDULERS:
            parser.error(f"unknown scheduler {sched!r}")
        runs = []
        for e in epochs:
            log(f"run: {pathlib.Path(path).name} epoch {e} scheduler={sched} ...")
            extra = ["--epoch", str(e), "--scheduler", sched]
            if args.cold:
                extra.append("--cold")
            if args.cprofile:
                extra.append("--cprofile")
            try:
                machine = _spawn("_gemm", [], gemm_env)
                r = _spawn("_child", common + extra, env)
            except ChildFailed as err:  # keep going: one bad epoch should not lose the rest
                log(f"run: FAILED, epoch {e}, scheduler={sched}: {err}")
                failures.append({"scheduler": sched, "epoch": e, "error": str(err)[-2000:]})
                continue
            r["machine_gemm"] = machine
            if "cprofile" in r:
                log(r.pop("cprofile"))
            log(f"run:   {r['epoch_s']:.3f} s, read {r['read_chars'] / 1e6:.1f} MB, "
                f"peak RSS {r['peak_rss_mb_main']:.0f} MB (+workers "
                f"{r['peak_rss_mb_workers']:.0f}), GEMM {r['gemm_gflops_float32']:.0f} GFLOP/s, "
                f"load {r['loadavg'][0]:.1f}")
            runs.append(r)
        if not runs:
            continue
        if not args.no_baseline and base is None:
            rows = {s: v["rows"] for s, v in info["per_epoch"][str(epochs[0])].items()}
            need = baseline_bytes(rows, info["dim"], info["classes"])
            avail = _status_kb_meminfo("MemAvailable") * 1024
            if need > 0.6 * avail:
                base = {"skipped": f"skipped (needs ~{need / 1e9:.0f} GB)", "epoch": epochs[0]}
                log(f"run: baseline {base['skipped']}, {avail / 1e9:.0f} GB available")
            else:
                log(f"run: in-memory float64 baseline, epoch {epochs[0]} ...")
                try:
                    base = _spawn("_baseline", common + ["--epoch", str(epochs[0])], env)
                    log(f"run:   baseline {base['baseline_s']:.2f} s "
                        f"(load {base['load_s']:.2f} s)")
                except ChildFailed as err:
                    log(f"run: baseline FAILED: {err}")
                    base = {"skipped": "failed", "epoch": epochs[0], "error": str(err)[-2000:]}
        summary = summarise(info, runs, base)
        summary["failures"] = [f for f in failures if f["scheduler"] == sched]
        summaries.append(summary)
    if args.json == "-":
        print(json.dumps(summaries, indent=1))
    else:
        print(HEADER)
        print("|" + "---|" * (HEADER.count("|") - 1))
        for s in summaries:
            print(markdown_row(s))
        if args.json:
            _write_json(args.json, summaries)
    for s in summaries:
        if "engine_vs_baseline_max_rel_diff" in s:
            log(f"run: {s['scheduler']}: engine vs float64 baseline, max relative difference "
                f"{s['engine_vs_baseline_max_rel_diff']:.2e}; baseline/engine time "
                f"{s['baseline_speedup']:.1f}x")
    for f in failures:
        log(f"run: FAILED: scheduler={f['scheduler']} epoch {f['epoch']} (see above)")
    return 1 if failures else 0


def _status_kb_meminfo(field: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=1)
    if path == "-":
        print(text)
    else:
        pathlib.Path(path).write_text(text + "\n")
        log(f"run: wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
