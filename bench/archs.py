"""Every registered architecture side by side: size, field, halo, speed and memory, and what it learns.

Part one (always): for each architecture, in a fresh child process (so that one network's memory
does not stay in the next one's peak), build it with random weights, measure its receptive field,
then time ``--repeats`` forward passes over a ``--size`` square image (after one warm-up pass) and
read the child's peak resident set. Every network is measured in each of ``--rounds`` rounds, one
after the other, and its best round counts, so that a slow spell of a shared machine does not
land on one network only. Printed per architecture: parameters, receptive field, halo,
forward seconds per Mpx and its ratio to FCN-8s measured in the same run, and the peak memory the
forward pass added over the built model, per Mpx of input.

Part two (``--train-steps N``): trains each architecture from scratch for N steps of the same
recipe on the synthetic benchmark (``pipeline.training.data.synthetic``), one after the other, and
prints the best validation mean IU, i.e. what each network learns from the same small budget.

    uv run python bench/archs.py                                  # forward table, CPU (~25 min)
    uv run python bench/archs.py --train-steps 150                # plus training (~30 min on 2 cores)
    uv run python bench/archs.py --no-forward --train-steps 100 --archs unet segnet   # training only
    uv run python bench/archs.py --device cuda --size 2048 --train-steps 2000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from fcn import available_models, build_model, measure_receptive_field
from fcn.margin import same_size_forward
from fcn.registry import segmentation_net
from pipeline.tiling.engine import pick_device

REFERENCE = "fcn8s"


def rss_mib() -> float:
    """This process's resident set now, in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def forward_child(arch: str, size: int, repeats: int, device: str, classes: int) -> dict[str, Any]:
    """Measure one architecture (run in a child process; see ``--child``)."""
    torch.manual_seed(0)
    model = build_model(arch, classes).eval()
    params = sum(p.numel() for p in model.parameters())
    stride, margin = segmentation_net(model).total_stride, segmentation_net(model).margin
    target = pick_device(device)
    model.to(target)
    x = torch.randn(1, 3, size, size, device=target)
    built = rss_mib()
    seconds = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            if target.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            same_size_forward(model, x)
            if target.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    field = measure_receptive_field(model.cpu())  # after the peak is read: its probe has its own
    mpx = size * size / 1e6
    return {
        "arch": arch,
        "params_m": params / 1e6,
        "field": [field.lo, field.hi],
        "halo": field.halo(stride, margin),
        "stride": stride,
        "margin": margin,
        "s_per_mpx": min(seconds[1:]) / mpx,
        "mib_per_mpx": max(peak - built, 0.0) / mpx,
    }


def forward_table(archs: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run :func:`forward_child` for each architecture in its own process; print the table."""
    rows: dict[str, dict[str, Any]] = {}
    for round_ in range(args.rounds):  # each round measures every network; the best round counts
        for arch in archs:
            options = {"--size": args.size, "--repeats": args.repeats, "--device": args.device,
                       "--classes": args.classes}  # fmt: skip
            command = [
                sys.executable,
                __file__,
                "--child",
                arch,
                *(str(x) for kv in options.items() for x in kv),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.splitlines()[-1])
            if arch in rows:
                row["s_per_mpx"] = min(row["s_per_mpx"], rows[arch]["s_per_mpx"])
                row["mib_per_mpx"] = min(row["mib_per_mpx"], rows[arch]["mib_per_mpx"])
            rows[arch] = row
            print(f"round {round_ + 1}: measured {arch}", file=sys.stderr, flush=True)
    reference = rows[REFERENCE]
    threads = torch.get_num_threads()
    print(f"\nForward pass, {args.size}² input, {args.classes} classes, device {args.device}, "
          f"best of {args.rounds} rounds of {args.repeats} passes after a warm-up; "
          f"torch threads: {threads}\n")  # fmt: skip
    print("| arch | parameters | receptive field | halo | s / Mpx | vs FCN-8s | peak MiB / Mpx |")
    print("|---|---|---|---|---|---|---|")
    for r in rows.values():
        lo, hi = r["field"]
        halo = f"{r['halo']} px" + (f" (margin {r['margin']})" if r["margin"] else "")
        print(f"| {r['arch']} | {r['params_m']:.2f} M | {lo}..+{hi} px | {halo} | {r['s_per_mpx']:.2f} | "
              f"{r['s_per_mpx'] / reference['s_per_mpx']:.2f}× | {r['mib_per_mpx']:.0f} |")  # fmt: skip
    return list(rows.values())


def train_table(archs: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train each architecture from scratch with the same recipe and steps; print best mean IU."""
    from pipeline.training.data import open_dataset
    from pipeline.training.data.synthetic import make_benchmark
    from pipeline.training.recipes import load_recipe
    from pipeline.training.train import StageArgs, initial_model, train_stage

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_benchmark(Path(tmp) / "synthetic", scenes=args.scenes, size=args.scene_size, seed=0)
        dataset = f"synthetic-ortho:{data}"
        recipe = load_recipe("modern").updated(
            optimizer="adamw", lr=args.lr, weight_decay=0.0, crop=args.crop, batch_size=args.batch_size
        )
        stage_args = StageArgs(dataset=dataset, steps=args.train_steps, eval_every=args.train_steps)
        for arch in archs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "from scratch": every one is, here
                model, card = initial_model("scratch", arch, open_dataset(dataset, "train"), seed=0)
            start = time.perf_counter()
            result = train_stage(
                model, card, recipe, stage_args, Path(tmp) / arch, device=pick_device(args.device)
            )
            rows.append(
                {"arch": arch, "mean_iu": result.best_mean_iu, "seconds": time.perf_counter() - start}
            )
            print(f"trained {arch}: mean IU {result.best_mean_iu:.3f}", file=sys.stderr, flush=True)
    print(f"\nTrained from scratch on the synthetic benchmark ({args.scenes} scenes of {args.scene_size}²): "
          f"{args.train_steps} steps of AdamW lr {args.lr}, batches of {args.batch_size} crops of "
          f"{args.crop}², validated once at the end\n")  # fmt: skip
    print("| arch | val mean IU | seconds |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['mean_iu']:.3f} | {r['seconds']:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--archs", nargs="*", default=[a for a in available_models() if a != "pointwise"])
    parser.add_argument("--size", type=int, default=512, help="side of the forward pass's input")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per child")
    parser.add_argument("--rounds", type=int, default=2, help="children per network, alternating")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.add_argument("--train-steps", type=int, default=0, help="0: no training table")
    parser.add_argument("--no-forward", action="store_true", help="the training table only")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--scene-size", type=int, default=192)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(forward_child(args.child, args.size, args.repeats, args.device, args.classes)))
        return
    archs = list(dict.fromkeys([REFERENCE, *args.archs]))
    if not args.no_forward:
        forward_table(archs, args)
    if args.train_steps:
        train_table(archs, args)


if __name__ == "__main__":
    main()
