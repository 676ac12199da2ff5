"""Model registry: ``build_model(name, num_classes)`` and the list of names it knows."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fcn.errors import FcnpipeError
from fcn.fcn import ATONCE_SCALES, FCN
from fcn.pointwise import Pointwise

Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {
    "fcn32s": lambda num_classes, **kw: FCN(num_classes, 32, **kw),
    "fcn16s": lambda num_classes, **kw: FCN(num_classes, 16, **kw),
    "fcn8s": lambda num_classes, **kw: FCN(num_classes, 8, **kw),
    "fcn8s-atonce": lambda num_classes, **kw: FCN(num_classes, 8, skip_scales=ATONCE_SCALES, **kw),
    # Not a segmentation network: a per-pixel stand-in for plumbing tests and I/O benchmarks.
    "pointwise": Pointwise,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int, *, learnable_upsampling: bool = False) -> nn.Module:
    """Build an untrained model by name; an unknown name raises an error listing the valid ones."""
    if name not in MODELS:
        raise FcnpipeError(f"unknown architecture {name!r}; choose one of: {', '.join(available_models())}.")
    if num_classes < 1:
        raise FcnpipeError(f"a model needs at least one class, not {num_classes}.")
    return MODELS[name](num_classes, learnable_upsampling=learnable_upsampling)
