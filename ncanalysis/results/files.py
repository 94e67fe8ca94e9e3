"""Safe writing of results files: recognising them, locking, atomic replacement.

Which destinations hold ncanalysis results (and which never to replace), the
results lock (filelock), writing aside and renaming into place with fsync, the
recovery of what a killed write left (``.tmp-``/``.old-`` siblings, or groups
inside an HDF5 store), and retrying while a training run holds an HDF5 file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, NCAnalysisError, StoreFormatError
from ..store.spec import RESULTS_GROUP, ROOT_ATTR, is_hdf5_path
from .formats import _CSV_ATTR_PREFIX, _JSON_FORMAT

_TMP_TAG = "tmp"
_OLD_TAG = "old"


#: Seconds :func:`save_results` waits for another process's results lock, and
#: for an HDF5 store's file lock (a training run writing the file), before it fails.
LOCK_TIMEOUT_S = 300.0


def _sibling(path: Path, tag: str) -> Path:
    """A fresh path ``.<name>.<tag>-<8 hex>`` in the same directory (os.replace is a rename)."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def _siblings(path: Path, tag: str) -> list[Path]:
    """The ``.<name>.<tag>-<8 hex>`` siblings of ``path`` that save_results made, oldest first."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{tag}-[0-9a-f]{{8}}")
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.lstat().st_mtime)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """Undo what a killed :func:`_write_atomically` left next to ``path`` (hold the lock).

    A kill between the two renames leaves ``path`` missing and the earlier
    results under a ``.old-`` name: they are put back.  Temporaries are deleted.
    """
    backups = _siblings(path, _OLD_TAG)
    if backups and not os.path.lexists(path):
        os.replace(backups.pop(), path)
    for leftover in [*backups, *_siblings(path, _TMP_TAG)]:
        _remove(leftover)


def _write_atomically(path: Path, write: Any, *, directory: bool = False) -> None:
    """Call ``write(tmp)`` and move the result to ``path`` (hold the lock).

    A reader (or a crash) never sees a half-written results file: the old one
    stays until the new one is complete.  A directory cannot be swapped in one
    rename; the old one is first renamed to a ``.old-`` sibling, which
    :func:`_recover` puts back if the process dies before the second rename.
    """
    tmp = _sibling(path, _TMP_TAG)
    try:
        write(tmp)
        _sync(tmp)
        if directory and os.path.lexists(path):
            old = _sibling(path, _OLD_TAG)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        _sync(path.parent)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def _sync(path: Path) -> None:
    """Flush a file, or a directory's entries and files, to disk (durable before a rename)."""
    paths = [path] if not path.is_dir() else [*path.rglob("*"), path]
    for item in paths:
        if item.is_symlink():
            continue
        try:
            fd = os.open(item, os.O_RDONLY)
        except FileNotFoundError:
            # Seen once under load: a chunk listed, then gone (zarr drops chunks that
            # hold only the fill value); what is not there needs no flushing.
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_entries(directory: Path) -> None:
    """Flush a directory's own entries (not the files under it: :func:`_sync` does those)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def results_lock_path(path: str | os.PathLike, *, in_store: bool = False) -> Path:
    """The lock file that serialises writes of the results at ``path``.

    ``.<name>.lock`` next to the results file, or next to the store for its
    ``results`` group (``.<store name>.results.lock``).  It is left in place: an
    empty file, free once no ncanalysis process holds it.
    """
    path = Path(os.path.abspath(path))
    name = f".{path.name}.{RESULTS_GROUP}.lock" if in_store else f".{path.name}.lock"
    return path.with_name(name)


@contextlib.contextmanager
def _locked(path: Path, in_store: bool, timeout: float) -> Iterator[None]:
    """Hold the results lock of ``path`` (see :func:`results_lock_path`)."""
    from filelock import FileLock, Timeout

    lock_path = results_lock_path(path, in_store=in_store)
    if not lock_path.parent.is_dir():
        # filelock would create the directories; a mistyped --output must not.
        raise FileNotFoundError(f"{lock_path.parent}: no such directory (writing {path})")
    try:
        with FileLock(lock_path, timeout=timeout):
            yield
    except Timeout as err:
        raise NCAnalysisError(
            f"{path}: another process held the results lock {lock_path} for {timeout:g} s; "
            "is another `ncanalysis run` writing these results?"
        ) from err


def _retry_locked(path: Path, timeout: float, action: Any) -> Any:
    """Run ``action()``, retrying while another process holds the HDF5 file lock.

    HDF5 refuses a second process a file open for writing (BlockingIOError): a
    training run appending epochs holds it for each write.  Backoff doubles from
    10 ms to 1 s, for ``timeout`` seconds in all.
    """
    delay, deadline = 0.01, time.monotonic() + timeout
    while True:
        try:
            return action()
        except BlockingIOError as err:
            if time.monotonic() >= deadline:
                raise NCAnalysisError(
                    f"{path}: the HDF5 file stayed locked by another process for "
                    f"{timeout:g} s (a training run writing it?); results not written"
                ) from err
        time.sleep(delay)
        delay = min(2 * delay, 1.0)


def _readable(path: Path) -> Path:
    """``path``, or the backup a write killed between its two renames left (read-only use)."""
    if not os.path.lexists(path):
        backups = _siblings(path, _OLD_TAG)
        if backups:
            return backups[-1]
    return path


def _is_results_attrs(attrs: Any) -> bool:
    """Attributes of an ncanalysis results Dataset (every one carries its version)."""
    return isinstance(attrs, dict) and "ncanalysis_version" in attrs and ROOT_ATTR not in attrs


def _zarr_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the Zarr v3 group at ``path``; None when it is no group.

    The cheap ``zarr.json`` existence check comes first: :func:`load_results` asks
    this of every path (a .json or .csv file too), which must not import zarr.
    """
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    import zarr
    from zarr.errors import ContainsArrayError

    try:
        group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=False)
    except ContainsArrayError:
        return None  # an array's metadata: not a group, so neither a store nor results
    except (ValueError, TypeError) as err:
        raise StoreFormatError(f"{meta}: not Zarr v3 group metadata: {err}") from err
    return group.attrs.asdict()


def _foreign(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}, not ncanalysis results; refusing to replace it "
                      "(choose another --output, or move it away)")


def _is_zarr_store(path: Path) -> bool:
    """Return True when ``path`` is the root of a Zarr ncanalysis store (not a results group)."""
    attributes = _zarr_attrs(path)
    return attributes is not None and ROOT_ATTR in attributes


def _is_hdf5_store(path: Path) -> bool:
    """Whether a store path is HDF5, decided as the store reader does (a file, or the suffix)."""
    return path.is_file() or is_hdf5_path(path)


def _check_replaceable(path: Path) -> None:
    """Raise unless ``path`` is absent or holds results that :func:`save_results` wrote.

    Whatever the flags, a store (the analysed one included), a foreign
    directory or any other file is never replaced.
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise _foreign(path, "a symbolic link")
    if _is_zarr_store(path):
        raise _foreign(path, "an ncanalysis store")
    if path.is_dir():
        if not _is_results_attrs(_zarr_attrs(path)):
            raise _foreign(path, "a directory")
        # A results group holds zarr.json and one group directory per variable.
        for child in path.iterdir():
            if child.name != "zarr.json" and not (child / "zarr.json").is_file():
                raise _foreign(path, f"a directory holding {child.name!r}")
        return
    import h5py

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as handle:
                attrs = {key: None for key in handle.attrs}
        except OSError as err:
            raise _foreign(path, f"an HDF5 file that cannot be opened ({err})") from err
        if ROOT_ATTR in attrs:
            raise _foreign(path, "an ncanalysis store")
        if not _is_results_attrs(attrs):
            raise _foreign(path, "an HDF5 file")
        return
    suffix = path.suffix.lower()
    try:
        head = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise _foreign(path, "a file") from None
    if suffix == ".json":
        try:
            if json.loads(head).get("format") == _JSON_FORMAT:
                return
        except (ValueError, AttributeError):
            pass
    elif suffix == ".csv":
        lines = head.splitlines()
        if any(line.startswith(f"{_CSV_ATTR_PREFIX}ncanalysis_version: ")
               for line in lines if line.startswith(_CSV_ATTR_PREFIX.rstrip())):
            return
    raise _foreign(path, "a file")


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise InputError unless ``path`` is absent or holds results :func:`save_results` wrote.

    The check :func:`save_results` makes before replacing ``path``, offered so
    that a caller can refuse a destination before any work.
    """
    _check_replaceable(Path(path))


def _hdf5_aside(handle: Any, tag: str) -> list[str]:
    pattern = re.compile(rf"\.{RESULTS_GROUP}\.{tag}-[0-9a-f]{{8}}")
    return sorted(name for name in handle if pattern.fullmatch(name))


def _recover_hdf5(path: Path) -> None:
    """The HDF5 twin of :func:`_recover`, on the groups inside the store file."""
    import h5py

    with h5py.File(path, "r") as handle:
        dirty = bool(_hdf5_aside(handle, _TMP_TAG) or _hdf5_aside(handle, _OLD_TAG))
    if not dirty:
        return
    with h5py.File(path, "a") as handle:
        backups = _hdf5_aside(handle, _OLD_TAG)
        if backups and RESULTS_GROUP not in handle:
            handle.move(backups.pop(), RESULTS_GROUP)
        for name in [*backups, *_hdf5_aside(handle, _TMP_TAG)]:
            del handle[name]


def _hdf5_results_group(handle: Any) -> str | None:
    """The results group of an open HDF5 store, or the backup a killed swap left; or None."""
    if RESULTS_GROUP in handle:
        return RESULTS_GROUP
    backups = _hdf5_aside(handle, _OLD_TAG)
    return backups[-1] if backups else None
