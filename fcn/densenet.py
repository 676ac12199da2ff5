"""FC-DenseNet56, 67 and 103 ("The One Hundred Layers Tiramisu", Jégou et al., CVPR Workshops 2017).

Followed: the paper (arXiv:1611.09326, Table 1 for the layers, Table 2 for FC-DenseNet103) and the
authors' Lasagne release (github.com/SimJeg/FC-DenseNet, ``FC-DenseNet.py`` and ``layers.py``),
layer by layer:

- a first 3x3 convolution (48 maps, bias, no activation);
- five dense blocks on the way down, each layer BN-ReLU-conv3x3 (``growth_rate`` new maps,
  bias)-dropout(0.2) reading the concatenation of the block's input and every earlier layer's new
  maps; the block hands on that whole stack (input and new maps), which is also the skip;
- after each, a transition down: BN-ReLU-conv1x1 (as many maps as come in)-dropout(0.2)-max pool
  2x2 with stride 2, so the total stride is 32;
- a bottleneck dense block, whose new maps only (not its input) go up;
- five transitions up: a 3x3 transposed convolution with stride 2 and no padding (the reference's
  ``crop='valid'``), on the previous block's new maps only, with as many output maps as it has
  input maps (``n_filters_keep``), cropped to the skip's size, then concatenated before the skip
  (the reference's order, so its weights would map one to one);
- on the way up, each dense block again reads the growing stack, and hands only its new maps to
  the next transition up; the last block's whole stack (256 maps for FC-DenseNet103, Table 2's
  ``m``) goes to the final 1x1 convolution (bias) that gives the logits.

The reference's Lasagne ``BatchNormLayer`` has epsilon 1e-4 and running-average momentum 0.1,
kept here. Convolutions start He-uniform (fan in, ReLU gain) with zero biases, as in the
reference (Lasagne's ``HeUniform(gain='relu')``; for the transposed convolution both count the
fan in over its output maps); batch norm starts at weight 1 and bias 0.

Departures, and why:

- Batch norm: the authors use the current batch's statistics at test time too. A tile's output
  would then depend on the other tiles of its batch and on the whole tile, breaking exact
  stitching, so fcnpipe always infers in eval mode, with the running statistics.
- Sizes: the reference takes inputs whose sides are multiples of 32 (its valid transposed
  convolutions are one pixel too large and its concatenations crop centrally, which for a
  difference of one takes the first rows and columns). ``forward`` pads any input with zeros at
  the bottom and right to the next multiple of 32 and crops the logits back; the transposed
  convolution's extra last row and column are dropped, as the reference's centre crop does.

Parameter counts (this module, PyTorch's parameters, so batch norm's running statistics
excluded): FC-DenseNet56 1.38 M, FC-DenseNet67 3.46 M, FC-DenseNet103 9.32 M at CamVid's 11
classes, against the paper's 1.5 M, 3.5 M and 9.4 M; with the running means and variances,
which Lasagne counts as parameters (``get_all_param_values``), they are 1.40 M, 3.50 M and
9.43 M. FC-DenseNet56's published 1.5 M is thus 7 % (with the statistics) to 9 % above the
reference's own layer list, which this module follows exactly (``tests/test_densenet.py`` counts
it layer by layer); the registry checks every figure within 3 %, so FC-DenseNet56's is not
registered (``published_params_m=None``), and FC-DenseNet67's and 103's are.
"""

from __future__ import annotations

import torch
from torch import nn

from fcn.blocks import pad_to_multiple
from fcn.registry import Architecture

FIRST_FILTERS = 48  # maps of the first convolution
DROPOUT = 0.2
BN_EPS = 1e-4  # Lasagne's BatchNormLayer default
POOLS = 5  # transitions down (and up): a total stride of 2**5


def he_uniform(layer: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """He-uniform weights (fan in, ReLU gain) and a zero bias, as Lasagne's ``HeUniform(gain='relu')``."""
    nn.init.kaiming_uniform_(layer.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(layer.bias)  # type: ignore[arg-type]


def bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """BN-ReLU-conv-dropout, the composite layer of the reference's ``BN_ReLU_Conv``."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    he_uniform(conv)
    return [nn.BatchNorm2d(in_channels, eps=BN_EPS), nn.ReLU(inplace=True), conv, nn.Dropout(DROPOUT)]


class DenseBlock(nn.Module):
    """Layers that each read the block's input and all earlier new maps, and add ``growth_rate`` maps."""

    def __init__(self, in_channels: int, num_layers: int, growth_rate: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(*bn_relu_conv(in_channels + i * growth_rate, growth_rate, 3))
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The new maps of each layer, in order; the caller decides whether the input goes on too."""
        new: list[torch.Tensor] = []
        for layer in self.layers:
            new.append(layer(torch.cat([x, *new], 1)))
        return new


class TransitionUp(nn.Module):
    """Upsample by 2 with a 3x3 transposed convolution, crop to the skip, and put the skip after."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, 3, stride=2)
        he_uniform(self.up)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``cat(upsampled x, skip)``; the upsampling is 2n+1 wide, its last row and column go."""
        h, w = skip.shape[-2:]
        return torch.cat([self.up(x)[..., :h, :w], skip], 1)


class FCDenseNet(nn.Module):
    """A fully convolutional DenseNet with five transitions down and up.

    ``layers_per_block`` lists the dense blocks' layer counts: five down, the bottleneck, five up.
    Tensors in (N, 3, H, W), already normalised; per-class logits out (N, num_classes, H, W).
    """

    in_channels = 3
    total_stride = 2**POOLS
    margin = 0

    def __init__(self, num_classes: int, layers_per_block: tuple[int, ...], growth_rate: int) -> None:
        super().__init__()
        if len(layers_per_block) != 2 * POOLS + 1:
            raise ValueError(
                f"need {2 * POOLS + 1} block sizes (down, bottleneck, up), not {layers_per_block}"
            )
        self.num_classes = num_classes
        k = growth_rate
        down, bottleneck, up = (
            layers_per_block[:POOLS],
            layers_per_block[POOLS],
            layers_per_block[POOLS + 1 :],
        )
        self.first_conv = nn.Conv2d(self.in_channels, FIRST_FILTERS, 3, padding=1)
        he_uniform(self.first_conv)

        channels, skips = FIRST_FILTERS, []
        self.down_blocks, self.transitions_down = nn.ModuleList(), nn.ModuleList()
        for layers in down:
            self.down_blocks.append(DenseBlock(channels, layers, k))
            channels += layers * k
            skips.append(channels)
            self.transitions_down.append(nn.Sequential(*bn_relu_conv(channels, channels, 1), nn.MaxPool2d(2)))

        self.bottleneck = DenseBlock(channels, bottleneck, k)
        new = bottleneck * k  # what the next transition up sees: the new maps only
        self.transitions_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for layers, skip in zip(up, reversed(skips), strict=True):
            self.transitions_up.append(TransitionUp(new))
            channels = new + skip
            self.up_blocks.append(DenseBlock(channels, layers, k))
            new = layers * k
        self.classifier = nn.Conv2d(channels + new, num_classes, 1)
        he_uniform(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel class logits with the input's height and width."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.total_stride)
        x = self.first_conv(x)
        skips = []
        for block, transition in zip(self.down_blocks, self.transitions_down, strict=True):
            x = torch.cat([x, *block(x)], 1)
            skips.append(x)
            x = transition(x)
        new = self.bottleneck(x)
        for transition, block, skip in zip(self.transitions_up, self.up_blocks, reversed(skips), strict=True):
            x = transition(torch.cat(new, 1), skip)
            new = block(x)
        out: torch.Tensor = self.classifier(torch.cat([x, *new], 1))
        return out[..., :h, :w]


PAPER = "Jégou et al., CVPR Workshops 2017"


def fc_densenet_architecture(
    layers_per_block: tuple[int, ...], growth_rate: int, published_params_m: float | None
) -> Architecture:
    """An FC-DenseNet trained from scratch; the paper's parameter count is for CamVid's 11 classes."""
    return Architecture(
        lambda num_classes, **_: FCDenseNet(num_classes, layers_per_block, growth_rate),
        PAPER, published_params_m, published_classes=11, imagenet=None,
    )  # fmt: skip


ARCHITECTURES = {
    "fcdensenet56": fc_densenet_architecture((4,) * 11, 12, None),  # the paper: 1.5 M (see above)
    "fcdensenet67": fc_densenet_architecture((5,) * 11, 16, 3.5),
    "fcdensenet103": fc_densenet_architecture((4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16, 9.4),
}
