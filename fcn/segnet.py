"""SegNet and SegNet-Basic (Badrinarayanan, Kendall & Cipolla, PAMI 2017): decoders that unpool.

Followed: the paper ("SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
Segmentation") and the reference release (github.com/alexgkendall/SegNet-Tutorial,
``Models/segnet_train.prototxt`` and ``Models/segnet_basic_train.prototxt``), layer by layer:

- SegNet's encoder: the 13 convolutions of VGG16, each 3x3 (padding 1) followed by batch norm and
  ReLU, in five stages of 2, 2, 3, 3, 3 (64, 128, 256, 512, 512 channels), each stage ending in a
  2x2 max pool of stride 2 whose arg-max positions (the reference's ``pool<k>_mask``) are kept.
  ``features`` has torchvision's ``vgg16_bn`` layout (conv, BN, ReLU, ...; pools at 6, 13, 23, 33,
  43), so ImageNet VGG16-BN loads into it by name.
- SegNet's decoder mirrors it: each stage unpools with its encoder stage's indices (the
  reference's ``upsample<k>``), then 3x3 convolutions with batch norm and ReLU whose channels are
  the reference's ``conv<k>_<j>_D``: (512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64),
  (64). The reference's last decoder layer, ``conv1_1_D``, is a 3x3 convolution straight to the
  classes with neither batch norm nor ReLU: it is ``classifier`` here.
- SegNet-Basic: four encoder stages of a 7x7 convolution (64 channels, padding 3), batch norm,
  ReLU and a 2x2 max pool with indices; four decoder stages of unpooling, a 7x7 convolution (64)
  and batch norm, with no ReLU (the reference's ``conv_decode<k>``, as the paper says: "no ReLU
  non-linearity is present in the decoder network"); a 1x1 convolution to the classes
  (``conv_classifier``). Total stride 16.
- Initialisation: the reference's "msra" filler (He et al.: normal, std sqrt(2 / fan-in)) for
  every convolution, zero biases. Batch norm starts at scale 1, shift 0.

ImageNet surgery (``VGG16_BN``, SegNet only): torchvision's ``vgg16_bn`` ``features.*`` tensors
(convolutions, batch-norm scales, shifts and running statistics) are copied into ``features``; its
classifier is dropped, as the paper discards VGG16's fully connected layers. SegNet-Basic has no
ImageNet counterpart: the paper trains it from scratch.

Parameters: SegNet counts 29.45 M at CamVid's 11 classes (encoder 14.72 M with batch norm, decoder
14.73 M), the paper's "29.5 M" (the classifier's 3x3x64 weights per class change the total by
0.02 % between 11 and 37 classes). SegNet-Basic counts 1.417 M at 11 classes, 0.6 % below the
1.425 M of the paper's Table 1; the paper does not break that figure down, and the layers here are
the reference prototxt's, biases included (the paper's text says SegNet-Basic has none: without
them it would count 1.416 M, further off).

Departures, and why:

- Sizes: the reference's Caffe pools round up (a 45-row map pools to 23 rows) and its upsampling
  layers are told the pre-pool size (``upsample_h``/``upsample_w``). Here the input is zero-padded
  at the bottom and right to a multiple of the total stride inside ``forward`` and the output
  cropped back, so every pool divides exactly, a tile whose origin is on a multiple of the stride
  sees the pooling grid the whole image does, and any height and width work. Each unpool is still
  given its pre-pool size explicitly.
- SegNet-Basic's reference feeds its first convolution through a cross-channel LRN (size 5,
  alpha 1e-4, beta 0.75) on raw 0-255 pixels, a per-pixel brightness normalisation the paper does
  not describe. fcnpipe's inputs are already normalised to about unit scale, where that LRN
  divides by (1 + 2e-5 * sum of squares)^0.75, within 0.1 % of 1; it is left out.
- ImageNet weights: the reference starts SegNet's encoder from Caffe's VGG16, which has no batch
  norm; torchvision's VGG16-BN supplies the batch-norm layers too.
- Class balancing (median-frequency weights in the loss) is a training option, not part of the
  network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from fcn.blocks import on_meta, pad_to_multiple, total_stride
from fcn.errors import FcnpipeError
from fcn.registry import Architecture, ImagenetInit
from fcn.vgg import VGG16_LAYOUT

Layout = Sequence[int | str]  # output channels of each convolution; "M" is a 2x2 max pool

# The reference's decoder, deepest stage first: output channels of conv<k>_<j>_D (conv1_1_D, which
# scores the classes, is the classifier).
SEGNET_DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))
BASIC_LAYOUT = (64, "M", 64, "M", 64, "M", 64, "M")
BASIC_DECODER = ((64,), (64,), (64,), (64,))
BASIC_KERNEL = 7


class Switch(NamedTuple):
    """What a max pool records for its unpool: arg-max indices and the size it pooled."""

    indices: torch.Tensor
    size: torch.Size


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, *, relu: bool = True, transposed: bool = False
) -> list[nn.Module]:
    """A size-preserving (transposed) convolution, batch norm and, unless told not to, ReLU."""
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2
    )
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_channels)]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


def make_encoder(layout: Layout = VGG16_LAYOUT, kernel_size: int = 3) -> nn.Sequential:
    """Convolution-BN-ReLU layers and 2x2 max pools that keep their indices.

    With the default layout, parameter names and indices are those of torchvision's ``vgg16_bn``
    ``features``.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2, return_indices=True))
            continue
        assert isinstance(item, int)
        layers += conv_bn(in_channels, item, kernel_size)
        in_channels = item
    return nn.Sequential(*layers)


def run_encoder(features: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[Switch]]:
    """Run the encoder; its output and each pool's switch, shallowest first."""
    switches = []
    for layer in features:
        # Asked by what it returns, not its type: the receptive-field replica swaps in average pools.
        if getattr(layer, "return_indices", False):
            size = x.shape
            x, indices = layer(x)
            switches.append(Switch(indices, size))
        else:
            x = layer(x)
    return x, switches


class DecoderStage(nn.Module):
    """Unpool to the pre-pool size with the encoder's switch, then the stage's layers."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, switch: Switch) -> torch.Tensor:
        """Put each value back where its window's maximum was (zeros elsewhere) and convolve."""
        out: torch.Tensor = self.layers(self.unpool(x, switch.indices, output_size=switch.size))
        return out


def make_decoder(
    in_channels: int,
    stages: Sequence[Sequence[int]],
    kernel_size: int,
    *,
    relu: bool = True,
    transposed: bool = False,
) -> nn.ModuleList:
    """Decoder stages, deepest first, each with the output channels of its convolutions."""
    decoder = []
    for channels in stages:
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += conv_bn(in_channels, out_channels, kernel_size, relu=relu, transposed=transposed)
            in_channels = out_channels
        decoder.append(DecoderStage(layers))
    return nn.ModuleList(decoder)


def unpooling_forward(
    x: torch.Tensor,
    features: nn.Sequential,
    decoder: nn.ModuleList,
    classifier: nn.Module,
    bottleneck: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The forward pass of a network that unpools with its encoder's switches: logits of ``x``'s size.

    Pad to the encoder's total stride, encode keeping each pool's switch, run ``bottleneck`` (for
    DeconvNet, fc6, fc7 and fc6_deconv), decode stage by stage with the switches, deepest first,
    score with ``classifier`` and crop back.
    """
    h, w = x.shape[-2:]
    x, switches = run_encoder(features, pad_to_multiple(x, total_stride(features)))
    if bottleneck is not None:
        x = bottleneck(x)
    for stage, switch in zip(decoder, reversed(switches), strict=True):
        x = stage(x, switch)
    out: torch.Tensor = classifier(x)
    return out[..., :h, :w]


def init_he(model: nn.Module) -> None:
    """He-normal weights (the reference's "msra" filler: fan-in, ReLU gain) and zero biases."""
    if on_meta(model):
        return
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]


class SegNet(nn.Module):
    """An encoder whose pools keep their indices, a decoder that unpools with them, a classifier.

    Tensors in (N, 3, H, W), already normalised; per-class logits out (N, num_classes, H, W).
    """

    in_channels = 3
    margin = 0

    def __init__(self, features: nn.Sequential, decoder: nn.ModuleList, classifier: nn.Conv2d) -> None:
        super().__init__()
        self.num_classes = classifier.out_channels
        self.features = features
        self.decoder = decoder
        self.classifier = classifier

    @property
    def total_stride(self) -> int:
        """The product of the encoder's pooling strides: inputs are padded to multiples of it."""
        return total_stride(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits with the input's height and width."""
        return unpooling_forward(x, self.features, self.decoder, self.classifier)


def segnet(num_classes: int, *, learnable_upsampling: bool = False) -> SegNet:
    """SegNet: VGG16-BN encoder, mirrored decoder, 3x3 classifier (unpooling has nothing to learn)."""
    del learnable_upsampling  # unpooling with the encoder's indices has no weights
    model = SegNet(
        make_encoder(),
        make_decoder(512, SEGNET_DECODER, 3),
        nn.Conv2d(SEGNET_DECODER[-1][-1], num_classes, 3, padding=1),
    )
    init_he(model)
    return model


def segnet_basic(num_classes: int, *, learnable_upsampling: bool = False) -> SegNet:
    """SegNet-Basic: four 7x7 encoder and decoder stages of 64 channels, a 1x1 classifier."""
    del learnable_upsampling  # unpooling with the encoder's indices has no weights
    model = SegNet(
        make_encoder(BASIC_LAYOUT, BASIC_KERNEL),
        make_decoder(64, BASIC_DECODER, BASIC_KERNEL, relu=False),
        nn.Conv2d(BASIC_DECODER[-1][-1], num_classes, 1),
    )
    init_he(model)
    return model


def copy_vgg16_bn_features(features: nn.Sequential, state: Mapping[str, torch.Tensor]) -> None:
    """Copy torchvision ``vgg16_bn``'s ``features.*`` tensors (convolutions and batch norms) in place."""
    found = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    for name, tensor in features.state_dict().items():
        source = found.get(name)
        if not isinstance(source, torch.Tensor) or source.shape != tensor.shape:
            shape = "missing" if source is None else tuple(getattr(source, "shape", ()))
            raise FcnpipeError(
                f"the ImageNet weights are not torchvision's vgg16_bn: features.{name} should have shape "
                f"{tuple(tensor.shape)} ({shape}); use vgg16_bn-6c64b313.pth or a state dict in its layout."
            )
    features.load_state_dict({k: v for k, v in found.items() if k in features.state_dict()})


def segnet_surgery(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Net surgery from ImageNet VGG16-BN: the encoder's convolutions and batch norms, nothing else."""
    assert isinstance(model, SegNet)
    copy_vgg16_bn_features(model.features, state)


PAPER = "Badrinarayanan et al., PAMI 2017"
VGG16_BN = ImagenetInit("vgg16_bn", "vgg16_bn-6c64b313.pth", segnet_surgery)

ARCHITECTURES = {
    "segnet": Architecture(segnet, PAPER, 29.5, published_classes=11, imagenet=VGG16_BN),
    "segnet-basic": Architecture(segnet_basic, PAPER, 1.425, published_classes=11),
}
