"""One input preparation for every forward pass: normalised, channels-last on CUDA, under autocast."""

from __future__ import annotations

import torch

from fcn.normalization import Normalization


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when asked for on a CUDA device; a no-op elsewhere."""
    enabled = precision == "bf16" and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def network_input(rgb: torch.Tensor, normalization: Normalization, device: torch.device) -> torch.Tensor:
    """RGB on the 0-255 scale, moved to ``device`` and normalised (channels-last on CUDA)."""
    x = normalization.apply(rgb.to(device, dtype=torch.float32, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
