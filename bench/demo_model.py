"""The demonstration model trained as the default model is, and its cost per step against FCN-8s.

The default-model path (``flows/train.py``, ``default_model``), without Prefect: the synthetic
benchmark (12 scenes of 256², seed 0) generated into a temporary directory, then one
``train_stage`` from scratch, validated four times, the best validation kept. Prints the steps,
the wall time of each part, seconds per training step (mean and median: a shared machine shows
in the gap), the mean IU of each validation and the best one's pixel accuracy, and the time of one
whole-image pass of the trained model over ``--forward-size``².

``--compare-steps N`` then times N training steps of each network, FCN-8s and the demonstration
model taking turns step by step (same recipe, same batches, after one untimed step each), so that a
busy spell of a shared machine slows both alike, and prints their medians and ratio.
``--steps 0`` runs the comparison alone.

    uv run python bench/demo_model.py                                  # ~1.5 min on 2 idle CPU cores
    uv run python bench/demo_model.py --steps 0 --compare-steps 8      # the ratio alone, ~1.5 min
    uv run python bench/demo_model.py --arch fcn8s --recipe default --steps 300   # today's, ~15 min
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench.stages import best_row
from fcn.margin import same_size_forward
from pipeline.tiling.engine import pick_device
from pipeline.training.data import open_dataset
from pipeline.training.data.synthetic import make_benchmark
from pipeline.training.recipes import Recipe, load_recipe, make_optimizer, make_scheduler
from pipeline.training.train import StageArgs, StepReport, batches, initial_model, train_stage, train_steps

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "train-demo.yaml"


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def step_timer(durations: list[float], every: int) -> Callable[[StepReport], None]:
    """A step callback that records each step's training seconds and prints a line every ``every``."""
    previous = [0.0]

    def on_step(report: StepReport) -> None:
        durations.append(report.seconds - previous[0])
        previous[0] = report.seconds
        if report.step % every == 0 or report.step == report.steps:
            best = "-" if report.best_mean_iu is None else f"{report.best_mean_iu:.3f}"
            print(f"  step {report.step}/{report.steps}: loss {report.loss:.4f}, best mean IU {best}, "
                  f"{report.seconds:.1f} s training", flush=True)  # fmt: skip

    return on_step


def train(
    arch: str, recipe: Recipe, dataset: str, steps: int, run: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Train ``arch`` from scratch as ``default_model`` does (validated every ``steps // 4``); its figures."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FCN-8s from scratch: its paper starts from ImageNet
        model, card = initial_model("scratch", arch, open_dataset(dataset, "train"), seed=args.seed)
    stage_args = StageArgs(dataset=dataset, steps=steps, eval_every=max(1, steps // 4), seed=args.seed)
    durations: list[float] = []
    start = time.perf_counter()
    result = train_stage(
        model, card, recipe, stage_args, run, device=pick_device(args.device),
        on_step=step_timer(durations, max(1, steps // 10)),
    )  # fmt: skip
    wall = time.perf_counter() - start
    with (run / "metrics.csv").open() as f:
        progress = " / ".join(f"{float(row['mean_iu']):.3f}" for row in csv.DictReader(f))
    return {"steps": result.step, "wall": wall, "training": sum(durations),
            "median_step": statistics.median(durations), "params": parameters(model), "best": result.best,
            "progress": progress, **best_row(run / "metrics.csv")}  # fmt: skip


def parameters(model: torch.nn.Module) -> int:
    """The network's parameter count."""
    return sum(p.numel() for p in model.parameters())


def forward_seconds(checkpoint: Path, size: int) -> float:
    """One whole-image pass of the trained model over a ``size``² input, after a small warm-up pass."""
    from fcn import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        same_size_forward(model.eval(), x[..., :64, :64])
        start = time.perf_counter()
        same_size_forward(model, x)
    return time.perf_counter() - start


def stepper(arch: str, recipe: Recipe, dataset: str, args: argparse.Namespace) -> Callable[[], float]:
    """A function that runs one training step of ``arch`` (from scratch, on the recipe's batches) and
    returns its seconds; the same batches for every network."""
    train_set = open_dataset(dataset, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model, card = initial_model("scratch", arch, train_set, seed=args.seed)
    optimizer = make_optimizer(model, recipe, arch)
    scheduler = make_scheduler(optimizer, recipe, args.compare_steps + 1)
    stream: Iterator[Any] = batches(train_set, recipe, seed=args.seed, fill=card.normalization.zero_input())
    options = {"device": pick_device(args.device), "normalization": card.normalization,
               "ignore_index": train_set.ignore_index, "recipe": recipe, "heads": card.heads}  # fmt: skip

    def step() -> float:
        start = time.perf_counter()
        train_steps(model, optimizer, scheduler, stream, 1, **options)
        return time.perf_counter() - start

    print(f"  {arch}: {parameters(model) / 1e6:.2f} M parameters", flush=True)
    return step


def compare(archs: tuple[str, str], recipe: Recipe, dataset: str, args: argparse.Namespace) -> None:
    """Time ``--compare-steps`` training steps of both networks, taking turns; print medians and ratio."""
    steps = {arch: stepper(arch, recipe, dataset, args) for arch in archs}
    seconds: dict[str, list[float]] = {arch: [] for arch in archs}
    for step in steps.values():
        step()  # untimed: first-call costs (allocations, kernel choice)
    for _ in range(args.compare_steps):
        for arch, step in steps.items():
            seconds[arch].append(step())
    full, demo = (statistics.median(seconds[arch]) for arch in archs)
    print(f"  median of {args.compare_steps} steps taken in turns: {archs[0]} {full:.3f} s, {archs[1]} "
          f"{demo:.3f} s: {full / demo:.0f}x; load average {load()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="fcn8s-demo")
    parser.add_argument("--recipe", default=str(DEMO_RECIPE), help="default, a YAML file, …")
    parser.add_argument("--steps", type=int, default=600, help="0: the comparison alone")
    parser.add_argument("--scenes", type=int, default=12, help="as default_model: 12")
    parser.add_argument("--size", type=int, default=256, help="as default_model: 256")
    parser.add_argument("--seed", type=int, default=0, help="of the weights and batches; default_model: 0")
    parser.add_argument("--compare-steps", type=int, default=0, help="steps of each for the ratio to FCN-8s")
    parser.add_argument("--forward-size", type=int, default=1024, help="0: no forward timing")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    print(f"torch threads {torch.get_num_threads()}, load average {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fcnpipe-demo-") as tmp:
        start = time.perf_counter()
        data = make_benchmark(Path(tmp) / "synthetic-ortho", scenes=args.scenes, size=args.size, seed=0)
        generated = time.perf_counter() - start
        dataset = f"synthetic-ortho:{data}"
        if args.steps:
            r = train(args.arch, recipe, dataset, args.steps, Path(tmp) / "run", args)
            print(f"\n{args.arch} ({r['params'] / 1e6:.2f} M parameters), recipe {recipe.name}, seed "
                  f"{args.seed}, {args.scenes} scenes of {args.size}²; load average {load()}")  # fmt: skip
            print(f"  benchmark generated in {generated:.1f} s; {r['steps']} steps in {r['wall']:.1f} s wall "
                  f"({r['training']:.1f} s training, the rest validation and checkpoints)")  # fmt: skip
            print(f"  {r['training'] / r['steps']:.3f} s a step (median {r['median_step']:.3f} s)")
            print(f"  val mean IU at each validation: {r['progress']}")
            print(f"  best validation (step {r['best_step']}): mean IU {r['mean_iu']:.3f}, "
                  f"pixel accuracy {r['pixel_accuracy']:.3f}, f.w. IU {r['fw_iu']:.3f}")  # fmt: skip
            if args.forward_size:
                seconds = forward_seconds(r["best"], args.forward_size)
                print(f"  one whole-image pass over {args.forward_size}²: {seconds:.2f} s")
        if args.compare_steps:
            print(f"\ntraining steps side by side, recipe {recipe.name}:", flush=True)
            compare(("fcn8s", args.arch), recipe, dataset, args)


if __name__ == "__main__":
    main()
