"""One scene -> one mosaic: plan, segment blocks of tiles as tasks, finish.

Run it with ``fcnpipe run flows/segment_mosaic.py --input scene.tif``. Blocks run in this process
by default, on a local Dask cluster of CPU workers with ``--workers N`` or of one worker per GPU
with ``--gpus N|all``, or on an existing scheduler with ``--dask-address tcp://host:8786`` (its GPU
workers only, with ``--gpus``); every worker reads its own windows and writes its own chunks.
"""

# No ``from __future__ import annotations``: a served flow is pickled by value, and its
# parameters' annotations must be types, not names of types (Prefect validates them).

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from dask.base import annotate
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from rich.console import Console

from fcn import FcnpipeError
from flows.runtime import block_runner, progress_bar
from flows.train import DEFAULT_STEPS, default_model
from pipeline.cluster import GPU, local_gpus
from pipeline.outputs.export import export_cog
from pipeline.outputs.finish import finish
from pipeline.outputs.stac import attach_cog
from pipeline.settings import default_model_path, load_segment_config
from pipeline.storage import Location
from pipeline.tiling.segment import BlockReport, Plan, Strategy, plan_scene, segment_block


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(
    input: str, weights: Path, settings: Any, output: str | None, overwrite: bool, workers: int
) -> Plan:
    """Check the inputs, size the tiles and prepare the store."""
    return plan_scene(input, weights, settings, output=output, overwrite=overwrite, workers=workers)


@task(name="segment-block", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def segment_block_task(plan: Plan, index: int) -> BlockReport:
    """Segment one block of tiles and record it (rerunning a block rewrites the same chunks)."""
    return segment_block(plan, index)


@task(name="export-cog", cache_policy=NO_CACHE)
def export_cog_task(mosaic: str, out: str, overwrite: bool) -> str:
    """The finished labels as a validated Cloud-Optimized GeoTIFF."""
    return export_cog(mosaic, out, overwrite=overwrite).path


@task(name="finish", cache_policy=NO_CACHE)
def finish_task(plan: Plan, reports: list[BlockReport], seconds: float) -> dict[str, Any]:
    """Mark the mosaic complete and summarise the run."""
    return finish(plan, reports, seconds)


@flow(name="segment-blocks")
def segment_blocks(plan: Plan, on_gpus: bool = False) -> list[BlockReport]:
    """Run every remaining block on this flow's task runner, showing progress.

    With ``on_gpus`` the blocks carry the ``GPU: 1`` resource, so Dask runs them only on workers
    that declare a GPU.
    """
    with annotate(resources={GPU: 1}) if on_gpus else nullcontext():
        futures = [segment_block_task.submit(plan, index) for index in plan.todo]
    reports = []
    with progress_bar(plan) as advance:
        for future in as_completed(futures):
            report = future.result()
            reports.append(report)
            advance(report)
    return reports


def option_defaults(config: Path | None = None) -> dict[str, Any]:
    """What each setting left out means for ``--help``: the config file's value, else the default."""
    values = load_segment_config(config, {}).model_dump()
    values["weights"] = values["weights"] or "the default model"
    values["outputs"] = ",".join(values["outputs"])
    return values


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
            f"(FCN-8s from scratch on the synthetic orthophoto benchmark, {DEFAULT_STEPS} steps; "
            "15-40 minutes on a 2-core CPU, a minute or two on a GPU; "
            "mean IU about 0.6 on its validation scenes).",
            highlight=False,
        )
        default_model(path, device=device, keep_training_files=keep_training_files)
    return path


@flow(name="segment-mosaic")
def segment_mosaic(
    input: str,
    output: str | None = None,
    weights: Path | None = None,
    config: Path | None = None,
    tile_size: int | Literal["auto"] | None = None,
    strategy: Strategy | None = None,
    halo: int | None = None,
    batch_size: int | Literal["auto"] | None = None,
    memory_budget: str | None = None,
    device: str | None = None,
    outputs: str | None = None,
    probabilities_dtype: str | None = None,
    bands: str | None = None,
    value_range: str | None = None,
    overwrite: bool = False,
    workers: int = 0,
    gpus: str | None = None,
    dask_address: str | None = None,
    cog: str | None = None,
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
    neither runs the network nor writes.

    Args:
        input: The raster to segment: a path or a URL GDAL reads.
        output: Where the Zarr mosaic goes (a path or s3://, gs://, az:// URL); default: beside the
            input, as scene.zarr.
        weights: The model checkpoint; default: fcnpipe's default model (trained on first use).
        config: A YAML file of segment settings (configs/segment.yaml); options given here win.
        tile_size: The output core of a tile in px (a multiple of the chunk and of the network's
            alignment), or auto: the tile of least compute whose memory fits --memory-budget. With
            --strategy stream: the width of a strip.
        strategy: tiles (each core read with the halo on every side) or stream (column strips
            streamed top to bottom through the network, the halo paid across only: less compute,
            the same mosaic; FCN-8s, -16s, -32s and -8s at-once only).
        halo: Pixels read around each core; default: the checkpoint's, which covers the receptive
            field so the mosaic is exact. Less is faster and may show seams.
        batch_size: Tiles per forward pass, or auto: 1 on a CPU and with an automatic tile.
        memory_budget: Memory a run may plan for: a share of what is free now (60%) or an amount
            (8GB); default 50% of the RAM available (split between --workers), 80% of a GPU's.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        outputs: What the mosaic holds: labels, and any of probabilities, logits (comma-separated).
        probabilities_dtype: uint8 (p = value / 254, 255 = nodata) or float16 (NaN = nodata).
        bands: The raster bands that feed the model, e.g. 1,2,3; default: the colour bands.
        value_range: LO,HI: raw values mapped linearly to 0-255 (needed for non-8-bit rasters).
        overwrite: Replace an existing mosaic (one fcnpipe made) instead of resuming it.
        workers: Run the blocks on this many local CPU worker processes (0: in this process).
        gpus: Run the blocks on one local worker per GPU: a number of GPUs, or all.
        dask_address: Run the blocks on an existing Dask scheduler, e.g. tcp://host:8786.
        cog: Also export the finished labels as a Cloud-Optimized GeoTIFF to this path or URL.
        dry_run: Print the plan (strategy, tiles, blocks, halo, compute factor, memory) and stop:
            nothing is computed or written.
        keep_training_files: When the default model is trained here, also keep its benchmark and
            training run (about 2 GB) beside it.
    """
    options = {"weights": weights, "tile_size": tile_size, "strategy": strategy, "halo": halo,
               "batch_size": batch_size, "memory_budget": memory_budget, "device": device,
               "outputs": outputs, "probabilities_dtype": probabilities_dtype, "bands": bands,
               "value_range": value_range}  # fmt: skip
    cfg = load_segment_config(config, options)
    runner, on_gpus = block_runner(workers, dask_address, gpus, cfg.device)  # checked before any write
    sharing = workers or (len(local_gpus(gpus)) if gpus is not None and not dask_address else 1)
    if dry_run:
        plan = plan_scene(input, cfg.weights or trained_default_model(), cfg.settings(), output=output,
                          overwrite=overwrite, workers=sharing, dry_run=True)  # fmt: skip
        return {"dry_run": True, "output": Location(plan.output).redacted(), "warnings": list(plan.warnings),
                **plan.summary()}  # fmt: skip
    phases: dict[str, float] = {}  # seconds of each phase that took time, in order
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    weights_path = cfg.weights
    if weights_path is None:
        untrained = not default_model_path().is_file()
        weights_path = default_weights(device or cfg.device, keep_training_files)
        if untrained:
            lap("training the default model")
    clock = time.perf_counter()
    plan = plan_task(input, weights_path, cfg.settings(), output, overwrite, sharing)
    lap("planning")
    for note in plan.warnings:
        get_run_logger().warning(note)
    reports = segment_blocks.with_options(task_runner=runner)(plan, on_gpus)
    lap("segmenting")
    report = finish_task(plan, reports, phases["segmenting"])  # Mpx/s: segmentation only
    lap("pyramid and preview")
    create_markdown_artifact(
        report.pop("markdown"), key="segment-report", description=Location(plan.output).redacted()
    )
    if cog is not None:
        written = export_cog_task(plan.output, cog, overwrite)
        attach_cog(plan.output, written)  # to the STAC Item finishing wrote
        report["cog"] = Location(written).redacted()  # the summary is printed and kept by Prefect
        lap("COG export")
    report["phases"] = phases
    warnings = [*plan.warnings, *report.pop("warnings")]
    return {"output": Location(plan.output).redacted(), "warnings": warnings, **report}
