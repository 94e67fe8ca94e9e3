"""Find the classifier's last linear layer and capture its input.

The features of Neural Collapse are the penultimate activations: the input of the
last linear layer (``h`` in ``W h + b``). A forward pre-hook on that layer sees
exactly that input, whatever the architecture computes before it.
"""

from __future__ import annotations

from types import TracebackType

import numpy as np
import torch
from torch import nn

from .errors import LayerError

__all__ = ["unwrap_model", "find_classifier", "classifier_parameters", "FeatureCapture"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers.

    Parameters
    ----------
    model
        A module, possibly wrapped (several times).

    Returns
    -------
    torch.nn.Module
        The innermost module; ``model`` itself when it is not wrapped.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            # torch.compile's OptimizedModule keeps the original module here.
            model = model._orig_mod
        else:
            return model


def find_classifier(
    model: nn.Module, layer: str | None = None, *, num_classes: int | None = None
) -> tuple[str, nn.Linear]:
    """The classifier layer of a model and its module path.

    Parameters
    ----------
    model
        The network (wrappers are removed with `unwrap_model`).
    layer
        Module path of the layer (``"fc"``, ``"head.linear"``); a leading ``"module."``
        left over from a DDP wrapper is accepted. Default: found automatically.
    num_classes
        C. Automatic search takes the last `torch.nn.Linear` (in registration order)
        with ``out_features == num_classes``; without it, the last Linear.

    Returns
    -------
    path : str
        Module path of the layer in the unwrapped model.
    linear : torch.nn.Linear

    Raises
    ------
    LayerError
        When no layer fits, or the named one is missing or not a Linear.
    """
    model = unwrap_model(model)
    name = type(model).__name__
    if layer is not None:
        path = layer.removeprefix("module.")
        try:
            module = model.get_submodule(path)
        except AttributeError as err:
            raise LayerError(f"{name} has no submodule {layer!r} ({err})") from err
        if not isinstance(module, nn.Linear):
            raise LayerError(
                f"layer {layer!r} of {name} is a {type(module).__name__}, not a torch.nn.Linear"
            )
        _check_linear(module, path, num_classes, name)
        return path, module
    found = [
        (path, m)
        for path, m in model.named_modules()
        if isinstance(m, nn.Linear) and (num_classes is None or _out_features(m) == num_classes)
    ]
    if not found:
        wanted = "" if num_classes is None else f" with out_features == {num_classes}"
        raise LayerError(f"{name} has no torch.nn.Linear{wanted}; name the layer with layer=...")
    path, module = found[-1]
    _check_linear(module, path, num_classes, name)
    return path, module


def classifier_parameters(linear: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """Weight (C, d) and bias (C,) of a linear layer, as numpy on the CPU.

    float32 and float64 parameters are returned exactly; half-precision ones
    (float16, bfloat16) are widened to float32 (exactly). A layer without bias
    gives zeros.
    """
    weight = linear.weight.detach()
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    w = weight.to(device="cpu", dtype=dtype).numpy().copy()
    if linear.bias is None:
        b = np.zeros(w.shape[0], w.dtype)
    else:
        b = linear.bias.detach().to(device="cpu", dtype=dtype).numpy().copy()
    return w, b


class FeatureCapture:
    """Records the input of one layer during forward passes (a forward pre-hook).

    Use as a context manager: the hook is installed on entry and removed on exit.
    Each forward call of the layer appends its input, detached and flattened to
    (batch, d); `pop` takes the input of exactly one call.

    Parameters
    ----------
    linear
        The layer whose input is captured.
    path
        Its module path, for messages.

    Examples
    --------
    >>> with FeatureCapture(model.fc, "fc") as capture:  # doctest: +SKIP
    ...     model(x)
    ...     features = capture.pop()
    """

    def __init__(self, linear: nn.Linear, path: str = "") -> None:
        self.linear = linear
        self.path = path
        self._captured: list[torch.Tensor] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> FeatureCapture:
        if self._handle is not None:
            raise LayerError(f"the capture on layer {self.path!r} is already active")
        self._captured.clear()
        self._handle = self.linear.register_forward_pre_hook(self._hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._captured.clear()

    def _hook(self, module: nn.Module, args: tuple[object, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            raise LayerError(f"layer {self.path!r} was called without a tensor input")
        # Detached so the stored features hold no graph; left on the model's device
        # until the recorder has checked and cast them (half the bytes to move).
        self._captured.append(args[0].detach())

    def pop(self) -> torch.Tensor:
        """The input of the one forward call since the last `pop`, as (batch, d).

        Raises
        ------
        LayerError
            When the layer ran zero times or more than once, or its input does not
            flatten to (batch, in_features).
        """
        captured, self._captured = self._captured, []
        if len(captured) != 1:
            raise LayerError(
                f"layer {self.path!r} ran {len(captured)} times in one forward pass; "
                "expected exactly once (is it the classifier? is it reused?)"
            )
        x = captured[0]
        d = self.linear.in_features
        # (batch, ..., d) with trailing size-1 axes is fine; (batch, tokens, d) is not,
        # because one row per sample is what the store holds.
        if x.ndim < 1 or x[0].numel() != d:
            raise LayerError(
                f"input of layer {self.path!r} has shape {tuple(x.shape)}, which does not "
                f"flatten to (batch, {d}); the features must be one vector per sample"
            )
        return x.reshape(x.shape[0], d)


def _out_features(linear: nn.Linear) -> int | None:
    return None if isinstance(linear, nn.modules.lazy.LazyModuleMixin) else linear.out_features


def _check_linear(linear: nn.Linear, path: str, num_classes: int | None, name: str) -> None:
    if isinstance(linear, nn.modules.lazy.LazyModuleMixin) and linear.has_uninitialized_params():
        raise LayerError(
            f"layer {path!r} of {name} is a lazy layer not yet initialized; run one "
            "forward pass first"
        )
    if num_classes is not None and linear.out_features != num_classes:
        raise LayerError(
            f"layer {path!r} of {name} has out_features={linear.out_features}, "
            f"expected num_classes={num_classes}"
        )
