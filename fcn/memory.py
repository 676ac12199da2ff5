"""How much memory a forward pass takes, measured on the model itself: what sizing a tile needs.

:func:`probe_memory` runs a forward pass over two square inputs in inference mode and reads the
memory each pass added at its peak: on CUDA the allocator's peak (``max_memory_allocated``) above
what was allocated before the pass; on a Linux CPU the process's peak resident set (``VmHWM``,
reset through ``/proc/self/clear_refs`` before the pass) above its resident set before it. A line
through the two points gives a fixed part and a part per megapixel of input. Activations grow
with the pixels, so the line extrapolates to larger tiles; for a network that pads its input
(FCN's 100 px) probing at small sizes overstates the slope, which errs on the safe side. The
slope is never taken below half the larger pass's peak per pixel, so that memory an allocator
kept from the first pass cannot flatten the line.

The probe also records the largest single activation per input pixel (forward hooks), fitted the
same way: cuDNN and several CUDA kernels index a tensor with 32-bit integers, so a tile whose
activation would reach 2**31 elements fails however much memory is free; the planner keeps below.

Where the peak cannot be read (a CPU other than Linux's, or ``/proc`` not writable), the probe
returns ``None`` and the caller falls back to a fixed tile.
"""

from __future__ import annotations

import functools
import gc
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcn.registry import segmentation_net

LARGEST_INDEXABLE = 2**31 - 1  # elements one activation may hold under 32-bit indexing
MIB = 2**20


@dataclass(frozen=True)
class MemoryProbe:
    """Peak memory of one forward pass as a line in the input's megapixels, on one kind of device."""

    device: str  # "cpu" or "cuda"
    fixed_mib: float
    mib_per_mpx: float
    elements_fixed: float  # the largest activation's elements: fixed part and part per input pixel
    elements_per_px: float
    sizes: tuple[int, int]  # the input sides probed (margin included)

    def peak_mib(self, pixels: float) -> float:
        """Predicted peak of a forward pass over ``pixels`` input pixels (all tiles of a batch)."""
        return self.fixed_mib + self.mib_per_mpx * pixels / 1e6

    def largest_activation(self, pixels: float) -> float:
        """Predicted elements of the largest activation for ``pixels`` input pixels."""
        return self.elements_fixed + self.elements_per_px * pixels

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint's card."""
        data = asdict(self)
        data["sizes"] = list(self.sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryProbe:
        """Inverse of :meth:`to_dict`."""
        return cls(
            device=str(data["device"]),
            fixed_mib=float(data["fixed_mib"]),
            mib_per_mpx=float(data["mib_per_mpx"]),
            elements_fixed=float(data["elements_fixed"]),
            elements_per_px=float(data["elements_per_px"]),
            sizes=(int(data["sizes"][0]), int(data["sizes"][1])),
        )


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(match.group(1))


def cpu_peak_supported() -> bool:
    """Whether this process can reset and read its peak resident set (Linux ``/proc``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM")
    except OSError:
        return False
    return True


def added_peak_mib(run: Callable[[], object], device: torch.device) -> float:
    """Memory ``run()`` added at its peak over what was in use before it, in MiB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MIB
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    run()
    return max(_status_kib("VmHWM") - before, 0) / 1024


def probe_sizes(model: nn.Module, device: torch.device) -> tuple[int, int]:
    """Two input sides on the model's pooling grid: small on a CPU (seconds), larger on a GPU."""
    stride = segmentation_net(model).total_stride
    base = 1024 if device.type == "cuda" else 256
    side = -(-base // stride) * stride
    return side, 2 * side


def probe_memory(
    model: nn.Module,
    forward: Callable[[torch.Tensor], object] | None = None,
    device: torch.device | str = "cpu",
    sizes: tuple[int, int] | None = None,
) -> MemoryProbe | None:
    """Measure ``forward``'s peak memory at two input sizes (``None`` where it cannot be read).

    ``forward`` takes a uint8 batch (1, C, H, W; C the model's ``in_channels``) on
    ``device`` and does what inference does with it (default: the model on its float value). The
    model must be on ``device``; it runs in eval mode and is left in the mode it was in.
    """
    target = torch.device(device)
    if target.type not in ("cpu", "cuda") or (target.type == "cpu" and not cpu_peak_supported()):
        return None
    training = model.training
    model.eval()
    run = forward or (lambda x: model(x.float()))
    net = segmentation_net(model)
    channels, margin = net.in_channels, net.margin
    sides = sizes or probe_sizes(model, target)
    largest = [0]

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel())

    peaks, elements, pixels = [], [], []
    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.inference_mode():
            warm = torch.zeros(1, channels, sides[0] + 2 * margin, sides[0] + 2 * margin, dtype=torch.uint8)
            run(warm.to(target))  # one-off costs (thread pools, kernel choice) stay out of the line
            for side in sides:
                n = side + 2 * margin
                x = torch.randint(0, 256, (1, channels, n, n), dtype=torch.uint8, device=target)
                largest[0] = 0
                peaks.append(added_peak_mib(functools.partial(run, x), target))
                elements.append(float(largest[0]))
                pixels.append(float(n * n))
                del x
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    span = pixels[1] - pixels[0]
    per_px = (peaks[1] - peaks[0]) / span
    elements_per_px = (elements[1] - elements[0]) / span
    return MemoryProbe(
        device=target.type,
        fixed_mib=max(peaks[0] - per_px * pixels[0], 0.0),
        mib_per_mpx=max(per_px * 1e6, peaks[1] / pixels[1] * 1e6 / 2),
        elements_fixed=max(elements[0] - elements_per_px * pixels[0], 0.0),
        elements_per_px=max(elements_per_px, elements[1] / pixels[1] / 2),
        sizes=(sides[0] + 2 * margin, sides[1] + 2 * margin),
    )
