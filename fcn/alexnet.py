"""FCN-AlexNet: FCN-32s on an AlexNet trunk (Long, Shelhamer & Darrell, CVPR 2015, Table 1).

Followed: the reference release's ``voc-fcnalex/net.py`` (shelhamer/fcn.berkeleyvision.org), layer
by layer, with torchvision's AlexNet as the trunk so that its ImageNet weights load by net surgery.

- ``features``: torchvision's ``alexnet().features`` (indices 0-12, so ``features.*`` load without
  renaming): conv1 11x11/4 (64), pool1 3/2, conv2 5x5 (192), pool2 3/2, conv3-5 3x3 (384, 256, 256),
  pool5 3/2, ReLU after each convolution. As in the reference, conv1 is padded by 100 (torchvision:
  2), which lets any input, down to 1 x 1, reach fc6, and the pools round up (Caffe's rounding;
  torchvision's pools round down, which would break the fixed crop for some sizes).
- fc6: a 6x6 convolution with 4096 outputs, ImageNet's ``classifier.1`` (4096 x 9216) reshaped to
  4096 x 256 x 6 x 6; ReLU, dropout 0.5. fc7: a 1x1 convolution from ``classifier.4``; ReLU, dropout.
- ``score_fr``: a 1x1 convolution to the classes, zero-initialised as in the reference.
- ``upscore``: a bias-free transposed convolution, kernel 63 and stride 32 as in the reference, set
  to bilinear (the reference's ``surgery.interp``) and fixed unless ``learnable_upsampling``. The
  odd kernel puts every score's centre on a pixel, so the crop offset is whole: following Caffe's
  ``coord_map`` as the reference's ``crop`` does, input pixel ``x`` maps to ``x/32 + 2.09375`` at
  pool5, ``x/32 - 0.40625`` at fc6, and ``x + 18`` in ``upscore``; the output is ``upscore`` cropped
  at 18 to the input's height and width.

Where torchvision's AlexNet departs from the reference's CaffeNet: it is the "one weird trick"
variant (Krizhevsky, 2014): 64, 192, 384, 256, 256 convolution channels instead of CaffeNet's 96,
256, 384, 384, 256, no grouped convolutions (CaffeNet splits conv2, conv4 and conv5 in two groups)
and no local response normalisation after pool1 and pool2. The learned parameters come to
57,089,877 at 21 classes (CaffeNet's: 56,954,261), which is the paper's 57 M. The paper's figure
leaves out the fixed upsampler (the reference does not learn it); its 21 x 21 x 63 x 63 weights add
1,750,329 parameters, so the module holds 58,840,206, 3.2 % above 57 M: the registry's check
counts every parameter, so the figure is not registered (``published_params_m=None``) and
``tests/test_fcn_backbones.py`` checks the learned parameters against 57 M instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fcn.blocks import ConvolutionalFC, total_stride
from fcn.errors import FcnpipeError
from fcn.fcn import PAPER, bilinear_kernel, crop, score_layer
from fcn.registry import Architecture, ImagenetInit
from fcn.surgery import fc_as_conv

# Where input pixel x lands in upscore: conv1's padding of 100 and the kernel sizes fix it.
CROP = 18

# torchvision's AlexNet: (out_channels, kernel, stride, padding) per convolution; "M" a 3/2 pool.
ALEXNET_LAYOUT: tuple[tuple[int, int, int, int] | str, ...] = (
    (64, 11, 4, 2), "M",
    (192, 5, 1, 2), "M",
    (384, 3, 1, 1),
    (256, 3, 1, 1),
    (256, 3, 1, 1), "M",
)  # fmt: skip

# ImageNet AlexNet's fully connected layers that become convolutions: (layer, in_channels, kernel).
FC_AS_CONV = {"classifier.1": ("fc6", 256, 6), "classifier.4": ("fc7", 4096, 1)}
CLASSIFIER_SHAPES = {
    "classifier.1.weight": (4096, 256 * 6 * 6),
    "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096),
    "classifier.4.bias": (4096,),
}


def make_features(first_padding: int = 100) -> nn.Sequential:
    """Torchvision's AlexNet ``features``, with conv1 padded by ``first_padding`` and ceil-mode pools."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in ALEXNET_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            continue
        assert isinstance(item, tuple)
        out_channels, kernel, stride, padding = item
        padding = first_padding if not layers else padding
        layers += [nn.Conv2d(in_channels, out_channels, kernel, stride, padding), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def odd_upsampler(channels: int, factor: int, learnable: bool) -> nn.ConvTranspose2d:
    """A bias-free transposed convolution (kernel 2*factor - 1, stride factor) set to bilinear.

    The odd kernel (voc-fcnalex's 63 for x32) centres each input on an output pixel.
    """
    kernel = 2 * factor - 1
    layer = nn.ConvTranspose2d(channels, channels, kernel, stride=factor, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, kernel))
    layer.weight.requires_grad_(learnable)
    return layer


class FCNAlexNet(ConvolutionalFC):
    """FCN-32s on torchvision's AlexNet trunk: any (N, 3, H, W) in, (N, num_classes, H, W) logits out."""

    in_channels = 3
    margin = 0

    def __init__(self, num_classes: int, *, learnable_upsampling: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = make_features(first_padding=100)
        # The output stride (conv1's 4 times three pools' 2), fixed here: tiles start on its multiples.
        self.total_stride = total_stride(self.features)
        self.add_fc6_fc7(nn.Conv2d(256, 4096, kernel_size=6))
        self.score_fr = score_layer(4096, num_classes)
        self.upscore = odd_upsampler(num_classes, 32, learnable_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits with the input's height and width."""
        h = self.score_fr(self.fc6_fc7(self.features(x)))
        return crop(self.upscore(h), CROP, x)


def expect_shapes(state: dict[str, Any], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise a clear error unless ``state`` holds every name of ``expected`` with its shape."""
    for name, shape in expected.items():
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else tuple(getattr(tensor, "shape", ()))
            raise FcnpipeError(
                f"the state dict is not torchvision's ImageNet {source}: {name} should have shape "
                f"{shape} ({found}); pass torchvision's {source} weights file."
            )


def alexnet_surgery(model: nn.Module, state: dict[str, Any]) -> None:
    """Net surgery from ImageNet AlexNet: ``features`` copied, fc6/fc7 convolutionalised, fc8 dropped."""
    assert isinstance(model, FCNAlexNet)
    features = {f"features.{k}": tuple(v.shape) for k, v in model.features.state_dict().items()}
    expect_shapes(state, features | CLASSIFIER_SHAPES, "alexnet")
    model.features.load_state_dict({k.removeprefix("features."): state[k] for k in features})
    for fc, (name, in_channels, kernel) in FC_AS_CONV.items():
        weight = fc_as_conv(state[f"{fc}.weight"], in_channels, kernel)
        getattr(model, name).load_state_dict({"weight": weight, "bias": state[f"{fc}.bias"]})


ARCHITECTURES = {
    # 57 M in the paper counts the learned parameters only (see above): 58.84 M here.
    "fcn32s-alexnet": Architecture(
        FCNAlexNet,
        PAPER,
        published_params_m=None,
        imagenet=ImagenetInit("alexnet", "alexnet-owt-7be5be79.pth", alexnet_surgery),
    ),
}
