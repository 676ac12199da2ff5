"""DilatedNet keeps the paper's geometry, identity-initialised context module and VGG16 surgery."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcn import FcnpipeError, build_model, measure_receptive_field
from fcn.dilated import DilatedNet, context_module, large_context_module
from fcn.registry import architectures
from tests.conftest import randomize

ARCHS = ["dilated8-frontend", "dilated8", "dilated8-large"]


@pytest.fixture(scope="module")
def front_end() -> DilatedNet:
    """A front-end (3 classes) whose every weight is random, frozen: gradients reach inputs only."""
    model = randomize(build_model("dilated8-frontend", 3), seed=4)
    assert isinstance(model, DilatedNet)
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def dilated8() -> DilatedNet:
    """A ``dilated8`` (3 classes) as built, asked for a learnable upsampling it has no use for."""
    model = build_model("dilated8", 3, learnable_upsampling=True)
    assert isinstance(model, DilatedNet)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_both_are_registered_with_the_paper_and_vgg16_surgery(arch: str) -> None:
    spec = architectures()[arch]
    assert spec.paper == "Yu & Koltun, ICLR 2016"
    assert spec.imagenet is not None
    assert (spec.imagenet.source, spec.imagenet.filename) == ("vgg16", "vgg16-397923af.pth")


def test_front_end_is_vgg16_without_pool4_and_pool5_and_dilated_after_them(front_end: DilatedNet) -> None:
    model = front_end
    assert (model.num_classes, model.total_stride, model.context) == (3, 8, None)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 13 and len(pools) == 3
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3
    assert (model.fc6.kernel_size, model.fc6.dilation, model.fc6.out_channels) == ((7, 7), (4, 4), 4096)
    assert (model.fc7.kernel_size, model.fc7.out_channels) == ((1, 1), 4096)
    with torch.no_grad():
        assert model.scores(torch.zeros(1, 3, 64, 96)).shape == (1, 3, 8, 12)


def test_dilated8_adds_the_basic_context_module_on_the_class_scores(dilated8: DilatedNet) -> None:
    assert (dilated8.num_classes, dilated8.total_stride) == (3, 8)
    assert dilated8.context is not None
    convs = [m for m in dilated8.context if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1]
    assert all(c.in_channels == c.out_channels == 3 for c in convs)
    assert isinstance(dilated8.context[-2], nn.ReLU)  # the last 3x3 layer's; none after the 1x1


def test_receptive_fields_match_a_hand_count(front_end: DilatedNet, dilated8: DilatedNet) -> None:
    # A stride-8 score k reads input pixels 8k-186 .. 8k+193 (the reference's margin of 186):
    # fc6 reaches 12 score positions, conv5 2 x 3 more, conv4 3 more (21 at stride 8), the pools
    # and the remaining convolutions add 2*21+1+3 at stride 4, and so on down to the input. The x8
    # bilinear step reads scores k-1..k (output phases 0-3) or k..k+1 (phases 4-7).
    single, union = measure_receptive_field(front_end, phases=1), measure_receptive_field(front_end)
    assert (single.lo, single.hi) == (-194, 193)
    assert (union.lo, union.hi) == (-197, 197) and union.halo(8) == 200
    # The context module reads 1+1+2+4+8+16+1 = 33 scores on each side: 264 px more.
    full = measure_receptive_field(dilated8)
    assert (full.lo, full.hi) == (-197 - 264, 197 + 264) and full.halo(8) == 464


def test_the_real_front_end_s_gradient_stays_inside_the_measured_field(front_end: DilatedNet) -> None:
    field = measure_receptive_field(front_end)
    x = torch.randn(1, 3, 8, 432, requires_grad=True)
    column = 216 + 5
    front_end(x)[0, :, 4, column].sum().backward()
    assert x.grad is not None
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    lo, hi = int(cols.min()) - column, int(cols.max()) - column
    assert field.lo <= lo and hi <= field.hi
    assert hi - lo > 0.8 * (field.hi - field.lo)  # max pooling routes gradient to one pixel per window


def test_odd_sizes_are_zero_extended_to_the_pooling_grid(front_end: DilatedNet) -> None:
    # A tile ending at the image's edge and the whole image must both see zeros beyond it.
    x = torch.randn(1, 3, 37, 51)
    with torch.no_grad():
        out = front_end(x)
        padded = front_end(F.pad(x, (0, 5, 0, 3)))
    assert out.shape == (1, 3, 37, 51)
    torch.testing.assert_close(out, padded[..., :37, :51])


def test_identity_context_module_computes_relu_of_its_input() -> None:
    context = context_module(5).eval()
    x = torch.randn(2, 5, 13, 17)
    with torch.no_grad():
        torch.testing.assert_close(context(x), torch.relu(x), rtol=0, atol=1e-6)
        positive = x.abs()
        torch.testing.assert_close(context(positive), positive, rtol=0, atol=1e-6)
        # The test can fail: mixing channel 1 into channel 0 changes the output.
        context.conv5_1.weight[0, 1, 1, 1] = 1.0
        assert not torch.allclose(context(positive), positive)


def test_the_large_context_module_has_table_1_s_widths_and_starts_as_the_identity() -> None:
    classes = 5
    module = large_context_module(classes, noise=0.0).eval()
    convs = [m for m in module if isinstance(m, torch.nn.Conv2d)]
    widths = [c.out_channels // classes for c in convs]
    assert widths == [2, 2, 4, 8, 16, 32, 32, 1]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16, 1, 1]
    x = torch.randn(2, classes, 13, 17)
    with torch.no_grad():
        torch.testing.assert_close(module(x), torch.relu(x), rtol=0, atol=1e-5)
        # With the paper's noise (sigma far below C / c_{i+1}) it is the identity only nearly.
        noisy = large_context_module(classes).eval()(x.abs())
    assert not torch.equal(noisy, x.abs())
    torch.testing.assert_close(noisy, x.abs(), rtol=0, atol=0.05 * float(x.abs().max()))


def test_dilated8_at_initialisation_equals_the_front_end_with_the_same_weights(front_end: DilatedNet) -> None:
    # Non-negative scores (fc7's ReLU output weighed by non-negative weights) pass the context
    # module's ReLUs unchanged.
    front = copy.deepcopy(front_end)
    with torch.no_grad():
        front.final.weight.abs_()
        front.final.bias.abs_()  # type: ignore[union-attr]
    full = build_model("dilated8", 3).eval()
    missing, unexpected = full.load_state_dict(front.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("context.") for k in missing)
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        expected = front(x)
        got = full(x)
    assert expected.min() >= 0 and expected.max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6 * float(expected.max()))


@pytest.fixture(scope="module")
def imagenet_dilated8(vgg16_state: dict[str, torch.Tensor]) -> DilatedNet:
    """``dilated8`` (3 classes) after net surgery from a (random) ImageNet VGG16 state dict."""
    model = build_model("dilated8", 3)
    assert isinstance(model, DilatedNet)
    spec = architectures()["dilated8"].imagenet
    assert spec is not None
    spec.apply(model, vgg16_state)
    return model


def test_surgery_copies_the_convolutions_and_fc_layers(
    imagenet_dilated8: DilatedNet, vgg16_state: dict[str, torch.Tensor]
) -> None:
    model = imagenet_dilated8
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, vgg16_state[f"features.{key}"]), key
    for layer, fc in ((model.fc6, 0), (model.fc7, 3)):
        assert torch.equal(layer.weight.flatten(1), vgg16_state[f"classifier.{fc}.weight"])
        assert torch.equal(layer.bias, vgg16_state[f"classifier.{fc}.bias"])  # type: ignore[arg-type]
    # ImageNet's 1000-class fc8 is dropped; the scores and the context keep their initialisation.
    assert model.final.weight.std() < 0.01 and not model.final.bias.any()  # type: ignore[union-attr]
    assert model.context is not None
    assert torch.equal(model.context.final.weight[:, :, 0, 0], torch.eye(3))


def test_dilated_fc6_is_the_classifier_over_a_window_sampled_every_4_positions(
    imagenet_dilated8: DilatedNet, vgg16_state: dict[str, torch.Tensor]
) -> None:
    # Without pool4 and pool5, conv5's map is 4x denser than the classifier's 7x7 pool5 window:
    # dilating fc6 by 4 lets it read the same window's spacing.
    fc6 = imagenet_dilated8.fc6
    conv5 = torch.randn(1, 512, 25, 25, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one = F.conv2d(conv5, fc6.weight, fc6.bias, dilation=fc6.dilation)
        expected = F.linear(conv5[:, :, ::4, ::4].flatten(1), vgg16_state["classifier.0.weight"],
                            vgg16_state["classifier.0.bias"])  # fmt: skip
    assert one.shape == (1, 4096, 1, 1)
    # sums of 25,088 float32 products in two orders: about 1e-5 apart, depending on the draw
    torch.testing.assert_close(one[:, :, 0, 0], expected, rtol=1e-4, atol=1e-4)


def test_surgery_rejects_other_state_dicts(
    imagenet_dilated8: DilatedNet, vgg16_state: dict[str, torch.Tensor]
) -> None:
    broken = dict(vgg16_state)
    broken["features.24.weight"] = broken["features.24.weight"][:, :100]
    spec = architectures()["dilated8"].imagenet
    assert spec is not None
    with pytest.raises(FcnpipeError, match=r"features\.24\.weight"):
        spec.apply(imagenet_dilated8, broken)
