"""Pieces several network families share, defined once: the total stride, the padding to it, fc6 and fc7."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def on_meta(module: nn.Module) -> bool:
    """Whether ``module``'s weights are placeholders on the meta device, built only to be loaded.

    Initialising them would be wasted work (a checkpoint's tensors replace them), and some
    initialisers (random normals, indexed writes) would load torch's compiler to run there.
    """
    return any(p.is_meta for p in module.parameters())


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


class ConvolutionalFC(nn.Module):
    """A network that keeps an ImageNet classifier's fc6 and fc7 as convolutions, each with ReLU and dropout.

    FCN, FCN-AlexNet, DilatedNet and the convolutionalised VGG16 differ only in fc6's kernel,
    padding and dilation. The layers sit on the network itself under the reference's names
    (``fc6``, ``relu6``, ``drop6``, ``fc7``, ``relu7``, ``drop7``), so that checkpoints and net
    surgery address ``fc6.weight`` and ``fc7.weight`` directly.
    """

    fc6: nn.Conv2d
    fc7: nn.Conv2d

    def add_fc6_fc7(self, fc6: nn.Conv2d) -> None:
        """Register ``fc6``, then a 1x1 ``fc7`` as wide as it; each followed by ReLU and dropout 0.5."""
        width = fc6.out_channels
        self.fc6 = fc6
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(width, width, kernel_size=1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)

    def fc6_fc7(self, x: torch.Tensor) -> torch.Tensor:
        """fc6 and fc7, each with its ReLU and dropout."""
        h = self.drop6(self.relu6(self.fc6(x)))
        out: torch.Tensor = self.drop7(self.relu7(self.fc7(h)))
        return out
