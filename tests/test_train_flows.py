"""The train and evaluate flows on Prefect's engine, through the CLI."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from fcn import build_model, load_checkpoint
from fcnpipe.main import app
from pipeline.training.data import open_dataset, scores
from pipeline.training.data.synthetic import CLASSES, make_benchmark
from tests.conftest import randomize, save_model, write_tif

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY = """\
name: tiny
optimizer: adamw
lr: 1.0e-3
weight_decay: 0.0
loss_reduction: mean
schedule: fixed
batch_size: 2
crop: 32
hflip: true
precision: fp32
"""


pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("synthetic"), scenes=4, size=48, seed=1)


def flow(name: str, *args: str) -> str:
    result = runner.invoke(app, ["run", str(ROOT / "flows" / f"{name}.py"), *args])
    assert result.exit_code == 0, result.output
    return result.output


def flow_refuses(name: str, *args: str) -> str:
    """Run a flow that must stop with one sentence (exit 1, no traceback); return that sentence."""
    result = runner.invoke(app, ["run", str(ROOT / "flows" / f"{name}.py"), *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    return " ".join(result.output.split())


def test_train_flow_writes_checkpoints_metrics_and_resumes_exactly(benchmark: Path, tmp_path: Path) -> None:
    # The per-pixel stand-in keeps this about the flow (stages, folders, resume), not the network.
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    common = ["--dataset", f"synthetic-ortho:{benchmark}", "--arch", "pointwise", "--init", "scratch",
              "--recipe", str(recipe), "--eval-every", "2"]  # fmt: skip
    started = datetime.now(UTC)  # the session's API also holds other tests' pointwise artifacts
    output = flow("train", *common, "--out", str(tmp_path / "full"), "--max-steps", "6")
    assert "train pointwise" in output and "6/6 steps" in output and "best mean IU" in output
    assert "s per step on this machine, about" in output and "more to reach step 6" in output
    assert "warning" not in output  # the stand-in has no ImageNet start to miss
    assert f"pointwise: {tmp_path / 'full' / 'pointwise' / 'best.pt'} (val mean IU" in " ".join(
        output.split()
    )
    stage = tmp_path / "full" / "pointwise"
    _, card = load_checkpoint(stage / "best.pt")
    assert card.class_names == CLASSES and card.provenance["dataset"] == f"synthetic-ortho:{benchmark}"
    rows = (stage / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step") and len(rows) == 1 + 3  # validated at steps 2, 4, 6
    # The metrics table is republished as a Prefect artifact after every validation.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pointwise-metrics"]))
        )
    tables = sorted(str(a.data) for a in versions if a.created is not None and a.created >= started)
    assert [table.count("\n| ") for table in tables] == [1, 2, 3]  # data rows after each validation

    from pipeline.training.train import resume_stage

    resume_stage(stage, until=None)  # a finished stage stays as it is
    paused = tmp_path / "paused" / "pointwise"
    from pipeline.training.recipes import load_recipe
    from pipeline.training.train import StageArgs, initial_model, open_dataset, train_stage

    dataset = open_dataset(f"synthetic-ortho:{benchmark}", "train")
    m, c = initial_model("scratch", "pointwise", dataset)
    args = StageArgs(dataset=f"synthetic-ortho:{benchmark}", steps=6, eval_every=2)
    train_stage(m, c, load_recipe(recipe), args, paused, until=3)
    # A resume needs its last.pt (best.pt has no optimiser) and writes beside it (--out defaults there).
    assert "holds weights only" in flow_refuses("train", *common, "--max-steps", "6", "--resume",
                                                str(paused / "best.pt"))  # fmt: skip
    elsewhere = flow_refuses("train", *common, "--out", str(tmp_path / "other"), "--max-steps", "6",
                             "--resume", str(paused / "last.pt"))  # fmt: skip
    assert f"pass --out {tmp_path / 'paused'}" in elsewhere and not (tmp_path / "other").exists()
    output = flow("train", *common, "--max-steps", "8", "--resume", str(paused / "last.pt"))
    assert "continues its stage as it was started, to step 6" in " ".join(output.split())
    resumed, _ = load_checkpoint(paused / "last.pt")
    full, _ = load_checkpoint(stage / "last.pt")
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), k


@pytest.mark.slow  # ~30 s
def test_train_flow_trains_another_family_with_the_new_options_and_relays_warnings(
    benchmark: Path, tmp_path: Path
) -> None:
    # FCN-GoogLeNet: small (6 M), and its paper starts from ImageNet, so from scratch warns.
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    output = flow("train", "--dataset", f"synthetic-ortho:{benchmark}", "--arch", "fcn32s-googlenet",
                  "--init", "scratch", "--recipe", str(recipe), "--max-steps", "2", "--eval-every", "2",
                  "--class-weights", "median-frequency", "--adversarial", "0.1",
                  "--out", str(tmp_path))  # fmt: skip
    assert "warning: training from scratch" in output  # Prefect's log is quiet: the CLI says it
    stage = tmp_path / "fcn32s-googlenet"
    (row,) = [line.split(",") for line in (stage / "metrics.csv").read_text().splitlines()[1:]]
    header = (stage / "metrics.csv").read_text().splitlines()[0].split(",")
    assert 0 <= float(row[header.index("discriminator_accuracy")]) <= 1
    settings = (stage / "stage.yaml").read_text()
    assert "class_weights: median-frequency" in settings and "adversarial: 0.1" in settings
    _, card = load_checkpoint(stage / "best.pt")
    assert card.arch == "fcn32s-googlenet" and card.halo >= card.receptive_field.radius


@pytest.mark.parametrize(
    ("option", "value", "sentence"),
    [
        ("--max-steps", "0", "invalid settings: --max-steps: Input should be greater than or equal to 1."),
        ("--val-limit", "0", "--val-limit: Input should be greater than or equal to 1."),
        ("--val-split", "nope", "no nope.txt"),
        ("--class-weights", "inverse", "'inverse' is not a valid 'none' or 'median-frequency'"),
        ("--adversarial", "-1", "--adversarial: Input should be greater than or equal to 0"),
    ],
)  # fmt: skip
def test_train_flow_refuses_bad_settings_in_one_sentence(
    benchmark: Path, tmp_path: Path, option: str, value: str, sentence: str
) -> None:
    common = ["--dataset", f"synthetic-ortho:{benchmark}", "--arch", "pointwise", "--init", "scratch",
              "--out", str(tmp_path / "run"), "--max-steps", "2"]  # fmt: skip
    assert sentence in flow_refuses("train", *common, option, value)
    assert not (tmp_path / "run").exists()


def test_evaluate_flow_reports_the_four_metrics_whole_and_tiled_alike(
    benchmark: Path, tmp_path: Path
) -> None:
    weights = save_model(
        tmp_path / "fcn8s.pt", randomize(build_model("fcn8s", len(CLASSES)), seed=4), "fcn8s"
    )
    reports = {}
    for mode in ("whole", "tiled"):
        report = tmp_path / f"{mode}.json"
        args = [
            "--weights",
            str(weights),
            "--dataset",
            f"synthetic-ortho:{benchmark}",
            "--report",
            str(report),
        ]
        output = flow("evaluate", *args, *(["--tiled", "--tile-size", "32"] if mode == "tiled" else []))
        assert "mean IU" in output
        reports[mode] = json.loads(report.read_text())
        assert report.with_suffix(".confusion.png").is_file()
    whole, tiled = reports["whole"], reports["tiled"]
    assert set(whole["metrics"]) == {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"}
    assert whole["metrics"] == pytest.approx(scores(np.array(whole["confusion_matrix"])))
    assert list(whole["per_class_iu"]) == list(CLASSES)
    # The exact halo makes tiled scoring equal whole-image scoring.
    assert tiled["confusion_matrix"] == whole["confusion_matrix"]


def test_tiled_scoring_reads_bands_1_to_3_and_leaves_masked_pixels_out(tmp_path: Path) -> None:
    """Plumbing, so the 1x1 stand-in: 4-band scenes with a nodata patch, scored through the tiles.

    The tiling pipeline predicts nothing under the patch; everywhere else it must agree with
    whole-image scoring, which is the whole-image matrix of the same scenes with the patch's labels
    made void.
    """
    from pipeline.training.evaluation import evaluate as evaluate_whole
    from pipeline.training.evaluation import evaluate_tiled

    source = make_benchmark(tmp_path / "source", scenes=3, size=40, seed=2)
    scenes, voided = (
        shutil.copytree(source, tmp_path / "scenes"),
        shutil.copytree(source, tmp_path / "voided"),
    )
    labelled = 0
    for image in sorted((source / "images").glob("*.tif")):
        with rasterio.open(image) as src:
            rgb, crs, transform = src.read(), src.crs, src.transform
        four = np.concatenate([np.maximum(rgb, 1), rgb[:1]])  # 0 is kept for nodata
        four[:, 5:15, 10:30] = 0
        for root in (scenes, voided):
            write_tif(root / "images" / image.name, four, nodata=0, crs=crs, transform=transform,
                      photometric="minisblack")  # fmt: skip
        with rasterio.open(voided / "labels" / image.name, "r+") as dst:
            label = dst.read(1)
            labelled += (
                int(np.count_nonzero(label[5:15, 10:30] != 255)) if image.stem.startswith("val") else 0
            )
            label[5:15, 10:30] = 255  # the labels' nodata: void
            dst.write(label, 1)
    model = randomize(build_model("pointwise", len(CLASSES)), seed=3, scale=1.0)
    weights = save_model(tmp_path / "pointwise.pt", model, "pointwise")
    tiled, unscored = evaluate_tiled(
        weights, open_dataset(f"ortho:{scenes}", "val"), tile_size=32, device="cpu"
    )
    loaded, card = load_checkpoint(weights)
    whole = evaluate_whole(
        loaded, open_dataset(f"ortho:{voided}", "val"), card.normalization, torch.device("cpu")
    )
    assert unscored == labelled > 0
    assert np.array_equal(tiled.hist, whole.hist) and tiled.hist.sum() > 0


def test_the_default_model_leaves_one_model_file_and_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real recipe and network, on a smaller benchmark and for 2 steps.
    import flows.train
    from pipeline.training import default_model

    monkeypatch.setattr(default_model, "SCENES", 4)
    monkeypatch.setattr(default_model, "SIZE", 128)
    path = tmp_path / "models" / "default.pt"
    flows.train.default_model(path, steps=2, device="cpu")
    assert sorted(p.name for p in path.parent.iterdir()) == ["default.json", "default.pt"]
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["steps"] == 2 and record["recipe"]["name"] == default_model.RECIPE
    assert 0 <= record["best_mean_iu"] <= 1 and "mean_iu" in record["validation"]
    _, card = load_checkpoint(path)
    assert card.arch == record["arch"] == default_model.ARCH


@pytest.mark.slow
def test_the_default_models_training_files_stay_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.train
    from pipeline.training import default_model

    monkeypatch.setattr(default_model, "SCENES", 4)
    monkeypatch.setattr(default_model, "SIZE", 128)
    path = tmp_path / "default.pt"
    flows.train.default_model(path, steps=1, device="cpu", keep_training_files=True)
    assert (tmp_path / "default-model" / "run-1" / "last.pt").is_file() and path.is_file()
