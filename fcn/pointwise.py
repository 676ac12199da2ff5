"""A per-pixel linear classifier (one 1x1 convolution): a cheap stand-in for plumbing and benchmarks.

It has the interface of the FCNs (``num_classes``, ``total_stride``, any input size) and a
receptive field of one pixel, so it exercises tiling, I/O and bookkeeping without their cost.
"""

from __future__ import annotations

import torch
from torch import nn

from fcn.registry import Architecture


class Pointwise(nn.Module):
    """Logits = a 1x1 convolution of the normalised input."""

    total_stride = 1

    def __init__(self, num_classes: int, **_: object) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score = nn.Conv2d(3, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits."""
        out: torch.Tensor = self.score(x)
        return out


# Not a segmentation network: a per-pixel stand-in for plumbing tests and I/O benchmarks.
ARCHITECTURES = {"pointwise": Architecture(Pointwise, "a 1x1 convolution (fcnpipe's test stand-in)")}
