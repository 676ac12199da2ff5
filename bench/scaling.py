"""Scaling on one machine: the same scene in-process and on local Dask clusters, bytes compared.

CPU (default): for the ``pointwise`` stand-in and for FCN-8s, the blocks run (a) in this process on
one torch thread, the layout of a Dask worker, then on local clusters of (b) one and (c) two worker
processes of one thread each (``pipeline.cluster.cpu_cluster_options``, as ``--workers N``), and
(d) in this process on all its threads, the default of a run without workers. Prints each run's
time and Mpx/s, the speed-up of two workers over one, the overhead per task ((b) − (a) per block:
scheduling, pickling the plan, reopening the raster and the store), and whether each run's labels
and probabilities equal (a)'s byte for byte, or how many values differ (d: another layout).

GPU (``--gpus N``): the in-process engine on ``cuda`` against a cluster of one worker per GPU
(``pipeline.cluster.gpu_cluster``, as ``--gpus N``), FCN-8s only, bytes compared.

No Prefect: blocks go to ``distributed.Client.submit`` as the flow's task runner sends them.
Cluster start and each worker's model load are one-off costs, printed and excluded.

    uv run python bench/scaling.py                                   # CPU, ~4 min on 2 cores
    python3 bench/scaling.py --gpus 1 --fcn8s-size 8192 --tile-size 1024 --block 2    # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from memory import draw_windows, write_scene_in_windows

from fcn import save_checkpoint
from pipeline.cluster import GPU, cpu_cluster_options, gpu_cluster
from pipeline.plan import Plan
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import cached_engine, plan_scene, segment_block
from pipeline.training.weights import starting_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pointwise-size", type=int, default=4096, help="scene side for the stand-in")
    parser.add_argument("--fcn8s-size", type=int, default=1024, help="scene side for FCN-8s")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--block", type=int, default=1, help="cores per side of one task")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--gpus", type=int, default=0, help="compare the in-process engine with N GPU workers"
    )
    return parser.parse_args()


def differences(store: Path, reference: Path) -> str:
    """Whether two mosaics' chunks are identical, or how many labels and probabilities differ."""
    if chunks(store) == chunks(reference):
        return "identical"
    a, b = zarr.open_group(str(store), mode="r"), zarr.open_group(str(reference), mode="r")
    labels_a, labels_b = np.asarray(a["labels"][:]), np.asarray(b["labels"][:])  # type: ignore[index]
    probs_a = np.asarray(a["probabilities"][:], dtype=np.int16)  # type: ignore[index]
    probs_b = np.asarray(b["probabilities"][:], dtype=np.int16)  # type: ignore[index]
    quanta = int(np.abs(probs_a - probs_b).max())
    labels = f"labels differ: {int((labels_a != labels_b).sum())} of {labels_a.size}"
    probs = f"probabilities: {int((probs_a != probs_b).sum())} of {probs_a.size}, at most {quanta} quantum"
    return f"{labels}; {probs}"


def chunks(store: Path) -> dict[str, bytes]:
    """The data chunks of a mosaic (manifest and metadata left out)."""
    files = (p for p in sorted(store.rglob("*")) if p.is_file() and "fcnpipe" not in p.parts)
    return {str(p.relative_to(store)): p.read_bytes() for p in files if "/c/" in f"/{p.relative_to(store)}"}


def fresh_plan(scene: Path, weights: Path, settings: SegmentSettings, out: Path) -> Plan:
    """A plan writing to a new store."""
    return plan_scene(scene, weights, settings, output=out, overwrite=True)


def warm(plan: Plan) -> None:
    """Load the model into this process's cache (what a worker's first block does)."""
    cached_engine(plan.weights, plan.weights_sha256, plan.settings.engine())


def in_process(plan: Plan, threads: int | None) -> float:
    """Seconds to run every block here, on ``threads`` torch threads (None: as set)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        warm(plan)
        start = time.perf_counter()
        for index in plan.todo:
            segment_block(plan, index)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def on_cluster(make: Callable[[], Any], plan: Plan, resources: dict[str, int] | None) -> dict[str, float]:
    """Start a cluster, load the model on every worker, then time every block as a task."""
    from distributed import Client

    start = time.perf_counter()
    with make() as cluster, Client(cluster) as client:
        started = time.perf_counter()
        client.run(warm, plan)
        loaded = time.perf_counter()
        futures = [client.submit(segment_block, plan, i, pure=False, resources=resources) for i in plan.todo]
        client.gather(futures)
        done = time.perf_counter()
    return {"start": started - start, "load": loaded - started, "seconds": done - loaded}


def cpu_rows(name: str, scene: Path, weights: Path, settings: SegmentSettings, folder: Path) -> list[str]:
    """In-process on one thread, then 1 and 2 CPU workers; one printed line per run."""
    from distributed import LocalCluster

    reference = fresh_plan(scene, weights, settings, folder / f"{name}-inprocess.zarr")
    seconds = in_process(reference, threads=1)
    mpx = reference.input.pixels / 1e6
    rows = [row(name, "in-process, 1 thread", seconds, mpx, len(reference.todo), "reference")]
    timings = {}
    for workers in (1, 2):
        plan = fresh_plan(scene, weights, settings, folder / f"{name}-workers{workers}.zarr")
        result = on_cluster(lambda n=workers: LocalCluster(**cpu_cluster_options(n)), plan, None)  # type: ignore[misc]
        timings[workers] = result["seconds"]
        costs = f"start {result['start']:.1f} s, load {result['load']:.1f} s"
        label = f"{workers} worker{'s' * (workers > 1)} ({costs})"
        same = differences(Path(plan.output), Path(reference.output))
        rows.append(row(name, label, result["seconds"], mpx, len(plan.todo), same))
    threaded = fresh_plan(scene, weights, settings, folder / f"{name}-inprocess-all.zarr")
    seconds_all = in_process(threaded, threads=None)
    label = f"in-process, {torch.get_num_threads()} threads (another layout)"
    rows.append(row(name, label, seconds_all, mpx, len(threaded.todo),
                    differences(Path(threaded.output), Path(reference.output))))  # fmt: skip
    overhead = (timings[1] - seconds) / len(reference.todo)
    rows.append(f"{name}: speed-up of 2 workers over 1: {timings[1] / timings[2]:.2f}x; "
                f"overhead per task (1 worker - in-process): {overhead * 1000:.0f} ms")  # fmt: skip
    return rows


def gpu_rows(gpus: int, scene: Path, weights: Path, settings: SegmentSettings, folder: Path) -> list[str]:
    """The in-process engine on cuda against a cluster of one worker per GPU."""
    cuda = settings.model_copy(update=dict(device="cuda"))
    reference = fresh_plan(scene, weights, cuda, folder / "gpu-inprocess.zarr")
    in_process(reference, threads=None)  # a first pass: cuDNN picks its kernels, the GPU clocks up
    reference = fresh_plan(scene, weights, cuda, folder / "gpu-inprocess.zarr")
    seconds = in_process(reference, threads=None)
    mpx = reference.input.pixels / 1e6
    rows = [row("fcn8s", "in-process engine, cuda", seconds, mpx, len(reference.todo), "reference")]
    plan = fresh_plan(scene, weights, cuda, folder / "gpu-cluster.zarr")
    result = on_cluster(lambda: gpu_cluster(list(range(gpus))), plan, {GPU: 1})
    same = differences(Path(plan.output), Path(reference.output))
    label = f"--gpus {gpus} cluster (start {result['start']:.1f} s, load {result['load']:.1f} s)"
    rows.append(row("fcn8s", label, result["seconds"], mpx, len(plan.todo), same))
    rows.append(f"fcn8s: --gpus {gpus} / in-process throughput: {seconds / result['seconds']:.2f}x")
    return rows


def row(model: str, run: str, seconds: float, mpx: float, tasks: int, bytes_: str) -> str:
    """One line of the table."""
    return f"{model:<10} {run:<52} {tasks:>6} {seconds:>9.2f} {mpx / seconds:>9.3f}  {bytes_}"


def checkpoint(folder: Path, arch: str) -> Path:
    """Random weights for ``arch`` with 6 classes (speed does not depend on training)."""
    model, card = starting_model(arch, 6, random_seed=0)
    path = folder / f"{arch}.pt"
    save_checkpoint(path, model, card)
    return path


def main() -> None:
    args = parse_args()
    settings = SegmentSettings(tile_size=args.tile_size, block=args.block, batch_size=args.batch_size,
                               device="cpu", outputs=("labels", "probabilities"))  # fmt: skip
    print(f"fcnpipe scaling benchmark; torch {torch.__version__}, {torch.get_num_threads()} cores' threads")
    print(f"tile {args.tile_size}, block {args.block}x{args.block} cores per task, batch {args.batch_size}")
    header = f"{'model':<10} {'run':<52} {'tasks':>6} {'seconds':>9} {'Mpx/s':>9}  bytes vs reference"
    with tempfile.TemporaryDirectory(prefix="fcnpipe-scaling-") as tmp:
        folder = Path(tmp)
        windows = draw_windows(1024)
        rows: list[str] = []
        if args.gpus:
            scene = folder / "scene.tif"
            write_scene_in_windows(scene, args.fcn8s_size, windows)
            rows += gpu_rows(args.gpus, scene, checkpoint(folder, "fcn8s"), settings, folder)
        else:
            for arch, size in (("pointwise", args.pointwise_size), ("fcn8s", args.fcn8s_size)):
                scene = folder / f"{arch}-scene.tif"
                write_scene_in_windows(scene, size, windows)
                print(f"{arch}: {size}^2 scene", flush=True)
                rows += cpu_rows(arch, scene, checkpoint(folder, arch), settings, folder)
    print(header)
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
