"""Models with several heads: SIFT Flow's two-headed net (33 semantic and 3 geometric classes).

The loss is the sum of the heads' losses, each head is scored on its own labelling, augmentation
moves both labellings together, and the segment flow writes one label map per head. Tests about
plumbing use the per-pixel ``pointwise`` stand-in; the FCN's heads are checked on an FCN-8s.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io  # type: ignore[import-untyped]
import torch
import xarray as xr
import zarr
from PIL import Image
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from fcn import FcnpipeError, build_model, describe, load_checkpoint, save_checkpoint
from fcn.checkpoint import read_checkpoint
from fcn.registry import segmentation_net
from fcnpipe.main import app
from pipeline.outputs.export import export_cog
from pipeline.outputs.inspect import describe_mosaic
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from pipeline.training.data import open_dataset
from pipeline.training.data.siftflow import SCENES, SiftFlowBoth
from pipeline.training.evaluation import evaluate, evaluate_heads
from pipeline.training.recipes import load_recipe
from pipeline.training.train import (
    LOSS_CELL,
    StageArgs,
    epoch_draws,
    heads_loss,
    initial_model,
    resume_stage,
    sampled_cells,
    train_stage,
    training_sample,
)
from tests.conftest import noise_image, randomize, write_tif

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SIDE = 40
STEMS = ["coast_arnat59", "street_par177", "tallbuilding_sky7"]
RECIPE = """\
name: tiny
optimizer: adamw
lr: 1.0e-3
weight_decay: 0.0
loss_reduction: mean
schedule: fixed
batch_size: 2
crop: 48
hflip: true
precision: fp32
"""


def write_siftflow(root: Path) -> Path:
    """A SIFT Flow folder of three 40 x 40 scenes (smaller than the crop: padding is exercised)."""
    rng = np.random.default_rng(0)
    for stem in STEMS:
        (root / "Images" / SCENES).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "Images" / SCENES / f"{stem}.jpg", quality=95)
        for folder, top in (("SemanticLabels", 33), ("GeoLabels", 3)):
            (root / folder / SCENES).mkdir(parents=True, exist_ok=True)
            labels = rng.integers(0, top + 1, (SIDE, SIDE)).astype(np.int16)  # 0 is unlabelled
            scipy.io.savemat(root / folder / SCENES / f"{stem}.mat", {"S": labels})
    (root / "TrainSet1.txt").write_text("\n".join(STEMS[:2]) + "\n")
    (root / "TestSet1.txt").write_text(STEMS[2] + "\n")
    return root


@pytest.fixture(scope="module")
def siftflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_siftflow(tmp_path_factory.mktemp("siftflow"))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(RECIPE)
    return path


class Channels(nn.Module):
    """A model's output channels ``keep`` alone: one head of a several-headed model, as a model."""

    def __init__(self, model: nn.Module, keep: slice) -> None:
        super().__init__()
        self.model, self.keep = model, keep
        self.num_classes = keep.stop - keep.start
        net = segmentation_net(model)
        self.in_channels, self.total_stride, self.margin = net.in_channels, net.total_stride, net.margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)[:, self.keep]
        return out


# --- data, loss and scores -----------------------------------------------------------------------


def test_both_labellings_stack_the_semantic_and_geometric_readers(siftflow: Path) -> None:
    both = open_dataset(f"siftflow-both:{siftflow}", "train")
    semantic, geometric = (open_dataset(f"{n}:{siftflow}", "train") for n in ("siftflow", "siftflow-geo"))
    assert isinstance(both, SiftFlowBoth) and both.head_sizes == (("semantic", 33), ("geometric", 3))
    assert both.class_names == semantic.class_names + geometric.class_names
    for i in range(len(both)):
        image, label = both[i]
        np.testing.assert_array_equal(image, semantic[i][0])
        np.testing.assert_array_equal(label, np.stack([semantic[i][1], geometric[i][1]]))
    assert both.palette[33:] == geometric.palette  # each labelling's own colours


def test_data_info_lists_each_labellings_classes(siftflow: Path) -> None:
    result = runner.invoke(app, ["data", "info", f"siftflow-both:{siftflow}"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "semantic: 33 classes (ignore label 255): awning, balcony" in text
    assert "geometric: 3 classes (ignore label 255): sky, horizontal, vertical" in text


def test_a_crop_and_flip_move_both_labellings_together(siftflow: Path) -> None:
    """A two-headed sample is the two one-headed samples with the same draws, stacked."""
    recipe = load_recipe("modern").updated(crop=32, hflip=True)
    both = open_dataset(f"siftflow-both:{siftflow}", "train")
    semantic, geometric = (open_dataset(f"{n}:{siftflow}", "train") for n in ("siftflow", "siftflow-geo"))
    _, draws = epoch_draws(0, 0, len(both))
    fill = (1.0, 2.0, 3.0)
    for i in range(len(both)):
        for where in (draws[i], torch.tensor([0.9, 0.1, 0.2], dtype=torch.float64)):  # flipped, then not
            x, y = training_sample(both, i, where, recipe, fill)
            xs, ys = training_sample(semantic, i, where, recipe, fill)
            _, yg = training_sample(geometric, i, where, recipe, fill)
            assert torch.equal(x, xs) and torch.equal(y, torch.stack([ys, yg]))


def test_the_loss_is_the_sum_of_each_heads_cross_entropy(siftflow: Path) -> None:
    model = randomize(build_model("pointwise", 36), seed=3, scale=1.0)
    _, card = initial_model("scratch", "pointwise", open_dataset(f"siftflow-both:{siftflow}", "train"))
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 8, 8) * 255)
    target = torch.stack([torch.randint(0, 33, (2, 8, 8)), torch.randint(0, 3, (2, 8, 8))], dim=1)
    target[:, 0, 0] = 255  # unlabelled in one head only
    for reduction in ("sum", "mean"):
        expected = sum(
            F.cross_entropy(logits[:, part], target[:, i], ignore_index=255, reduction=reduction)
            for i, part in enumerate((slice(0, 33), slice(33, 36)))
        )
        loss = heads_loss(logits, target, card.heads, 255, reduction)
        assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_loss_sampling_drops_the_same_cells_in_every_head() -> None:
    labels = torch.zeros(2, 2, 3 * LOSS_CELL, 2 * LOSS_CELL, dtype=torch.int64)
    torch.manual_seed(0)
    sampled = sampled_cells(labels, 0.5, 255)
    assert torch.equal(sampled[:, 0] == 255, sampled[:, 1] == 255)
    assert 0 < int((sampled == 255).sum()) < sampled.numel()


def test_each_head_is_scored_on_its_own_labelling(siftflow: Path) -> None:
    """Scoring the two-headed model equals scoring each head alone on its one-headed dataset."""
    model = randomize(build_model("pointwise", 36), seed=4, scale=1.0)
    dataset = open_dataset(f"siftflow-both:{siftflow}", "train")
    _, card = initial_model("scratch", "pointwise", dataset)
    matrices = evaluate_heads(model, dataset, card.normalization, torch.device("cpu"))
    assert list(matrices) == ["semantic", "geometric"]
    for name, part, single in (
        ("semantic", slice(0, 33), "siftflow"),
        ("geometric", slice(33, 36), "siftflow-geo"),
    ):
        alone = evaluate(Channels(model, part), open_dataset(f"{single}:{siftflow}", "train"),
                         card.normalization, torch.device("cpu"))  # fmt: skip
        np.testing.assert_array_equal(matrices[name].hist, alone.hist)
        assert alone.hist.sum() > 0


def test_a_stage_keeps_both_heads_scores_and_the_checkpoint_says_so(
    siftflow: Path, recipe: Path, tmp_path: Path
) -> None:
    """Plumbing (pointwise, two steps): metrics.csv has the geometric head's four columns."""
    spec = f"siftflow-both:{siftflow}"
    model, card = initial_model("scratch", "pointwise", open_dataset(spec, "train"))
    args = StageArgs(dataset=spec, steps=2, eval_every=1, val_split="test")
    result = train_stage(model, card, load_recipe(str(recipe)), args, tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for metric in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        assert float(rows[-1][f"geometric_{metric}"]) == pytest.approx(result.scores[f"geometric_{metric}"])
        assert 0 <= result.scores[f"geometric_{metric}"] <= 1
    best, best_card = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best_card.head_sizes == (("semantic", 33), ("geometric", 3))
    (row,) = [r for r in rows if int(r["step"]) == read_checkpoint(tmp_path / "run" / "best.pt")["step"]]
    scored = evaluate_heads(best, open_dataset(spec, "test"), best_card.normalization, torch.device("cpu"))
    assert scored["geometric"].scores()["mean_iu"] == pytest.approx(float(row["geometric_mean_iu"]))
    assert scored["semantic"].scores()["mean_iu"] == pytest.approx(float(row["mean_iu"]))


def test_a_two_headed_stage_resumed_ends_as_one_run_straight_through(
    siftflow: Path, recipe: Path, tmp_path: Path
) -> None:
    """Plumbing (pointwise): stop after step 1, resume to step 3: the weights and rows of a straight run."""
    spec = f"siftflow-both:{siftflow}"
    args = StageArgs(dataset=spec, steps=3, eval_every=1, val_split="test")
    runs = {}
    for name, until in (("straight", None), ("resumed", 1)):
        model, card = initial_model("scratch", "pointwise", open_dataset(spec, "train"))
        train_stage(model, card, load_recipe(str(recipe)), args, tmp_path / name, until=until)
        if until is not None:
            resume_stage(tmp_path / name)
        with (tmp_path / name / "metrics.csv").open(newline="") as f:
            rows = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
        runs[name] = (read_checkpoint(tmp_path / name / "last.pt")["state_dict"], rows)
    (straight, straight_rows), (resumed, resumed_rows) = runs["straight"], runs["resumed"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert resumed_rows == straight_rows and len(resumed_rows) == 3 and "geometric_mean_iu" in resumed_rows[0]


def test_class_weights_with_several_heads_are_one_sentence(siftflow: Path, tmp_path: Path) -> None:
    spec = f"siftflow-both:{siftflow}"
    model, card = initial_model("scratch", "pointwise", open_dataset(spec, "train"))
    recipe = load_recipe("modern").updated(class_weights="median-frequency")
    with pytest.raises(FcnpipeError, match="class weights and adversarial training work with one"):
        args = StageArgs(dataset=spec, steps=1, eval_every=1, val_split="test")
        train_stage(model, card, recipe, args, tmp_path / "run")


# --- the model and the mosaic --------------------------------------------------------------------


def test_the_fcns_heads_are_independent_channel_groups() -> None:
    """With fixed bilinear upsamplers an FCN over 33 + 3 classes is two heads on one trunk: a
    head's logits do not change when the other head's score weights do."""
    model = randomize(build_model("fcn8s", 36), seed=5)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        for layer in (model.score_fr, model.score_pool4, model.score_pool3):
            layer.weight[33:] += 1.0
            layer.bias[33:] -= 1.0
        after = model(x)
    assert torch.equal(before[:, :33], after[:, :33]) and not torch.equal(before[:, 33:], after[:, 33:])


def two_headed_checkpoint(path: Path) -> tuple[Path, nn.Module]:
    model = randomize(build_model("pointwise", 36), seed=6, scale=1.0)
    names = [f"s{i}" for i in range(33)] + ["sky", "horizontal", "vertical"]
    card = describe(model, "pointwise", class_names=names)
    card = replace(card, head_sizes=(("semantic", 33), ("geometric", 3)))
    save_checkpoint(path, model, card)
    return path, model


def test_the_mosaic_holds_one_label_map_per_head(tmp_path: Path) -> None:
    """Plumbing (pointwise): each head's labels are the argmax of its own channels; nodata kept in both."""
    weights, model = two_headed_checkpoint(tmp_path / "two.pt")
    pixels = noise_image(80, 96, seed=7)
    pixels[pixels == 0] = 1  # keep 0 for nodata
    pixels[:, :32, :32] = 0  # one whole core without data
    pixels[:, 40:45, 50:60] = 0  # and a patch inside another
    scene = write_tif(tmp_path / "scene.tif", pixels, nodata=0)
    settings = SegmentSettings(tile_size=32, chunk=16, outputs=("labels", "probabilities"),
                               probabilities_dtype="float16")  # fmt: skip
    report = run_local(plan_scene(scene, weights, settings, output=tmp_path / "out.zarr"))
    _, card = load_checkpoint(weights)
    with torch.no_grad():
        logits = model(card.normalization.apply(torch.from_numpy(pixels)[None].float()))[0]
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    valid = (pixels > 0).any(axis=0)
    for name, part, nodata in (("labels", slice(0, 33), 255), ("labels_geometric", slice(33, 36), 255)):
        stored = np.asarray(group[name][...])
        np.testing.assert_array_equal(stored[valid], logits[part].argmax(0).numpy()[valid])
        assert (stored[~valid] == nodata).all()
    probabilities = np.asarray(group["probabilities"][...], dtype=np.float32)[:, valid]
    for part in (slice(0, 33), slice(33, 36)):
        np.testing.assert_allclose(probabilities[part].sum(0), 1.0, atol=1e-2)
    assert group["labels"].attrs["flag_values"] == list(range(33))
    assert group["labels_geometric"].attrs["flag_meanings"] == "sky horizontal vertical"
    assert group.attrs["heads"]["labels_geometric"]["class_names"] == ["sky", "horizontal", "vertical"]
    assert sum(report["class_pixels_labels_geometric"].values()) == int(valid.sum())
    assert sum(report["class_pixels"].values()) == int(valid.sum()) and len(report["class_pixels"]) == 33
    overview = xr.open_zarr(tmp_path / "out.zarr", group="overviews/1", decode_coords="all")
    assert overview["labels_geometric"].shape == (40, 48)
    # Each head exports on its own; the probabilities' bands name every head's classes.
    export_cog(tmp_path / "out.zarr", tmp_path / "geometric.tif", what="labels_geometric")
    with rasterio.open(tmp_path / "geometric.tif") as cog:
        np.testing.assert_array_equal(cog.read(1), np.asarray(group["labels_geometric"][...]))
        assert (cog.tags()["CLASS_0"], cog.tags()["CLASS_2"]) == ("sky", "vertical")
    export_cog(tmp_path / "out.zarr", tmp_path / "probabilities.tif", what="probabilities")
    with rasterio.open(tmp_path / "probabilities.tif") as cog:
        assert cog.count == 36 and cog.descriptions[:2] == ("s0", "s1")
        assert cog.descriptions[33:] == ("geometric:sky", "geometric:horizontal", "geometric:vertical")
    info = describe_mosaic(tmp_path / "out.zarr")
    assert "labels_geometric" in info["arrays"] and len(info["classes"]) == 33
    assert info["head_classes"] == {"labels_geometric": ["sky", "horizontal", "vertical"]}
    with pytest.raises(
        FcnpipeError, match="has no label array 'labels_depth'; it has labels, labels_geometric"
    ):
        export_cog(tmp_path / "out.zarr", tmp_path / "x.tif", what="labels_depth")


@pytest.mark.usefixtures("prefect_api")
def test_the_evaluate_flow_scores_and_reports_each_head(siftflow: Path, tmp_path: Path) -> None:
    weights, _ = two_headed_checkpoint(tmp_path / "two.pt")
    report = tmp_path / "scores.json"
    args = ["--weights", str(weights), "--dataset", f"siftflow-both:{siftflow}", "--split", "test"]
    result = runner.invoke(app, ["run", str(ROOT / "flows" / "evaluate.py"), *args, "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "semantic head" in result.output and "geometric head" in result.output
    semantic, geometric = (json.loads(p.read_text()) for p in (report, tmp_path / "scores-geometric.json"))
    assert len(semantic["class_names"]) == 33 and geometric["class_names"] == [
        "sky",
        "horizontal",
        "vertical",
    ]
    # each head scored against its own labelling: its labelled pixels, not the other's
    both = open_dataset(f"siftflow-both:{siftflow}", "test")
    labelled = [int((both[0][1][i] != 255).sum()) for i in (0, 1)]
    assert [int(np.sum(r["confusion_matrix"])) for r in (semantic, geometric)] == labelled
    assert (tmp_path / "scores-geometric.confusion.png").is_file()


@pytest.mark.slow
def test_a_two_headed_fcn_streams_both_label_maps_as_tiles_give_them(tmp_path: Path) -> None:
    """--strategy stream reduces each head on its own channels, as the tiles do."""
    model = randomize(build_model("fcn32s", 36), seed=8)
    card = replace(describe(model, "fcn32s", memory=False), head_sizes=(("semantic", 33), ("geometric", 3)))
    save_checkpoint(tmp_path / "two.pt", model, card)
    image = noise_image(100, 260, seed=9)
    image[image == 0] = 1
    image[:, 10:50, 100:160] = 0  # nodata across two strips
    scene = write_tif(tmp_path / "scene.tif", image, nodata=0)
    common = {"chunk": 64, "outputs": ("labels", "probabilities")}
    tiled, streamed = tmp_path / "tiled.zarr", tmp_path / "streamed.zarr"
    run_local(plan_scene(scene, tmp_path / "two.pt", SegmentSettings(tile_size=128, **common), output=tiled))
    settings = SegmentSettings(tile_size=128, strategy="stream", **common)
    run_local(plan_scene(scene, tmp_path / "two.pt", settings, output=streamed))
    want, got = zarr.open_group(tiled, mode="r"), zarr.open_group(streamed, mode="r")
    for name in ("labels", "labels_geometric"):
        np.testing.assert_array_equal(np.asarray(got[name][...]), np.asarray(want[name][...]))
    assert (np.asarray(got["labels_geometric"][...])[(image == 0).all(axis=0)] == 255).all()
