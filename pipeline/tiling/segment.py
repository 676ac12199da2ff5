"""One scene into one mosaic, as three steps a flow (or a plain loop) composes: plan, block, finish.

``plan_scene`` checks everything up front (input, weights, settings, output), sizes the tiles
to the device (``pipeline.tiling.sizing``) and prepares the store (not in a dry run);
``segment_block`` does one block of tiles and records it; ``finish`` marks the mosaic
complete once every block is recorded. Each step takes plain, picklable values, so blocks can run
in other processes or on other machines that see the same paths or buckets.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcn import FcnpipeError, ModelCard, load_checkpoint
from fcn.checkpoint import inference_forward, read_checkpoint
from fcn.margin import aligned_halo
from fcn.memory import MemoryProbe, probe_memory
from fcn.streaming import streaming_refusal
from pipeline.checkpoints import local_checkpoint
from pipeline.grid import GridSpec, compute_factor, plan_blocks, strip_compute_factor, strip_from
from pipeline.outputs.mosaic import (
    AlreadyComplete,
    MosaicSpec,
    blocks_done,
    file_sha256,
    mark_block_done,
    mark_row_written,
    open_mosaic_group,
    prepare,
    read_state,
    rows_written,
    strip_rows,
    write_core,
)
from pipeline.plan import BlockReport, Plan, plan_units
from pipeline.raster import RasterInfo, RasterReader, inspect_raster
from pipeline.settings import SegmentSettings
from pipeline.storage import Location, check_writable
from pipeline.tiling.engine import Engine, pick_device
from pipeline.tiling.sizing import Sizing, memory_budget_mib, size_tiles
from pipeline.tiling.strips import stream_cost, stream_strip

log = logging.getLogger(__name__)


def check_settings(settings: SegmentSettings, card: ModelCard) -> tuple[SegmentSettings, list[str]]:
    """Check the settings against the model (their values are valid already); fill in the halo.

    Returns the warnings worth printing.
    """
    notes = []
    stride = card.total_stride
    if card.normalization.channels != 3:
        raise FcnpipeError(
            f"the {card.arch} model reads {card.normalization.channels} input channels (colour and more); "
            "segmenting reads colour rasters, so it takes models of colour alone."
        )
    refusal = streaming_refusal(card.arch, card.num_classes) if settings.strategy == "stream" else None
    if refusal:
        raise FcnpipeError(f"{card.arch} cannot stream ({refusal}): segment it with --strategy tiles.")
    tile = settings.tile_size
    if tile != "auto" and (tile < stride or tile % stride):
        raise FcnpipeError(f"--tile-size must be auto or a positive multiple of {stride}, not {tile}.")
    chunk = settings.chunk if tile == "auto" else min(settings.chunk, tile)
    if chunk % stride:
        raise FcnpipeError(f"the chunk ({chunk}) must be a multiple of the model's alignment ({stride}).")
    if tile != "auto" and tile % chunk:
        raise FcnpipeError(f"--tile-size ({tile}) must be a multiple of the chunk ({chunk}).")
    halo = card.halo if settings.halo is None else aligned_halo(settings.halo, stride, card.margin)
    if halo < card.receptive_field.radius:
        notes.append(
            f"halo {halo} px is below the receptive field ({card.receptive_field.radius} px): "
            "tile borders may show seams."
        )
    return settings.model_copy(update={"halo": halo, "chunk": chunk}), notes


def default_output(input_path: Location) -> Location:
    """``scene.zarr`` beside ``scene.tif`` (in the same folder or bucket prefix)."""
    if input_path.scheme in ("http", "https"):
        raise FcnpipeError(f"{input_path.redacted()} is read over HTTP; say where to write with --output.")
    return input_path.with_suffix(".zarr")


def plan_scene(
    input_path: str | Path | Location,
    weights: str | Path,
    settings: SegmentSettings,
    *,
    output: str | Path | Location | None = None,
    overwrite: bool = False,
    workers: int = 1,
    dry_run: bool = False,
) -> Plan:
    """Check the input, weights and settings, size the tiles, prepare the store, list the blocks to do.

    ``workers`` is how many processes will share the blocks (and, on a CPU, the memory). A
    ``dry_run`` plans the same way but writes nothing and runs no network. An output that is
    already a complete mosaic of this plan is left untouched and the plan says ``complete``.
    """
    source = Location.of(input_path)
    named, weights = weights, local_checkpoint(weights)  # a URL is fetched here, once per machine
    card = ModelCard.from_dict(read_checkpoint(weights, lazy=True)["card"])
    settings, notes = check_settings(settings, card)
    info = inspect_raster(source, channels=3, bands=settings.bands, value_range=settings.value_range)
    notes.extend(info.notes)
    if info.crs_wkt is None:
        notes.append(f"{source.redacted()} has no CRS: the mosaic is written without one.")
    sha = file_sha256(weights)
    out = Location.of(output) if output is not None else default_output(source)
    check_writable(out)  # before reading what is there: an HTTP URL is refused, not fetched
    state = None if overwrite else read_state(out)
    check_strategy(out, state, settings.strategy)
    settings, sizing, predicted = choose_strategy(settings, card, info, weights, sha, workers, state, dry_run)
    notes.extend(sizing.notes)
    grid = grid_of(settings, card, info)
    blocks = plan_units(grid, settings.strategy)
    spec = MosaicSpec(
        info, card, sha, settings.outputs, settings.logits_dtype, settings.chunk,
        settings.record(), len(blocks), settings.probabilities_dtype,
    )  # fmt: skip
    if not dry_run:
        try:
            done = blocks_done(prepare(out, spec, overwrite=overwrite))
        except AlreadyComplete:  # not an error: a scheduled run finds most scenes done
            return Plan(info, out, str(named), sha, card, grid, settings, (), tuple(notes),
                        sizing.peak_mib, sizing.budget_mib, complete=True, predicted=predicted)  # fmt: skip
    elif state is not None and state.get("fingerprint") == spec.fingerprint():
        done = blocks_done(open_mosaic_group(out, "r"))
    else:
        done = np.zeros(len(blocks), dtype=bool)
    todo = tuple(b.index for b in blocks if not done[b.index])
    return Plan(info, out, str(named), sha, card, grid, settings, todo, tuple(notes),
                sizing.peak_mib, sizing.budget_mib, predicted=predicted)  # fmt: skip


def grid_of(settings: SegmentSettings, card: ModelCard, info: RasterInfo) -> GridSpec:
    """The grid of cores (or strips) the chosen settings cut the scene into."""
    assert settings.halo is not None
    return GridSpec(
        info.height, info.width, core=settings.tile, halo=settings.halo,
        chunk=settings.chunk, stride=card.total_stride, block=settings.block, margin=card.margin,
    )  # fmt: skip


def choose_strategy(
    settings: SegmentSettings,
    card: ModelCard,
    info: RasterInfo,
    weights: Path,
    sha: str,
    workers: int,
    state: dict[str, Any] | None,
    dry_run: bool,
) -> tuple[SegmentSettings, Sizing, dict[str, float]]:
    """Size the run (:func:`choose_sizing`); with ``--strategy auto``, size both and keep the cheaper.

    The predicted cost of each is the network pixels it feeds over the scene's: for tiles their
    compute factor less the cores of no data they will skip, for a stream its compute factor (a
    strip computes its nodata rows) times the network's measured time cost of streaming
    (:data:`pipeline.tiling.strips.STREAM_COSTS`). A mosaic being resumed keeps the
    strategy it was begun with, and one whose memory fits nothing is left out (the tiles' sentence
    when neither fits). Returns the settings, their sizing, and each strategy's predicted cost
    when both were sized.
    """
    if settings.strategy != "auto":
        chosen, sizing = choose_sizing(settings, card, info, weights, sha, workers, state, dry_run)
        return chosen, sizing, {}
    if state is not None:
        begun = state.get("settings", {}).get("strategy", "tiles")
        resumed = settings.model_copy(update={"strategy": begun})
        chosen, sizing = choose_sizing(resumed, card, info, weights, sha, workers, state, dry_run)
        return chosen, sizing, {}
    options = {}
    unfit: FcnpipeError | None = None
    banding = stream_cost(card.arch).time
    for strategy in ("tiles", "stream"):
        if strategy == "stream" and streaming_refusal(card.arch, card.num_classes):
            continue
        fixed = settings.model_copy(update={"strategy": strategy})
        try:
            chosen, sizing = choose_sizing(fixed, card, info, weights, sha, workers, state, dry_run)
        except FcnpipeError as exc:  # nothing of this strategy fits the budget: the other may
            unfit = unfit or exc
            continue
        grid = grid_of(chosen, card, info)
        factor = strip_compute_factor(grid) * banding if strategy == "stream" else tiled_cost(grid, info)
        options[strategy] = (factor, chosen, sizing)
    if not options:
        assert unfit is not None
        raise unfit
    best = min(options, key=lambda name: options[name][0])
    _, chosen, sizing = options[best]
    return chosen, sizing, {name: round(cost, 4) for name, (cost, _, _) in options.items()}


def tiled_cost(grid: GridSpec, info: RasterInfo) -> float:
    """Network pixels the tiles will feed over the scene's pixels, skipped cores left out.

    The compute factor less the reads of cores that hold no data, which the engine skips
    (predicted from a decimated read of the mask).
    """
    if not info.masked:
        return compute_factor(grid)
    cell = grid.chunk
    valid = RasterReader(info).coarse_valid(cell)
    fed = 0
    for block in plan_blocks(grid):
        for tile in block.tiles:
            core = tile.core
            cells = valid[core.row // cell : -(-(core.row + core.height) // cell),
                          core.col // cell : -(-(core.col + core.width) // cell)]  # fmt: skip
            fed += tile.read.height * tile.read.width if cells.any() else 0
    return fed / info.pixels


def check_strategy(out: Location, state: dict[str, Any] | None, strategy: str) -> None:
    """Refuse to resume a mosaic begun with the other strategy: its blocks are another partition."""
    begun = (state or {}).get("settings", {}).get("strategy", "tiles")
    if state is not None and strategy != "auto" and begun != strategy:
        raise FcnpipeError(
            f"{out.redacted()} was begun with --strategy {begun}; resume it with the same strategy "
            "or pass --overwrite to start again."
        )


def choose_sizing(
    settings: SegmentSettings,
    card: ModelCard,
    info: RasterInfo,
    weights: Path,
    sha: str,
    workers: int,
    state: dict[str, Any] | None,
    dry_run: bool,
) -> tuple[SegmentSettings, Sizing]:
    """Fill in the tile, batch and block (``pipeline.tiling.sizing``).

    A mosaic being resumed keeps the block (and, unless one is given, the tile) it was started
    with: its blocks are defined by them. The model's memory probe comes from its card, or is
    measured here on the device (not in a dry run, which runs no network).
    """
    recorded = (state or {}).get("settings", {})
    if settings.tile_size == "auto" and recorded.get("tile_size"):
        update = {"tile_size": int(recorded["tile_size"]), "block": int(recorded["block"])}
        settings = settings.model_copy(update=update)
    device = pick_device(settings.device)
    probe = card.memory.get(device.type)
    # a CPU runs one tile at a time: a given tile needs no probe there
    needs_probe = settings.tile_size == "auto" or (settings.batch_size == "auto" and device.type == "cuda")
    if probe is None and needs_probe and not dry_run:
        probe = measured_probe(weights, sha, str(device))
    assert settings.halo is not None
    sizing = size_tiles(
        info.height, info.width, halo=settings.halo, margin=card.margin, chunk=settings.chunk,
        stride=card.total_stride, block=settings.block, probe=probe,
        budget_mib=memory_budget_mib(settings.memory_budget, device, workers), device=device,
        tile_size=None if settings.tile_size == "auto" else settings.tile_size,
        batch_size=None if settings.batch_size == "auto" else settings.batch_size, workers=workers,
        classes=card.num_classes, outputs=settings.outputs, prefetch=settings.prefetch,
        stream=stream_cost(card.arch) if settings.strategy == "stream" else None,
    )  # fmt: skip
    block = int(recorded["block"]) if recorded.get("block") else sizing.block
    chosen = settings.model_copy(
        update={"tile_size": sizing.tile_size, "batch_size": sizing.batch_size, "block": block}
    )
    return chosen, sizing


@functools.lru_cache(maxsize=4)
def measured_probe(weights: str | Path, sha256: str, device: str) -> MemoryProbe | None:
    """Probe a checkpoint's memory on ``device`` (once per process) when its card has no probe there."""
    model, card = load_checkpoint(Path(weights))
    target = torch.device(device)
    return probe_memory(model.to(target), inference_forward(model, card.normalization), target)


@functools.lru_cache(maxsize=2)
def cached_model(weights: str, sha256: str) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model once per process (per weights file) and keep it (a URL: this machine's copy)."""
    return load_checkpoint(local_checkpoint(weights, sha256))


def cached_engine(weights: str, sha256: str, settings: SegmentSettings) -> Engine:
    """An engine on the process's copy of the model (cheap: the model is loaded once)."""
    model, card = cached_model(weights, sha256)
    return Engine(model, card.normalization, card.num_classes, settings, card.heads)


def segment_block(plan: Plan, index: int, on_tile: Callable[[int], None] | None = None) -> BlockReport:
    """Segment one block's tiles (or stream one strip), write its chunks, then record it in the manifest.

    ``on_tile`` hears of each tile written, with the pixels it segmented (a progress display in the
    same process; a strip is one unit, reported by the block's report).
    """
    start = time.perf_counter()
    block = plan.blocks[index]
    engine = cached_engine(plan.weights, plan.weights_sha256, plan.settings)
    group = open_mosaic_group(plan.output, "r+")
    reader = RasterReader(plan.input)
    skipped = pixels = 0
    record = strip_rows(group) if plan.streamed else None
    written = rows_written(record, index)
    try:
        if plan.streamed:  # a strip: one tile, written a row of chunks at a time, from the first not written
            strip = block.tiles[0]
            if written:
                strip = strip_from(strip, strip.core.row + written * plan.grid.chunk, plan.grid)
            results = stream_strip(engine, reader, strip, plan.grid.chunk)
        else:
            results = engine.run(reader, block.tiles)
        for row, result in enumerate(results, start=written):
            write_core(group, result.tile.core, result.labels, result.probabilities, result.logits,
                       result.head_labels)  # fmt: skip
            mark_row_written(record, index, row)
            skipped += result.skipped
            segmented = 0 if result.skipped else result.tile.core.height * result.tile.core.width
            pixels += segmented
            if on_tile is not None and not plan.streamed:
                on_tile(segmented)
    finally:
        reader.close()
    mark_block_done(group, index, engine.layout)
    seconds = time.perf_counter() - start
    return BlockReport(index, len(block.tiles), skipped, pixels, seconds, engine.layout)


def run_local(plan: Plan) -> dict[str, Any]:
    """Segment every remaining block in this process, in order, then finish (no Prefect)."""
    start = time.perf_counter()
    reports = [segment_block(plan, index) for index in plan.todo]
    from pipeline.outputs.finish import finish

    return finish(plan, reports, time.perf_counter() - start)
