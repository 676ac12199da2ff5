"""The train and evaluate flows on Prefect's engine, through the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fcn import build_model, load_checkpoint
from pipeline.cli import app
from pipeline.data import scores
from pipeline.data.synthetic import CLASSES, make_benchmark
from tests.conftest import randomize, save_model

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


@pytest.fixture(scope="module", autouse=True)
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("synthetic"), scenes=4, size=48, seed=1)


def flow(name: str, *args: str) -> str:
    result = runner.invoke(app, ["run", str(ROOT / "flows" / f"{name}.py"), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_train_flow_writes_checkpoints_metrics_and_resumes_exactly(benchmark: Path, tmp_path: Path) -> None:
    # The per-pixel stand-in keeps this about the flow (stages, folders, resume), not the network.
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    common = ["--dataset", f"synthetic-ortho:{benchmark}", "--arch", "pointwise", "--init", "scratch",
              "--recipe", str(recipe), "--eval-every", "2"]  # fmt: skip
    output = flow("train", *common, "--out", str(tmp_path / "full"), "--max-steps", "6")
    assert "train pointwise" in output and "6/6 steps" in output and "best mean IU" in output
    stage = tmp_path / "full" / "pointwise"
    _, card = load_checkpoint(stage / "best.pt")
    assert card.class_names == CLASSES and card.provenance["dataset"] == f"synthetic-ortho:{benchmark}"
    rows = (stage / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step") and len(rows) == 1 + 3  # validated at steps 2, 4, 6

    from pipeline.train import resume_stage

    resume_stage(stage, until=None)  # a finished stage stays as it is
    paused = tmp_path / "paused" / "pointwise"
    from pipeline.recipes import load_recipe
    from pipeline.train import StageArgs, initial_model, open_dataset, train_stage

    dataset = open_dataset(f"synthetic-ortho:{benchmark}", "train")
    m, c = initial_model("scratch", "pointwise", dataset)
    args = StageArgs(dataset=f"synthetic-ortho:{benchmark}", steps=6, eval_every=2)
    train_stage(m, c, load_recipe(recipe), args, paused, until=3)
    flow(
        "train",
        *common,
        "--out",
        str(tmp_path / "paused"),
        "--max-steps",
        "6",
        "--resume",
        str(paused / "last.pt"),
    )
    resumed, _ = load_checkpoint(paused / "last.pt")
    full, _ = load_checkpoint(stage / "last.pt")
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), k


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
