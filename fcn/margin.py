"""Networks whose output is smaller than their input, and the mirroring that gives them context.

A network with unpadded ("valid") convolutions, such as the original U-Net, outputs ``margin``
pixels fewer than its input on every side. Its paper's overlap-tile strategy supplies the missing
context at the image border by mirroring the image; inside the image the context is real. A model
declares ``margin`` (0 for networks whose output has the input's size), and
everything that runs one pads by mirroring the same way: the tiling pipeline reads windows that
reach past the image edge and mirrors them there (``pipeline.raster``), and a whole-image
pass (training, scoring, references in tests) mirrors the whole image
(:func:`same_size_forward`). Both use :func:`reflect_indices`, so they mirror identically.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fcn.registry import segmentation_net


def aligned_halo(reach: int, stride: int, margin: int = 0) -> int:
    """The smallest halo of at least ``reach`` pixels that keeps tiles on the pooling grid.

    A tile's input starts ``halo`` before its core, the whole image's ``margin`` before its first
    pixel: the two agree modulo ``stride`` when ``halo`` is ``margin`` plus a multiple of ``stride``.
    """
    return margin + -(-max(reach - margin, 0) // stride) * stride


def reflect_indices(start: int, stop: int, size: int) -> NDArray[np.int64]:
    """Indices into an axis of ``size`` pixels for positions ``start..stop-1``, mirrored past its ends.

    Mirroring does not repeat the edge pixel (position -1 is pixel 1, as ``numpy.pad``'s
    ``reflect``) and repeats as often as needed, so any reach past the ends is defined.
    """
    positions = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


def mirror_pad(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Pad the last two axes by ``margin`` on every side, mirroring the image."""
    if margin == 0:
        return x
    h, w = x.shape[-2:]
    rows = torch.from_numpy(reflect_indices(-margin, h + margin, h)).to(x.device)
    cols = torch.from_numpy(reflect_indices(-margin, w + margin, w)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def same_size_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits with the input's height and width: the image mirrored by the model's margin first."""
    out: torch.Tensor = model(mirror_pad(x, segmentation_net(model).margin))
    return out
