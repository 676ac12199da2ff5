"""What every registered architecture must do, checked for each one: a new family gets these for free.

It declares what tiling and training read (``fcn.registry.SegmentationNet``), output size equals
input size over odd sizes, the parameter count is its paper's, and the mosaic stitched from small
tiles at the checkpoint's halo equals one whole-image pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from fcn import available_models, build_model, load_checkpoint
from fcn.margin import mirror_pad, same_size_forward
from fcn.receptive_field import one_channel_replica
from fcn.registry import DECLARED, SegmentationNet, architectures, segmentation_net
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import noise_image, randomize, save_model, write_tif

ARCHS = available_models()
# fcn8s stitches in test_segment.py on a larger scene; its siblings share its trunk, so their
# 540 MB checkpoints are written only in the slow run. U-Net's tiles carry a 108-px halo and a
# 92-px margin (40 s here); test_unet.py stitches a thinner scene in the default run. The default
# run keeps one network of each other family: dilated8 holds its front-end (dilated8-large only
# widens its context module), fcdensenet56 and 67 the blocks of 103 (38 s), and DeconvNet's 1 GB
# checkpoint is SegNet's encoder with fc layers.
STITCH_SLOW = {
    "fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "unet",
    "dilated8-frontend", "dilated8-large", "fcdensenet103", "deconvnet",
    "dilated8", "fcdensenet56", "fcdensenet67",  # 13-26 s each
    "segnet",  # 24 s: segnet-basic stitches its encoder, switches and decoder in the default run
}  # fmt: skip
# These read colour and depth or HHA, which segmentation does not read (it refuses them in one
# sentence); tests/test_rgbd.py checks that they stitch exactly on their own input.
MORE_THAN_COLOUR = {"fcn32s-color-d", "fcn32s-color-hha"}
ODD_SIZES = [(1, 1), (7, 3), (33, 47), (65, 97), (97, 131), (161, 255), (257, 31)]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_network_declares_what_it_is_and_reads_in_channels(arch: str) -> None:
    # On the meta device a forward pass checks shapes without weights or arithmetic: milliseconds.
    with torch.device("meta"):
        model = build_model(arch, 5).eval()
    net = segmentation_net(model)
    declared = {name: getattr(net, name) for name in DECLARED}
    assert all(type(value) is int for value in declared.values()), declared
    assert net.num_classes == 5 and net.total_stride >= 1 and net.margin >= 0
    h, w = 4 * net.total_stride + 2 * net.margin, 4 * net.total_stride + 2 * net.margin + 1
    with torch.no_grad():
        out = model(torch.zeros(1, net.in_channels, h, w, device="meta"))
        assert out.shape == (1, 5, h - 2 * net.margin, w - 2 * net.margin)
        for wrong in (net.in_channels - 1, net.in_channels + 1):
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, wrong, h, w, device="meta"))


def test_a_module_that_does_not_declare_itself_is_refused_by_name() -> None:
    class Bare(torch.nn.Module):
        num_classes, total_stride = 2, 1

    assert not isinstance(Bare(), SegmentationNet)
    with pytest.raises(TypeError, match="Bare does not declare in_channels, margin"):
        segmentation_net(Bare())


@pytest.mark.parametrize("arch", ARCHS)
def test_output_size_equals_input_size_over_odd_sizes(arch: str) -> None:
    # Output size depends on the geometry only, which the one-channel replica keeps (and cheaply).
    # A network with a margin sees the image mirrored by it first, as every whole-image pass does.
    model = build_model(arch, 3)
    replica = one_channel_replica(model).float()
    with torch.no_grad():
        for h, w in ODD_SIZES:
            out = replica(mirror_pad(torch.zeros(1, 1, h, w), segmentation_net(model).margin))
            assert out.shape[-2:] == (h, w), (h, w)


@pytest.mark.parametrize("arch", [a for a in ARCHS if architectures()[a].published_params_m is not None])
def test_parameter_count_is_the_paper_s(arch: str) -> None:
    spec = architectures()[arch]
    model = build_model(arch, spec.published_classes)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(spec.published_params_m, rel=0.03), millions


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(a, marks=pytest.mark.slow) if a in STITCH_SLOW else a
        for a in ARCHS
        if a not in MORE_THAN_COLOUR
    ],
)
def test_tiles_at_the_checkpoint_s_halo_stitch_to_the_whole_image_pass(arch: str, tmp_path: Path) -> None:
    # Small cores: every tile is cut by the image or the halo.
    assert_tiles_stitch(arch, tmp_path, 97, 131, tile=64)


def assert_tiles_stitch(arch: str, tmp_path: Path, height: int, width: int, tile: int) -> None:
    """Segment a random ``arch`` over a noise scene in tiles of ``tile`` (at least the network's
    alignment) at its checkpoint's halo, and check the mosaic against one whole-image pass."""
    model = randomize(build_model(arch, 4), seed=3)
    checkpoint = save_model(tmp_path / f"{arch}.pt", model, arch)
    model, card = load_checkpoint(checkpoint)
    image = noise_image(height, width, seed=9)
    scene = write_tif(tmp_path / "scene.tif", image)
    tile = max(tile, card.total_stride)
    settings = SegmentSettings(tile_size=tile, chunk=tile, block=2, outputs=("labels", "logits"),
                               logits_dtype="float32", device="cpu")  # fmt: skip
    plan = plan_scene(scene, checkpoint, settings)
    assert plan.grid.halo >= card.receptive_field.radius
    run_local(plan)
    with torch.no_grad():
        x = card.normalization.apply(torch.from_numpy(image).float()[None])
        reference = same_size_forward(model, x)[0].numpy()
    group = zarr.open_group(str(tmp_path / "scene.zarr"), mode="r")
    logits, labels = group["logits"][:], group["labels"][:]
    span = float(reference.max() - reference.min())
    assert span > 0
    assert np.abs(logits - reference).max() <= 1e-4 * span
    assert np.array_equal(labels, reference.argmax(0))


@pytest.mark.slow
def test_weights_archs_lists_every_architecture_with_its_measured_halo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console
    from typer.testing import CliRunner

    from fcnpipe.main import app

    monkeypatch.setattr("fcnpipe.main.out", Console(width=240))  # a wide terminal: rows unwrapped
    result = CliRunner().invoke(app, ["weights", "archs"])
    assert result.exit_code == 0, result.output
    for arch in ARCHS:
        assert arch in result.output
    assert "256 px" in result.output  # the FCNs' halo
    assert "108 px" in result.output and "output 92 px short per side" in result.output  # U-Net's


# The rest: slow (GoogLeNet's trunk, 44 s here, stitches at its halo in the default run).
WIDE_FAST = {"pointwise", "fcn8s-demo", "segnet-basic"}


@pytest.mark.parametrize(
    "arch",
    [
        a if a in WIDE_FAST else pytest.param(a, marks=pytest.mark.slow)
        for a in ARCHS
        if a not in MORE_THAN_COLOUR
    ],
)
def test_tiles_and_strips_over_a_scene_wider_than_two_halos_give_the_whole_image_pass(
    arch: str, tmp_path: Path
) -> None:
    """The scene is wider than two halos and a core, so interior tiles and strips read only part of
    it and the halo is what makes them exact (a scene inside one halo would pass with any halo).
    It is a few rows high: the cost is the width's."""
    model = randomize(build_model(arch, 4), seed=3)
    checkpoint = save_model(tmp_path / f"{arch}.pt", model, arch)
    model, card = load_checkpoint(checkpoint)
    core = max(64, card.total_stride)
    probe = write_tif(tmp_path / "probe.tif", noise_image(8, 8))
    halo = plan_scene(probe, checkpoint, SegmentSettings(tile_size=core), dry_run=True).grid.halo
    height, width = 2 * card.total_stride + 5, 2 * halo + 2 * core + 37
    image = noise_image(height, width, seed=9)
    scene = write_tif(tmp_path / "scene.tif", image)
    with torch.no_grad():
        x = card.normalization.apply(torch.from_numpy(image).float()[None])
        reference = same_size_forward(model, x)[0].numpy()
    span = float(reference.max() - reference.min())
    assert span > 0
    for strategy in ("tiles", "stream"):
        settings = SegmentSettings(tile_size=core, chunk=core, strategy=strategy, device="cpu",
                                   outputs=("labels", "logits"), logits_dtype="float32")  # fmt: skip
        output = tmp_path / f"{strategy}.zarr"
        plan = plan_scene(scene, checkpoint, settings, output=output)
        reads = [t.read for b in plan.blocks for t in b.tiles]
        assert any(r.col > 0 and r.col + r.width < width for r in reads), (strategy, reads)  # interior
        run_local(plan)
        group = zarr.open_group(str(output), mode="r")
        logits, labels = np.asarray(group["logits"][:]), np.asarray(group["labels"][:])  # type: ignore[index]
        assert np.abs(logits - reference).max() <= 1e-4 * span, strategy
        top2 = np.sort(reference, axis=0)[-2:]
        decided = top2[1] - top2[0] > 2e-4 * span
        assert np.array_equal(labels[decided], reference.argmax(0)[decided]), strategy
