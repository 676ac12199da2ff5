"""Exact streaming inference: an FCN fed in bands of rows, top to bottom, each output row computed once.

A tile pays for exactness by computing its halo; a stream does not need one vertically. The input
goes through the network in bands of whole rows, and every layer keeps only the rows of its input
that its next output rows still need (line buffers):

- a stride-1 convolution adds the zero rows it pads the whole image with before the first band and
  after the last, runs unpadded vertically (padded horizontally), and keeps ``k - 1`` rows;
- a 2 x 2 ceil-mode max pool pools pairs of rows and keeps an odd row for the next band (pooling
  it alone after the last, as ceil mode does);
- a transposed convolution adds each band's contribution into an accumulator and releases the
  output rows no later input row reaches;
- the reference's crops skip their offset in rows once and cut their columns from every band; a
  skip's sum releases the rows both of its inputs have.

The logits come out in order, row for row those of one pass over the whole input (up to the
summation order of the floating-point kernels), with memory set by the width and the band, never by
the height. Tensors only: the caller reads, normalises and writes.

The FCN family (``fcn.fcn``: FCN-32s, -16s, -8s, -8s at-once and the narrow demonstration FCN-8s, whose
layers the operators read at any width) streams; other architectures (batch norm over a band,
unpooling by indices, dense blocks) are not built from these operators.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fcn.fcn import ARCHITECTURES as FCN_ARCHITECTURES
from fcn.fcn import CROP_8S, CROP_16S, CROP_32S, CROP_POOL3, CROP_POOL4, FCN, scaled
from fcn.vgg import POOL3, POOL4

# The architectures built from the operators below, in the order the registry lists them.
STREAMING_ARCHITECTURES = tuple(FCN_ARCHITECTURES)


def supports_streaming(arch: str) -> bool:
    """Whether the registered architecture ``arch`` can be streamed by :class:`StreamingNet`."""
    return arch in STREAMING_ARCHITECTURES


def rows_of(x: torch.Tensor) -> int:
    """Rows of a band (N, C, rows, W)."""
    return int(x.shape[-2])


def no_rows(x: torch.Tensor, channels: int, width: int) -> torch.Tensor:
    """An empty band: what a layer yields when its input does not complete an output row yet."""
    return x.new_zeros(x.shape[0], channels, 0, width)


class RowOp(Protocol):
    """A layer over a stream of bands: rows in, the output rows now complete out."""

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """Take the next band (``final``: the last one) and return the output rows it completes."""
        ...


class Conv:
    """A stride-1 convolution: its zero rows at both ends of the stream, ``k - 1`` rows kept."""

    def __init__(self, layer: nn.Conv2d) -> None:
        if layer.stride != (1, 1) or layer.dilation != (1, 1) or not isinstance(layer.padding, tuple):
            raise ValueError(f"only stride-1, undilated convolutions with numeric padding stream: {layer}")
        self.layer = layer
        self.k, self.kw = layer.kernel_size
        self.pad, self.pad_w = layer.padding
        self.buffer: torch.Tensor | None = None

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """The output rows whose ``k`` input rows have all arrived."""
        zeros = x.new_zeros(*x.shape[:2], self.pad, x.shape[-1])
        parts = [zeros] if self.buffer is None else [self.buffer]
        parts += [x, zeros] if final else [x]
        buffer = torch.cat(parts, dim=2)
        ready = rows_of(buffer) - self.k + 1
        if ready <= 0:
            self.buffer = buffer
            return no_rows(x, self.layer.out_channels, x.shape[-1] + 2 * self.pad_w - self.kw + 1)
        out = F.conv2d(buffer, self.layer.weight, self.layer.bias, padding=(0, self.pad_w),
                       groups=self.layer.groups)  # fmt: skip
        self.buffer = buffer[:, :, ready:].clone()  # a view would keep the whole band alive
        return out


class Pool:
    """A 2 x 2, stride-2, ceil-mode max pool: pairs of rows, the odd one kept until the next band."""

    def __init__(self, layer: nn.MaxPool2d) -> None:
        if (layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode) != (2, 2, 0, True):
            raise ValueError(f"only 2 x 2, stride-2, ceil-mode pools stream: {layer}")
        self.buffer: torch.Tensor | None = None

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """Pooled pairs of rows (and, after the last band, an odd row pooled alone)."""
        buffer = x if self.buffer is None else torch.cat([self.buffer, x], dim=2)
        take = rows_of(buffer) if final else rows_of(buffer) // 2 * 2
        self.buffer = buffer[:, :, take:].clone()
        if take == 0:
            return no_rows(x, x.shape[1], -(-x.shape[-1] // 2))
        return F.max_pool2d(buffer[:, :, :take], 2, 2, ceil_mode=True)


class Upsample:
    """A bias-free transposed convolution (stride ``s``): rows released once no input row adds to them.

    Input row ``i`` adds to output rows ``s * i`` to ``s * i + k - 1``, so after ``n`` input rows
    the output rows before ``s * n`` are final.
    """

    def __init__(self, layer: nn.ConvTranspose2d) -> None:
        if layer.bias is not None or layer.padding != (0, 0) or layer.stride[0] != layer.stride[1]:
            raise ValueError(f"only bias-free, unpadded transposed convolutions stream: {layer}")
        self.layer = layer
        self.s = int(layer.stride[0])
        self.acc: torch.Tensor | None = None  # the output rows still open to additions
        self.released = 0  # output rows released before acc's first
        self.seen = 0  # input rows seen

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """The output rows that no later input row reaches (all of them after the last band)."""
        if rows_of(x):
            # float32: a band's contributions are summed here, and under bf16 autocast each
            # partial sum would otherwise be rounded once more than in one pass
            y = F.conv_transpose2d(x, self.layer.weight, stride=self.layer.stride).float()
            at = self.s * self.seen - self.released  # where y's first row lands in acc
            if self.acc is None:
                self.acc = y
            else:
                tail = self.acc.new_zeros(*y.shape[:2], at + rows_of(y) - rows_of(self.acc), y.shape[-1])
                self.acc = torch.cat([self.acc, tail], dim=2)
                self.acc[:, :, at:] += y
            self.seen += rows_of(x)
        if self.acc is None:
            k = int(self.layer.kernel_size[1])
            return no_rows(x, self.layer.out_channels, (x.shape[-1] - 1) * self.s + k)
        done = rows_of(self.acc) if final else self.s * self.seen - self.released
        out, self.acc = self.acc[:, :, :done], self.acc[:, :, done:].clone()
        self.released += done
        return out


class Crop:
    """The reference's final crop: ``offset`` rows skipped once, then ``height`` rows of ``width``."""

    def __init__(self, offset: int, height: int, width: int) -> None:
        self.offset, self.height, self.width = offset, height, width
        self.skip, self.emitted = offset, 0

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of ``x`` inside the crop."""
        drop = min(self.skip, rows_of(x))
        self.skip -= drop
        keep = min(rows_of(x) - drop, self.height - self.emitted)
        self.emitted += keep
        return x[:, :, drop : drop + keep, self.offset : self.offset + self.width]


class SkipSum:
    """``up + crop(skip, offset, like=up)`` over two streams: the rows both have are released."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.skip_rows = offset  # the skip's rows still to drop
        self.up: torch.Tensor | None = None
        self.side: torch.Tensor | None = None

    def push(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The sum of the rows both streams have delivered so far."""
        drop = min(self.skip_rows, rows_of(skip))
        self.skip_rows -= drop
        skip = skip[:, :, drop:, self.offset : self.offset + up.shape[-1]]
        up = up if self.up is None else torch.cat([self.up, up], dim=2)
        side = skip if self.side is None else torch.cat([self.side, skip], dim=2)
        n = min(rows_of(up), rows_of(side))
        self.up, self.side = up[:, :, n:].clone(), side[:, :, n:].clone()
        return up[:, :, :n] + side[:, :, :n]


class ReluOp:
    """The trunk's ReLU as a row operator (in place: every operator's output is a new tensor)."""

    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """ReLU of the band."""
        return x.relu_()


class StreamingNet:
    """An FCN (``fcn.fcn.FCN``, in eval mode) as row operators, for one input of ``height`` x ``width``.

    :meth:`push` takes the normalised input in bands of rows, top to bottom, the last with
    ``final``; it returns the logits' rows completed so far, in order (``height`` rows in all).
    """

    def __init__(self, model: nn.Module, height: int, width: int) -> None:
        if not isinstance(model, FCN):
            raise TypeError(f"only the FCN family ({', '.join(STREAMING_ARCHITECTURES)}) streams")
        if model.training:
            raise ValueError("stream a model in eval mode (dropout off)")
        self.model = model
        self.trunk: list[tuple[int, RowOp]] = []
        for index, layer in enumerate(model.features):
            if isinstance(layer, nn.Conv2d):
                self.trunk.append((index, Conv(layer)))
            elif isinstance(layer, nn.MaxPool2d):
                self.trunk.append((index, Pool(layer)))
            else:
                self.trunk.append((index, ReluOp()))
        self.fc6, self.fc7, self.score_fr = Conv(model.fc6), Conv(model.fc7), Conv(model.score_fr)
        crop = {32: CROP_32S, 16: CROP_16S, 8: CROP_8S}[model.stride]
        self.crop = Crop(crop, height, width)
        if model.stride == 32:
            self.upscore = Upsample(model.upscore)
            return
        self.score_pool4, self.upscore2 = Conv(model.score_pool4), Upsample(model.upscore2)
        self.sum4 = SkipSum(CROP_POOL4)
        if model.stride == 16:
            self.upscore = Upsample(model.upscore16)
            return
        self.score_pool3, self.upscore_pool4 = Conv(model.score_pool3), Upsample(model.upscore_pool4)
        self.sum3 = SkipSum(CROP_POOL3)
        self.upscore = Upsample(model.upscore8)

    @torch.inference_mode()
    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """Feed the next band of normalised input (N, 3, rows, width); get the logits' rows it completes."""
        taps: dict[int, torch.Tensor] = {}
        for index, op in self.trunk:
            x = op.push(x, final)
            if index in (POOL3, POOL4):  # only the skips: every other band is freed as it is used
                taps[index] = x
        h = self.fc6.push(x, final).relu_()
        h = self.fc7.push(h, final).relu_()
        h = self.score_fr.push(h, final)
        if self.model.stride != 32:
            pool4_scale, pool3_scale = self.model.skip_scales
            h = self.upscore2.push(h, final)
            h = self.sum4.push(h, self.score_pool4.push(scaled(taps[POOL4], pool4_scale), final))
            if self.model.stride == 8:
                h = self.upscore_pool4.push(h, final)
                h = self.sum3.push(h, self.score_pool3.push(scaled(taps[POOL3], pool3_scale), final))
        return self.crop.push(self.upscore.push(h, final))
