"""fcnpipe's default model: a demonstration network trained once, on first use, where it is needed.

A slim FCN-8s (``fcn8s-demo``: FCN-8s's layers, kernels, crops, receptive field and alignment at
an eighth of VGG16's widths) trained from scratch on the generated synthetic orthophoto benchmark
(deterministic, no download) with the ``demo`` recipe (configs/train-demo.yaml): minutes on a
laptop's CPU, so that a newcomer's first command shows a result. A demonstration, not a good
segmenter: train FCN-8s from ImageNet VGG16 for real work (README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.training.recipes import Recipe, load_recipe
from pipeline.training.train import StageArgs, StageResult

ARCH = "fcn8s-demo"
RECIPE = "demo"
SCENES, SIZE, STEPS = 12, 256, 600
"""The benchmark's scenes and their side in px, and the training steps (BENCHMARKS.md measures them)."""


def default_training(work: Path, steps: int = STEPS) -> tuple[StageArgs, Recipe]:
    """Generate the benchmark under ``work``; the stage's arguments and recipe."""
    from pipeline.training.data.synthetic import make_benchmark

    data = make_benchmark(work / "synthetic-ortho", scenes=SCENES, size=SIZE, seed=0)
    args = StageArgs(dataset=f"synthetic-ortho:{data}", steps=steps, eval_every=max(1, steps // 4))
    return args, load_recipe(RECIPE)


def keep_default_model(result: StageResult, path: Path, recipe: Recipe, seconds: float, device: str) -> Path:
    """Copy the stage's best checkpoint to ``path`` (whole or not at all), with its record beside it."""
    record: dict[str, Any] = {
        "arch": ARCH,
        "init": "scratch",
        "dataset": f"synthetic-ortho, {SCENES} scenes of {SIZE}² px, seed 0",
        "steps": result.step,
        "recipe": recipe.model_dump(mode="json"),
        "best_mean_iu": result.best_mean_iu,
        "validation": result.scores,
        "seconds": round(seconds, 1),
        "device": device,
    }
    shutil.copyfile(result.best, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path
