"""Input normalisation, which travels with the weights it was trained for."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass(frozen=True)
class Normalization:
    """How 8-bit-range RGB pixels become network input: reorder, scale, subtract mean, divide by std.

    ``mean`` and ``std`` are given in the network's channel order, after scaling. An input with
    more than colour (NYUD's colour and depth, or colour and HHA) carries the normalisation of
    each further group of channels in ``then``, applied to the channels after these, in order.
    ``log`` takes the natural logarithm first (depth in millimetres, as the FCN reference feeds it;
    values below 1 count as 1).
    """

    channel_order: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    log: bool = False
    then: tuple[Normalization, ...] = ()

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, not {self.channel_order!r}")
        if len(self.mean) != len(self.std) or (self.channel_order == "BGR" and len(self.mean) != 3):
            raise ValueError(f"mean {self.mean} and std {self.std} do not fit {self.channel_order}")

    @property
    def channels(self) -> int:
        """How many input channels this normalises, further groups included (3 for colour alone)."""
        return len(self.mean) + sum(group.channels for group in self.then)

    def apply(self, rgb: torch.Tensor) -> torch.Tensor:
        """Normalise (N, C, H, W) values (RGB on the 0-255 scale, then any further groups) into new input."""
        if rgb.shape[1] != self.channels:
            raise ValueError(f"{rgb.shape[1]} channels given to a normalisation of {self.channels}")
        if self.then:
            groups, parts, start = (replace(self, then=()), *self.then), [], 0
            for group in groups:
                parts.append(group.apply(rgb[:, start : start + group.channels]))
                start += group.channels
            return torch.cat(parts, dim=1)
        x = rgb.flip(1) if self.channel_order == "BGR" else rgb
        x = x if x.is_floating_point() else x.float()
        if self.log:
            x = x.clamp(min=1).log()
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.mul(self.scale).sub_(mean).div_(std)  # one new tensor, then in place

    def zero_input(self) -> tuple[float, ...]:
        """The input value of each channel that normalises to zero (what padding shows the network)."""
        values = [m / self.scale for m in self.mean]
        values = [math.exp(v) for v in values] if self.log else values
        ordered = values[::-1] if self.channel_order == "BGR" else values
        return (*ordered, *(v for group in self.then for v in group.zero_input()))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        data: dict[str, Any] = {
            "channel_order": self.channel_order, "scale": self.scale,
            "mean": list(self.mean), "std": list(self.std),
        }  # fmt: skip
        if self.log:
            data["log"] = True
        if self.then:
            data["then"] = [group.to_dict() for group in self.then]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`."""
        return cls(
            channel_order=str(data["channel_order"]),
            scale=float(data["scale"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            log=bool(data.get("log", False)),
            then=tuple(cls.from_dict(group) for group in data.get("then", [])),
        )


# torchvision's ImageNet VGG16 (vgg16-397923af.pth): RGB in [0, 1], ImageNet mean and std.
TORCHVISION_IMAGENET = Normalization()

# The Caffe VGG16 the reference FCNs were trained from: BGR, 0-255, mean subtracted, no std.
CAFFE_VGG16 = Normalization(
    channel_order="BGR",
    scale=1.0,
    mean=(104.00699, 116.66877, 122.67891),
    std=(1.0, 1.0, 1.0),
)

# The FCN reference's data layers (github.com/shelhamer/fcn.berkeleyvision.org) feed the Caffe VGG16
# each dataset's own mean instead of ImageNet's; the values below are copied from them.
# siftflow_layers.py: in_[:, :, ::-1] (RGB -> BGR), then `in_ -= self.mean`, mean (114.578, 115.294, 108.353).
CAFFE_SIFTFLOW = Normalization(
    channel_order="BGR", scale=1.0, mean=(114.578, 115.294, 108.353), std=(1.0, 1.0, 1.0)
)
# nyud_layers.py load_image: RGB -> BGR, then `in_ -= self.mean_bgr`, mean_bgr (116.190, 97.203, 92.318).
CAFFE_NYUD_COLOR = Normalization(
    channel_order="BGR", scale=1.0, mean=(116.190, 97.203, 92.318), std=(1.0, 1.0, 1.0)
)
# nyud_layers.py load_hha: `hha -= self.mean_hha`, mean_hha (132.431, 94.076, 118.477), with no channel
# flip: the HHA PNG's channels (horizontal disparity, height, angle) go in as stored. "RGB" here
# means the order they are read in.
CAFFE_NYUD_HHA = Normalization(
    channel_order="RGB", scale=1.0, mean=(132.431, 94.076, 118.477), std=(1.0, 1.0, 1.0)
)
# nyud_layers.py load_depth: `d = np.log(d); d -= self.mean_logd`, mean_logd 7.844, one channel, and
# nyud-fcn32s-color-d's net concatenates it after the colour: its normalisation is the colour's with
# this group after it (``NYUD_LOG_DEPTH``).
NYUD_LOG_DEPTH = Normalization(channel_order="RGB", scale=1.0, mean=(7.844,), std=(1.0,), log=True)
