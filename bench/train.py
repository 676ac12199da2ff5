"""Training and evaluation speed on the synthetic benchmark, measured side by side in one run.

Prints training steps/s, the cost of a training step relative to a forward pass over the same batch
(forward + backward + optimiser vs forward only), and whole-image evaluation Mpx/s. No Prefect.

    uv run python bench/train.py                       # CPU: FCN-8s, crops of 128, batch 2
    uv run python bench/train.py --device cuda --crop 320 --batch-size 8 --size 512 --steps 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fcn.inputs import network_input
from pipeline.tiling.engine import pick_device
from pipeline.training.data import open_dataset
from pipeline.training.data.synthetic import make_benchmark
from pipeline.training.evaluation import evaluate
from pipeline.training.recipes import load_recipe, make_optimizer, make_scheduler
from pipeline.training.train import batches, initial_model, train_steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="fcn8s")
    parser.add_argument("--size", type=int, default=256, help="scene side of the generated benchmark")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="fcnpipe-bench-") as tmp:
        root = make_benchmark(Path(tmp) / "data", scenes=6, size=args.size, seed=0)
        train_set = open_dataset(f"synthetic-ortho:{root}", "train")
        val_set = open_dataset(f"synthetic-ortho:{root}", "val")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, card = initial_model("scratch", args.arch, train_set)
        model.to(device)
        recipe = load_recipe("modern").updated(
            crop=args.crop, batch_size=args.batch_size, precision=args.precision
        )
        optimizer = make_optimizer(model, recipe, args.arch)
        scheduler = make_scheduler(optimizer, recipe, args.steps + 1)
        stream = batches(train_set, recipe, seed=0, fill=card.normalization.zero_input())
        kwargs = {"device": device, "normalization": card.normalization,
                  "ignore_index": train_set.ignore_index, "recipe": recipe, "heads": card.heads}  # fmt: skip
        train_steps(model, optimizer, scheduler, stream, 1, **kwargs)  # warm-up, not timed
        forward_s, train_s = [], []
        for _ in range(args.steps):  # alternate: one timed forward, one timed training step
            rgb, _ = next(batches(train_set, recipe, seed=1, fill=card.normalization.zero_input()))
            sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                model(network_input(rgb, card.normalization, device))
            sync(device)
            forward_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            train_steps(model, optimizer, scheduler, stream, 1, **kwargs)
            sync(device)
            train_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        evaluate(model, val_set, card.normalization, device, precision=args.precision)
        sync(device)
        eval_s = time.perf_counter() - start
    step, fwd = sorted(train_s)[len(train_s) // 2], sorted(forward_s)[len(forward_s) // 2]
    pixels = args.batch_size * args.crop**2
    val_mpx = len(val_set) * args.size**2 / 1e6
    print(f"{args.arch}, batch {args.batch_size} x {args.crop}^2 crops, {args.precision}, {device.type}")
    print(f"training step / forward on the same batch (median of {args.steps}): {step / fwd:.2f}x")
    print(
        f"absolute, this machine only: {1 / step:.3f} steps/s ({pixels / step / 1e6:.4f} Mpx/s trained), "
        f"forward {pixels / fwd / 1e6:.4f} Mpx/s, evaluation {val_mpx / eval_s:.4f} Mpx/s "
        f"({len(val_set)} whole {args.size}^2 scenes)"
    )


def sync(device: torch.device) -> None:
    """Wait for the device, so that wall time measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
