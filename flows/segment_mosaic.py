"""One scene -> one mosaic: plan, segment blocks of tiles as tasks, finish.

Run it with ``fcnpipe run flows/segment_mosaic.py --input scene.tif``. Blocks run in this process
by default, on a local Dask cluster of CPU workers with ``--workers N`` or of one worker per GPU
with ``--gpus N|all``, or on an existing scheduler with ``--dask-address tcp://host:8786`` (its GPU
workers only, with ``--gpus``); every worker reads its own windows and writes its own chunks.
"""

# No ``from __future__ import annotations``: a served flow is pickled by value, and its
# parameters' annotations must be types, not names of types (Prefect validates them).

import functools
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from dask.base import annotate
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Completed
from rich.console import Console

from fcn import FcnpipeError
from flows.runtime import block_runner, progress_bar, tiles_from_workers, worker_tiles
from flows.train import default_model
from pipeline import stopping
from pipeline.cluster import GPU, local_gpus
from pipeline.outputs.export import export_cog
from pipeline.outputs.finish import finish
from pipeline.outputs.stac import attach_cog
from pipeline.plan import BlockReport, Plan
from pipeline.settings import ClusterSettings, SegmentSettings, Source, Target, default_model_path
from pipeline.storage import Location
from pipeline.tiling.segment import plan_scene, segment_block
from pipeline.training.default_model import ARCH as DEMO_ARCH


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(
    input: str,
    weights: str | Path,
    settings: SegmentSettings,
    output: str | None,
    overwrite: bool,
    workers: int,
) -> Plan:
    """Check the inputs, size the tiles and prepare the store."""
    return plan_scene(input, weights, settings, output=output, overwrite=overwrite, workers=workers)


def not_stopping(*_: Any) -> bool:
    """Retry a failed block unless the run was asked to stop."""
    return not stopping.REQUESTED.is_set()


@task(name="segment-block", retries=2, retry_delay_seconds=2, retry_condition_fn=not_stopping,
      cache_policy=NO_CACHE)  # fmt: skip
def segment_block_task(
    plan: Plan, index: int, on_tile: Callable[[int, int], None] | None = None, topic: str | None = None
) -> BlockReport:
    """Segment one block of tiles and record it (rerunning a block rewrites the same chunks).

    Each tile written is told to ``on_tile`` (in the flow's process), or, on a Dask worker, as an
    event of ``topic`` that the flow's progress bar hears.
    """
    told: Callable[[int], None] | None = functools.partial(on_tile, index) if on_tile is not None else None
    if told is None and topic is not None:
        told = worker_tiles(topic, index)
    return segment_block(plan, index, told)


@task(name="export-cog", cache_policy=NO_CACHE)
def export_cog_task(mosaic: Location, out: str, overwrite: bool) -> str:
    """The finished labels as a validated Cloud-Optimized GeoTIFF."""
    return export_cog(mosaic, out, overwrite=overwrite).path


@task(name="finish", cache_policy=NO_CACHE)
def finish_task(plan: Plan, reports: list[BlockReport], seconds: float) -> dict[str, Any]:
    """Mark the mosaic complete and summarise the run."""
    return finish(plan, reports, seconds)


@flow(name="segment-blocks")
def segment_blocks(plan: Plan, on_gpus: bool = False, in_process: bool = True) -> list[BlockReport]:
    """Run every remaining block on this flow's task runner, showing progress.

    With ``on_gpus`` the blocks carry the ``GPU: 1`` resource, so Dask runs them only on workers
    that declare a GPU. Each tile written is told to the progress bar: by a callback in this process
    (``in_process``), else as a Dask event from the worker.
    """
    reports = []
    with progress_bar(plan) as shown, tiles_from_workers(shown) as topic:
        on_tile = shown.tile if in_process else None
        with annotate(resources={GPU: 1}) if on_gpus else nullcontext():
            futures = [segment_block_task.submit(plan, index, on_tile, topic) for index in plan.todo]
        try:
            for future in as_completed(futures):
                report = future.result()
                reports.append(report)
                shown.block(report)
        except Exception:
            raise
        except BaseException:  # a signal: the blocks still running stop too
            stopping.request()
            raise
    return reports


def trained_default_model() -> Path:
    """The default model if it exists; a dry run never trains it."""
    path = default_model_path()
    if not path.is_file():
        raise FcnpipeError(
            f"no --weights given and the default model ({path}) is not trained yet; a dry run does "
            "not train it: pass --weights, or run once without --dry-run."
        )
    return path


def default_weights(device: str, keep_training_files: bool = False) -> Path:
    """The default model, trained here on first use (announced, with its cost) when it is missing."""
    path = default_model_path()
    if not path.is_file():
        Console(stderr=True).print(
            f"[yellow]no --weights given and no default model at {path}:[/] training it once now "
            f"(a demonstration FCN-8s, {DEMO_ARCH}, from scratch on the synthetic orthophoto benchmark: "
            "about 2 minutes on a 2-core CPU, less on a GPU; mean IU about 0.6 on its validation "
            "scenes). Train your own from ImageNet VGG16 for real work (README).",
            highlight=False,
        )
        default_model(path, device=device, keep_training_files=keep_training_files)
    return path


@flow(name="segment-mosaic")
def segment_mosaic(
    input: Source,
    output: Target = None,
    settings: SegmentSettings = SegmentSettings(),
    cluster: ClusterSettings = ClusterSettings(),
    overwrite: bool = False,
    cog: Target = None,
    dry_run: bool = False,
    keep_training_files: bool = False,
) -> dict[str, Any]:
    """Segment a raster into a georeferenced Zarr mosaic of labels (and probabilities / logits).

    INPUT is a path or URL GDAL reads (s3://, gs://, az://, https://); --output (default: beside
    the input) a path or s3://, gs://, az:// URL. Options given here override the config file
    (``--config``, a YAML in configs/). --workers N runs the blocks on N local CPU processes,
    --gpus N|all on one local worker per GPU, --dask-address on an existing Dask cluster (with
    --gpus, on its workers that declare a GPU). ``--cog`` also exports the finished labels as a
    Cloud-Optimized GeoTIFF (as ``fcnpipe export --cog`` does).

    --tile-size auto (the default) takes the tile of least compute whose memory fits
    --memory-budget; --dry-run prints the plan (tiles, blocks, halo, compute factor, memory) and
    neither runs the network nor writes. A mosaic already complete with the same scene, model and
    settings is left as it is (a completed run named "Skipped"); --overwrite makes it again.

    Args:
        input: The raster to segment: a path or a URL GDAL reads.
        output: Where the Zarr mosaic goes (a path or s3://, gs://, az:// URL); default: beside the
            input, as scene.zarr.
        settings: How to segment (pipeline.settings.SegmentSettings; each field is an option).
        cluster: Where the blocks run (pipeline.settings.ClusterSettings; each field is an option).
        overwrite: Replace an existing mosaic (one fcnpipe made) instead of resuming it.
        cog: Also export the finished labels as a Cloud-Optimized GeoTIFF to this path or URL.
        dry_run: Print the plan (strategy, tiles, blocks, halo, compute factor, memory) and stop:
            nothing is computed or written.
        keep_training_files: When the default model is trained here, also keep its benchmark and
            training run beside it.
    """
    runner, on_gpus = block_runner(cluster, settings.device)  # checked before any write
    sharing = cluster.workers or (
        len(local_gpus(cluster.gpus)) if cluster.gpus is not None and not cluster.dask_address else 1
    )
    if dry_run:
        plan = plan_scene(input, settings.weights or trained_default_model(), settings, output=output,
                          overwrite=overwrite, workers=sharing, dry_run=True)  # fmt: skip
        return {"dry_run": True, "output": plan.output.redacted(), "warnings": list(plan.warnings),
                **plan.summary()}  # fmt: skip
    phases: dict[str, float] = {}  # seconds of each phase that took time, in order
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    weights_path = settings.weights
    if weights_path is None:
        untrained = not default_model_path().is_file()
        weights_path = default_weights(settings.device, keep_training_files)
        if untrained:
            lap("training the default model")
    clock = time.perf_counter()
    plan = plan_task(input, weights_path, settings, output, overwrite, sharing)
    lap("planning")
    if plan.complete:  # a completed run, not a failed one: a schedule finds most scenes done
        note = f"{plan.output.redacted()} is already complete; nothing to do (--overwrite makes it again)."
        get_run_logger().info(note)
        done = {"output": plan.output.redacted(), "already_complete": True, "warnings": list(plan.warnings)}
        return Completed(name="Skipped", message=note, data=done)  # type: ignore[return-value]
    for note in plan.warnings:
        get_run_logger().warning(note)
    in_process = not (cluster.workers or cluster.gpus or cluster.dask_address)
    reports = segment_blocks.with_options(task_runner=runner)(plan, on_gpus, in_process)
    lap("segmenting")
    report = finish_task(plan, reports, phases["segmenting"])  # Mpx/s: segmentation only
    lap("pyramid and preview")
    create_markdown_artifact(report.pop("markdown"), key="segment-report", description=plan.output.redacted())
    if cog is not None:
        written = export_cog_task(plan.output, cog, overwrite)
        attach_cog(plan.output, written)  # to the STAC Item finishing wrote
        report["cog"] = Location(written).redacted()  # the summary is printed and kept by Prefect
        lap("COG export")
    report["phases"] = phases
    warnings = [*plan.warnings, *report.pop("warnings")]
    return {"output": plan.output.redacted(), "warnings": warnings, **report}
