"""FC-DenseNet keeps the reference's channel arithmetic, upsamples only new maps and tiles exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fcn import build_model, measure_receptive_field
from fcn.densenet import FCDenseNet
from fcn.registry import architectures
from tests.conftest import randomize

# name: (layers per block: five down, the bottleneck, five up; growth rate), from the paper
CONFIGS = {
    "fcdensenet56": ((4,) * 11, 12),
    "fcdensenet67": ((5,) * 11, 16),
    "fcdensenet103": ((4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16),
}
ARCHS = list(CONFIGS)


def densenet(arch: str, num_classes: int = 11) -> FCDenseNet:
    """The registered model, typed."""
    model = build_model(arch, num_classes)
    assert isinstance(model, FCDenseNet)
    return model


def reference_parameter_count(layers: tuple[int, ...], k: int, num_classes: int) -> int:
    """The parameters of the reference's layer list (``FC-DenseNet.py``), counted by hand.

    Every convolution has a bias; batch norm has a scale and a shift (its running statistics are
    buffers, not parameters).
    """

    def conv(c_in: int, c_out: int, size: int) -> int:
        return c_in * c_out * size * size + c_out

    def block(c_in: int, n: int) -> int:  # BN-ReLU-conv3x3 per layer, on a growing stack
        return sum(2 * (c_in + i * k) + conv(c_in + i * k, k, 3) for i in range(n))

    total, m, skips = conv(3, 48, 3), 48, []
    for n in layers[:5]:
        total += block(m, n)
        m += n * k
        skips.append(m)
        total += 2 * m + conv(m, m, 1)  # transition down
    total += block(m, layers[5])
    upsampled = layers[5] * k  # n_filters_keep
    for n, skip in zip(layers[6:], reversed(skips), strict=True):
        total += conv(upsampled, upsampled, 3)  # the transposed convolution, as many maps out as in
        m = upsampled + skip
        total += block(m, n)
        upsampled = n * k
    return total + conv(m + upsampled, num_classes, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_registered_from_scratch_with_the_paper_s_camvid_classes(arch: str) -> None:
    spec = architectures()[arch]
    assert spec.paper == "Jégou et al., CVPR Workshops 2017"
    assert spec.imagenet is None and spec.published_classes == 11
    model = build_model(arch, 3, learnable_upsampling=True)  # a keyword that means nothing here
    assert (model.num_classes, model.total_stride) == (3, 32)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_is_the_reference_s_layer_list(arch: str) -> None:
    layers, k = CONFIGS[arch]
    for classes in (11, 2):
        count = sum(p.numel() for p in densenet(arch, classes).parameters())
        assert count == reference_parameter_count(layers, k, classes)


@pytest.mark.parametrize(("arch", "lasagne_millions"), [("fcdensenet67", 3.5), ("fcdensenet103", 9.4)])
def test_parameter_count_with_running_statistics_rounds_to_the_paper_s(
    arch: str, lasagne_millions: float
) -> None:
    # Lasagne's get_all_param_values, which the reference's summary() counts, includes batch
    # norm's running mean and inverse standard deviation.
    model = densenet(arch)
    count = sum(p.numel() for p in model.parameters())
    count += sum(
        b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    assert round(count / 1e6, 1) == lasagne_millions


def stack_widths(model: FCDenseNet, k: int) -> list[int]:
    """Table 2's ``m`` after each dense block: the maps in the stack, input and new maps together."""

    def width(block: nn.Module) -> int:
        last = block.layers[-1]
        assert isinstance(last[0], nn.BatchNorm2d)
        return int(last[0].num_features) + k

    return [width(b) for b in [*model.down_blocks, model.bottleneck, *model.up_blocks]]


def test_fcdensenet103_stacks_have_table_2_s_widths() -> None:
    # Table 2 of the paper, with the README's correction: the values from the bottleneck on are
    # 16 more than printed (896, 1088, 816, ...); 576 is printed 578.
    model = densenet("fcdensenet103")
    assert stack_widths(model, 16) == [112, 192, 304, 464, 656, 896, 1088, 816, 576, 384, 256]
    assert model.classifier.in_channels == 256


@pytest.mark.parametrize("arch", ARCHS)
def test_each_transition_up_reads_only_the_previous_block_s_new_maps(arch: str) -> None:
    layers, k = CONFIGS[arch]
    model = densenet(arch)
    for i, transition in enumerate(model.transitions_up):
        up = transition.up
        new_maps = layers[5 + i] * k  # the reference's n_filters_keep
        assert (up.in_channels, up.out_channels) == (new_maps, new_maps)
        assert (up.kernel_size, up.stride, up.padding) == ((3, 3), (2, 2), (0, 0))


def silence_the_block_s_input(block: nn.Module) -> None:
    """Zero the weights with which each layer of ``block`` reads the block's input.

    The block's new maps are then constant (the biases), whatever its input.
    """
    c_in = block.layers[0][0].num_features
    with torch.no_grad():
        for layer in block.layers:
            conv = layer[2]
            assert isinstance(conv, nn.Conv2d)
            conv.weight[:, :c_in] = 0


@pytest.mark.parametrize("arch", ["fcdensenet56", "fcdensenet103"])
def test_transition_up_input_does_not_change_with_the_preceding_block_s_input(arch: str) -> None:
    # If a transposed convolution saw the block's input as well as its new maps, perturbing the
    # input would reach it directly: with the new maps made independent of the input, it must not.
    model = randomize(densenet(arch, 3), seed=5)
    preceding = [model.bottleneck, *model.up_blocks[:-1]]
    for block in preceding:
        silence_the_block_s_input(block)
    seen: dict[str, list[torch.Tensor]] = {"block input": [], "transition input": []}
    hooks = [
        *(b.register_forward_pre_hook(lambda _, a: seen["block input"].append(a[0])) for b in preceding),
        *(t.up.register_forward_pre_hook(lambda _, a: seen["transition input"].append(a[0]))
          for t in model.transitions_up),
    ]  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(1, 3, 64, 96, generator=gen))
    for hook in hooks:
        hook.remove()
    n = len(preceding)
    for name, first, second in (
        ("block input", seen["block input"][:n], seen["block input"][n:]),
        ("transition input", seen["transition input"][:n], seen["transition input"][n:]),
    ):
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b) == (name == "transition input"), name


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_have_the_input_s_size_for_odd_sizes(arch: str) -> None:
    model = randomize(densenet(arch, 4))
    with torch.no_grad():
        for h, w in [(1, 1), (31, 33), (45, 70)]:
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, 4, h, w)
            assert torch.isfinite(out).all()


def tile_error(model: nn.Module, width: int, halo: int) -> float:
    """Largest logit difference on a core of 64 columns between one tile read ``halo`` around it and
    the whole strip, relative to the logits' span (float64).

    The strip is 64 rows high, so only the columns are cut: enough to test the field in one axis,
    the same in the other by symmetry of the layers.
    """
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 64, width, generator=gen, dtype=torch.float64)
    core = -(-halo // 32) * 32 + 32  # an origin on the pooling grid with a halo's room to its left
    with torch.no_grad():
        whole = model(image)[..., core : core + 64]
        tile = model(image[..., core - halo : core + 64 + halo])[..., halo : halo + 64]
    return float((tile - whole).abs().max() / (whole.max() - whole.min()))


def strip_width(halo: int) -> int:
    """A strip with a halo's room on both sides of the core, and an odd width to pad."""
    return -(-halo // 32) * 32 + 32 + 64 + halo + 33


@pytest.mark.parametrize(
    "arch",
    [pytest.param(a, marks=pytest.mark.slow) for a in ("fcdensenet56", "fcdensenet67", "fcdensenet103")],
)
def test_a_tile_at_the_measured_halo_equals_the_whole_image_and_a_short_halo_does_not(arch: str) -> None:
    # The generic stitch test's scene is smaller than these halos, so each of its tiles is the
    # whole scene; here the scene is wide enough for the halo to cut it.
    model = randomize(densenet(arch, 4), seed=7).double()
    halo = measure_receptive_field(model).halo(32)
    assert tile_error(model, strip_width(halo), halo) < 1e-12
    # Far pixels' influence fades (random weights): at two strides it is still well above rounding.
    assert tile_error(model, strip_width(halo), 64) > 1e-9
