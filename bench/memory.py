"""Peak memory against scene size: a small and a large scene segmented in fresh processes.

Memory must be bounded by the tile size, batch and prefetch depth, never by the scene. Each
measurement runs in its own child process, so one peak cannot hide inside the other, and reports
its peak resident set (``getrusage``'s ``ru_maxrss``). A third child only imports the libraries:
its peak is the floor under both, so what lies above it is the pipeline's own memory.

The model is the ``pointwise`` stand-in (one 1x1 convolution): the point is reads, stitching and
writes, not the network, whose activations depend on the tile, not on the scene.

Scenes are written window by window (tiled, zstd), never held whole in memory, from a few
synthetic orthophotos rotated from window to window, and deleted afterwards.

    uv run python bench/memory.py                        # 4096^2 vs 16384^2, tiles of 1024
    uv run python bench/memory.py --sizes 8192 32768 --batch-size 8
    uv run python bench/memory.py --export               # also a COG export of each mosaic
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window
from tiling import largest_batch

from fcn import save_checkpoint
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from pipeline.training.data.synthetic import CLASSES, CRS, ORIGIN, RESOLUTION, Bytes, generate_scene
from pipeline.training.weights import starting_model

TARGET = 1.2
# Uncompressed RGB: zstd gives about 0.7 of it on these scenes, the rest covers the mosaic.
DISK_BYTES_PER_PIXEL = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs=2, default=(4096, 16384), metavar=("SMALL", "LARGE"))
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=None, help="default: the checkpoint's (0 here)")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    parser.add_argument("--classes", type=int, default=len(CLASSES), help="default 6, as the scenes")
    parser.add_argument("--outputs", default="labels", help="comma-separated: labels,probabilities,logits")
    parser.add_argument("--window", type=int, default=2048, help="side of the windows a scene is written in")
    parser.add_argument("--workdir", type=Path, default=None, help="where scenes go (default: a temp dir)")
    parser.add_argument(
        "--export",
        action="store_true",
        help="also measure a COG export of each finished mosaic, in a fresh process",
    )
    parser.add_argument("--child", choices=("baseline", "run", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def peak_rss_mib() -> float:
    """This process's peak resident set so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def sampled_rss(samples: list[float], every: float = 0.2) -> Iterator[None]:
    """Append this process's resident set (MiB) to ``samples`` every ``every`` seconds meanwhile."""
    stop = threading.Event()
    process = psutil.Process()

    def sample() -> None:
        samples.append(process.memory_info().rss / 2**20)
        while not stop.wait(every):
            samples.append(process.memory_info().rss / 2**20)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        samples.append(process.memory_info().rss / 2**20)


def child_run(args: argparse.Namespace) -> dict[str, Any]:
    """Segment one scene in this (fresh) process; report its peak and its typical memory."""
    settings = SegmentSettings(
        tile_size=args.tile_size, halo=args.halo, chunk=args.chunk, batch_size=args.batch_size,
        prefetch=args.prefetch, device=args.device, outputs=tuple(args.outputs.split(",")),
    )  # fmt: skip
    output = args.scene.with_suffix(".zarr")
    plan = plan_scene(args.scene, args.weights, settings, output=output, overwrite=True)
    samples: list[float] = []
    start = time.perf_counter()
    with sampled_rss(samples):
        report = run_local(plan)
    seconds = time.perf_counter() - start
    if not args.export:
        shutil.rmtree(output)
    half = len(samples) // 2
    return {
        "peak_mib": peak_rss_mib(), "median_mib": statistics.median(samples),
        "trend": statistics.median(samples[half:]) / statistics.median(samples[:half]),
        "seconds": seconds, "tiles": report["tiles"],
        "halo": plan.settings.halo, "largest_batch_mpx": largest_batch(plan) / 1e6,
    }  # fmt: skip


def child_export(args: argparse.Namespace) -> dict[str, Any]:
    """Export the scene's finished mosaic as a COG in this (fresh) process; report its peak."""
    from pipeline.outputs.export import export_cog  # here: GPU machines without rio-cogeo can run the rest

    mosaic, out = args.scene.with_suffix(".zarr"), args.scene.with_suffix(".cog.tif")
    start = time.perf_counter()
    made = export_cog(mosaic, out, overwrite=True)
    seconds = time.perf_counter() - start
    size = out.stat().st_size / 2**20
    out.unlink()
    shutil.rmtree(mosaic)
    return {"peak_mib": peak_rss_mib(), "seconds": seconds, "overviews": made.overviews, "cog_mib": size}


def child_baseline() -> dict[str, Any]:
    """Nothing but this script's imports, which are those of a run."""
    return {"peak_mib": peak_rss_mib()}


def measure(*extra: str) -> dict[str, Any]:
    """Run this script as a child process with ``extra`` arguments and return its report."""
    command = [sys.executable, __file__, *extra]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def draw_windows(side: int, count: int = 4) -> list[Bytes]:
    """A few synthetic orthophotos of ``side`` x ``side`` pixels that scenes are tiled from."""
    return [generate_scene(side, seed)[0] for seed in range(count)]


def write_scene_in_windows(path: Path, size: int, windows: list[Bytes]) -> None:
    """A ``size`` x ``size`` RGB GeoTIFF written window by window: never more than a window in memory.

    Each window is one of ``windows``, turned by a quarter turn more than its neighbour, which keeps
    the content realistic (and as compressible as an orthophoto) without drawing every window.
    """
    side = windows[0].shape[1]
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8",
        "crs": CRS, "transform": Affine(RESOLUTION, 0.0, ORIGIN[0], 0.0, -RESOLUTION, ORIGIN[1]),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "zstd", "predictor": 2,
        "photometric": "RGB", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for i, row in enumerate(range(0, size, side)):
            for j, col in enumerate(range(0, size, side)):
                h, w = min(side, size - row), min(side, size - col)
                data = np.rot90(windows[(i + 2 * j) % len(windows)], k=i + j, axes=(1, 2))[:, :h, :w]
                dst.write(np.ascontiguousarray(data), window=Window(col, row, w, h))


def make_checkpoint(folder: Path, classes: int) -> Path:
    """The pointwise stand-in (a 1x1 convolution) with random weights."""
    model, card = starting_model("pointwise", classes, random_seed=0)
    path = folder / "pointwise.pt"
    save_checkpoint(path, model, card)
    return path


def child_arguments(args: argparse.Namespace) -> list[str]:
    """The run settings, passed on to a child."""
    halo = [] if args.halo is None else ["--halo", str(args.halo)]
    return [
        "--tile-size", str(args.tile_size), *halo, "--chunk", str(args.chunk),
        "--batch-size", str(args.batch_size), "--prefetch", str(args.prefetch), "--device", args.device,
        "--outputs", args.outputs, *(["--export"] if args.export else []),
    ]  # fmt: skip


def check_disk(folder: Path, size: int) -> None:
    """Refuse to start when the large scene (and its mosaic) would not fit."""
    need = size * size * DISK_BYTES_PER_PIXEL
    free = shutil.disk_usage(folder).free
    if free < 2 * need:
        sys.exit(f"{folder} has {free / 2**30:.1f} GiB free; the {size}^2 scene needs about "
                 f"{need / 2**30:.1f} GiB. Choose another --workdir.")  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.child == "baseline":
        print(json.dumps(child_baseline()))
        return
    if args.child == "run":
        print(json.dumps(child_run(args)))
        return
    if args.child == "export":
        print(json.dumps(child_export(args)))
        return
    small, large = args.sizes
    with tempfile.TemporaryDirectory(prefix="fcnpipe-memory-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        check_disk(folder, large)
        weights = make_checkpoint(folder, args.classes)
        baseline = measure("--child", "baseline")
        windows = draw_windows(min(args.window, small))
        runs = {}
        for size in (small, large):
            scene = folder / f"scene_{size}.tif"
            write_scene_in_windows(scene, size, windows)
            runs[size] = measure("--child", "run", "--scene", str(scene), "--weights", str(weights),
                                 *child_arguments(args))  # fmt: skip
            runs[size]["file_mib"] = scene.stat().st_size / 2**20
            if args.export:
                runs[size]["export"] = measure("--child", "export", "--scene", str(scene))
            scene.unlink()
    report(args, baseline["peak_mib"], runs)


def report(args: argparse.Namespace, baseline: float, runs: dict[int, dict[str, Any]]) -> None:
    """Print both peaks, their ratio against the target, and the pipeline's own memory."""
    small, large = args.sizes
    print("fcnpipe memory benchmark: peak RSS of a fresh process per scene (ru_maxrss)")
    print(
        f"model: the 'pointwise' stand-in (a 1x1 conv, {args.classes} classes), not an FCN: this measures "
        "reads, stitching and writes"
    )
    print(
        f"tile {args.tile_size}, halo {runs[large]['halo']}, chunk {args.chunk}, batch {args.batch_size}, "
        f"prefetch {args.prefetch}, outputs {args.outputs}, device {args.device}, torch {torch.__version__}"
    )
    print(
        f"\n{'scene':>12} {'tiles':>6} {'largest batch':>14} {'peak':>6} {'above imports':>14} "
        f"{'median in run':>14} {'late/early':>11} {'run s':>7} {'file':>6}"
    )
    print(f"{'':>12} {'':>6} {'Mpx':>14} {'MiB':>6} {'MiB':>14} {'MiB':>14} {'':>11} {'':>7} {'MiB':>6}")
    print(f"{'imports only':>12} {'':>6} {'':>14} {baseline:>6.0f}")
    for size in (small, large):
        r = runs[size]
        print(
            f"{f'{size}^2':>12} {r['tiles']:>6} {r['largest_batch_mpx']:>14.2f} {r['peak_mib']:>6.0f} "
            f"{r['peak_mib'] - baseline:>14.0f} {r['median_mib']:>14.0f} {r['trend']:>11.2f} "
            f"{r['seconds']:>7.1f} {r['file_mib']:>6.0f}"
        )
    ratio = runs[large]["peak_mib"] / runs[small]["peak_mib"]
    own = (runs[large]["peak_mib"] - baseline) / max(runs[small]["peak_mib"] - baseline, 1.0)
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"\npeak ratio {large}^2 / {small}^2: {ratio:.2f} ({verdict} the target <= {TARGET:.1f}); "
          f"above the imports: {own:.2f}; scene pixels: {(large / small) ** 2:.0f}x")  # fmt: skip
    print(f"median-in-run ratio: {runs[large]['median_mib'] / runs[small]['median_mib']:.2f} "
          "(late/early: median RSS of the run's second half over its first; 1.00 = no growth)")  # fmt: skip
    if runs[large]["largest_batch_mpx"] != runs[small]["largest_batch_mpx"]:
        print("note: the largest batches differ; the engine's peak follows them, not the scene (see README)")
    if args.export:
        exports = {size: runs[size]["export"] for size in (small, large)}
        for size, e in exports.items():
            print(f"COG export of the {size}^2 mosaic: peak {e['peak_mib']:.0f} MiB "
                  f"({e['peak_mib'] - baseline:.0f} above imports), {e['seconds']:.1f} s, "
                  f"{e['cog_mib']:.0f} MiB, overviews {e['overviews']}")  # fmt: skip
        ratio = exports[large]["peak_mib"] / exports[small]["peak_mib"]
        verdict = "meets" if ratio <= TARGET else "MISSES"
        print(
            f"COG export peak ratio {large}^2 / {small}^2: {ratio:.2f} ({verdict} the target <= {TARGET:.1f})"
        )
    mpx = large * large / 1e6 / runs[large]["seconds"]
    print(f"absolute, this machine only: {mpx:.1f} Mpx/s on the {large}^2 scene ({args.device}, stand-in)")


if __name__ == "__main__":
    main()
