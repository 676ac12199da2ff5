"""The networks keep the reference release's geometry, initialisation and net surgery."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcn import (
    FcnpipeError,
    available_models,
    build_model,
    convolutionalize,
    init_from_parent,
    init_from_vgg16,
    measure_receptive_field,
)
from fcn.fcn import FCN, bilinear_kernel, init_from_scratch, upsampler
from fcn.receptive_field import one_channel_replica
from tests.conftest import randomize

ARCHS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]


def test_registry_lists_the_four_fcns_and_rejects_other_names() -> None:
    assert {*ARCHS, "pointwise"} <= set(available_models())
    with pytest.raises(FcnpipeError) as info:
        build_model("fcn4s", 21)
    for name in available_models():
        assert name in str(info.value)


# fcn8s-atonce has fcn8s's layers exactly (only the skip inputs are scaled): the same geometry.
@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_output_size_equals_input_size_for_every_size_up_to_64(arch: str) -> None:
    # Output size depends on kernels, strides, paddings and crops only, which the one-channel
    # replica keeps. Every layer treats height and width alike and apart, so pairing each height
    # with a different width (h, 65 - h) covers every size of either axis in 64 passes, not 4096.
    replica = one_channel_replica(build_model(arch, 3)).float()
    with torch.no_grad():
        for h in range(1, 65):
            w = 65 - h
            assert replica(torch.zeros(1, 1, h, w)).shape[-2:] == (h, w), (h, w)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_size_equals_input_size_for_random_sizes_up_to_1000(arch: str) -> None:
    replica = one_channel_replica(build_model(arch, 3)).float()
    rng = random.Random(arch)
    with torch.no_grad():
        for _ in range(30):
            h, w = rng.randint(1, 1000), rng.randint(1, 1000)
            assert replica(torch.zeros(1, 1, h, w)).shape[-2:] == (h, w), (h, w)


# ~7 s each: FCN-8s stands for the family in the default set
FULL_SIZE = [a if a == "fcn8s" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS]


@pytest.mark.parametrize("arch", FULL_SIZE)
def test_real_model_gives_per_class_logits_at_input_size(arch: str) -> None:
    model = randomize(build_model(arch, 4))
    with torch.no_grad():
        for h, w in [(1, 1), (31, 33), (70, 45)]:
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, 4, h, w)
            assert torch.isfinite(out).all()


def test_fcn8s_has_the_papers_parameter_count() -> None:
    # The paper reports 134M parameters for FCN-8s on PASCAL VOC (21 classes).
    count = sum(p.numel() for p in build_model("fcn8s", 21).parameters())
    assert abs(count - 134.5e6) < 0.1e6


def test_score_layers_start_at_zero_and_upsamplers_are_fixed_bilinear() -> None:
    model = build_model("fcn8s", 6)
    assert isinstance(model, FCN)
    for layer in (model.score_fr, model.score_pool4, model.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    for up in (model.upscore2, model.upscore_pool4, model.upscore8):
        assert not up.weight.requires_grad
        off_diagonal = up.weight.clone()
        off_diagonal[range(6), range(6)] = 0
        assert off_diagonal.abs().sum() == 0
    learnable = build_model("fcn8s", 6, learnable_upsampling=True)
    assert learnable.upscore8.weight.requires_grad  # type: ignore[union-attr]


def test_from_scratch_the_signal_reaches_fc7_undiminished() -> None:
    """He initialisation keeps the activations' scale through VGG16's 15 layers: fc7 ends within
    a factor 4 of conv1_1 (PyTorch's default leaves about a thirtieth), so FCN-32s can learn."""
    torch.manual_seed(0)
    model = init_from_scratch(build_model("fcn32s", 6))  # type: ignore[arg-type]
    spread = {}
    model.features[1].register_forward_hook(lambda m, i, o: spread.__setitem__("conv1_1", o.std()))
    model.relu7.register_forward_hook(lambda m, i, o: spread.__setitem__("fc7", o.std()))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 96, 96))
    assert 0.25 < spread["fc7"] / spread["conv1_1"] < 4
    assert not model.fc6.bias.any() and not model.fc7.bias.any()  # type: ignore[union-attr]
    assert not model.score_fr.weight.any()  # the scores still start at zero


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_transposed_convolution_equals_bilinear_interpolation_inside(factor: int) -> None:
    x = torch.randn(1, 3, 9, 11, dtype=torch.float64)
    up = upsampler(3, factor, learnable=False).double()
    with torch.no_grad():
        deconv = up(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    # Input pixel i sits at output i*f + f - 1/2 for the transposed convolution and at
    # i*f + (f - 1)/2 for interpolate: the same grid shifted by f/2. Borders differ (padding).
    inner = slice(factor, -factor)
    s = factor // 2
    shifted = deconv[..., s : s + reference.shape[-2], s : s + reference.shape[-1]]
    assert torch.allclose(shifted[..., inner, inner], reference[..., inner, inner], atol=1e-12)


def test_bilinear_kernel_is_separable_triangle() -> None:
    k = bilinear_kernel(1, 4)[0, 0]
    assert torch.allclose(k[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    assert torch.allclose(k, k.T)


@pytest.fixture(scope="module")
def classifier_pair(vgg16_state: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torchvision's VGG16 classifier and its convolutionalised twin, from the same weights."""
    import torchvision

    classifier = torchvision.models.vgg16()
    classifier.load_state_dict(vgg16_state)
    return classifier.eval(), convolutionalize(vgg16_state).eval()


def test_convolutionalized_vgg16_equals_the_classifier_at_224(classifier_pair: tuple) -> None:
    classifier, conv = classifier_pair
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = classifier(x)
        scores = conv(x)
    assert scores.shape == (1, 1000, 1, 1)
    assert torch.allclose(scores[:, :, 0, 0], expected, atol=1e-5, rtol=1e-4)


def test_convolutionalized_vgg16_sweeps_the_classifier_over_pool5(classifier_pair: tuple) -> None:
    classifier, conv = classifier_pair
    x = torch.randn(1, 3, 288, 320)
    with torch.no_grad():
        scores = conv(x)
        pool5 = conv.features(x)
        assert scores.shape[-2:] == (pool5.shape[-2] - 6, pool5.shape[-1] - 6) == (3, 4)
        for i in range(scores.shape[-2]):
            for j in range(scores.shape[-1]):
                window = pool5[:, :, i : i + 7, j : j + 7].flatten(1)
                expected = classifier.classifier(window)
                assert torch.allclose(scores[:, :, i, j], expected, atol=1e-5, rtol=1e-4)


def test_init_from_vgg16_copies_trunk_and_reshaped_fc_layers(vgg16_state: dict) -> None:
    model = build_model("fcn32s", 3)
    assert isinstance(model, FCN)
    init_from_vgg16(model, vgg16_state)
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, vgg16_state[f"features.{key}"])
    assert torch.equal(model.fc6.weight.flatten(1), vgg16_state["classifier.0.weight"])
    assert torch.equal(model.fc7.weight.flatten(1), vgg16_state["classifier.3.weight"])
    assert model.score_fr.weight.abs().sum() == 0  # fc8 (ImageNet's 1000 classes) is dropped


def test_init_from_vgg16_rejects_other_state_dicts(vgg16_state: dict) -> None:
    model = build_model("fcn32s", 3)
    broken = dict(vgg16_state)
    broken["classifier.0.weight"] = broken["classifier.0.weight"][:, :100]
    with pytest.raises(FcnpipeError, match=r"classifier\.0\.weight"):
        init_from_vgg16(model, broken)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("parent_arch", "child_arch"),
    [pytest.param("fcn32s", "fcn16s", marks=pytest.mark.slow), ("fcn16s", "fcn8s")],
)
def test_staged_init_starts_from_the_parents_predictions(parent_arch: str, child_arch: str) -> None:
    parent = randomize(build_model(parent_arch, 4), seed=3)
    child = build_model(child_arch, 4)
    new = init_from_parent(child, parent)
    child.eval()
    new_scores = {"fcn16s": "score_pool4", "fcn8s": "score_pool3"}[child_arch]
    assert {f"{new_scores}.weight", f"{new_scores}.bias"} <= set(new)
    # A smooth image, as natural images are at the scale of the stride.
    x = F.interpolate(torch.randn(1, 3, 8, 10), size=(200, 260), mode="bilinear") * 2
    with torch.no_grad():
        scores = {}
        for name, model in (("parent", parent), ("child", child)):
            model.score_fr.register_forward_hook(lambda m, i, o, n=name: scores.__setitem__(n, o))
        out_parent, out_child = parent(x), child(x)
        # The new skip branch contributes exactly nothing: the child ignores what it reads.
        skip = getattr(child, new_scores)
        handle = skip.register_forward_pre_hook(lambda m, i: (torch.randn_like(i[0]) * 100,))
        out_child_scrambled = child(x)
        handle.remove()
    assert torch.equal(scores["parent"], scores["child"])
    assert torch.equal(out_child, out_child_scrambled)
    # The only difference left is the upsampling path (e.g. 2x then 16x instead of one 32x
    # bilinear step), so predictions agree almost everywhere.
    span = (out_parent.max() - out_parent.min()).item()
    assert (out_parent - out_child).abs().max().item() < 0.15 * span
    agree = (out_parent.argmax(1) == out_child.argmax(1)).float().mean().item()
    assert agree > 0.95


def test_receptive_field_of_fcn8s_matches_the_reference_and_the_gradient(random_fcn8s) -> None:
    model = build_model("fcn8s", 5)
    # One output pixel on the pooling grid: the reference's -221..+214 px.
    single = measure_receptive_field(model, phases=1)
    assert (single.lo, single.hi) == (-221, 214)
    union = measure_receptive_field(model)
    assert union.lo <= single.lo and union.hi >= single.hi
    assert union.halo(32) % 32 == 0 and union.halo(32) >= union.radius
    # The real network's gradient, from one output pixel, stays inside the measured field and
    # fills most of it (max pooling routes gradient to one pixel per window, so not all of it).
    x = torch.randn(1, 3, 40, 640, requires_grad=True)
    column = 320 + 13
    random_fcn8s(x)[0, :, 20, column].sum().backward()
    assert x.grad is not None
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    lo, hi = int(cols.min()) - column, int(cols.max()) - column
    assert union.lo <= lo and hi <= union.hi
    assert hi - lo > 0.8 * (union.hi - union.lo)


class Toy(nn.Module):
    """Dilation, batch norm, a concatenation and a max-unpool with the pool's indices."""

    num_classes, in_channels, total_stride, margin = 2, 3, 2, 0

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 5, padding=2)
        self.norm = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.dilated = nn.Conv2d(6, 6, 3, padding=4, dilation=4)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.score = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(torch.cat([self.a(x), self.b(x)], 1)))
        pooled, indices = self.pool(y)
        z = self.unpool(self.dilated(pooled), indices, output_size=y.shape[-2:])
        return self.score(z)


def test_the_receptive_field_probe_handles_dilation_concatenation_and_unpooling() -> None:
    # By hand: the 5x5 branch reaches 2 px; the dilated conv, at stride 2, 4 * 2 = 8 px more; the
    # pool/unpool window adds 1 px on the side of the pixel's phase: -11..+11 over both phases.
    field = measure_receptive_field(Toy(), size=128, phases=2)
    assert (field.lo, field.hi) == (-11, 11)
    # The real network, from one output pixel, stays inside it.
    model = randomize(Toy())
    x = torch.randn(1, 3, 8, 96, requires_grad=True)
    model(x)[0, :, 4, 48].sum().backward()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()  # type: ignore[union-attr]
    assert field.lo <= int(cols.min()) - 48 and int(cols.max()) - 48 <= field.hi
