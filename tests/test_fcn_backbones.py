"""FCN-AlexNet and FCN-GoogLeNet: their trunks' ImageNet layout, the reference geometry, net surgery."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torch import nn

from fcn import FcnpipeError, build_model, measure_receptive_field
from fcn.alexnet import FCNAlexNet
from fcn.googlenet import FCNGoogLeNet
from fcn.receptive_field import one_channel_replica
from fcn.registry import architectures
from tests.conftest import randomize

ARCHS = ["fcn32s-alexnet", "fcn32s-googlenet"]


def learned(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def alexnet_state() -> dict[str, torch.Tensor]:
    """ImageNet AlexNet's layout with random values (nothing can be downloaded)."""
    torch.manual_seed(0)
    return torchvision.models.alexnet().state_dict()


@pytest.fixture(scope="module")
def googlenet_imagenet() -> nn.Module:
    """ImageNet GoogLeNet's layout with random values, batch norm statistics included, as loaded
    for ImageNet (``transform_input``)."""
    torch.manual_seed(0)
    model = torchvision.models.googlenet(aux_logits=False, init_weights=True, transform_input=True)
    gen = torch.Generator().manual_seed(1)
    for bn in filter(lambda m: isinstance(m, nn.BatchNorm2d), model.modules()):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_output_size_equals_input_size_for_every_residue_of_the_stride(arch: str) -> None:
    # Every height and width from 1 to 64 (all residues modulo 32, twice), and random larger sizes.
    replica = one_channel_replica(build_model(arch, 3)).float()
    rng = random.Random(arch)
    sizes = [(h, 65 - h) for h in range(1, 65)] + [
        (rng.randint(65, 700), rng.randint(65, 700)) for _ in range(8)
    ]
    with torch.no_grad():
        for h, w in sizes:
            assert replica(torch.zeros(1, 1, h, w)).shape[-2:] == (h, w), (h, w)


@pytest.mark.parametrize("arch", ARCHS)
def test_real_model_gives_finite_per_class_logits_at_input_size(arch: str) -> None:
    model = randomize(build_model(arch, 4))
    with torch.no_grad():
        for h, w in [(1, 1), (31, 33), (70, 45)]:
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, 4, h, w)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_crop_centres_the_receptive_field_on_its_pixel(arch: str) -> None:
    # A crop offset off by d pixels would shift the field by d: lo + hi == 2 d.
    model = build_model(arch, 2)
    assert model.total_stride == 32
    field = measure_receptive_field(model, size=512)
    assert field.lo == -field.hi


@pytest.mark.parametrize("arch", ARCHS)
def test_constant_scores_upsample_to_the_same_constant_up_to_the_edges(arch: str) -> None:
    # The bilinear weights sum to one wherever two score positions surround a pixel: everywhere
    # for FCN-GoogLeNet, which replicates its score map's edge; more than a stride inside the
    # image for FCN-AlexNet, which fades towards zero beyond its outer scores, as the reference.
    model = build_model(arch, 2).eval()
    with torch.no_grad():
        model.score_fr.bias.copy_(torch.tensor([1.5, -2.0]))
        out = model(torch.randn(1, 3, 109, 141))
    expected = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand_as(out)
    inside = (..., slice(32, -32), slice(32, -32))
    assert torch.allclose(out[inside], expected[inside], atol=1e-5)
    assert torch.allclose(out, expected, atol=1e-5) == (arch == "fcn32s-googlenet")


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_start_at_zero_and_the_upsampler_is_fixed_unless_learnable(arch: str) -> None:
    model = build_model(arch, 5)
    assert model.score_fr.weight.abs().sum() == 0 and model.score_fr.bias.abs().sum() == 0
    assert not model.upscore.weight.requires_grad
    assert build_model(arch, 5, learnable_upsampling=True).upscore.weight.requires_grad


def test_the_paper_s_57m_are_fcn_alexnet_s_learned_parameters() -> None:
    # The registry's check counts every parameter, the fixed 21 x 21 x 63 x 63 upsampler included
    # (3.2 % over), so the paper's figure is checked here against what the network learns.
    assert architectures()["fcn32s-alexnet"].published_params_m is None
    model = build_model("fcn32s-alexnet", 21)
    assert learned(model) / 1e6 == pytest.approx(57.0, rel=0.03)
    assert sum(p.numel() for p in model.parameters()) - learned(model) == 21 * 21 * 63 * 63


def test_alexnet_surgery_copies_features_and_convolutionalises_fc6_fc7(
    alexnet_state: dict[str, torch.Tensor],
) -> None:
    model = FCNAlexNet(6)
    before = model.upscore.weight.clone()
    architectures()["fcn32s-alexnet"].imagenet.apply(model, alexnet_state)  # type: ignore[union-attr]
    for name, tensor in model.features.state_dict().items():
        assert torch.equal(tensor, alexnet_state[f"features.{name}"]), name
    for layer, fc in ((model.fc6, "classifier.1"), (model.fc7, "classifier.4")):
        assert torch.equal(layer.weight.flatten(1), alexnet_state[f"{fc}.weight"])
        assert torch.equal(layer.bias, alexnet_state[f"{fc}.bias"])
    assert model.score_fr.weight.abs().sum() == 0
    assert torch.equal(model.upscore.weight, before)


def test_convolutional_fc6_fc7_compute_imagenet_alexnet_s_fc6_fc7(
    alexnet_state: dict[str, torch.Tensor],
) -> None:
    imagenet = torchvision.models.alexnet()
    imagenet.load_state_dict(alexnet_state)
    imagenet.eval()
    model = FCNAlexNet(3).eval()
    architectures()["fcn32s-alexnet"].imagenet.apply(model, alexnet_state)  # type: ignore[union-attr]
    with torch.no_grad():
        pool5 = imagenet.features(torch.randn(2, 3, 224, 224))  # 6 x 6: what the classifier sees
        expected = imagenet.classifier[:6](pool5.flatten(1))
        ours = model.relu7(model.fc7(model.relu6(model.fc6(pool5))))
    assert ours.shape == (2, 4096, 1, 1)
    assert torch.allclose(ours.flatten(1), expected, rtol=1e-4, atol=1e-5)


def test_surgery_refuses_a_state_dict_of_another_network() -> None:
    wrong = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    for arch, source in (("fcn32s-alexnet", "alexnet"), ("fcn32s-googlenet", "googlenet")):
        spec = architectures()[arch]
        assert spec.imagenet is not None and spec.imagenet.source == source
        with pytest.raises(FcnpipeError, match=f"not torchvision's ImageNet {source}"):
            spec.imagenet.apply(build_model(arch, 2), wrong)


def test_googlenet_trunk_is_torchvision_s_without_its_classifier(googlenet_imagenet: nn.Module) -> None:
    trunk = FCNGoogLeNet(21).trunk
    expected = {k: v.shape for k, v in googlenet_imagenet.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in trunk.state_dict().items()} == expected
    classifier = sum(p.numel() for p in googlenet_imagenet.fc.parameters())
    assert sum(p.numel() for p in trunk.parameters()) == 6_624_904 - classifier  # torchvision's count


@pytest.mark.parametrize("aux_logits", [False, True])
def test_googlenet_surgery_copies_the_trunk_and_drops_the_classifiers(aux_logits: bool) -> None:
    # The ImageNet file holds the (untrained) auxiliary classifiers too: they are left out.
    torch.manual_seed(0)
    state = torchvision.models.googlenet(aux_logits=aux_logits, init_weights=True).state_dict()
    model = FCNGoogLeNet(6)
    architectures()["fcn32s-googlenet"].imagenet.apply(model, state)  # type: ignore[union-attr]
    copied = model.trunk.state_dict()
    for name, tensor in copied.items():
        assert torch.equal(tensor, state[name]), name
    assert model.score_fr.weight.abs().sum() == 0


def test_googlenet_trunk_computes_imagenet_googlenet_s_inception5b(googlenet_imagenet: nn.Module) -> None:
    # The same input, ImageNet-normalised: our model converts it to [-1, 1] as torchvision's does.
    model = FCNGoogLeNet(3).eval()
    architectures()["fcn32s-googlenet"].imagenet.apply(  # type: ignore[union-attr]
        model, googlenet_imagenet.state_dict()
    )
    taps: dict[str, torch.Tensor] = {}
    hook = googlenet_imagenet.inception5b.register_forward_hook(lambda m, i, o: taps.update(imagenet=o))
    model.trunk.register_forward_hook(lambda m, i, o: taps.update(ours=o))
    x = torch.randn(2, 3, 96, 128)  # multiples of 32: our padding adds nothing
    with torch.no_grad():
        googlenet_imagenet(x)
        model(x)
    hook.remove()
    assert taps["ours"].shape == (2, 1024, 3, 4)
    assert torch.allclose(taps["ours"], taps["imagenet"], rtol=1e-4, atol=1e-5)
