"""Finding and hooking the classifier layer; per-rank row ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ncanalysis_extract import (
    FeatureCapture,
    LayerError,
    classifier_parameters,
    find_classifier,
    rank_loader,
    rank_row_range,
    unwrap_model,
)


class Net(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.head = nn.Module()
        self.head.linear = nn.Linear(6, 3, bias=bias)
        self.aux = nn.Linear(6, 5)  # registered after the classifier, other width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.linear(self.body(x))


def test_find_last_linear_or_by_classes_or_by_name() -> None:
    net = Net()
    assert find_classifier(net)[0] == "aux"  # the last Linear when C is not given
    assert find_classifier(net, num_classes=3) == ("head.linear", net.head.linear)
    assert find_classifier(net, "head.linear")[1] is net.head.linear
    assert find_classifier(net, "module.head.linear")[0] == "head.linear"


def test_wrappers_are_removed() -> None:
    net = Net()
    wrapped = nn.DataParallel(net)  # on CPU it only wraps, like DDP's .module
    assert unwrap_model(wrapped) is net
    assert find_classifier(wrapped, num_classes=3)[1] is net.head.linear


@pytest.mark.parametrize(
    ("layer", "classes", "message"),
    [("nope", None, "no submodule 'nope'"), ("body", None, "is a Sequential, not"),
     ("head.linear", 7, "out_features=3, expected num_classes=7"),
     (None, 9, "no torch.nn.Linear with out_features == 9")],
)
def test_layer_errors_name_the_layer(layer: str | None, classes: int | None, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        find_classifier(Net(), layer, num_classes=classes)


def test_classifier_parameters_exact_and_zero_bias() -> None:
    net = Net(bias=False)
    w, b = classifier_parameters(net.head.linear)
    np.testing.assert_array_equal(w, net.head.linear.weight.detach().numpy())
    assert b.dtype == w.dtype == np.float32 and not b.any()
    half = nn.Linear(6, 3).to(torch.bfloat16)
    w, b = classifier_parameters(half)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, half.weight.detach().float().numpy())


def test_capture_flattens_and_checks_calls() -> None:
    linear = nn.Linear(6, 3)
    with FeatureCapture(linear, "fc") as capture:
        x = torch.randn(5, 6, requires_grad=True)
        linear(x)
        got = capture.pop()
        assert got.shape == (5, 6) and not got.requires_grad
        torch.testing.assert_close(got, x.detach())
        linear(x.reshape(5, 1, 6).squeeze(1))
        linear(x)
        with pytest.raises(LayerError, match="ran 2 times"):
            capture.pop()
        with pytest.raises(LayerError, match="ran 0 times"):
            capture.pop()
        linear(torch.randn(5, 2, 6))  # tokens: not one vector per sample
        with pytest.raises(LayerError, match=r"\(5, 2, 6\).*flatten to \(batch, 6\)"):
            capture.pop()
    assert not linear._forward_pre_hooks  # removed on exit


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 203])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("unit", [1, 8, 50])
def test_rank_ranges_tile_aligned_and_balanced(n: int, world: int, unit: int) -> None:
    ranges = [rank_row_range(n, r, world, unit) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (_, stop), (start, _) in zip(ranges, ranges[1:]):
        assert stop == start
    units = []
    for start, stop in ranges:
        assert start % unit == 0 and (stop % unit == 0 or stop == n)
        units.append(-(-(stop - start) // unit))
    assert max(units) - min(units) <= 1


def test_rank_range_argument_errors() -> None:
    with pytest.raises(ValueError, match="rank must be in 0..3"):
        rank_row_range(10, 4, 4, 2)
    with pytest.raises(ValueError, match="unit_rows"):
        rank_row_range(10, 0, 4, 0)


def test_rank_loader_yields_its_rows_in_order() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(20.0)[:, None], torch.arange(20))
    rows = torch.cat([y for _, y in rank_loader(data, 8, 16, batch_size=3)])
    assert rows.tolist() == list(range(8, 16))
    with pytest.raises(ValueError, match="shuffle"):
        rank_loader(data, 0, 4, shuffle=True)
    with pytest.raises(ValueError, match="not inside"):
        rank_loader(data, 8, 24)
