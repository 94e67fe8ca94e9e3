"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


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
