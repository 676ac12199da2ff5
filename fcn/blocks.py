"""Pieces several network families share, defined once."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad at the bottom and right so that height and width are multiples of ``multiple``.

    With ``multiple`` the total stride, every pool divides exactly, and a tile whose origin is on a
    multiple of it sees the pooling grid the whole image does.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))
