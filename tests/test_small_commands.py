"""``ncanalysis info`` and ``validate`` start without the heavy libraries (issue 11).

Both commands read metadata only; importing dask.array, xarray and pandas cost
them ~3 s of a 3.5 s run.  Each command runs in a fresh interpreter, through
``main``, which then prints the heavy modules it finds loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_helpers import make_store

HEAVY = ("dask", "xarray", "pandas", "numba", "distributed")
_WRAPPER = (
    "import json, sys\n"
    "from ncanalysis.cli import main\n"
    "code = main(sys.argv[1:])\n"
    f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r})\n"
    "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
)


def _heavy_modules(*argv: str) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True,
                          text=True, timeout=120, check=False)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["heavy"]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_info_and_validate_import_no_heavy_library(tmp_path, suffix):
    store = make_store(tmp_path / f"store{suffix}", epochs=range(2))
    for argv in (["info", str(store)], ["info", "--json", str(store)],
                 ["validate", str(store)]):
        code, heavy = _heavy_modules(*argv)
        assert code == 0, argv
        assert heavy == [], f"ncanalysis {' '.join(argv)} imported {heavy}"


def test_failing_info_imports_no_heavy_library(tmp_path):
    # The error path (not a store) reports its one line without them too.
    (tmp_path / "plain").mkdir()
    code, heavy = _heavy_modules("info", str(tmp_path / "plain"))
    assert code == 3
    assert heavy == []
