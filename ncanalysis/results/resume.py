"""Resume planning and merging: which epochs a run still needs, and old + new results.

Pure Dataset logic: no file is read or written here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..metrics import terminal_phase
from ..options import SETTINGS, AnalysisOptions, settings_of
from ..variables import describe
from .formats import IDENTITY, _missing_value, _ordered_splits


def run_settings(
    *,
    global_mean: str = "class",
    pinv_rtol: float = 1e-10,
    gemm_dtype: str = "float32",
    ncc: bool = True,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The settings of an analysis: ``AnalysisOptions(...).settings()`` (kept for callers)."""
    return AnalysisOptions(global_mean=global_mean, pinv_rtol=pinv_rtol,  # type: ignore[arg-type]
                           gemm_dtype=gemm_dtype, ncc=ncc, splits=splits).settings()  # type: ignore[arg-type]


@dataclass
class ResumePlan:
    """What a new run has to do, given the results already at its destination.

    Attributes
    ----------
    todo : list of int
        Epochs to analyse.
    done : list of int
        Epochs asked for that are already analysed with the same settings.
    keep : xarray.Dataset or None
        Old results to merge the new epochs into (None: start afresh).
    reason : str
        One line for the log: why the plan is what it is.
    """

    todo: list[int]
    done: list[int]
    keep: xr.Dataset | None = field(repr=False)
    reason: str


def plan_resume(
    existing: xr.Dataset | None,
    epochs: Sequence[int],
    settings: dict[str, Any],
    identities: Mapping[int, str | None] | None = None,
) -> ResumePlan:
    """Decide which of ``epochs`` to analyse, given the ``existing`` results.

    An epoch is skipped when it is in ``existing``, ``existing`` was made
    with the same ``settings`` (see :data:`SETTINGS`) and, when
    ``identities`` (epoch -> the store's :meth:`~ncanalysis.store.Store.epoch_identity`)
    is given, the epoch's identity is the one recorded in the results: an
    epoch rewritten since (a training run restarted from a checkpoint) is
    analysed again.  When the settings differ, every epoch is analysed and the
    old results are dropped: one results Dataset holds one set of settings.
    """
    epochs = [int(e) for e in epochs]
    if existing is None:
        return ResumePlan(epochs, [], None, "no earlier results")
    old = settings_of(existing.attrs)
    changed = [f"{key} {old[key]!r} -> {settings[key]!r}" for key in SETTINGS
               if old[key] != settings[key]]
    if changed:
        return ResumePlan(epochs, [], None,
                          "earlier results used other settings (" + "; ".join(changed)
                          + "): analysing every epoch again and replacing them")
    analysed = set(existing["epoch"].values.tolist())
    replaced: list[int] = []
    if identities is not None:
        recorded = (dict(zip(existing["epoch"].values.tolist(),
                             existing[IDENTITY].values.tolist()))
                    if IDENTITY in existing.data_vars else {})
        replaced = [e for e in epochs if e in analysed
                    and recorded.get(e, "") != (identities.get(e) or "")]
    done = [e for e in epochs if e in analysed and e not in replaced]
    todo = [e for e in epochs if e not in done]
    reason = f"{len(done)} epoch(s) already analysed with the same settings"
    if replaced:
        reason += (f"; epoch(s) {', '.join(map(str, replaced))} were rewritten in the store "
                   "since they were analysed (new epoch identity): analysing them again")
    return ResumePlan(todo, done, existing, reason)


def _compatible(old: xr.Dataset, new: xr.Dataset, in_store: bool) -> bool:
    # A store's own results describe it wherever it has been moved or copied to.
    keys = ("num_classes", "num_features") + (() if in_store else ("source",))
    same = all(old.attrs.get(key) == new.attrs.get(key) for key in keys)
    return same and settings_of(old.attrs) == settings_of(new.attrs)


def _with_splits(ds: xr.Dataset, splits: list[str]) -> xr.Dataset:
    """``ds`` reindexed to ``splits``; new splits get the missing-value markers."""
    fill = {name: _missing_value(str(name)) for name in ds.data_vars if name != IDENTITY}
    return ds.reindex(split=splits, fill_value=fill)


def _with_identity(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with an epoch_identity variable; results from before identities get ""."""
    if IDENTITY in ds.data_vars:
        return ds
    return ds.assign({IDENTITY: ("epoch", np.full(ds.sizes["epoch"], "", dtype=str))})


def merge_results(old: xr.Dataset, new: xr.Dataset) -> xr.Dataset:
    """Old results with the epochs of ``new`` added (``new`` wins where both have one).

    The attributes are those of ``new``, with ``tpt_start_epoch`` and
    ``tpt_stable_epoch`` recomputed over the merged epochs.

    Raises
    ------
    InputError
        When the two do not describe the same classes.
    """
    for key in ("num_classes", "num_features"):
        if old.attrs.get(key) != new.attrs.get(key):
            raise InputError(
                f"cannot merge results with {key}={old.attrs.get(key)} and "
                f"{key}={new.attrs.get(key)}: they come from different models"
            )
    if "class" in new.dims and "class" not in old.dims:
        # Old results read from CSV keep no per-class variables; neither can the merge.
        new = new.drop_dims("class")
    if "n_classes_present" in new.data_vars and "n_classes_present" not in old.data_vars:
        # Results made before splits could miss classes: every analysed split had all C.
        old = old.assign(n_classes_present=xr.where(
            old["n_samples"] >= 0, int(old.attrs["num_classes"]), -1).astype(np.int64))
    if IDENTITY in old.data_vars or IDENTITY in new.data_vars:
        old, new = _with_identity(old), _with_identity(new)
    repeated = np.intersect1d(old["epoch"].values, new["epoch"].values)
    old = old.drop_sel(epoch=repeated)
    if old.sizes["epoch"] == 0:
        merged = new.copy()
    else:
        splits = _ordered_splits([*old["split"].values.tolist(), *new["split"].values.tolist()])
        merged = xr.concat(
            [_with_splits(old, splits), _with_splits(new, splits)],
            dim="epoch",
            data_vars="all",
            coords="minimal",
            compat="override",
            join="exact",
            combine_attrs="drop",
        ).sortby("epoch")
    merged.attrs = dict(new.attrs)
    merged.attrs.update(terminal_phase(merged["epoch"].values, merged["split"].values.tolist(),
                                       merged["accuracy"].values))
    return describe(merged)
