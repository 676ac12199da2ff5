"""Input normalisation, which travels with the weights it was trained for."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Normalization:
    """How 8-bit-range RGB pixels become network input: reorder, scale, subtract mean, divide by std.

    ``mean`` and ``std`` are given in the network's channel order, after scaling.
    """

    channel_order: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, not {self.channel_order!r}")

    def apply(self, rgb: torch.Tensor) -> torch.Tensor:
        """Normalise (N, 3, H, W) RGB values on the 0-255 scale into (new) float network input."""
        x = rgb.flip(1) if self.channel_order == "BGR" else rgb
        x = x if x.is_floating_point() else x.float()
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x.mul(self.scale).sub_(mean).div_(std)  # one new tensor, then in place

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`."""
        return cls(
            channel_order=str(data["channel_order"]),
            scale=float(data["scale"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
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
