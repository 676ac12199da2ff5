"""The VGG16 convolutional trunk in torchvision's parameter layout, with Caffe's ceil-mode pooling.

Parameters are named ``features.<index>.weight`` / ``.bias`` exactly as in
``torchvision.models.vgg16`` so that an ImageNet state dict loads without renaming.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

# Output channels of the convolutions of each of the five blocks, and how many convolutions each has.
VGG16_WIDTHS = (64, 128, 256, 512, 512)
BLOCK_CONVS = (2, 2, 3, 3, 3)


def vgg16_layout(widths: tuple[int, ...] = VGG16_WIDTHS) -> tuple[int | str, ...]:
    """Output channels of each 3x3 convolution, block by block ``widths[k]`` wide; "M" is a 2x2 max pool.

    Indices in the resulting nn.Sequential match torchvision's ``features`` whatever the widths
    (convs at 0, 2, 5, ...; pools at 4, 9, 16, 23, 30).
    """
    if len(widths) != len(BLOCK_CONVS):
        raise ValueError(f"VGG16 has {len(BLOCK_CONVS)} blocks, not {len(widths)} widths: {widths}")
    layout: list[int | str] = []
    for width, convs in zip(widths, BLOCK_CONVS, strict=True):
        layout += [width] * convs + ["M"]
    return tuple(layout)


VGG16_LAYOUT = vgg16_layout()

# Positions of pool3, pool4 and pool5 in ``features``.
POOL3, POOL4, POOL5 = 16, 23, 30


class Taps(NamedTuple):
    """The trunk's outputs that FCN heads read: strides 8, 16 and 32."""

    pool3: torch.Tensor
    pool4: torch.Tensor
    pool5: torch.Tensor


def make_features(
    first_padding: int = 100, in_channels: int = 3, widths: tuple[int, ...] = VGG16_WIDTHS
) -> nn.Sequential:
    """Build the 13 convolutions and 5 ceil-mode max pools of VGG16.

    ``first_padding`` is 100 for FCNs (the reference's conv1_1 padding, which lets any input size
    reach fc6) and 1 for the plain ImageNet classifier; ``in_channels`` is 4 for colour and depth;
    ``widths`` narrows the blocks (the geometry, and so the receptive field, stays VGG16's).
    """
    layers: list[nn.Module] = []
    for item in vgg16_layout(widths):
        if item == "M":
            # Caffe rounds pooled sizes up; floor rounding breaks the FCN crops for many sizes.
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            continue
        assert isinstance(item, int)
        padding = first_padding if not layers else 1
        layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=padding), nn.ReLU(True)]
        in_channels = item
    return nn.Sequential(*layers)


def run_features(features: nn.Sequential, x: torch.Tensor) -> Taps:
    """Run the trunk and return its pool3, pool4 and pool5 activations."""
    taps: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(features):
        x = layer(x)
        if index in (POOL3, POOL4, POOL5):
            taps[index] = x
    return Taps(taps[POOL3], taps[POOL4], taps[POOL5])
