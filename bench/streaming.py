"""Streamed strips against tiles: ``--strategy stream`` and ``--strategy tiles`` on one scene, one process.

Both runs go through the pipeline as a user's would (``plan_scene`` and ``run_local``: range reads,
masks, Zarr writes of labels and float32 logits), each at its automatic size for the memory budget
unless ``--tile`` / ``--strip`` fix it, one after the other in this process with the model loaded
once beforehand. Printed: seconds, peak memory added (VmHWM, as ``fcn.memory``) against the
planner's prediction, the compute factor of each, and how far the two mosaics are apart (the
largest |Δ logit| over the logit range, and labels differing); with ``--whole``, both against one
whole-image pass (small scenes only: FCN-8s needs about 1.8 GiB per input Mpx). FCN-8s with random
He-initialised weights (score layers included) on a synthetic orthophoto.

    uv run python bench/streaming.py --size 4096
    uv run python bench/streaming.py --size 1024 --whole
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
import zarr
from memory import draw_windows, write_scene_in_windows
from torch import nn

from fcn import FCN, build_model, save_checkpoint
from fcn.checkpoint import describe
from fcn.memory import added_peak_mib
from pipeline.plan import Plan
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import cached_engine, plan_scene, run_local


def random_fcn8s(classes: int) -> FCN:
    """FCN-8s with every convolution He-initialised (the reference's zero score layers would tie)."""
    model = build_model("fcn8s", classes)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() == 4:
                nn.init.kaiming_normal_(p, nonlinearity="relu")
    assert isinstance(model, FCN)
    return model.eval()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds and peak memory added (MiB) of ``fn()``."""
    start = time.perf_counter()
    peak = added_peak_mib(fn, torch.device("cpu"))
    return time.perf_counter() - start, peak


def compare(reference: np.ndarray, other: np.ndarray) -> str:
    """The largest |Δ| over the reference's range, and the share of labels that differ."""
    span = float(reference.max() - reference.min())
    worst = float(np.abs(reference - other).max()) / span
    differ = float((reference.argmax(0) != other.argmax(0)).mean())
    return f"max |Δ logit| / range {worst:.1e}, labels differing {differ:.3%}"


def describe_plan(plan: Plan) -> str:
    """The plan's unit, halo, factor and predicted peak."""
    unit = "strips" if plan.streamed else "tiles"
    predicted = "—" if plan.peak_mib is None else f"{plan.peak_mib:.0f} MiB"
    return (f"{unit} of {plan.grid.core}, halo {plan.grid.halo}, compute factor {plan.compute_factor:.3f}, "
            f"predicted peak {predicted}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="the scene's side in px")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--tile", type=int, default=None, help="the tiles' core (default: auto)")
    parser.add_argument("--strip", type=int, default=None, help="the strips' width (default: auto)")
    parser.add_argument("--memory-budget", default=None, help="as fcnpipe's option (default: its)")
    parser.add_argument("--whole", action="store_true", help="also compare with a whole-image pass")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = random_fcn8s(args.classes)
    print(f"FCN-8s ({args.classes} classes, random weights), {args.size}² px, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = folder / "scene.tif"
        write_scene_in_windows(scene, args.size, draw_windows(min(2048, args.size), count=2))
        weights = folder / "fcn8s.pt"
        card = describe(model, "fcn8s")
        save_checkpoint(weights, model, card)
        common = {"device": "cpu", "outputs": ("labels", "logits"), "logits_dtype": "float32",
                  "memory_budget": args.memory_budget}  # fmt: skip
        runs = {
            "tiles": SegmentSettings(tile_size=args.tile, **common),
            "stream": SegmentSettings(tile_size=args.strip, strategy="stream", **common),
        }
        plans = {
            name: plan_scene(scene, weights, s, output=folder / f"{name}.zarr") for name, s in runs.items()
        }
        cached_engine(plans["tiles"].weights, plans["tiles"].weights_sha256, plans["tiles"].settings.engine())
        figures = {}
        for name, plan in plans.items():
            seconds, peak = timed(lambda plan=plan: run_local(plan))
            figures[name] = (seconds, peak, plan.compute_factor)
            print(f"{name}: {describe_plan(plan)}; {seconds:.1f} s, peak +{peak:.0f} MiB")
        (t_s, t_m, t_f), (s_s, s_m, s_f) = figures["tiles"], figures["stream"]
        print(f"stream / tiles: time {s_s / t_s:.2f}, peak memory {s_m / t_m:.2f}, "
              f"compute factor {s_f:.3f} / {t_f:.3f} = {s_f / t_f:.2f}")  # fmt: skip
        logits = {name: np.asarray(zarr.open_group(str(folder / f"{name}.zarr"), mode="r")["logits"][:])
                  for name in plans}  # fmt: skip
        print(f"stream against tiles: {compare(logits['tiles'], logits['stream'])}")
        if args.whole:
            with rasterio.open(scene) as src:
                image = torch.from_numpy(src.read())[None]
            with torch.inference_mode():
                whole = model(card.normalization.apply(image))[0].numpy()
            for name in plans:
                print(f"{name} against the whole image: {compare(whole, logits[name])}")


if __name__ == "__main__":
    main()
