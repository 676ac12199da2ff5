"""The receptive field, measured from the model by back-propagating from single output pixels.

The measurement runs on a one-channel replica of the model: every convolution (or transposed
convolution) first sums whatever channels reach it, then applies its own geometry (kernel,
stride, padding, dilation) with one positive weight per tap; max pools become average pools of
the same geometry (so the gradient reaches the whole window, not only the arg-max), a max-unpool
spreads each value over its window (a superset of where the recorded arg-max puts it), and batch
norm, ReLU-like activations and dropout become identities. Every map is then linear with
positive weights, so the input pixels with a non-zero gradient are exactly those the real
model's output pixel can depend on. Summing channels keeps concatenations (dense blocks, U-Net
skips, inception branches) working with one channel per path, and keeps the replica cheap.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from fcn.margin import aligned_halo
from fcn.registry import segmentation_net

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

    def halo(self, stride: int, margin: int = 0) -> int:
        """The smallest halo that covers the field and keeps tiles on the pooling grid (``fcn.margin``)."""
        return aligned_halo(self.radius, stride, margin)


class SummedConv(nn.Module):
    """Sum the input's channels, then one positive one-channel (transposed) convolution."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        geometry: dict[str, Any] = {
            "kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
            "dilation": conv.dilation, "bias": False,
        }  # fmt: skip
        if isinstance(conv, nn.ConvTranspose2d):
            geometry["output_padding"] = conv.output_padding
        self.conv = type(conv)(1, 1, **geometry).double()
        nn.init.constant_(self.conv.weight, 1.0 / self.conv.weight.numel())

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """The channel sum through the one-channel convolution."""
        summed = x.sum(1, keepdim=True)
        if isinstance(self.conv, nn.ConvTranspose2d):
            return cast(torch.Tensor, self.conv(summed, output_size=output_size))
        return cast(torch.Tensor, self.conv(summed))


class AveragePool(nn.AvgPool2d):
    """An average pool with a max pool's geometry; returns placeholder indices where it did."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)
        self.return_indices = pool.return_indices

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """The average, and (for an unpool that ignores them) indices of the same shape."""
        out = super().forward(x)
        return (out, torch.zeros_like(out, dtype=torch.long)) if self.return_indices else out


class SpreadUnpool(nn.Module):
    """A max-unpool that spreads each value over its whole window instead of its arg-max."""

    def __init__(self, unpool: nn.MaxUnpool2d) -> None:
        super().__init__()
        self.kernel = cast(Pair, nn.modules.utils._pair(unpool.kernel_size))
        self.stride = cast(Pair, nn.modules.utils._pair(unpool.stride))

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, output_size: list[int] | None = None
    ) -> torch.Tensor:
        """Each input pixel's value on every output pixel of its window."""
        ones = torch.ones(1, 1, *self.kernel, dtype=x.dtype)
        out = nn.functional.conv_transpose2d(x.sum(1, keepdim=True), ones, stride=self.stride)
        if output_size is not None:
            h, w = list(output_size)[-2:]
            out = nn.functional.pad(out, (0, max(0, w - out.shape[-1]), 0, max(0, h - out.shape[-2])))
            out = out[..., :h, :w]
        return out


IDENTITIES = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.Sigmoid)


def one_channel_replica(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the same geometry, one channel per path and made of positive linear maps."""
    # Share nothing with the model and copy none of its weights: every parameter is replaced below.
    memo: dict[int, object] = {id(t): torch.empty(0) for t in (*model.parameters(), *model.buffers())}
    replica = copy.deepcopy(model, memo).eval()

    def replace(module: nn.Module) -> None:
        for name, child in module.named_children():
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d | nn.ConvTranspose2d):
                new = SummedConv(child)
            elif isinstance(child, nn.MaxPool2d):
                new = AveragePool(child)
            elif isinstance(child, nn.MaxUnpool2d):
                new = SpreadUnpool(child)
            elif isinstance(child, IDENTITIES):
                new = nn.Identity()
            if new is None:
                replace(child)
            else:
                setattr(module, name, new)

    replace(replica)
    return replica


def measure_receptive_field(model: nn.Module, size: int = 1024, phases: int = 32) -> ReceptiveField:
    """Measure the receptive field, on strips of ``size`` px or wider ones until the field fits."""
    while True:
        try:
            return measure_on_strips(model, size, phases)
        except FieldTooWide:
            if size >= 16384:
                raise ValueError(f"the receptive field is wider than {size} px") from None
            size *= 2


class FieldTooWide(ValueError):
    """The strips were too narrow for the receptive field."""


def measure_on_strips(model: nn.Module, size: int, phases: int) -> ReceptiveField:
    """Measure the receptive field as the union over ``phases`` consecutive output pixels.

    Pixels at different positions relative to the pooling grid see slightly different fields; the
    union over one period of the total stride covers them all. Every operation of the replica is
    separable, so the columns that reach a pixel of a strip's middle row give the horizontal field,
    which is also the vertical one; the strip is a few total strides high so that every pool has
    rows to pool. An output smaller than its input (unpadded convolutions) is taken as centred
    in it. ``size`` must exceed the field.
    """
    net = segmentation_net(model)
    replica = one_channel_replica(model)
    height = 2 * net.total_stride + 1 + 2 * net.margin
    # One plane seen on every channel (a late fusion splits its input by channel): its gradient is
    # the sum of theirs, all of them non-negative.
    strips = torch.ones(phases, 1, height, size, dtype=torch.float64, requires_grad=True)
    out = replica(strips.expand(-1, net.in_channels, -1, -1))
    top, left = (height - out.shape[-2]) // 2, (size - out.shape[-1]) // 2
    center = size // 2
    row, columns = height // 2 - top, [center - left + p for p in range(phases)]
    out[range(phases), 0, row, columns].sum().backward()
    assert strips.grad is not None
    lo, hi = 0, 0
    for phase in range(phases):
        reached = strips.grad[phase].abs().sum((0, 1)).nonzero()
        if reached.numel() == 0 or reached.min() == 0 or reached.max() == size - 1:
            raise FieldTooWide(f"an input of {size} px is too small to measure the receptive field")
        lo = min(lo, int(reached.min()) - center - phase)
        hi = max(hi, int(reached.max()) - center - phase)
    return ReceptiveField(lo, hi)
