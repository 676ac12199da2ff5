"""DeconvNet (Noh, Hong & Han, ICCV 2015): VGG16 with batch norm, mirrored by unpooling and deconvolution.

Followed: the paper ("Learning Deconvolution Network for Semantic Segmentation") and the reference
release (github.com/HyeonwooNoh/DeconvNet, ``model/DeconvNet/DeconvNet_inference_deploy.prototxt``),
layer by layer:

- Convolution network: VGG16's 13 3x3 convolutions, each followed by batch norm and ReLU, and its
  five 2x2 max pools, which keep their switches (``pool<k>_mask``): SegNet's encoder
  (:func:`fcn.segnet.make_encoder`), in torchvision's ``vgg16_bn`` layout. Then fc6, a 7x7
  convolution of 4096 channels, and fc7, a 1x1 convolution of 4096 channels, each followed by batch
  norm and ReLU; no dropout, as in the reference.
- Deconvolution network: ``fc6_deconv``, a 7x7 transposed convolution back to 512 channels, with
  batch norm and ReLU; then per stage an unpooling with its pool's switches followed by 3x3
  transposed convolutions (padding 1) with batch norm and ReLU, whose channels are the reference's
  ``deconv<k>_<j>``: (512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64); and
  ``score``, a 1x1 convolution to the classes (``seg-score``).
- Initialisation: the deconvolution network and ``score`` as the reference's filler (Gaussian, std
  0.01, zero bias); the convolution network and fc6/fc7, which the reference takes from ImageNet
  VGG16, He-normal (fan-in) with zero biases for a start from scratch.

ImageNet surgery (``VGG16_BN``): torchvision's ``vgg16_bn`` ``features.*`` tensors load into
``features`` (:func:`fcn.segnet.copy_vgg16_bn_features`), and its fully connected fc6 and fc7
(``classifier.0``, ``classifier.3``) are reshaped into the fc6 and fc7 convolutions as for the FCNs
(:func:`fcn.surgery.fc_as_conv`); fc8 is dropped. The batch norms after fc6 and fc7 have no ImageNet
counterpart (torchvision's classifier has none) and start at identity.

Parameters: 251.84 M at 21 classes (convolution network 14.72 M, fc6 102.77 M, fc7 16.79 M,
fc6_deconv 102.76 M, deconvolution stages 14.80 M), the paper's 252 M.

Departures, and why:

- fc6 is padded by 3 and ``fc6_deconv`` cropped by 3 (``padding=3`` on both), so each keeps its
  input's size. The reference applies fc6 unpadded to the 7x7 pool5 map of a 224 x 224 proposal,
  giving one 1x1 position, and ``fc6_deconv`` grows that back to 7x7; fcnpipe needs an output of
  the input's size for any size. On a 7x7 pool5 map the centre position of fc6 here is the
  reference's fc6, and an fc7 map that is zero but for its centre deconvolves to the reference's
  7x7 map.
- Inference is on the whole image (in tiles, exact at the measured halo), not the paper's
  per-proposal inference (a network pass on each of some 50 object proposals cropped and resized
  to 250 x 250, aggregated by pixel-wise maximum), which is not translation-equivariant and so
  cannot be tiled.
- Sizes: the input is zero-padded at the bottom and right to a multiple of 32 and the output
  cropped back, so every pool divides exactly and a tile whose origin is on a multiple of 32 sees
  the whole image's pooling grid (the reference's unpooling layers are told fixed sizes, e.g.
  ``unpool_size: 14``); each unpool is given its pre-pool size explicitly.
- ImageNet weights: the reference starts from Caffe's VGG16, which has no batch norm;
  torchvision's VGG16-BN supplies the convolution network's batch norms too.
"""

from __future__ import annotations

import torch
from torch import nn

from fcn.blocks import on_meta, total_stride
from fcn.errors import FcnpipeError
from fcn.registry import Architecture, ImagenetInit
from fcn.segnet import (
    SEGNET_DECODER,
    copy_vgg16_bn_features,
    make_decoder,
    make_encoder,
    unpooling_forward,
)
from fcn.surgery import fc_as_conv

FC_CHANNELS = 4096
FC6_KERNEL = 7
# The reference's deconvolution stages, deepest first: SegNet's decoder, but the shallowest stage
# has two 64-channel layers (deconv1_1, deconv1_2) before a 1x1 score.
DECONV_STAGES = (*SEGNET_DECODER[:-1], (64, 64))
DECONV_STD = 0.01  # the reference's Gaussian filler for the deconvolution network and the score
# torchvision's fully connected fc6 and fc7 as (name, in channels, kernel) of the convolution they become.
IMAGENET_FC = {"fc6": ("classifier.0", 512, FC6_KERNEL), "fc7": ("classifier.3", FC_CHANNELS, 1)}


class DeconvNet(nn.Module):
    """VGG16-BN with fc6/fc7 as convolutions, mirrored by unpooling and transposed convolutions.

    Tensors in (N, 3, H, W), already normalised; per-class logits out (N, num_classes, H, W).
    """

    in_channels = 3
    margin = 0

    def __init__(self, num_classes: int, *, learnable_upsampling: bool = False) -> None:
        super().__init__()
        del learnable_upsampling  # unpooling with the switches has no weights
        self.num_classes = num_classes
        self.features = make_encoder()
        pad = FC6_KERNEL // 2
        self.fc6 = nn.Conv2d(512, FC_CHANNELS, FC6_KERNEL, padding=pad)
        self.bn6 = nn.BatchNorm2d(FC_CHANNELS)
        self.relu6 = nn.ReLU(inplace=True)
        self.fc7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        self.bn7 = nn.BatchNorm2d(FC_CHANNELS)
        self.relu7 = nn.ReLU(inplace=True)
        self.fc6_deconv = nn.ConvTranspose2d(FC_CHANNELS, 512, FC6_KERNEL, padding=pad)
        self.bn6_deconv = nn.BatchNorm2d(512)
        self.relu6_deconv = nn.ReLU(inplace=True)
        self.decoder = make_decoder(512, DECONV_STAGES, 3, transposed=True)
        self.score = nn.Conv2d(DECONV_STAGES[-1][-1], num_classes, 1)
        self.init_like_reference()

    def init_like_reference(self) -> None:
        """Gaussian (std 0.01) deconvolution network and score; He-normal convolution network and fc6/fc7."""
        if on_meta(self):
            return
        for layer in [*self.features, self.fc6, self.fc7]:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)  # type: ignore[arg-type]
        for layer in [self.fc6_deconv, *self.decoder.modules(), self.score]:
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(layer.weight, std=DECONV_STD)
                nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    @property
    def total_stride(self) -> int:
        """The product of the pooling strides (32): inputs are padded to multiples of it."""
        return total_stride(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits with the input's height and width."""
        return unpooling_forward(x, self.features, self.decoder, self.score, self.fully_connected)

    def fully_connected(self, x: torch.Tensor) -> torch.Tensor:
        """fc6 and fc7 on pool5, then fc6_deconv back to pool5's channels (each with batch norm and ReLU)."""
        x = self.relu6(self.bn6(self.fc6(x)))
        x = self.relu7(self.bn7(self.fc7(x)))
        out: torch.Tensor = self.relu6_deconv(self.bn6_deconv(self.fc6_deconv(x)))
        return out


def imagenet_fc(
    state: dict[str, torch.Tensor], name: str, in_channels: int, kernel: int
) -> dict[str, torch.Tensor]:
    """A fully connected layer of torchvision's VGG16 as the weights of a ``kernel``-square convolution."""
    weight, bias = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    shape = (FC_CHANNELS, in_channels * kernel * kernel)
    if weight is None or bias is None or tuple(weight.shape) != shape or tuple(bias.shape) != (FC_CHANNELS,):
        found = "missing" if weight is None else tuple(weight.shape)
        raise FcnpipeError(
            f"the ImageNet weights are not torchvision's vgg16_bn: {name}.weight should have shape {shape} "
            f"({found}); use vgg16_bn-6c64b313.pth or a state dict in its layout."
        )
    return {"weight": fc_as_conv(weight, in_channels, kernel), "bias": bias}


def deconvnet_surgery(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Net surgery from ImageNet VGG16-BN: convolutions, batch norms, and fc6/fc7 as convolutions."""
    assert isinstance(model, DeconvNet)
    copy_vgg16_bn_features(model.features, state)
    for layer, (name, in_channels, kernel) in IMAGENET_FC.items():
        getattr(model, layer).load_state_dict(imagenet_fc(state, name, in_channels, kernel))


ARCHITECTURES = {
    "deconvnet": Architecture(
        DeconvNet, "Noh et al., ICCV 2015", 252.0, published_classes=21,
        imagenet=ImagenetInit("vgg16_bn", "vgg16_bn-6c64b313.pth", deconvnet_surgery),
    ),
}  # fmt: skip
