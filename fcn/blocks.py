"""Pieces several network families share, defined once: the total stride and the padding to it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def total_stride(module: nn.Module) -> int:
    """The product of the strides of every convolution and pool in ``module``: its output stride.

    Transposed convolutions (upsampling) do not count; parallel branches (inception modules) must
    keep stride 1 for the product to hold.
    """
    strides = (
        layer.stride if isinstance(layer.stride, int) else layer.stride[0]
        for layer in module.modules()
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)
    )
    return math.prod(strides)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad at the bottom and right so that height and width are multiples of ``multiple``.

    With ``multiple`` the total stride, every pool divides exactly, and a tile whose origin is on a
    multiple of it sees the pooling grid the whole image does.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))
