"""A training run's stages: which networks it trains in turn, how long each is, what it resumes.

The decisions of the train flow, kept where tests call them without Prefect.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fcn import FcnpipeError, ModelCard
from fcn.checkpoint import read_checkpoint
from pipeline.training.presets import find_preset
from pipeline.training.recipes import Recipe
from pipeline.training.train import STAGES, StageArgs


def stages_for(arch: str, staged: bool) -> list[str]:
    """The chain of stages that ends in ``arch``."""
    if arch in STAGES and staged:
        return list(STAGES[: STAGES.index(arch) + 1])
    return [arch]


def metrics_table(run_dir: Path) -> str:
    """A stage's metrics.csv as a markdown table."""
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines() if line]
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


TRAIN_DEFAULTS: dict[str, Any] = {
    "arch": "fcn8s", "init": "imagenet", "recipe": "modern", "train_split": "train", "val_split": "val",
}  # fmt: skip
"""What an option given neither on the command line nor by a preset means."""

PRESET_OPTIONS = (
    "dataset", "arch", "init", "recipe", "train_split", "val_dataset", "val_split", "eval_every", "max_steps",
)  # fmt: skip
"""The options a preset sets (``Preset.options``): given ones win over the preset's."""


def chosen_options(preset: str | None, data: Path | None, given: dict[str, Any]) -> dict[str, Any]:
    """The options a run uses: those given, then the preset's, then :data:`TRAIN_DEFAULTS`."""
    if preset is None:
        if data is not None:
            raise FcnpipeError(
                "--data DIR is where a --preset finds its datasets; without one give --dataset."
            )
        values = TRAIN_DEFAULTS | {k: v for k, v in given.items() if v is not None}
    else:
        values = TRAIN_DEFAULTS | find_preset(preset).options(preset, data, given)
    if values.get("dataset") is None:
        raise FcnpipeError("give the training data as --dataset NAME:PATH, or a --preset with --data DIR.")
    return values


def stage_lengths(
    chain: list[str], recipe: Recipe, dataset: str, train_size: int, max_steps: int | None, epochs: int | None
) -> dict[str, int]:
    """Steps per stage: --max-steps, --epochs of the training split, or the recipe's for the dataset."""
    if max_steps is not None and epochs is not None:
        raise FcnpipeError("give the length of each stage with either --max-steps or --epochs, not both.")
    if max_steps is not None:
        return dict.fromkeys(chain, max_steps)
    if epochs is not None:
        return dict.fromkeys(chain, epochs * math.ceil(train_size / recipe.batch_size))
    name = dataset.partition(":")[0]
    lengths = {stage: recipe.steps_for(stage, name) for stage in chain}
    missing = [stage for stage, steps in lengths.items() if steps is None]
    if missing:
        raise FcnpipeError(
            f"give the length of each stage with either --max-steps or --epochs (the {recipe.name} "
            f"recipe has no steps of its own for {', '.join(missing)} on {name})."
        )
    return {stage: int(steps) for stage, steps in lengths.items() if steps is not None}


def resumable(checkpoint: Path, chain: list[str]) -> tuple[str, StageArgs]:
    """The architecture and arguments of the stage ``checkpoint`` (a last.pt) resumes, checked."""
    payload = read_checkpoint(checkpoint)
    arch = ModelCard.from_dict(payload["card"]).arch
    if "optimizer" not in payload:
        raise FcnpipeError(
            f"{checkpoint} holds weights only (a best.pt); resume from the stage's last.pt, which also "
            "holds the optimiser, schedule and random state."
        )
    if arch not in chain:
        raise FcnpipeError(f"{checkpoint} is a {arch} stage, which is not part of {' -> '.join(chain)}.")
    return arch, StageArgs(**payload["args"])
