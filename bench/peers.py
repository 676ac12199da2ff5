"""fcnpipe against what its users would run instead, on the same checkpoint and the same scene.

Methods, each in a fresh child process (so one method's memory never hides in another's peak):

- ``fcnpipe``: the library path (``plan_scene`` + ``run_local``) with its defaults (``--tile-size
  auto``), GeoTIFF in, Zarr out, writing labels and float32 logits (for the comparison).
- ``whole``: the whole scene read into one tensor and one forward pass; the reference where it fits.
- ``monai-0.25``, ``monai-0.5``: MONAI's ``sliding_window_inference`` as its users run it: the
  whole scene read into one normalised tensor, windows of ``--roi`` px, gaussian blending, the
  overlap named, ``sw_batch_size`` 1; logits of the whole scene in memory.

Printed per method: seconds (model load, read, inference and output, after imports), the child's
peak resident set, the compute factor (network pixels per scene pixel: fcnpipe's from its grid,
MONAI's from its own window list), and against the reference the largest |Δ logit| over the
reference's logit range and the share of labels that differ. The reference is the whole-image pass
when it ran, otherwise fcnpipe's mosaic (exact by the test suite: tiled = whole-image) and the
table says so. A method that runs out of memory is reported as such: that is a result.

The scene is synthetic (``bench/memory.py``'s windows, written tile by tile) and the checkpoint is
``--weights`` or else FCN-8s with random weights (He-initialised convolutions, score layers
included); speed and memory do not depend on the weights, label agreement does. On CUDA
(``--device cuda``) every method runs in bf16 autocast and peak memory is the host's.

    uv run --group bench python bench/peers.py --size 2048
    uv run --group bench python bench/peers.py --size 8192 --methods fcnpipe monai-0.25
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import zarr
from memory import draw_windows, write_scene_in_windows

from fcn import load_checkpoint, save_checkpoint
from pipeline.grid import GridSpec, compute_factor
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from pipeline.training.weights import starting_model

METHODS = ("fcnpipe", "whole", "monai-0.25", "monai-0.5")


def peak_rss_mib() -> float:
    """This process's peak resident set, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_scene(path: Path) -> torch.Tensor:
    """The whole scene as one (1, 3, H, W) uint8 tensor."""
    with rasterio.open(path) as src:
        return torch.from_numpy(src.read())[None]


def child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one method; write its logits (C, H, W) float32 to ``args.out`` and return its figures."""
    start = time.perf_counter()
    if method == "fcnpipe":
        settings = SegmentSettings(device=args.device, outputs=("labels", "logits"), logits_dtype="float32")
        store = args.out.with_suffix(".zarr")
        plan = plan_scene(args.scene, args.weights, settings, output=store, overwrite=True)
        run_local(plan)
        seconds = time.perf_counter() - start
        logits = zarr.open_group(str(store), mode="r")["logits"]
        np.save(args.out, np.asarray(logits[:]))  # after the clock and the peak: only for comparing
        return {"seconds": seconds, "peak_mib": peak_rss_mib(), "factor": plan.compute_factor,
                "tile": plan.grid.core, "halo": plan.grid.halo, "planned_mib": plan.peak_mib,
                "budget_mib": plan.budget_mib}  # fmt: skip
    model, card = load_checkpoint(args.weights)
    device = torch.device(args.device)
    model.to(device)
    image = read_scene(args.scene)
    cuda = device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        x = card.normalization.apply(image)
        del image
        if method == "whole":
            out = model(x.to(device))[0].cpu()
            factor = 1.0
        else:
            from monai.data.utils import dense_patch_slices
            from monai.inferers import sliding_window_inference
            from monai.inferers.utils import _get_scan_interval

            overlap = float(method.split("-")[1])
            roi = (args.roi, args.roi)
            # On a GPU, as users do with a scene too large for it: windows on the device, the
            # scene and the blended output in host memory.
            out = sliding_window_inference(x, roi, 1, model, overlap=overlap, mode="gaussian",
                                           sw_device=device, device="cpu")[0]  # type: ignore[index]  # fmt: skip
            size = tuple(x.shape[-2:])
            windows = dense_patch_slices(size, roi, _get_scan_interval(size, roi, 2, (overlap, overlap)))
            factor = len(windows) * args.roi**2 / (size[0] * size[1])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    np.save(args.out, out.float().numpy())
    return {"seconds": seconds, "peak_mib": peak, "factor": factor}


def run_child(
    method: str, scene: Path, weights: Path, out: Path, args: argparse.Namespace
) -> dict[str, Any] | str:
    """One method in a fresh process: its figures, or why it did not finish."""
    command = [sys.executable, __file__, "--child", method, "--scene", str(scene), "--weights",
               str(weights), "--out", str(out), "--roi", str(args.roi), "--device", args.device]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return "out of memory (killed)" if killed else done.stderr.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare(reference: np.ndarray, other: np.ndarray, rows: int = 512) -> tuple[float, float]:
    """Largest |Δ logit| over the reference's range, and the share of labels that differ (by bands)."""
    span = float(reference.max() - reference.min())
    worst, differ = 0.0, 0
    for r in range(0, reference.shape[1], rows):
        a, b = reference[:, r : r + rows], other[:, r : r + rows]
        worst = max(worst, float(np.abs(a - b).max()))
        differ += int((a.argmax(0) != b.argmax(0)).sum())
    return worst / span, differ / (reference.shape[1] * reference.shape[2])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2048, help="side of the square scene")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--weights", type=Path, help="a checkpoint (default: random FCN-8s, 6 classes)")
    parser.add_argument("--roi", type=int, default=1536, help="MONAI's window side")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on CUDA, as fcnpipe)")
    parser.add_argument("--workdir", type=Path, help="where the scene and outputs go (default: a temp dir)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        scene = folder / "scene.tif"
        write_scene_in_windows(scene, args.size, draw_windows(min(args.size, 2048)))
        weights = args.weights
        if weights is None:
            model, card = starting_model("fcn8s", 6, random_seed=0)
            with torch.no_grad():  # the reference init zeroes the score layers: every logit would be 0
                for p in model.parameters():
                    if p.requires_grad and p.dim() == 4:
                        torch.nn.init.kaiming_normal_(p, nonlinearity="relu")
            weights = folder / "fcn8s-random.pt"
            save_checkpoint(weights, model, card)
        results: dict[str, dict[str, Any] | str] = {}
        for method in args.methods:
            results[method] = run_child(method, scene, weights, folder / f"{method}.npy", args)
            print(f"{method}: {results[method]}", file=sys.stderr, flush=True)
        table(args, folder, results, weights)


def table(args: argparse.Namespace, folder: Path, results: dict[str, Any], weights: Path) -> None:
    """Print the comparison as a Markdown table, ratios against fcnpipe."""
    ran = [m for m, r in results.items() if isinstance(r, dict)]
    ref_name = "whole" if "whole" in ran else "fcnpipe" if "fcnpipe" in ran else None
    reference = np.load(folder / f"{ref_name}.npy", mmap_mode="r") if ref_name else None
    base = results.get("fcnpipe") if isinstance(results.get("fcnpipe"), dict) else None
    _, card = load_checkpoint(weights)
    print(f"\n{args.size}² scene, {card.arch} ({card.num_classes} classes, {weights.name}), CPU, "
          f"torch threads {torch.get_num_threads()}; reference: {ref_name or 'none'}\n")  # fmt: skip
    print(
        "| method | seconds | × fcnpipe's time | peak RSS (MiB) | × fcnpipe's | compute factor "
        "| max abs Δ logit / range | labels differing |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method, r in results.items():
        if not isinstance(r, dict):
            print(f"| {method} | {r} | | | | | | |")
            continue
        delta, differ = ("—", "—")
        if reference is not None and method != ref_name:
            d, share = compare(reference, np.load(folder / f"{method}.npy", mmap_mode="r"))
            delta, differ = f"{d:.1e}", f"{share:.2%}"
        time_ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "—"
        mem_ratio = f"{r['peak_mib'] / base['peak_mib']:.2f}" if base else "—"
        name = f"fcnpipe (tile {r['tile']}, halo {r['halo']})" if method == "fcnpipe" else method
        print(f"| {name} | {r['seconds']:.1f} | {time_ratio} | {r['peak_mib']:.0f} | {mem_ratio} | "
              f"{r['factor']:.2f} | {delta} | {differ} |")  # fmt: skip
    if base and base.get("planned_mib"):
        print(f"\nfcnpipe planned {base['planned_mib']:.0f} MiB for one batch (network and buffers, "
              f"above the loaded model) within a budget of {base['budget_mib']:.0f} MiB.")  # fmt: skip
    grid = GridSpec(args.size, args.size, core=1024, halo=card.halo, chunk=512, stride=card.total_stride)
    print(f"\n(for scale: fcnpipe's former default, tiles of 1024 with the {card.halo} px halo, has a "
          f"compute factor of {compute_factor(grid):.2f} here)")  # fmt: skip


if __name__ == "__main__":
    main()
