"""Pipeline overhead: the whole engine on a scene against the bare model forward over the same tiles.

Both are timed in the same process, alternately (a b, b a, a b, ...), so that a noisy machine slows
both alike:

(a) ``run_local(plan)``: reads (prefetched), normalisation, inference, crop and argmax on the device,
    Zarr writes and the manifest, i.e. everything a block does;
(b) the bare ``model(x)`` over exactly the same read windows, batched exactly as the engine batches
    them, with inputs read, normalised and moved to the device beforehand (same device, memory format
    and autocast as ``Engine.logits``).

The ratio (a)/(b) is the pipeline's overhead around the network (target: at most 1.10). Planning and
loading the model are one-off costs, reported separately and excluded from both.

    uv run python bench/overhead.py                      # CPU default: 1024^2 scene, tiles of 512
    uv run python bench/overhead.py --size 9216 --tile-size 1024 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tiling import engine_batches
from torch import nn

from fcn import save_checkpoint
from pipeline.grid import Tile
from pipeline.plan import Plan
from pipeline.raster import RasterReader
from pipeline.settings import SegmentSettings
from pipeline.tiling.engine import Engine
from pipeline.tiling.segment import cached_engine, plan_scene, run_local
from pipeline.training.data.synthetic import generate_scene, write_scene
from pipeline.training.weights import starting_model

TARGET = 1.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="scene side in pixels (default 1024)")
    parser.add_argument("--tile-size", type=int, default=512, help="output core per tile (default 512)")
    parser.add_argument("--halo", type=int, default=None, help="default: the checkpoint's (256 for FCNs)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="CPU always runs fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating")
    parser.add_argument("--arch", default="fcn8s", help="any registered architecture (default fcn8s)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def make_scene(folder: Path, size: int, seed: int) -> Path:
    """A synthetic orthophoto of ``size`` x ``size`` pixels, written as a GeoTIFF."""
    image, label = generate_scene(size, seed)
    path = folder / "scene.tif"
    write_scene(path, folder / "scene_labels.tif", image, label)
    return path


def make_checkpoint(folder: Path, arch: str, classes: int, seed: int) -> Path:
    """A checkpoint with random weights, score layers included (zeroed scores would give one label)."""
    model, card = starting_model(arch, classes, random_seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("score"):
                param.normal_(0.0, 0.01)
    path = folder / f"{arch}.pt"
    save_checkpoint(path, model, card)
    return path


def prepare_inputs(plan: Plan, engine: Engine, batches: list[list[Tile]]) -> list[torch.Tensor]:
    """Each batch read, normalised and put on the device as ``Engine.logits`` gives it to the model."""
    reader = RasterReader(plan.input)
    inputs = []
    try:
        for batch in batches:
            rgb = torch.from_numpy(np.stack([reader.read(tile.read) for tile in batch]))
            x = engine.normalization.apply(rgb.to(engine.device))
            if engine.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            inputs.append(x)
    finally:
        reader.close()
    return inputs


def bare_forward(engine: Engine, inputs: list[torch.Tensor]) -> None:
    """The model alone over the prepared batches."""
    model: nn.Module = engine.model
    with torch.inference_mode(), torch.autocast(engine.device.type, torch.bfloat16, enabled=engine.autocast):
        for x in inputs:
            model(x)
    if engine.cuda:
        torch.cuda.synchronize(engine.device)


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def halo_factor(plan: Plan) -> float:
    """Pixels read over pixels of the scene: how much the halos add to the network's work."""
    read = sum(t.read.height * t.read.width for b in plan.blocks for t in b.tiles)
    return read / plan.input.pixels


def main() -> None:
    args = parse_args()
    settings = SegmentSettings(
        tile_size=args.tile_size, halo=args.halo, batch_size=args.batch_size,
        device=args.device, precision=args.precision,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fcnpipe-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        scene = make_scene(folder, args.size, args.seed)
        weights = make_checkpoint(folder, args.arch, args.classes, args.seed)
        setup_s = time.perf_counter() - start

        def plan() -> Plan:
            return plan_scene(scene, weights, settings, output=folder / "scene.zarr", overwrite=True)

        plan_s = timed(plan)
        first = plan()
        cold_s = timed(lambda: run_local(first))  # loads the model into the process's engine cache
        engine = cached_engine(first.weights, first.weights_sha256, first.settings.engine())
        batches = engine_batches(first)
        inputs = prepare_inputs(first, engine, batches)
        bare_forward(engine, inputs[:1])  # warm-up: the first call of a shape sets up kernels

        pipeline_s, bare_s = [], []
        for i in range(args.repeats):
            current = plan()
            # a b, b a, a b, ...: neither side always runs first, on a machine that was just busy
            if i % 2:
                bare_s.append(timed(lambda: bare_forward(engine, inputs)))
            pipeline_s.append(timed(functools.partial(run_local, current)))
            if not i % 2:
                bare_s.append(timed(lambda: bare_forward(engine, inputs)))

    report(args, first, engine, batches, pipeline_s, bare_s, setup_s, plan_s, cold_s)


def report(
    args: argparse.Namespace,
    plan: Plan,
    engine: Engine,
    batches: list[list[Tile]],
    pipeline_s: list[float],
    bare_s: list[float],
    setup_s: float,
    plan_s: float,
    cold_s: float,
) -> None:
    """Print the runs, the ratios against the target, and the absolute figures of this machine."""
    mpx = plan.input.pixels / 1e6
    precision = "bf16 autocast" if engine.autocast else "fp32"
    threads = f", {torch.get_num_threads()} torch threads" if engine.device.type == "cpu" else ""
    print(f"fcnpipe overhead benchmark: engine (a) vs bare model forward (b) on {engine.device}{threads}")
    print(
        f"scene {args.size}x{args.size} (synthetic), {plan.card.arch} with {plan.card.num_classes} classes "
        f"(random weights), tile {plan.settings.tile_size}, halo {plan.settings.halo}, "
        f"batch {plan.settings.batch_size}, {precision}"
    )
    tiles = sum(len(b) for b in batches)
    print(
        f"tiles {tiles} in {len(plan.blocks)} blocks, {len(batches)} model calls each; "
        f"halo overhead factor {halo_factor(plan):.2f} (pixels read / scene pixels)"
    )
    print(f"\n{'run':>6} {'(a) engine s':>13} {'(b) forward s':>14} {'a/b':>6}")
    for i, (a, b) in enumerate(zip(pipeline_s, bare_s, strict=True), 1):
        print(f"{i:>6} {a:>13.3f} {b:>14.3f} {a / b:>6.3f}")
    best_a, best_b = min(pipeline_s), min(bare_s)
    paired = statistics.median(a / b for a, b in zip(pipeline_s, bare_s, strict=True))
    verdict = "meets" if best_a / best_b <= TARGET else "MISSES"
    print(f"\nratio (a)/(b), best of {args.repeats} each: {best_a / best_b:.3f}  "
          f"({verdict} the target <= {TARGET:.2f})")  # fmt: skip
    print(f"ratio (a)/(b), median of the paired runs: {paired:.3f}")
    print(f"\nabsolute, this machine only ({engine.device.type}):")
    print(f"  (a) engine        {best_a:8.3f} s  {mpx / best_a:8.4f} Mpx/s of scene")
    print(f"  (b) bare forward  {best_b:8.3f} s  {mpx / best_b:8.4f} Mpx/s of scene")
    print(f"  one-off, excluded from both: plan_scene {plan_s:.2f} s, first run_local {cold_s:.2f} s "
          f"(includes loading the model), scene + checkpoint setup {setup_s:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
