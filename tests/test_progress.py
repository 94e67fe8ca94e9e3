"""One progress bar per run, counted in epochs; callbacks; no print in library code (issue 11).

Before: a dask bar per epoch (and a log line per epoch) on stderr, 207 bars for a
101-epoch run, and a different bar under dask.distributed.
"""

from __future__ import annotations

import ast
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import ENTRY_POINT, make_store

import ncanalysis
from ncanalysis.errors import InputError

PACKAGE = Path(ncanalysis.__file__).resolve().parent
#: A tqdm bar at its end: "5/5 [00:01<00:00, 3.2epoch/s]" (done/total, elapsed<left, rate).
_DONE = re.compile(r"(\d+)/(\d+) \[[\d:]+<[\d:]+, +[\d.]+(?:epoch/s|s/epoch)\]")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("p") / "store.zarr", epochs=range(5))


def _run_cli(*args: object) -> subprocess.CompletedProcess:
    """The installed ``ncanalysis``, stderr kept as written (text mode turns "\\r" into "\\n")."""
    done = subprocess.run([str(ENTRY_POINT), *map(str, args)], capture_output=True,
                          timeout=180, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def _bars(stderr: str) -> list[str]:
    """The lines of stderr (newline-separated) that hold a bar."""
    return [line for line in stderr.split("\n") if "epoch/s" in line or "s/epoch" in line]


def test_cli_draws_one_bar_for_the_whole_run(store, tmp_path):
    done = _run_cli("run", store, "--output", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    bars = _bars(done.stderr)
    assert len(bars) == 1, done.stderr
    # Its last state: every epoch done, with the rate and the time left.
    final = _DONE.findall(bars[0].split("\r")[-1])
    assert final == [("5", "5")], bars[0]
    # Around it only the run's own log lines: no per-epoch line, no dask bar.
    others = [line for line in done.stderr.split("\n") if line and line not in bars]
    assert len(others) == 3, others
    assert "Completed" not in done.stderr


def test_cli_quiet_draws_nothing(store, tmp_path):
    done = _run_cli("run", store, "--output", tmp_path / "r.json", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_callback_gets_done_and_total(store):
    calls: list[tuple[int, int]] = []
    ncanalysis.analyze(store, epochs=[1, 3, 4], progress=lambda done, total: calls.append(
        (done, total)))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]


class _Bar:
    def __init__(self) -> None:
        self.n = 0
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def test_a_given_bar_is_updated_per_epoch_and_left_open(store):
    bar = _Bar()
    ncanalysis.analyze(store, epochs=[0, 2], progress=bar)
    ncanalysis.analyze(store, epochs=[4], progress=bar)
    assert (bar.n, bar.closed) == (3, False)


def test_progress_true_is_one_bar_on_stderr(store, capsys):
    ncanalysis.analyze(store, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    bars = _bars(captured.err)
    assert len(bars) == 1 and _DONE.findall(bars[0].split("\r")[-1]) == [("5", "5")]


def test_arrays_callback_counts_one_epoch():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), np.arange(40) % 3
    calls: list[tuple[int, int]] = []
    ncanalysis.analyze_arrays({"train": (x, y)}, rng.normal(size=(3, 5)),
                              progress=lambda *a: calls.append(a))
    assert calls == [(0, 1), (1, 1)]


def test_bad_progress_value_is_named():
    with pytest.raises(InputError, match="progress must be .* not 'yes'"):
        ncanalysis.analyze_arrays({"train": (np.ones((4, 2)), np.arange(4) % 2)},
                                  np.ones((2, 2)), progress="yes")


def test_distributed_reports_the_same_epochs(store, capsys):
    distributed = pytest.importorskip("distributed")
    calls: list[tuple[int, int]] = []
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=":0") as client:
        ncanalysis.analyze(store, epochs=[0, 1], scheduler=client,
                           progress=lambda *a: calls.append(a))
        ncanalysis.analyze(store, epochs=[2, 3], scheduler=client, progress=True)
    assert calls == [(0, 2), (1, 2), (2, 2)]
    bars = _bars(capsys.readouterr().err)
    assert len(bars) == 1 and _DONE.findall(bars[0].split("\r")[-1]) == [("2", "2")]


def test_epochs_are_logged_not_printed(store, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="ncanalysis"):
        ncanalysis.analyze(store, epochs=[0, 1])
    assert capsys.readouterr() == ("", "")
    assert [r.getMessage().split(": analysing")[0] for r in caplog.records
            if "analysing" in r.getMessage()] == [f"{store}: epoch 0", f"{store}: epoch 1"]


def _library_files() -> list[Path]:
    # The command line is the application: it prints its results and logs itself.
    return [p for p in PACKAGE.rglob("*.py") if p.name != "cli.py"]


def test_library_code_never_prints_or_redirects_stdout():
    offenders = []
    for path in _library_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                    node.func.id == "print"):
                offenders.append(f"{path.name}:{node.lineno}: print")
            if isinstance(node, ast.Attribute) and node.attr in ("redirect_stdout", "stdout") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("contextlib",
                                                                               "sys"):
                offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offenders == []
