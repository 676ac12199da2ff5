"""The FCN paper's NYUDv2 inputs beyond colour: colour and depth (early fusion) and colour with HHA
(late fusion of two FCN-32s), as the reference release feeds and builds them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io  # type: ignore[import-untyped]
import torch
from PIL import Image
from typer.testing import CliRunner

from fcn import FcnpipeError, ModelCard, ReceptiveField, build_model, describe, save_checkpoint
from fcn.checkpoint import default_palette
from fcn.normalization import (
    CAFFE_NYUD_COLOR,
    CAFFE_NYUD_HHA,
    NYUD_LOG_DEPTH,
    TORCHVISION_IMAGENET,
    Normalization,
)
from fcn.rgbd import LateFusion, color_d_surgery, fuse_streams
from fcn.surgery import init_from_vgg16
from fcnpipe.main import app
from pipeline.grid import GridSpec, plan_tiles
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import check_settings
from pipeline.training.adversarial import Adversary
from pipeline.training.data import open_dataset
from pipeline.training.recipes import load_recipe
from pipeline.training.train import StageArgs, initial_model, open_splits, train_stage
from tests.conftest import randomize

ROOT = Path(__file__).resolve().parents[1]
IDS = ["5001", "5002", "5003"]
SIDE = 36
RECIPE = """\
name: tiny
optimizer: adamw
lr: 1.0e-4
weight_decay: 0.0
loss_reduction: mean
schedule: fixed
batch_size: 1
crop: 48
hflip: true
precision: fp32
"""

COLOUR_AND_DEPTH = replace(CAFFE_NYUD_COLOR, then=(NYUD_LOG_DEPTH,))
COLOUR_AND_HHA = replace(CAFFE_NYUD_COLOR, then=(CAFFE_NYUD_HHA,))


@pytest.fixture(scope="module")
def nyud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NYUDv2 in the release's layout: colour, HHA and 16-bit depth PNGs, labels, split lists."""
    root = tmp_path_factory.mktemp("nyud")
    rng = np.random.default_rng(0)
    for folder in ("data/images", "data/hha", "data/depth", "segmentation"):
        (root / folder).mkdir(parents=True)
    for key in IDS:
        for folder in ("images", "hha"):
            pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "data" / folder / f"img_{key}.png")
        depth = rng.integers(500, 10000, (SIDE, SIDE)).astype(np.uint16)
        Image.fromarray(depth).save(root / "data" / "depth" / f"img_{key}.png")
        labels = rng.integers(0, 41, (SIDE, SIDE)).astype(np.uint8)
        scipy.io.savemat(root / "segmentation" / f"img_{key}.mat", {"segmentation": labels})
    for split, keys in (("train", IDS[:2]), ("val", IDS[2:]), ("test", IDS[2:])):
        (root / f"{split}.txt").write_text("\n".join(keys) + "\n")
    return root


# --- input ---------------------------------------------------------------------------------------


def test_colour_and_depth_are_fed_as_the_reference_layer_feeds_them(nyud: Path) -> None:
    """nyud_layers.py: colour to BGR less (116.190, 97.203, 92.318); depth log(d) less 7.844."""
    data = open_dataset(f"nyud-color-d:{nyud}", "train")
    image, _ = data[0]
    assert image.shape == (SIDE, SIDE, 4) and data.channels == 4
    rgb = np.asarray(Image.open(nyud / "data" / "images" / "img_5001.png"), dtype=np.float64)
    depth = np.asarray(Image.open(nyud / "data" / "depth" / "img_5001.png"), dtype=np.float64)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    fed = COLOUR_AND_DEPTH.apply(x)[0].double().numpy()
    np.testing.assert_allclose(
        fed[:3], (rgb[..., ::-1] - (116.190, 97.203, 92.318)).transpose(2, 0, 1), atol=1e-4
    )
    np.testing.assert_allclose(fed[3], np.log(depth) - 7.844, atol=1e-5)


def test_data_info_says_how_many_channels_an_image_has(nyud: Path) -> None:
    result = CliRunner().invoke(app, ["data", "info", f"nyud-color-hha:{nyud}"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "6 channels per image, colour first" in result.output and "40 classes" in result.output


def test_colour_and_hha_from_the_caffe_vgg16_is_the_references_input(nyud: Path) -> None:
    data = open_dataset(f"nyud-color-hha:{nyud}", "train")
    image, _ = data[1]
    assert image.shape == (SIDE, SIDE, 6) and data.channels == 6
    hha = np.asarray(Image.open(nyud / "data" / "hha" / "img_5002.png"), dtype=np.float64)
    fed = replace(data.reference_input, then=data.extra_inputs(data.reference_input))
    assert fed == COLOUR_AND_HHA
    out = fed.apply(torch.from_numpy(image).permute(2, 0, 1)[None])[0].double().numpy()
    np.testing.assert_allclose(out[3:], (hha - (132.431, 94.076, 118.477)).transpose(2, 0, 1), atol=1e-4)


@pytest.mark.parametrize(
    "norm", [COLOUR_AND_DEPTH, COLOUR_AND_HHA, replace(TORCHVISION_IMAGENET, then=(NYUD_LOG_DEPTH,))]
)
def test_a_stacked_normalisation_survives_a_checkpoint_and_pads_with_zeros(norm: Normalization) -> None:
    assert Normalization.from_dict(norm.to_dict()) == norm
    pad = torch.tensor(norm.zero_input(), dtype=torch.float32).view(1, -1, 1, 1)
    assert pad.shape[1] == norm.channels
    assert norm.apply(pad).abs().max() < 1e-4


# --- networks ------------------------------------------------------------------------------------


def test_the_depth_filter_starts_as_the_mean_of_the_colour_filters(vgg16_state: dict) -> None:
    """The release's color-d solve.py: conv1_1_bgrd[:, :3] = conv1_1, [:, 3] = its mean over colour."""
    model = build_model("fcn32s-color-d", 40)
    color_d_surgery(model, vgg16_state)
    colour = init_from_vgg16(build_model("fcn32s", 40), vgg16_state)  # type: ignore[arg-type]
    weight = model.features[0].weight.detach()
    vgg = vgg16_state["features.0.weight"]
    assert weight.shape == (64, 4, 3, 3)
    assert torch.equal(weight[:, :3], vgg) and torch.allclose(weight[:, 3], vgg.mean(1))
    for name, value in colour.state_dict().items():
        if name != "features.0.weight":
            assert torch.equal(model.state_dict()[name], value), name


@pytest.mark.slow  # ~17 s; the colour-and-depth stage stays
def test_late_fusion_is_the_mean_of_its_two_streams() -> None:
    """Each stream starts from a trained FCN-32s; the fusion's logits are the mean of theirs."""
    color, hha = randomize(build_model("fcn32s", 5), seed=1), randomize(build_model("fcn32s", 5), seed=2)
    fusion = build_model("fcn32s-color-hha", 5)
    assert isinstance(fusion, LateFusion)
    fuse_streams(fusion, color, hha)
    x = torch.randn(1, 6, 45, 70)
    with torch.no_grad():
        expected = 0.5 * (color(x[:, :3]) + hha(x[:, 3:]))
        assert torch.allclose(fusion.eval()(x), expected, atol=1e-6)
    with pytest.raises(FcnpipeError, match="the HHA stream starts from an FCN-32s"):
        fuse_streams(fusion, color, build_model("fcn16s", 5))
    with pytest.raises(FcnpipeError, match="predicts 4 classes, the fusion 5"):
        fuse_streams(fusion, build_model("fcn32s", 4), hha)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fcn32s-color-d", "fcn32s-color-hha"])
def test_tiles_at_the_cards_halo_stitch_to_the_whole_image_pass(arch: str) -> None:
    """On their own input (4 or 6 channels), as every network does on colour (test_architectures)."""
    model = randomize(build_model(arch, 4), seed=3)
    card = describe(model, arch, normalization=COLOUR_AND_DEPTH if arch.endswith("-d") else COLOUR_AND_HHA,
                    memory=False)  # fmt: skip
    x = torch.randn(1, model.in_channels, 640, 96)  # type: ignore[arg-type]
    with torch.no_grad():
        whole = model(x)[0]
        stitched = torch.full_like(whole, math.nan)
        spec = GridSpec(640, 96, core=256, halo=card.halo, chunk=256, stride=card.total_stride, block=1)
        for tile in plan_tiles(spec):
            rows, cols = tile.read.slices()
            out = model(x[:, :, rows, cols])[0][(slice(None), *tile.crop())]
            stitched[(slice(None), *tile.core.slices())] = out
    assert not stitched.isnan().any()
    assert (stitched - whole).abs().max() <= 1e-4 * float(whole.max() - whole.min())


def test_segmenting_refuses_a_model_of_more_than_colour_in_one_sentence() -> None:
    # The card alone decides (no network is built): a colour-and-depth FCN-32s's.
    names, palette = tuple(f"c{i}" for i in range(40)), tuple(default_palette(40))
    card = ModelCard("fcn32s-color-d", 40, names, palette, COLOUR_AND_DEPTH, ReceptiveField(-233, 233), 32)
    with pytest.raises(FcnpipeError, match=r"reads 4 input channels .* takes models of colour alone"):
        check_settings(SegmentSettings(), card)


# --- training ------------------------------------------------------------------------------------


@pytest.mark.slow  # ~22 s
def test_a_colour_and_depth_stage_trains_and_records_its_input(nyud: Path, tmp_path: Path) -> None:
    """One step of FCN-32s on colour and depth (36 px images padded to the 48 px crop with zero input)."""
    spec = f"nyud-color-d:{nyud}"
    with pytest.warns(UserWarning, match="training from scratch"):
        model, card = initial_model("scratch", "fcn32s-color-d", open_dataset(spec, "train"))
    assert card.normalization.channels == 4 and card.normalization.then == (NYUD_LOG_DEPTH,)
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(RECIPE)
    args = StageArgs(dataset=spec, steps=1, eval_every=1, val_split="val")
    result = train_stage(model, card, load_recipe(str(recipe_file)), args, tmp_path / "run")
    assert result.step == 1 and 0 <= result.scores["pixel_accuracy"] <= 1


def test_a_network_for_other_input_is_one_sentence(nyud: Path) -> None:
    data = open_dataset(f"nyud-color-d:{nyud}", "train")
    refused = pytest.raises(FcnpipeError, match="fcn32s reads 3 input channels, not the 4 of its data")
    with pytest.warns(UserWarning, match="training from scratch"), refused:
        initial_model("scratch", "fcn32s", data)
    with pytest.raises(FcnpipeError, match=r"streams:COLOUR\.pt,HHA\.pt starts a late fusion"):
        initial_model("streams:a.pt", "fcn32s-color-hha", open_dataset(f"nyud-color-hha:{nyud}", "train"))


def test_data_of_another_kind_than_the_model_or_the_training_data_is_one_sentence(
    nyud: Path, tmp_path: Path
) -> None:
    """Plumbing: a colour model (the pointwise stand-in) scored on colour and depth, a colour-and-depth
    run validated on colour and HHA, and a late fusion started for colour alone."""
    weights = tmp_path / "colour.pt"
    stand_in = build_model("pointwise", 40)
    card = describe(stand_in, "pointwise", memory=False)
    save_checkpoint(weights, stand_in, card)
    args = ["--weights", str(weights), "--dataset", f"nyud-color-d:{nyud}", "--split", "test"]
    result = CliRunner().invoke(app, ["run", str(ROOT / "flows" / "evaluate.py"), *args], terminal_width=400)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "reads 3 input channels but nyud-color-d images have 4" in " ".join(result.output.split())
    mixed = StageArgs(
        dataset=f"nyud-color-d:{nyud}", val_dataset=f"nyud-color-hha:{nyud}", steps=1, eval_every=1
    )
    with pytest.raises(FcnpipeError, match="nyud-color-hha and nyud-color-d differ in image channels"):
        open_splits(mixed, card)
    with pytest.raises(
        FcnpipeError, match=r"a late fusion reads colour and HHA .* train it on nyud-color-hha"
    ):
        initial_model("streams:a.pt,b.pt", "fcn32s-color-hha", open_dataset(f"nyud:{nyud}", "train"))


def test_the_discriminator_sees_every_channel_of_the_image() -> None:
    adversary = Adversary.create(5, 255, 0.5, 1e-4, torch.device("cpu"), image_channels=4)
    image, labels = torch.randn(1, 4, 24, 24), torch.randint(0, 5, (1, 24, 24))
    probabilities = torch.rand(1, 5, 24, 24).softmax(1)
    adversary.update(image, probabilities, labels)
    term = adversary.segmenter_term(image, probabilities, labels)
    assert term.isfinite()
    assert adversary.discriminator.features[0].in_channels == 4 * 5  # each channel times each class map
    for channel in range(4):  # red, green, blue and depth: each one moves the judgement
        changed = image.clone()
        changed[:, channel] += 1.0
        assert not torch.equal(adversary.segmenter_term(changed, probabilities, labels), term), channel


@pytest.mark.slow
def test_a_late_fusion_starts_from_a_colour_and_an_hha_checkpoint(nyud: Path, tmp_path: Path) -> None:
    """streams:COLOUR.pt,HHA.pt: each stream's weights and input normalisation come from its checkpoint."""
    paths = []
    for seed, norm in ((1, CAFFE_NYUD_COLOR), (2, CAFFE_NYUD_HHA)):
        stream = randomize(build_model("fcn32s", 40), seed=seed)
        save_checkpoint(
            tmp_path / f"{seed}.pt", stream, describe(stream, "fcn32s", normalization=norm, memory=False)
        )
        paths.append(tmp_path / f"{seed}.pt")
    model, card = initial_model(f"streams:{paths[0]},{paths[1]}", "fcn32s-color-hha",
                                open_dataset(f"nyud-color-hha:{nyud}", "train"))  # fmt: skip
    assert card.normalization == COLOUR_AND_HHA and card.arch == "fcn32s-color-hha"
    hha_run = replace(describe(build_model("fcn32s", 40), "fcn32s", memory=False),
                      provenance={"dataset": f"nyud-hha:{nyud}"})  # fmt: skip
    save_checkpoint(tmp_path / "hha.pt", randomize(build_model("fcn32s", 40), seed=2), hha_run)
    with pytest.raises(FcnpipeError, match="takes the colour FCN-32s first and the HHA one second"):
        initial_model(f"streams:{tmp_path / 'hha.pt'},{paths[1]}", "fcn32s-color-hha",
                      open_dataset(f"nyud-color-hha:{nyud}", "train"))  # fmt: skip
    x = torch.randn(1, 6, 40, 40)
    with torch.no_grad():
        color, hha = (randomize(build_model("fcn32s", 40), seed=s) for s in (1, 2))
        assert torch.allclose(model.eval()(x), 0.5 * (color(x[:, :3]) + hha(x[:, 3:])), atol=1e-6)
