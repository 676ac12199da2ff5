"""FCN-GoogLeNet: FCN-32s on a GoogLeNet trunk (Long, Shelhamer & Darrell, CVPR 2015, Table 1).

Followed: the paper's section 4.1 (GoogLeNet "with the final average pooling layer discarded", a
1x1 convolution scoring the last layer, bilinear upsampling by 32; the release has no FCN-GoogLeNet
net.py) on torchvision's ``googlenet`` as the trunk, so that its ImageNet weights load by net
surgery, layer by layer:

- ``trunk``: torchvision's layers under their torchvision names (``conv1`` ... ``inception5b``, so
  its state dict is torchvision's without renaming): conv1 7x7/2, maxpool1 3/2, conv2 1x1, conv3 3x3,
  maxpool2 3/2, inception 3a-3b, maxpool3 3/2, inception 4a-4e, maxpool4 2/2, inception 5a-5b (1024
  channels, stride 32). Every convolution is bias-free and followed by batch norm (eps 1e-3) and a
  ReLU; the pools round up, as torchvision's (and Caffe's) do. The average pool, dropout and fc are
  removed; the auxiliary classifiers are off.
- ``score_fr``: a 1x1 convolution on inception5b, zero-initialised as in the FCN reference.
- ``upscore``: a bias-free transposed convolution, kernel 63 and stride 32, set to bilinear and fixed
  unless ``learnable_upsampling`` (as FCN-AlexNet's: :func:`fcn.alexnet.odd_upsampler`).

Geometry. The input is padded with zeros at the bottom and right to a multiple of 32, so a tile
(which starts on a multiple of 32) and the whole image see the same pooling grid, and the pools'
ceil rounding never reaches past the padded input. Through the pools' offsets inception5b's
position ``i`` is centred on input pixel ``32 i + 22``. The score map is padded by one position on
every side by replicating its edge, so that every output pixel lies between two score positions
and the upsampling is bilinear with clamped edges (as ``F.interpolate``), not faded towards zero
within 22 px of the image's edges. Position ``i`` is then ``i + 1`` in the padded map, centred at
``32 (i + 1) + 31`` in ``upscore``: input pixel ``x`` is ``upscore`` pixel ``x + 41``, where the
output is cropped to the input's height and width.

Where torchvision's GoogLeNet departs from the paper's (Szegedy et al., CVPR 2015): batch norm after
every convolution instead of convolution biases, no local response normalisation, and a 3x3 instead
of a 5x5 convolution in each inception module's "5x5" branch (a known torchvision bug, kept for its
weights: pytorch/vision#906). Its ImageNet weights expect inputs scaled to [-1, 1]
(``transform_input``); the model takes torchvision's ImageNet normalisation, as the other networks
do, and converts it first, as torchvision's ``googlenet(weights=...)`` does. The paper's 6 M
parameters are the learned ones, without the fixed upsampler: the original GoogLeNet trunk has
5,973,552 and its scorer 21,525 at 21 classes (5.995 M). Here the trunk has 5,599,904 (the 3x3
kernels: 380,928 fewer; batch norm's scale and shift: 7,280 more than the biases), the scorer
21,525 and the upsampler 1,750,329: 7.37 M in all, 5.62 M learned, neither within 3 % of 6 M, so
the figure is not registered (``published_params_m=None``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from fcn.alexnet import expect_shapes, odd_upsampler
from fcn.blocks import pad_to_multiple, total_stride
from fcn.fcn import PAPER, crop, score_layer
from fcn.registry import Architecture, ImagenetInit

# Where input pixel x lands in upscore: inception5b's position i, centred on input pixel 32 i + 22,
# is position i + 1 after the replicated edge, centred on upscore pixel 32 (i + 1) + 31 = 32 i + 63.
CROP = 41

# Inception modules in torchvision's order: (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj).
INCEPTIONS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}
# The max pools between the stages: the pool that follows each of these modules.
POOLS_AFTER = {"conv1": "maxpool1", "conv3": "maxpool2", "inception3b": "maxpool3", "inception4e": "maxpool4"}

# torchvision's transform_input: ImageNet-normalised input -> (x - 0.5) / 0.5 on the [0, 1] scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicConv2d(nn.Module):
    """A bias-free convolution, batch norm and ReLU (torchvision's ``BasicConv2d``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution, batch norm, ReLU."""
        out: torch.Tensor = self.relu(self.bn(self.conv(x)))
        return out


class Inception(nn.Module):
    """Four parallel branches concatenated (torchvision's ``Inception``, "5x5" branch as 3x3)."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1)
        )
        # 3x3 where the paper has 5x5: torchvision's weights were trained so (pytorch/vision#906).
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branches' outputs, stacked along channels."""
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def make_trunk() -> nn.Sequential:
    """Torchvision's GoogLeNet from conv1 to inception5b, under its parameter names."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=BasicConv2d(3, 64, 7, stride=2, padding=3),
        conv2=BasicConv2d(64, 64, 1),
        conv3=BasicConv2d(64, 192, 3, padding=1),
    )
    layers.update((name, Inception(*channels)) for name, channels in INCEPTIONS.items())
    ordered: OrderedDict[str, nn.Module] = OrderedDict()
    for name, layer in layers.items():
        ordered[name] = layer
        if name in POOLS_AFTER:
            kernel = 2 if name == "inception4e" else 3  # maxpool4 is 2x2, as torchvision's
            ordered[POOLS_AFTER[name]] = nn.MaxPool2d(kernel, stride=2, ceil_mode=True)
    return nn.Sequential(ordered)


def to_googlenet_input(x: torch.Tensor) -> torch.Tensor:
    """Turn ImageNet-normalised input into the [-1, 1] scale torchvision's weights expect."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean - 0.5) / 0.5


class FCNGoogLeNet(nn.Module):
    """FCN-32s on torchvision's GoogLeNet trunk: any (N, 3, H, W) in, (N, num_classes, H, W) logits out."""

    in_channels = 3
    margin = 0

    def __init__(self, num_classes: int, *, learnable_upsampling: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.trunk = make_trunk()
        # The output stride (conv1's 2 times four pools' 2), fixed here: tiles start on its multiples.
        self.total_stride = total_stride(self.trunk)
        self.score_fr = score_layer(1024, num_classes)
        self.edge = nn.ReplicationPad2d(1)
        self.upscore = odd_upsampler(num_classes, 32, learnable_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits with the input's height and width."""
        h = self.trunk(pad_to_multiple(to_googlenet_input(x), self.total_stride))
        return crop(self.upscore(self.edge(self.score_fr(h))), CROP, x)


def googlenet_surgery(model: nn.Module, state: dict[str, Any]) -> None:
    """Net surgery from ImageNet GoogLeNet: the trunk copied; fc and the auxiliary classifiers dropped."""
    assert isinstance(model, FCNGoogLeNet)
    # Batch norm's counters are not needed (the momentum is set) and not in every file: not required.
    trunk = {
        k: tuple(v.shape)
        for k, v in model.trunk.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    expect_shapes(state, trunk, "googlenet")
    model.trunk.load_state_dict({k: state[k] for k in trunk}, strict=False)


ARCHITECTURES = {
    # 6 M in the paper is the original GoogLeNet's learned parameters (see above): 7.37 M here.
    "fcn32s-googlenet": Architecture(
        FCNGoogLeNet,
        PAPER,
        published_params_m=None,
        imagenet=ImagenetInit("googlenet", "googlenet-1378be20.pth", googlenet_surgery),
    ),
}
