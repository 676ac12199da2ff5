"""DilatedNet (Yu & Koltun, ICLR 2016): the dilated VGG16 front-end and its context modules.

Followed: the paper ("Multi-scale context aggregation by dilated convolutions") and the reference
release (github.com/fyu/dilation: ``network.py`` and
``models/dilation8_camvid_deploy.prototxt``), layer by layer:

- Front-end: VGG16's conv1_1..conv4_3 with pool1..pool3; pool4 and pool5 removed; conv5_1..conv5_3
  dilated by 2 (they follow one removed pool) and fc6, a 7x7 convolution of 4096 channels, dilated
  by 4 (it follows both); fc7 a 1x1 convolution of 4096 channels; ReLU after each, dropout 0.5
  after fc6 and fc7; ``final`` scores the classes with a 1x1 convolution (Gaussian weights, std
  0.001, zero bias, as the reference's filler). Output stride 8.
- Context module (``dilated8``, the "basic" module of CamVid's Dilation8 model, C = the number of
  classes): 3x3 convolutions C -> C with dilations 1, 1, 2, 4, 8, 16, 1 (the reference's
  ctx_conv1_1, ctx_conv1_2, ctx_conv2_1 .. ctx_conv5_1, ctx_fc1), each followed by ReLU and each
  padded by its dilation as in the reference, then a 1x1 convolution (ctx_final). The paper's
  identity initialisation: every kernel is zero except the centre tap from channel
  i to channel i, which is 1, and biases are 0, so at initialisation the module passes
  non-negative scores through unchanged (its ReLUs clip negative ones, as the reference's do).
- The large context module (``dilated8-large``, the paper's Table 1): the same layers and
  dilations, widened to 2C, 2C, 4C, 8C, 16C, 32C, 32C channels, then the 1x1 convolution back to C.
  Its identity initialisation (the paper's Section 3): the weight from channel a of a layer with c_i
  channels to channel b of one with c_{i+1} is C / c_{i+1} at the centre tap where
  floor(a C / c_i) = floor(b C / c_{i+1}) (the two channels stand for the same class), and noise
  elsewhere, N(0, sigma) with sigma much below C / c_{i+1}; biases 0. The paper leaves sigma
  open: fcnpipe uses a thousandth of C / c_{i+1}. Without the noise the module is the identity on
  non-negative scores, as the basic one is (tested); the noise breaks the symmetry between the
  copies of a class.
- Output: the stride-8 scores are upsampled x8 bilinearly.

ImageNet surgery (``VGG16``): torchvision's VGG16 convolutions load into ``features``, which keeps
torchvision's indices (pool4's place holds an identity, so conv5_1..conv5_3 stay at 24, 26, 28),
and its fully connected fc6/fc7 are convolutionalised into the dilated fc6 and fc7 by
:func:`fcn.surgery.copy_trunk_and_fc`; dilation leaves a kernel's shape unchanged, which is why the
paper can start from the classifier's weights. ``final`` and the context module keep their own
initialisation.

Published: Dilation8 (front-end + basic context module, joint training) reaches 65.3 mean IoU on
the CamVid test set. The paper gives no parameter count and none is registered: the
front-end counts 134.35 M parameters at 21 classes (VGG16's convolutions 14.71 M, fc6 102.76 M,
fc7 16.78 M, scores 0.09 M, as FCN-32s, whose fc6 has the same 7x7x512x4096 shape) and 134.31 M at
CamVid's 11 classes; the basic context module adds 64 C^2 + 8 C (7,832 at C = 11).

Departures, and why:

- "Same" zero padding for every convolution (padding = dilation * (kernel // 2)), where the
  reference's front-end convolutions are unpadded ("valid") and its input is mirror-padded by 186 px
  on each side (``predict.py``; 186 px is the front-end's receptive-field radius). fcnpipe needs an
  output of the input's size for any size, and a tile cannot reproduce the mirror image of a scene
  it only partly reads; with zero padding the halo makes every tile exact, and only pixels within a
  receptive field of the scene's edge see zeros where the reference sees a mirrored scene. With
  same padding the score at stride-8 position k is centred on input pixel 8k + 3.5, which is the
  geometry of ``align_corners=False``.
- Upsampling by ``F.interpolate(scale_factor=8, mode="bilinear", align_corners=False)`` on the score
  map of an input zero-padded at the bottom and right to a multiple of 8, cropped back to the input's
  size. The reference trains through a fixed bilinear deconvolution (kernel 16, stride 8, pad 4),
  which inside the map computes the same values (at the borders it fades to zero where
  ``F.interpolate`` repeats the edge); its ``predict.py`` interpolates with score k at pixel 8k
  instead, 3.5 px from the centre of that score's receptive field, 8k + 3.5 in both releases.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fcn.blocks import ConvolutionalFC, on_meta, pad_to_multiple, total_stride
from fcn.registry import Architecture, ImagenetInit
from fcn.surgery import copy_trunk_and_fc
from fcn.vgg import POOL4, POOL5, make_features

# conv5_1, conv5_2 and conv5_3 in torchvision's ``features``.
CONV5 = (24, 26, 28)
# The front-end's dilations: conv5 follows one removed pool, fc6 follows two.
CONV5_DILATION, FC6_DILATION = 2, 4
# The basic context module's 3x3 layers (the reference's names without "ctx_") and their dilations.
CONTEXT_LAYERS = (
    ("conv1_1", 1), ("conv1_2", 1), ("conv2_1", 2), ("conv3_1", 4), ("conv4_1", 8), ("conv5_1", 16),
    ("fc1", 1),
)  # fmt: skip
FINAL_STD = 0.001  # the reference's Gaussian filler for the class scores
# The large context module's widths, in multiples of C, layer by layer (Table 1).
LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32)
LARGE_NOISE = 1e-3  # sigma as a fraction of C / c_{i+1}


def same_conv(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """A convolution zero-padded so that its output has its input's size."""
    padding = dilation * (kernel_size // 2)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation)


def make_dilated_features() -> nn.Sequential:
    """VGG16's 13 convolutions and pool1..pool3 in torchvision's layout, conv5 dilated by 2.

    pool5 is dropped and pool4 becomes an identity at its index, so the convolutions keep
    torchvision's indices and an ImageNet state dict loads without renaming.
    """
    features = make_features(first_padding=1)[:POOL5]
    features[POOL4] = nn.Identity()
    for index in CONV5:
        features[index] = same_conv(512, 512, 3, CONV5_DILATION)
    return features


def identity_conv(channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """A same-padded convolution that starts as the identity: centre tap i -> i is 1, all else 0."""
    layer = same_conv(channels, channels, kernel_size, dilation)
    centre = kernel_size // 2
    if on_meta(layer):
        return layer
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[range(channels), range(channels), centre, centre] = 1.0
        layer.bias.zero_()  # type: ignore[union-attr]
    return layer


def context_module(channels: int) -> nn.Sequential:
    """The basic context module: seven 3x3 convolutions with ReLU and a 1x1 one, identity-initialised."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name, dilation in CONTEXT_LAYERS:
        layers[name] = identity_conv(channels, 3, dilation)
        layers[f"{name}_relu"] = nn.ReLU(inplace=True)
    layers["final"] = identity_conv(channels, 1)
    return nn.Sequential(layers)


def widened_identity_conv(
    classes: int, in_channels: int, out_channels: int, kernel_size: int, dilation: int, noise: float
) -> nn.Conv2d:
    """A same-padded convolution initialised as the paper's large context module's layers."""
    layer = same_conv(in_channels, out_channels, kernel_size, dilation)
    scale = classes / out_channels
    centre = kernel_size // 2
    if on_meta(layer):
        return layer
    with torch.no_grad():
        layer.weight.normal_(0.0, noise * scale)
        # Channel b of the output and a of the input stand for the same class: their centre tap.
        same_class = (torch.arange(out_channels) * classes // out_channels)[:, None] == (
            torch.arange(in_channels) * classes // in_channels
        )[None, :]
        layer.weight[:, :, centre, centre][same_class] = scale
        layer.bias.zero_()  # type: ignore[union-attr]
    return layer


def large_context_module(classes: int, noise: float = LARGE_NOISE) -> nn.Sequential:
    """The large context module: the basic one's layers widened to 2C ... 32C, identity-initialised."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = classes
    for (name, dilation), factor in zip(CONTEXT_LAYERS, LARGE_WIDTHS, strict=True):
        layers[name] = widened_identity_conv(classes, width, factor * classes, 3, dilation, noise)
        layers[f"{name}_relu"] = nn.ReLU(inplace=True)
        width = factor * classes
    layers["final"] = widened_identity_conv(classes, width, classes, 1, 1, noise)
    return nn.Sequential(layers)


class DilatedNet(ConvolutionalFC):
    """The dilated VGG16 front-end at output stride 8, with or without a context module.

    Tensors in (N, 3, H, W), already normalised; per-class logits out (N, num_classes, H, W).
    """

    in_channels = 3
    margin = 0

    def __init__(self, num_classes: int, *, context: str | None = None, **_: object) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = make_dilated_features()
        self.add_fc6_fc7(same_conv(512, 4096, 7, FC6_DILATION))
        self.final = nn.Conv2d(4096, num_classes, kernel_size=1)
        if not on_meta(self.final):
            with torch.no_grad():
                self.final.weight.normal_(0.0, FINAL_STD)
                self.final.bias.zero_()  # type: ignore[union-attr]
        self.context: nn.Sequential | None = None
        if context == "basic":
            self.context = context_module(num_classes)
        elif context == "large":
            self.context = large_context_module(num_classes)
        elif context is not None:
            raise ValueError(f"context is basic, large or None, not {context!r}")

    @property
    def total_stride(self) -> int:
        """The front-end's output stride (8): tile origins on multiples of it see the image's grid."""
        return total_stride(self.features)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at stride 8 of an input whose sides are multiples of 8 (before the context)."""
        out: torch.Tensor = self.final(self.fc6_fc7(self.features(x)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits with the input's height and width."""
        height, width = x.shape[-2:]
        stride = self.total_stride
        h = self.scores(pad_to_multiple(x, stride))
        if self.context is not None:
            h = self.context(h)
        h = F.interpolate(h, scale_factor=stride, mode="bilinear", align_corners=False)
        return h[..., :height, :width]


def vgg16_surgery(model: nn.Module, state: dict[str, Any]) -> None:
    """Net surgery from ImageNet VGG16: the convolutions, and fc6/fc7 convolutionalised, copied in place."""
    assert isinstance(model, DilatedNet)
    # copy_trunk_and_fc reads only ``features``, ``fc6`` and ``fc7``, which DilatedNet has in the
    # same layout; its annotation names the FCN classes only.
    copy_trunk_and_fc(model, state)  # type: ignore[arg-type]


PAPER = "Yu & Koltun, ICLR 2016"
VGG16 = ImagenetInit("vgg16", "vgg16-397923af.pth", vgg16_surgery)

ARCHITECTURES = {
    "dilated8-frontend": Architecture(lambda num_classes, **kw: DilatedNet(num_classes, **kw), PAPER,
                                      imagenet=VGG16),
    "dilated8": Architecture(lambda num_classes, **kw: DilatedNet(num_classes, context="basic", **kw), PAPER,
                             imagenet=VGG16),
    "dilated8-large": Architecture(lambda num_classes, **kw: DilatedNet(num_classes, context="large", **kw),
                                   PAPER, imagenet=VGG16),
}  # fmt: skip
