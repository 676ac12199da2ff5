"""The receptive field, measured from the model by back-propagating from single output pixels.

The measurement runs on a one-channel replica of the model: every convolution keeps its kernel,
stride and padding but maps one channel to one with positive weights, max pools become average
pools of the same geometry (so the gradient reaches the whole window, not only the arg-max),
and ReLU and dropout become identities. The set of input pixels with a non-zero gradient is
then exactly the set the real model's output pixel can depend on, and the replica is cheap.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

Pair = tuple[int, int]


@dataclass(frozen=True)
class ReceptiveField:
    """Offsets, relative to an output pixel, of the first and last input pixel it depends on.

    The same in both axes for the square kernels used here; ``lo`` is negative.
    """

    lo: int
    hi: int

    @property
    def radius(self) -> int:
        """The halo that covers the field on every side."""
        return max(-self.lo, self.hi)

    def halo(self, stride: int) -> int:
        """The smallest halo that covers the field and is a multiple of ``stride``."""
        return -(-self.radius // stride) * stride


def one_channel_replica(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the same geometry, one channel wide and made of linear positive maps."""
    # Share nothing with the model and copy none of its weights: every parameter is replaced below.
    memo: dict[int, object] = {id(t): torch.empty(0) for t in (*model.parameters(), *model.buffers())}
    replica = copy.deepcopy(model, memo).eval()

    def replace(module: nn.Module) -> None:
        for name, child in module.named_children():
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d | nn.ConvTranspose2d):
                kernel, stride = cast(Pair, child.kernel_size), cast(Pair, child.stride)
                padding = cast(Pair, child.padding)
                new = type(child)(1, 1, kernel, stride=stride, padding=padding, bias=False).double()
                nn.init.constant_(new.weight, 1.0 / new.weight.numel())
            elif isinstance(child, nn.MaxPool2d):
                new = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode)
            elif isinstance(child, nn.ReLU | nn.Dropout | nn.Dropout2d):
                new = nn.Identity()
            if new is None:
                replace(child)
            else:
                setattr(module, name, new)

    replace(replica)
    return replica


def measure_receptive_field(model: nn.Module, size: int = 1024, phases: int = 32) -> ReceptiveField:
    """Measure the receptive field as the union over ``phases`` consecutive output pixels.

    Pixels at different positions relative to the pooling grid see slightly different fields; the
    union over one period of the total stride covers them all. Every operation of the replica is
    separable, so a one-pixel-high strip gives the horizontal field, which is also the vertical one.
    ``size`` must exceed the field.
    """
    replica = one_channel_replica(model)
    center = size // 2
    strips = torch.ones(phases, 1, 1, size, dtype=torch.float64, requires_grad=True)
    out = replica(strips)
    out[range(phases), 0, 0, [center + p for p in range(phases)]].sum().backward()
    assert strips.grad is not None
    lo, hi = 0, 0
    for phase in range(phases):
        columns = strips.grad[phase, 0, 0].nonzero()
        if columns.numel() == 0 or columns.min() == 0 or columns.max() == size - 1:
            raise ValueError(f"an input of {size} px is too small to measure the receptive field")
        lo = min(lo, int(columns.min()) - center - phase)
        hi = max(hi, int(columns.max()) - center - phase)
    return ReceptiveField(lo, hi)
