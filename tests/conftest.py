"""Fixtures and helpers shared by the test modules.

``pyproject.toml`` puts this directory on ``sys.path`` (pytest's ``pythonpath``),
so test modules import helpers such as ``reference`` and ``store_helpers`` by name.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import dask
import pytest


class CountingScheduler:
    """A dask scheduler that runs graphs synchronously and fails after ``max_computes`` runs."""

    def __init__(self, max_computes: int = 0) -> None:
        self.max_computes = max_computes
        self.total_computes = 0
        self._lock = threading.Lock()

    def __call__(self, dsk, keys, **kwargs):
        with self._lock:
            self.total_computes += 1
            count = self.total_computes
        if count > self.max_computes:
            raise RuntimeError(
                f"dask computed {count} time(s) where at most {self.max_computes} were allowed"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def _raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Fail when dask computes more than ``max_computes`` times inside the block.

    As xarray's test helper of the same name: the default scheduler is replaced
    by one that counts.  Code that names its own scheduler is not covered.
    """
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


@pytest.fixture
def raise_if_dask_computes():
    """The context manager ``raise_if_dask_computes(max_computes=0)`` (see above).

    Use it around code that must only build a graph:
    ``with raise_if_dask_computes(): graph = epoch_graph(item)``.
    """
    return _raise_if_dask_computes


@pytest.fixture(scope="session")
def cluster_client():
    """A dask.distributed LocalCluster of 2 worker processes, started once per session."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(params=["direct", "zarr"])
def read_path(request, monkeypatch):
    """Run a store test with the direct chunk-file reader, then through zarr only.

    Sets ``NCANALYSIS_DIRECT_READS`` (the engine's switch) to 1 or 0.
    """
    monkeypatch.setenv("NCANALYSIS_DIRECT_READS", "1" if request.param == "direct" else "0")
    return request.param
