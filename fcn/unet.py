"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), the original: unpadded convolutions throughout.

Followed: the paper's Figure 1 and the released Caffe model (``phseg_v5-train.prototxt``). The
contracting path repeats two unpadded 3x3 convolutions, each followed by a ReLU, and a 2x2 max pool
with stride 2, doubling the channels from 64 to 1024; the expansive path repeats a 2x2
"up-convolution" (a transposed convolution of stride 2) that halves the channels, a concatenation
with the centre of the contracting path's map of that level, and two unpadded 3x3 convolutions
with ReLU; a 1x1 convolution scores the classes. Dropout (0.5) ends the contracting path, after
the fourth level and the bottom level, as the released model has it.

Every convolution is unpadded, so the output lacks ``margin`` = 92 pixels of the input on each
side (a 572² input gives a 388² output, as in the paper), and the 2x2 pools need even sizes: valid
inputs are 16k + 12 pixels, from 188. Any other size is zero-padded at the bottom and right to the
next valid one and the output cropped: the padded pixels lie outside every kept output pixel's
field, so they change nothing that is kept. The context missing at the image border is given by
mirroring the image (the paper's overlap-tile strategy), which ``fcn.margin`` does for a
whole-image pass and the tiling pipeline does for tiles that reach past the image edge.

Parameters: 31.0 M for 2 classes (the figure later papers cite; the paper itself gives none).
"""

from __future__ import annotations

import torch
from torch import nn

from fcn.registry import Architecture

CHANNELS = (64, 128, 256, 512, 1024)
MARGIN = 92  # two 3x3 convs lose 4 px per level at its scale: 4+8+16+32, 64, 32+16+8+4 = 2 x 92
STRIDE = 16
SMALLEST = 188  # the smallest valid input: a 4 x 4 output


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two unpadded 3x3 convolutions, each followed by a ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3), nn.ReLU(inplace=True),
    )  # fmt: skip


def centre(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The centre of ``x`` with ``like``'s height and width (the paper's cropping of skip maps)."""
    top, left = (x.shape[-2] - like.shape[-2]) // 2, (x.shape[-1] - like.shape[-1]) // 2
    return x[..., top : top + like.shape[-2], left : left + like.shape[-1]]


def valid_size(size: int) -> int:
    """The smallest input of at least ``size`` pixels whose every pool sees an even size."""
    size = max(size, SMALLEST)
    return size + (12 - size) % STRIDE


class UNet(nn.Module):
    """The original U-Net: output ``margin`` pixels smaller than the input on every side."""

    in_channels = 3
    total_stride = STRIDE
    margin = MARGIN

    def __init__(self, num_classes: int, **_: object) -> None:
        super().__init__()
        self.num_classes = num_classes
        widths = (self.in_channels, *CHANNELS)
        self.down = nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(0.5)
        self.bottom = double_conv(CHANNELS[3], CHANNELS[4])
        self.up = nn.ModuleList(nn.ConvTranspose2d(c * 2, c, 2, stride=2) for c in reversed(CHANNELS[:4]))
        self.merge = nn.ModuleList(double_conv(c * 2, c) for c in reversed(CHANNELS[:4]))
        self.score = nn.Conv2d(CHANNELS[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the input's centre: ``margin`` pixels fewer on every side."""
        h, w = x.shape[-2:]
        x = nn.functional.pad(x, (0, valid_size(w) - w, 0, valid_size(h) - h))
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level == 3:
                x = self.dropout(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = up(x)
            x = merge(torch.cat([centre(skip, x), x], 1))
        out: torch.Tensor = self.score(x)
        return out[..., : h - 2 * MARGIN, : w - 2 * MARGIN]


ARCHITECTURES = {"unet": Architecture(UNet, "Ronneberger et al., MICCAI 2015", 31.0, published_classes=2)}
