"""The FCN paper's staged training (FCN-32s, then 16s from it, then 8s from that), without Prefect.

For GPU machines that cannot carry Prefect (../shared/device/README.md): the same
``pipeline.training.train.train_stage`` the train flow runs, stage after stage, each from the previous
stage's best checkpoint. Prints one markdown row per stage (the four metrics of its best
validation, steps, wall time) for BENCHMARKS.md, and writes them to ``OUT/stages.json``.

    uv run python bench/stages.py --dataset camvid:../shared/data/camvid --init scratch \\
        --recipe modern --steps 2000 --eval-every 250 --device cuda --out runs/camvid
    uv run python bench/stages.py --dataset synthetic-ortho:data/synthetic --steps 20 --out /tmp/s
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline.tiling.engine import pick_device
from pipeline.training.data import open_dataset
from pipeline.training.recipes import load_recipe
from pipeline.training.train import STAGES, StageArgs, StepReport, initial_model, train_stage

METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="NAME:PATH, e.g. camvid:../shared/data/camvid")
    parser.add_argument(
        "--init", default="scratch", help="scratch, vgg16:PATH, caffe-vgg16:PATH or a checkpoint"
    )
    parser.add_argument("--recipe", default="modern", help="heavy, modern, default or a YAML file")
    parser.add_argument("--steps", type=int, required=True, help="training steps per stage")
    parser.add_argument("--eval-every", type=int, default=None, help="default: four times per stage")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in order")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = pick_device(args.device)
    recipe = load_recipe(args.recipe)
    train_set = open_dataset(args.dataset, "train")
    stage_args = StageArgs(
        dataset=args.dataset, steps=args.steps, eval_every=args.eval_every or max(1, args.steps // 4),
        val_limit=args.val_limit,
    )  # fmt: skip
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{args.dataset}: {len(train_set)} training images, recipe {recipe.name}, init {args.init}, "
          f"{args.steps} steps per stage on {device} ({name})", flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    previous = args.init
    every = max(1, min(200, args.steps // 10))  # about ten progress lines a stage
    for stage in args.stages.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, card = initial_model(previous, stage, train_set)
        start = time.perf_counter()
        result = train_stage(
            model, card, recipe, stage_args, args.out / stage, device=device, on_step=log_every(every)
        )
        seconds = time.perf_counter() - start
        rows.append({"stage": stage, "init": previous, "steps": result.step, "seconds": round(seconds, 1),
                     **best_row(args.out / stage / "metrics.csv")})  # fmt: skip
        previous = str(result.best)
        (args.out / "stages.json").write_text(json.dumps(rows, indent=2))
    print("\n| stage | init | steps | wall time | pixel acc. | mean acc. | mean IU | f.w. IU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        scores = " | ".join(f"{r[m]:.3f}" for m in METRICS)
        print(f"| {r['stage']} | {Path(r['init']).parent.name or r['init']} | {r['steps']} | "
              f"{r['seconds'] / 60:.1f} min | {scores} |")  # fmt: skip


def best_row(metrics_csv: Path) -> dict[str, float]:
    """The four metrics of the validation with the best mean IU (the one best.pt holds)."""
    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: float(r["mean_iu"]))
    return {m: float(best[m]) for m in METRICS} | {"best_step": int(best["step"])}


def log_every(n: int) -> Any:
    """A step callback that prints one line every ``n`` steps."""

    def log(report: StepReport) -> None:
        if report.step % n == 0 or report.step == report.steps:
            best = "-" if report.best_mean_iu is None else f"{report.best_mean_iu:.3f}"
            print(f"  step {report.step}/{report.steps}: loss {report.loss:.4f}, best mean IU {best}, "
                  f"{report.step / report.seconds:.2f} steps/s", flush=True)  # fmt: skip

    return log


if __name__ == "__main__":
    main()
