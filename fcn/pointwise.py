"""A per-pixel linear classifier (one 1x1 convolution): a cheap stand-in for plumbing and benchmarks.

It declares what every network does (``fcn.registry.SegmentationNet``), takes any input size and has a
receptive field of one pixel, so it exercises tiling, I/O and bookkeeping without their cost.
"""

from __future__ import annotations

import torch
from torch import nn

from fcn.registry import Architecture


class Pointwise(nn.Module):
    """Logits = a 1x1 convolution of the normalised input."""

    total_stride = 1
    in_channels = 3
    margin = 0

    def __init__(self, num_classes: int, **_: object) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score = nn.Conv2d(self.in_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits."""
        out: torch.Tensor = self.score(x)
        return out


# Not a segmentation network: a per-pixel stand-in for plumbing tests and I/O benchmarks.
ARCHITECTURES = {"pointwise": Architecture(Pointwise, "a 1x1 convolution (fcnpipe's test stand-in)")}
