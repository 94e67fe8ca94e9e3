"""Imports run one way (docs/dev/contract.md, "Layers"): store below the analyser, metrics pure."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from store_helpers import SIZES, make_store, store_path

import ncanalysis
from ncanalysis import engine, stats
from ncanalysis.sources import RowBlocks, store_row_blocks, whole_chunk_rows
from ncanalysis.store import RowSource, open_store

PACKAGE = Path(ncanalysis.__file__).parent
#: What a store module may import from ncanalysis outside ncanalysis.store.
STORE_MAY_IMPORT = {"ncanalysis.errors", "ncanalysis._version"}
#: What metrics.py may import at run time: numbers only, no dask, xarray or I/O.
METRICS_MAY_IMPORT = {"__future__", "typing", "collections.abc", "numpy"}


def _imports(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            checking.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "store").glob("*.py")), ids=lambda p: p.name)
def test_store_imports_nothing_of_the_analyser(path):
    imported = _imports(path, "ncanalysis.store")
    upward = {m for m in imported if m.startswith("ncanalysis") and not
              m.startswith("ncanalysis.store") and m not in STORE_MAY_IMPORT}
    assert not upward, f"{path.name} imports {sorted(upward)} (the store is the lowest layer)"


def test_metrics_are_pure():
    imported = _imports(PACKAGE / "metrics.py", "ncanalysis")
    assert imported <= METRICS_MAY_IMPORT, sorted(imported - METRICS_MAY_IMPORT)


def test_the_analyser_does_not_import_the_results_io():
    for name in ("engine.py", "stats.py", "sources.py", "kernels.py", "options.py"):
        imported = _imports(PACKAGE / name, "ncanalysis")
        assert not {m for m in imported if m == "ncanalysis.results"
                    or m.startswith("ncanalysis.results.")}, name


#: The modules of ncanalysis.results, lowest first: each imports only those before it.
RESULTS_ORDER = ("formats", "files", "resume", "journal", "saveload")


def test_the_results_package_imports_one_way():
    assert sorted(p.stem for p in (PACKAGE / "results").glob("*.py")) == sorted(
        (*RESULTS_ORDER, "__init__"))
    for i, name in enumerate(RESULTS_ORDER):
        imported = _imports(PACKAGE / "results" / f"{name}.py", "ncanalysis.results")
        siblings = {m.removeprefix("ncanalysis.results.") for m in imported
                    if m.startswith("ncanalysis.results.")}
        allowed = set(RESULTS_ORDER[:i]) - ({"files"} if name == "resume" else set())
        assert siblings <= allowed, f"results/{name}.py imports {sorted(siblings - allowed)}"
        assert "ncanalysis.results" not in imported, name


def test_options_load_with_the_standard_library_only():
    imported = _imports(PACKAGE / "options.py", "ncanalysis")
    outside = {m for m in imported if m.split(".")[0] not in
               {"__future__", "argparse", "collections", "dataclasses", "math", "numbers",
                "typing", "ncanalysis"}}
    assert not outside and imported & {"ncanalysis.errors", "ncanalysis._version"}
    assert {m for m in imported if m.startswith("ncanalysis")} <= {"ncanalysis.errors",
                                                                   "ncanalysis._version"}


def test_the_split_order_is_written_once():
    pattern = re.compile(r"""!=\s*["']train["']\s*,""")
    places = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py"))
              if pattern.search(p.read_text())]
    assert places == ["store/spec.py"]
    from ncanalysis.store.spec import split_order

    assert sorted(["val", "test", "train", "a"], key=split_order) == ["train", "a", "test", "val"]


# ------------------------------------------------------------------ store rows, analyser blocks


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_store_hands_a_row_source_and_the_analyser_cuts_blocks(tmp_path, backend):
    path = store_path(tmp_path, backend)
    data = make_store(path, chunk_rows=4)
    with open_store(path) as store:
        source = store.feature_rows(0, "train")
        assert isinstance(source, RowSource) and source.chunk_rows == 4
        assert source.shape == (SIZES["train"], store.num_features)
        expected = data[0].splits["train"][0].astype(np.float16)
        np.testing.assert_array_equal(source[3:9], expected[3:9])
        # The analyser's default block: about 1/32 of the split but at least 4 MiB of
        # features, so for 22 small rows the whole split in one block.
        blocks = store_row_blocks(store, 0, "train")
        assert isinstance(blocks, RowBlocks) and blocks.block_rows == (SIZES["train"],)
        # Asked-for sizes become whole stored chunks (nearest multiple of 4 rows).
        assert store_row_blocks(store, 0, "train", rows_per_block=9).block_rows == (8, 8, 6)


@pytest.mark.parametrize(("asked", "expected"), [(1, 4), (5, 4), (6, 8), (9, 8), (10, 12)])
def test_whole_chunk_rows_rounds_to_the_nearest_chunk(asked, expected):
    assert whole_chunk_rows(4, 64, asked) == expected


def test_weight_norm_is_computed_once_per_plan():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(5, 3))
    sums = stats.block_class_sums(rng.normal(size=(50, 3)), np.arange(50) % 5, 5)
    geometry = stats.split_geometry(sums)
    plan = stats.block_plan(geometry, None, weight, np.zeros(5))
    assert plan.weight_norm == pytest.approx(np.linalg.norm(weight, axis=1).max(), rel=1e-15)


def test_an_object_merely_named_client_is_not_taken_for_a_dask_client():
    class Client:  # the old check compared class names
        pass

    assert engine._active_client(Client()) is None
