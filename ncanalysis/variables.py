"""What each variable of a results Dataset means: names, formulas, direction of collapse.

One table, :data:`VARIABLES`, in the documented order of the variables
(docs/metrics.md, "Variables in order").  :func:`describe` gives a results
Dataset that order and, on every variable, the attributes

- ``long_name``: a short human name (xarray's plots label their axes with it);
- ``description``: the definition of docs/metrics.md;
- ``collapse``: which way the value moves as the network collapses:
  ``"decreases to 0"``, ``"increases to 1"`` or ``"none"`` (a count, or a
  value with no direction of collapse).

Pure: the standard library only (no numpy, xarray or numba at import), so that
reading the table costs nothing.  Results files carry these attributes (Zarr,
netCDF, JSON; CSV keeps no variable attributes), and :func:`describe` runs again
on every Dataset the analyser makes, loads or merges, so they never go stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "COLLAPSE_VALUES",
    "COORDINATES",
    "VARIABLES",
    "Variable",
    "describe",
    "variable_order",
]

DECREASES = "decreases to 0"
INCREASES = "increases to 1"
NONE = "none"
#: The values of the ``collapse`` attribute.
COLLAPSE_VALUES = (DECREASES, INCREASES, NONE)


@dataclass(frozen=True)
class Variable:
    """One results variable.

    Attributes
    ----------
    name : str
    long_name : str
    description : str
        The definition of docs/metrics.md.
    collapse : str
        One of :data:`COLLAPSE_VALUES`.
    dtype : str
        ``"float64"``, ``"int64"`` (missing: -1) or ``"str"``.
    dims : tuple of str
    """

    name: str
    long_name: str
    description: str
    collapse: str
    dtype: str = "float64"
    dims: tuple[str, ...] = ("epoch", "split")

    def attrs(self) -> dict[str, str]:
        """The attributes this variable carries in a results Dataset."""
        return {"long_name": self.long_name, "description": self.description,
                "collapse": self.collapse}


_CLASS = ("epoch", "split", "class")

#: Every results variable, in the order of a results Dataset.
VARIABLES: tuple[Variable, ...] = (
    # Neural Collapse (Papyan, Han & Donoho 2020), per epoch and split.
    Variable("nc1", "NC1: within-class variability collapse",
             "Tr(Sigma_W Sigma_B^+) / C' (C': classes present in the split)", DECREASES),
    Variable("equinorm_means", "NC2: equinorm of the centred class means",
             "Std_c norm(mu_c - mu_G) / Avg_c norm(mu_c - mu_G)", DECREASES),
    Variable("equinorm_weights", "NC2: equinorm of the classifier rows",
             "Std_c norm(w_c) / Avg_c norm(w_c)", DECREASES),
    Variable("equiangular_means", "NC2: equiangularity of the centred class means",
             "Std over c != c' of cos(mu_c - mu_G, mu_c' - mu_G)", DECREASES),
    Variable("equiangular_weights", "NC2: equiangularity of the classifier rows",
             "Std over c != c' of cos(w_c, w_c')", DECREASES),
    Variable("maxangle_means", "NC2: distance of the means' angles from the simplex",
             "Avg over c != c' of abs(cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C'-1))", DECREASES),
    Variable("maxangle_weights", "NC2: distance of the classifier's angles from the simplex",
             "Avg over c != c' of abs(cos(w_c, w_c') + 1/(C-1))", DECREASES),
    Variable("self_duality", "NC3: self-duality of classifier and class means",
             "norm_F(W^T / norm_F(W) - M~ / norm_F(M~))^2, M~ the centred class means "
             "as columns", DECREASES),
    Variable("ncc_mismatch", "NC4: mismatch with the nearest class centre",
             "fraction of samples where argmax_c (<w_c, h> + b_c) differs from "
             "argmin_c norm(h - mu_c), mu_c the train class means (NaN with ncc=False)",
             DECREASES),
    Variable("accuracy", "accuracy of the network",
             "fraction of samples where argmax_c (<w_c, h> + b_c) equals the label "
             "(reaches 1 on the train split)", INCREASES),
    Variable("loss", "cross-entropy loss",
             "mean cross-entropy of the logits W h + b against the labels (nats)", DECREASES),
    # Companion metrics.
    Variable("nc1_trace_ratio", "NC1 as a trace ratio (Tirer et al. 2023)",
             "Tr(Sigma_W) / Tr(Sigma_B)", DECREASES),
    Variable("cdnv", "class-distance normalized variance (Galanti et al. 2022)",
             "Avg over c != c' of (s_c^2 + s_c'^2) / (2 norm(mu_c - mu_c')^2), s_c^2 the "
             "mean squared distance of class c's features to mu_c", DECREASES),
    Variable("etf_error_means", "distance of the means' Gram matrix from a simplex ETF "
             "(Zhu et al. 2021)",
             "norm_F(G / norm_F(G) - (I - 11^T/C') / sqrt(C'-1)), G = M~^T M~", DECREASES),
    Variable("etf_error_weights", "distance of the classifier's Gram matrix from a simplex ETF "
             "(Zhu et al. 2021)",
             "norm_F(G / norm_F(G) - (I - 11^T/C) / sqrt(C-1)), G = W W^T", DECREASES),
    Variable("bias_collapse", "bias collapse (Zhu et al. 2021)", "norm(W mu_G + b)", DECREASES),
    # Counts, per epoch and split.
    Variable("n_samples", "samples in the split", "N, the rows of the split (-1: split absent)",
             NONE, "int64"),
    Variable("nc1_rank", "rank of Sigma_B used by NC1",
             "eigenvalues of Sigma_B kept by the pseudo-inverse (at most C' - 1; -1: split "
             "absent)", NONE, "int64"),
    Variable("n_classes_present", "classes present in the split",
             "C', the classes with at least one sample in the split (-1: split absent)",
             NONE, "int64"),
    # Per class.
    Variable("class_count", "samples of the class", "n_c (-1: split absent)", NONE, "int64",
             _CLASS),
    Variable("class_mean_norm", "norm of the centred class mean", "norm(mu_c - mu_G)", NONE,
             "float64", _CLASS),
    Variable("class_weight_norm", "norm of the classifier row", "norm(w_c)", NONE, "float64",
             _CLASS),
    Variable("class_nc1", "the class's share of NC1",
             "(1/N) sum over the samples i of class c of (h_i - mu_c)^T Sigma_B^+ "
             "(h_i - mu_c) / C'; the shares add up to nc1", DECREASES, "float64", _CLASS),
    Variable("class_within_var", "within-class variance",
             "s_c^2, the mean squared distance of class c's features to mu_c", DECREASES,
             "float64", _CLASS),
    Variable("class_ncc_mismatch", "NC4 disagreements in the class",
             "samples of class c where the network and the nearest-class-centre rule "
             "disagree (-1 with ncc=False or split absent)", DECREASES, "int64", _CLASS),
    # Per epoch.
    Variable("epoch_identity", "identity of the stored epoch",
             "the identity the store's writer gave the epoch at finalize (\"\" when unknown)",
             NONE, "str", ("epoch",)),
)

#: Coordinates and their ``long_name``.
COORDINATES = {
    "epoch": "training epoch",
    "split": "data split",
    "class": "class index",
    "class_name": "class name",
}

_BY_NAME = {variable.name: variable for variable in VARIABLES}


def variable_order(names: Any) -> list[str]:
    """``names`` in the documented order; names the table does not know go last, sorted."""
    names = list(names)
    known = [v.name for v in VARIABLES if v.name in names]
    return known + sorted(n for n in names if n not in _BY_NAME)


def describe(ds: Any) -> Any:
    """``ds`` (an xarray.Dataset of results) with its variables in order and described.

    Each variable of :data:`VARIABLES` present gets its ``long_name``,
    ``description`` and ``collapse`` attributes (other attributes it has are
    kept), each coordinate of :data:`COORDINATES` its ``long_name``.  A new
    Dataset; ``ds`` is not changed.
    """
    # A shallow copy: new Variable objects (the attributes set below must not
    # reach ``ds``), the same data.
    out = ds[variable_order(ds.data_vars)].copy(deep=False)
    out.attrs = dict(ds.attrs)
    for name in out.data_vars:
        if name in _BY_NAME:
            out[name].attrs = {**out[name].attrs, **_BY_NAME[name].attrs()}
    for name, long_name in COORDINATES.items():
        if name in out.coords:
            out[name].attrs = {**out[name].attrs, "long_name": long_name}
    return out
