"""SegNet, SegNet-Basic and DeconvNet: unpooling, the reference's layers, ImageNet surgery, tiling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcn import FcnpipeError, build_model
from fcn.deconvnet import DeconvNet, deconvnet_surgery
from fcn.receptive_field import measure_receptive_field
from fcn.registry import architectures
from fcn.segnet import DecoderStage, Switch, conv_bn, segnet_surgery
from fcn.vgg import make_features

# The reference prototxts' layers as (in, out, kernel, batch norm), transcribed by hand.
VGG16_CONVS = [
    (3, 64, 3, True), (64, 64, 3, True), (64, 128, 3, True), (128, 128, 3, True),
    (128, 256, 3, True), (256, 256, 3, True), (256, 256, 3, True),
    (256, 512, 3, True), (512, 512, 3, True), (512, 512, 3, True),
    (512, 512, 3, True), (512, 512, 3, True), (512, 512, 3, True),
]  # fmt: skip
# conv5_3_D .. conv1_2_D of segnet_train.prototxt (deconv5_1 .. deconv1_1 of DeconvNet's deploy file).
MIRRORED = [
    (512, 512, 3, True), (512, 512, 3, True), (512, 512, 3, True),
    (512, 512, 3, True), (512, 512, 3, True), (512, 256, 3, True),
    (256, 256, 3, True), (256, 256, 3, True), (256, 128, 3, True),
    (128, 128, 3, True), (128, 64, 3, True),
    (64, 64, 3, True),
]  # fmt: skip
CLASSES = 11
SEGNET = [*VGG16_CONVS, *MIRRORED, (64, CLASSES, 3, False)]  # conv1_1_D scores the classes
SEGNET_BASIC = [
    (3, 64, 7, True), (64, 64, 7, True), (64, 64, 7, True), (64, 64, 7, True),  # conv1 .. conv4
    (64, 64, 7, True), (64, 64, 7, True), (64, 64, 7, True), (64, 64, 7, True),  # conv_decode4 .. 1
    (64, CLASSES, 1, False),  # conv_classifier
]  # fmt: skip
DECONVNET = [
    *VGG16_CONVS,
    (512, 4096, 7, True), (4096, 4096, 1, True), (4096, 512, 7, True),  # fc6, fc7, fc6-deconv
    *MIRRORED, (64, 64, 3, True),  # deconv1_2
    (64, CLASSES, 1, False),  # seg-score
]  # fmt: skip


def reference_count(layers: list[tuple[int, int, int, bool]]) -> int:
    """Weights and biases of each layer, and a scale and shift per channel of each batch norm."""
    return sum(k * k * cin * cout + cout + (2 * cout if bn else 0) for cin, cout, k, bn in layers)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_decoder_stage_puts_each_maximum_back_where_it_was_and_zeros_elsewhere() -> None:
    # A stage whose convolution and batch norm pass values through, so its output is the unpooling's.
    stage = DecoderStage(conv_bn(2, 2, 3)).eval()
    with torch.no_grad():
        nn.init.dirac_(stage.layers[0].weight)
        nn.init.zeros_(stage.layers[0].bias)
    x = (
        torch.rand(1, 2, 7, 9, generator=torch.Generator().manual_seed(0)) + 0.1
    )  # odd: pools drop a row, a column
    pooled, indices = nn.MaxPool2d(2, 2, return_indices=True)(x)
    with torch.no_grad():
        out = stage(pooled, Switch(indices, x.shape)) * (1 + stage.layers[1].eps) ** 0.5

    # The expected map, built without indices: a pixel keeps its value where it is its window's maximum.
    window_max = pooled.repeat_interleave(2, -2).repeat_interleave(2, -1)
    expected = torch.zeros_like(x)
    inside = x[..., :6, :8]
    expected[..., :6, :8] = torch.where(inside == window_max, inside, 0.0)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)
    assert int((out != 0).sum()) == pooled.numel()  # one value per window, the last row and column empty


@pytest.mark.parametrize(
    ("arch", "layers", "unpools"),
    [("segnet", SEGNET, 5), ("segnet-basic", SEGNET_BASIC, 4), ("deconvnet", DECONVNET, 5)],
)
def test_networks_have_the_reference_prototxt_s_layers(
    arch: str, layers: list[tuple[int, int, int, bool]], unpools: int
) -> None:
    with torch.device("meta"):  # shapes without storage: DeconvNet would take 1 GB
        model = build_model(arch, CLASSES)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    found = [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs]
    assert found == [(cin, cout, k) for cin, cout, k, _ in layers]
    assert count(model) == reference_count(layers)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == sum(bn for *_, bn in layers)
    assert sum(isinstance(m, nn.MaxUnpool2d) for m in model.modules()) == unpools
    assert model.total_stride == 2**unpools


@pytest.mark.parametrize("arch", ["segnet", "segnet-basic"])
def test_logits_have_the_input_s_size_for_odd_sizes(arch: str) -> None:
    model = build_model(arch, 3, learnable_upsampling=True).eval()  # the keyword means nothing here
    with torch.no_grad():
        for h, w in [(1, 1), (17, 23), (33, 50)]:
            assert model(torch.randn(2, 3, h, w)).shape == (2, 3, h, w)


def test_only_segnet_and_deconvnet_start_from_imagenet_vgg16_bn() -> None:
    specs = architectures()
    for arch in ("segnet", "deconvnet"):
        init = specs[arch].imagenet
        assert init is not None
        assert (init.source, init.filename) == ("vgg16_bn", "vgg16_bn-6c64b313.pth")
    assert specs["segnet-basic"].imagenet is None


@pytest.fixture(scope="module")
def vgg16_bn_state() -> dict[str, torch.Tensor]:
    """torchvision's VGG16-BN layout, randomly initialised (nothing can be downloaded)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16_bn().state_dict()


def test_segnet_surgery_copies_vgg16_bn_s_features_and_leaves_the_decoder(
    vgg16_bn_state: dict[str, torch.Tensor],
) -> None:
    model = build_model("segnet", CLASSES)
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    segnet_surgery(model, vgg16_bn_state)
    copied = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    assert copied.keys() == {k for k in vgg16_bn_state if k.startswith("features.")}
    for name, tensor in copied.items():
        assert torch.equal(tensor, vgg16_bn_state[name]), name
    for name, tensor in model.decoder.state_dict().items():
        assert torch.equal(tensor, decoder[name]), name


def test_surgery_refuses_plain_vgg16_with_a_sentence() -> None:
    plain = {f"features.{k}": v for k, v in make_features(1).state_dict().items()}  # no batch norms
    with pytest.raises(FcnpipeError, match="vgg16_bn"):
        segnet_surgery(build_model("segnet", CLASSES), plain)


@pytest.mark.slow
def test_deconvnet_surgery_copies_features_and_fc6_fc7_as_convolutions(
    vgg16_bn_state: dict[str, torch.Tensor],
) -> None:
    model = DeconvNet(21)
    deconvnet_surgery(model, vgg16_bn_state)
    for name, tensor in model.features.state_dict().items():
        assert torch.equal(tensor, vgg16_bn_state[f"features.{name}"]), name
    fc6, fc7 = vgg16_bn_state["classifier.0.weight"], vgg16_bn_state["classifier.3.weight"]
    assert torch.equal(model.fc6.weight, fc6.reshape(4096, 512, 7, 7))
    assert torch.equal(model.fc6.bias, vgg16_bn_state["classifier.0.bias"])  # type: ignore[arg-type]
    assert torch.equal(model.fc7.weight[..., 0, 0], fc7)
    assert torch.equal(model.fc7.bias, vgg16_bn_state["classifier.3.bias"])  # type: ignore[arg-type]
    # fc6 as a convolution computes the classifier's fc6 on a 7x7 pool5 map (padding 3: the centre).
    pool5 = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        centre = model.fc6(pool5)[0, :, 3, 3]
        torch.testing.assert_close(
            centre, F.linear(pool5.flatten(), fc6, vgg16_bn_state["classifier.0.bias"])
        )


def tile_equals_whole(model: nn.Module, height: int, width: int, core: int) -> None:
    """Each core of a tile read with the measured halo equals the whole-image pass there."""
    stride = int(model.total_stride)  # type: ignore[arg-type]
    # One period of the total stride holds every phase of the pooling grid; 256 px fit these fields.
    halo = measure_receptive_field(model, size=256, phases=stride).halo(stride)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(x)
        # An interior core, and the bottom-right one, whose tile the image's edge cuts.
        for row, col in [(halo + stride, halo + stride), (height // core * core, width // core * core)]:
            r0, c0 = max(0, row - halo), max(0, col - halo)
            r1, c1 = min(height, row + core + halo), min(width, col + core + halo)
            assert r1 - r0 < height or c1 - c0 < width  # a real tile, not the image
            tile = model(x[..., r0:r1, c0:c1])
            got = tile[..., row - r0 : row - r0 + core, col - c0 : col - c0 + core]
            expected = whole[..., row : row + core, col : col + core]
            torch.testing.assert_close(got, expected, atol=1e-5 * float(whole.abs().max()), rtol=0)


def test_segnet_basic_tile_at_the_measured_halo_equals_the_whole_image_pass() -> None:
    # The builder's He initialisation keeps the input's signal alive through the batch norms.
    tile_equals_whole(build_model("segnet-basic", 3).eval(), 273, 151, 16)


@pytest.mark.slow
def test_segnet_tile_at_the_measured_halo_equals_the_whole_image_pass() -> None:
    tile_equals_whole(build_model("segnet", 3).eval(), 545, 577, 32)
