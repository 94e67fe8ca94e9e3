"""States that the type checks narrow: a group where an array belongs, a chunk file that
disappears while being checked, and count checks that answer with a real bool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ncanalysis.errors import StoreFormatError
from ncanalysis.store._zarr import ZarrBackend
from ncanalysis.store.spec import is_count, is_index


def test_counts_of_numpy_integers_are_python_bools() -> None:
    # A numpy comparison returns numpy.bool_, which is not ``True``.
    assert is_count(np.int64(3)) is True
    assert is_index(np.uint8(0)) is True
    assert is_count(np.int32(0)) is False
    assert is_index(True) is False


@pytest.mark.parametrize("call", ["read", "chunks_written", "chunk_problem", "row_source"])
def test_zarr_group_where_an_array_belongs_names_the_node(tmp_path: Path, call: str) -> None:
    backend = ZarrBackend.create(tmp_path / "s.zarr", {}, overwrite=False)
    backend.create_group("epochs/3/train/features", {})
    with pytest.raises(StoreFormatError, match=r"epoch 3, split 'train', array 'features'.*group"):
        getattr(backend, call)("epochs/3/train/features")


def test_zarr_chunk_deleted_during_the_check_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ZarrBackend.create(tmp_path / "s.zarr", {}, overwrite=False)
    node = "epochs/0/train/features"
    backend.create_group("epochs/0/train", {})
    backend.create_array(node, shape=(4, 2), dtype="float32", chunks=(2, 2),
                         dims=("sample", "feature"), checksums=True)
    backend.write("epochs/0/train", 0, {"features": np.ones((4, 2), np.float32)})
    assert backend.chunk_problem(node) is None
    store = backend._root.store
    real_get = store.get

    async def chunks_gone(key: str, *args: object, **kwargs: object) -> object:
        if key.endswith("zarr.json"):
            return await real_get(key, *args, **kwargs)
        return None  # what the store answers for a chunk key that no longer exists

    monkeypatch.setattr(store, "get", chunks_gone)
    problem = backend.chunk_problem(node)
    assert problem is not None and "is missing" in problem
