"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once (Long, Shelhamer & Darrell), as in the Caffe release.

Layer names, kernel sizes and crop offsets follow the reference ``net.py`` files so that weights
and behaviour carry over: conv1_1 is padded by 100, the trunk pools with ceil rounding, and each
crop starts at a fixed offset and takes the extent of its reference tensor. The output always has
the input's height and width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fcn.blocks import ConvolutionalFC, total_stride
from fcn.registry import Architecture, ImagenetInit
from fcn.surgery import init_from_vgg16
from fcn.vgg import VGG16_WIDTHS, make_features, run_features

# Crop offsets of the reference release, fixed by conv1_1's padding of 100 and the kernel sizes.
CROP_32S, CROP_16S, CROP_8S = 19, 27, 31
CROP_POOL4, CROP_POOL3 = 5, 9

# FCN-8s at-once scales the skip features so that they start small next to fc7's scores.
ATONCE_SCALES = (0.01, 0.0001)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights of a transposed convolution that upsamples each channel bilinearly.

    Only the diagonal (channel i -> channel i) is non-zero, as in the reference's ``upsample_filt``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64, device="cpu")  # real, also under meta
    filt1d = 1 - (og - center).abs() / factor
    filt = torch.outer(filt1d, filt1d).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, device="cpu")
    weight[range(channels), range(channels)] = filt
    return weight


def upsampler(channels: int, factor: int, learnable: bool) -> nn.ConvTranspose2d:
    """A bias-free transposed convolution (kernel 2*factor, stride factor) set to bilinear."""
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    layer.weight.requires_grad_(learnable)
    return layer


def crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """Take ``like``'s spatial extent out of ``x``, starting at ``offset`` in both axes."""
    h, w = like.shape[-2:]
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} at {offset} to {(h, w)}")
    return x[..., offset : offset + h, offset : offset + w]


def scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Multiply by ``scale``, without a copy when it is 1."""
    return x if scale == 1.0 else x * scale


def score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A 1x1 scoring convolution, zero-initialised as in the reference."""
    layer = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()  # type: ignore[union-attr]
    return layer


def init_from_scratch(model: FCN) -> FCN:
    """He-normal weights (fan-in, ReLU gain) and zero biases for the VGG16 trunk, fc6 and fc7.

    PyTorch's default initialisation shrinks the signal about 30-fold over VGG16's plain stack of
    15 layers (no normalisation layers), so a net trained from scratch starts with near-constant
    fc7 features and FCN-32s, whose only path to the scores goes through them, does not leave the
    majority class. He et al. (2015) derived this scale to keep the forward signal's variance
    through ReLU layers. Score layers stay zero and upsamplers bilinear, as in the reference.
    """
    for layer in [*model.features, model.fc6, model.fc7]:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]
    return model


class FCN(ConvolutionalFC):
    """A VGG16 fully convolutional network with output stride 32, 16 or 8.

    Tensors in (N, 3, H, W), already normalised (N, 4, H, W with depth after the colour:
    ``in_channels``); per-class logits out (N, num_classes, H, W). ``widths`` (the trunk's five
    blocks) and ``fc_width`` (fc6 and fc7) narrow the network without changing its geometry.
    """

    margin = 0

    def __init__(
        self,
        num_classes: int,
        stride: int = 8,
        *,
        skip_scales: tuple[float, float] = (1.0, 1.0),
        learnable_upsampling: bool = False,
        in_channels: int = 3,
        widths: tuple[int, ...] = VGG16_WIDTHS,
        fc_width: int = 4096,
    ) -> None:
        super().__init__()
        if stride not in (32, 16, 8):
            raise ValueError(f"stride must be 32, 16 or 8, not {stride}")
        self.num_classes = num_classes
        self.stride = stride
        self.skip_scales = skip_scales
        self.in_channels = in_channels
        self.features = make_features(first_padding=100, in_channels=in_channels, widths=widths)
        pool3_channels, pool4_channels, pool5_channels = widths[2:]
        self.add_fc6_fc7(nn.Conv2d(pool5_channels, fc_width, kernel_size=7))
        self.score_fr = score_layer(fc_width, num_classes)
        up = learnable_upsampling
        if stride == 32:
            self.upscore = upsampler(num_classes, 32, up)
            return
        self.score_pool4 = score_layer(pool4_channels, num_classes)
        self.upscore2 = upsampler(num_classes, 2, up)
        if stride == 16:
            self.upscore16 = upsampler(num_classes, 16, up)
            return
        self.score_pool3 = score_layer(pool3_channels, num_classes)
        self.upscore_pool4 = upsampler(num_classes, 2, up)
        self.upscore8 = upsampler(num_classes, 8, up)

    @property
    def total_stride(self) -> int:
        """The trunk's output stride: tile origins on multiples of it see the whole image's grid."""
        return total_stride(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits with the input's height and width."""
        taps = run_features(self.features, x)
        h = self.score_fr(self.fc6_fc7(taps.pool5))
        if self.stride == 32:
            return crop(self.upscore(h), CROP_32S, x)
        pool4_scale, pool3_scale = self.skip_scales
        h = self.upscore2(h)
        h = h + crop(self.score_pool4(scaled(taps.pool4, pool4_scale)), CROP_POOL4, h)
        if self.stride == 16:
            return crop(self.upscore16(h), CROP_16S, x)
        h = self.upscore_pool4(h)
        h = h + crop(self.score_pool3(scaled(taps.pool3, pool3_scale)), CROP_POOL3, h)
        return crop(self.upscore8(h), CROP_8S, x)


def vgg16_surgery(model: nn.Module, state: dict[str, Any]) -> None:
    """Net surgery from ImageNet VGG16 (``fcn.surgery.init_from_vgg16``)."""
    assert isinstance(model, FCN)
    init_from_vgg16(model, state)


PAPER = "Long et al., CVPR 2015"
VGG16 = ImagenetInit("vgg16", "vgg16-397923af.pth", vgg16_surgery)


def fcn_architecture(stride: int, skip_scales: tuple[float, float] = (1.0, 1.0)) -> Architecture:
    """An FCN of ``stride`` on the VGG16 trunk (Table 1 of the paper: 134 M parameters, 21 classes)."""
    return Architecture(
        lambda num_classes, **kw: FCN(num_classes, stride, skip_scales=skip_scales, **kw),
        PAPER, 134.0, imagenet=VGG16,
    )  # fmt: skip


# fcnpipe's demonstration model: FCN-8s at an eighth of VGG16's widths, fc6 and fc7 256 wide instead of
# 4096 (1.1 M parameters; a training step costs a 46th of FCN-8s's on a 2-core CPU), so that the
# default model trains on first use in about a minute (BENCHMARKS.md, "The demonstration model").
DEMO_WIDTHS, DEMO_FC_WIDTH = (8, 16, 32, 64, 64), 256
DEMO_PAPER = f"fcnpipe's demonstration model on the FCN-8s topology of {PAPER}"


def demo_architecture() -> Architecture:
    """FCN-8s's layers, kernels, paddings and crops, narrower; trained from scratch only.

    The same geometry as FCN-8s, so the same receptive field, halo and alignment.
    """
    return Architecture(
        lambda num_classes, **kw: FCN(num_classes, 8, widths=DEMO_WIDTHS, fc_width=DEMO_FC_WIDTH, **kw),
        DEMO_PAPER,
    )


ARCHITECTURES = {
    "fcn32s": fcn_architecture(32),
    "fcn16s": fcn_architecture(16),
    "fcn8s": fcn_architecture(8),
    "fcn8s-atonce": fcn_architecture(8, ATONCE_SCALES),
    "fcn8s-demo": demo_architecture(),
}
