"""FCNs that see more than colour: the FCN paper's NYUDv2 rows (Table 4), as in the reference release.

- ``fcn32s-color-d`` (``nyud-fcn32s-color-d``): FCN-32s on four channels, colour then depth
  (early fusion). From ImageNet VGG16, conv1_1's depth filter is the mean of its three colour
  filters, as the release's ``solve.py`` sets it.
- ``fcn32s-color-hha`` (``nyud-fcn32s-color-hha``): late fusion of two FCN-32s, one on colour and
  one on HHA (six channels in, colour first); their final scores are averaged (the release's
  ``Eltwise`` SUM with coefficients 0.5 and 0.5) before the fixed bilinear upsampling, which is
  linear, so the output is the mean of the two streams' outputs. The release starts each stream
  from a trained single-modality FCN-32s (``fuse_streams``); from ImageNet, both from VGG16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fcn.errors import FcnpipeError
from fcn.fcn import FCN, PAPER
from fcn.registry import Architecture, ImagenetInit
from fcn.surgery import init_from_vgg16

COLOR_CHANNELS = 3


def color_d_surgery(model: nn.Module, state: dict[str, Any]) -> None:
    """VGG16 into a four-channel FCN: the colour filters as they are, the depth filter their mean.

    The surgery runs on a colour FCN-32s (which checks the state dict), then conv1_1 is widened.
    """
    assert isinstance(model, FCN)
    weights = init_from_vgg16(FCN(model.num_classes, 32), state).state_dict()
    first = weights["features.0.weight"]
    weights["features.0.weight"] = torch.cat([first, first.mean(1, keepdim=True)], dim=1)
    model.load_state_dict(weights)


class LateFusion(nn.Module):
    """Two FCN-32s streams, colour (channels 0-2) and HHA (3-5), their scores averaged."""

    total_stride = 32
    in_channels = 2 * COLOR_CHANNELS
    margin = 0

    def __init__(self, num_classes: int, *, learnable_upsampling: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.color = FCN(num_classes, 32, learnable_upsampling=learnable_upsampling)
        self.hha = FCN(num_classes, 32, learnable_upsampling=learnable_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits: the mean of the two streams' logits."""
        color: torch.Tensor = self.color(x[:, :COLOR_CHANNELS])
        hha: torch.Tensor = self.hha(x[:, COLOR_CHANNELS:])
        return 0.5 * (color + hha)


def late_fusion_surgery(model: nn.Module, state: dict[str, Any]) -> None:
    """Both streams from ImageNet VGG16."""
    assert isinstance(model, LateFusion)
    for stream in (model.color, model.hha):
        init_from_vgg16(stream, state)


def fuse_streams(model: LateFusion, color: nn.Module, hha: nn.Module) -> None:
    """Start each stream from a trained FCN-32s of its modality (the release's initialisation)."""
    for stream, source, name in ((model.color, color, "colour"), (model.hha, hha, "HHA")):
        if not isinstance(source, FCN) or source.stride != 32 or source.in_channels != COLOR_CHANNELS:
            raise FcnpipeError(f"the {name} stream starts from an FCN-32s on three channels.")
        if source.num_classes != model.num_classes:
            raise FcnpipeError(
                f"the {name} FCN-32s predicts {source.num_classes} classes, the fusion {model.num_classes}."
            )
        stream.load_state_dict(source.state_dict())


VGG16_COLOR_D = ImagenetInit("vgg16", "vgg16-397923af.pth", color_d_surgery)
VGG16_STREAMS = ImagenetInit("vgg16", "vgg16-397923af.pth", late_fusion_surgery)

# The paper gives no parameter counts for these (Table 1 has the colour FCNs': 134 M).
ARCHITECTURES = {
    "fcn32s-color-d": Architecture(
        lambda num_classes, **kw: FCN(num_classes, 32, in_channels=COLOR_CHANNELS + 1, **kw),
        PAPER, imagenet=VGG16_COLOR_D,
    ),
    "fcn32s-color-hha": Architecture(LateFusion, PAPER, imagenet=VGG16_STREAMS),
}  # fmt: skip
