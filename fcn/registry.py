"""Model registry: ``build_model(name, num_classes)``, the names it knows, and what is known of each.

Each family module (``fcn.fcn``, ``fcn.dilated``, …) defines ``ARCHITECTURES``, a dict of name to
:class:`Architecture`; a new family is one module and one line in ``FAMILIES``. What tiling,
sizing and training need from a model is declared on the model itself (:class:`SegmentationNet`);
the receptive field and the halo are measured from it (``fcn.receptive_field``), never typed in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import nn

from fcn.errors import FcnpipeError

Builder = Callable[..., nn.Module]

# The modules that define architectures, in the order ``fcnpipe weights archs`` lists them.
FAMILIES = (
    "fcn.fcn",
    "fcn.rgbd",
    "fcn.alexnet",
    "fcn.googlenet",
    "fcn.pointwise",
    "fcn.dilated",
    "fcn.unet",
    "fcn.densenet",
    "fcn.segnet",
    "fcn.deconvnet",
)


@runtime_checkable
class SegmentationNet(Protocol):
    """What every registered network declares about itself (as attributes or properties), typed."""

    @property
    def num_classes(self) -> int:
        """The logits' channels."""

    @property
    def in_channels(self) -> int:
        """The input channels ``forward`` reads: 3 for colour, 4 with depth, 6 with HHA."""

    @property
    def total_stride(self) -> int:
        """The alignment: a tile whose origin is on a multiple of it sees the whole image's pooling grid."""

    @property
    def margin(self) -> int:
        """Pixels the output lacks on each side of the input (0 where the two sizes agree)."""


DECLARED = ("num_classes", "in_channels", "total_stride", "margin")
"""The members of :class:`SegmentationNet`."""


def segmentation_net(model: nn.Module) -> SegmentationNet:
    """``model`` typed as the :class:`SegmentationNet` it declares it is; TypeError where it is not."""
    if not isinstance(model, SegmentationNet):
        missing = ", ".join(name for name in DECLARED if not hasattr(model, name))
        raise TypeError(
            f"{type(model).__name__} does not declare {missing}: a segmentation network declares "
            f"{', '.join(DECLARED)} (fcn.registry.SegmentationNet)."
        )
    return model


@dataclass(frozen=True)
class ImagenetInit:
    """How a network starts from an ImageNet classifier by net surgery."""

    source: str  # torchvision's model name, e.g. "vgg16" or "vgg16_bn"
    filename: str  # torchvision's weights file, e.g. "vgg16_bn-6c64b313.pth"
    apply: Callable[[nn.Module, dict[str, Any]], None]  # (model, ImageNet state dict) -> None, in place


@dataclass(frozen=True)
class Architecture:
    """A registered network: how to build it, and its paper's figures to check it against."""

    build: Builder  # (num_classes, **options) -> module
    paper: str  # who and where, e.g. "Long et al., CVPR 2015"
    published_params_m: float | None = None  # millions of parameters, as published
    published_classes: int = 21  # the class count that figure is for
    imagenet: ImagenetInit | None = None  # None: trained from scratch only


def architectures() -> dict[str, Architecture]:
    """Every registered architecture by name, family by family."""
    found: dict[str, Architecture] = {}
    for module in FAMILIES:
        found |= importlib.import_module(module).ARCHITECTURES
    return found


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(architectures())


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``; an unknown name raises an error listing the valid ones."""
    known = architectures()
    if name not in known:
        raise FcnpipeError(f"unknown architecture {name!r}; choose one of: {', '.join(sorted(known))}.")
    return known[name]


def build_model(name: str, num_classes: int, *, learnable_upsampling: bool = False) -> nn.Module:
    """Build an untrained :class:`SegmentationNet` by name; an unknown name raises an error listing them."""
    spec = architecture(name)
    if num_classes < 1:
        raise FcnpipeError(f"a model needs at least one class, not {num_classes}.")
    return spec.build(num_classes, learnable_upsampling=learnable_upsampling)
