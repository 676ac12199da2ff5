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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from fcn import FcnpipeError, ModelCard, load_checkpoint
from fcn.checkpoint import inference_forward, read_checkpoint
from fcn.margin import aligned_halo
from fcn.memory import MemoryProbe, probe_memory
from fcn.streaming import STREAMING_ARCHITECTURES, supports_streaming
from pipeline.grid import (
    Block,
    GridSpec,
    compute_factor,
    plan_blocks,
    plan_strips,
    strip_compute_factor,
    tile_count,
)
from pipeline.outputs.mosaic import (
    OUTPUTS,
    MosaicSpec,
    blocks_done,
    file_sha256,
    mark_block_done,
    open_mosaic_group,
    prepare,
    read_state,
    write_core,
)
from pipeline.raster import RasterInfo, RasterReader, inspect_raster
from pipeline.storage import Location, check_writable
from pipeline.tiling.engine import Engine, EngineSettings, pick_device
from pipeline.tiling.sizing import Sizing, memory_budget_mib, size_tiles
from pipeline.tiling.strips import stream_strip

log = logging.getLogger(__name__)

# tiles: cores read with the halo on every side; stream: column strips streamed top to bottom
# (``fcn.streaming``), the halo paid across only
Strategy = Literal["tiles", "stream"]


def plan_units(grid: GridSpec, strategy: Strategy) -> list[Block]:
    """The units of work (and of resume): blocks of tiles, or strips to stream."""
    return plan_strips(grid) if strategy == "stream" else plan_blocks(grid)


@dataclass(frozen=True)
class SegmentSettings:
    """Tiling and inference settings of a segmentation run (validated by :func:`plan_scene`)."""

    tile_size: int | None = None  # output core per tile, a multiple of the chunk and stride; None: auto
    strategy: Strategy = "tiles"  # with "stream", tile_size is the strips' width
    halo: int | None = None  # default: the checkpoint's, which covers the receptive field
    chunk: int = 512
    block: int = 4  # cores per side of one unit of work
    batch_size: int | None = None  # None: auto (1 on CPU)
    device: str = "auto"
    precision: str = "bf16"
    prefetch: int = 4
    outputs: tuple[str, ...] = ("labels",)
    logits_dtype: str = "float16"
    probabilities_dtype: str = "uint8"  # quantised, p = value / 254; or float16
    bands: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = None
    memory_budget: str | None = None  # for auto sizing: "60%" or "8GB"; default a share of what is free

    def engine(self) -> EngineSettings:
        """The part of the settings the engine needs (once the batch is chosen)."""
        assert self.batch_size is not None, "plan_scene chooses the batch"
        return EngineSettings(
            self.device,
            self.batch_size,
            self.precision,
            self.prefetch,
            self.outputs,
            self.logits_dtype,
            self.probabilities_dtype,
        )


@dataclass(frozen=True)
class Plan:
    """Everything a block needs, small and picklable."""

    input: RasterInfo
    output: str
    weights: str
    weights_sha256: str
    card: ModelCard
    grid: GridSpec
    settings: SegmentSettings
    todo: tuple[int, ...]
    warnings: tuple[str, ...] = field(default=())
    peak_mib: float | None = None  # predicted peak memory of one batch
    budget_mib: float | None = None

    @property
    def streamed(self) -> bool:
        """Whether the blocks are column strips streamed through the network."""
        return self.settings.strategy == "stream"

    @property
    def compute_factor(self) -> float:
        """Network pixels fed over scene pixels (``compute_factor`` or ``strip_compute_factor``)."""
        return strip_compute_factor(self.grid) if self.streamed else compute_factor(self.grid)

    def summary(self) -> dict[str, Any]:
        """The plan's figures, for the dry run's output and the run's report."""
        return {
            "strategy": self.settings.strategy,
            "tiles": len(self.blocks) if self.streamed else tile_count(self.grid),  # a strip is one
            "blocks": len(self.blocks),
            "blocks_to_do": len(self.todo),
            "tile_size": self.grid.core,
            "halo": self.grid.halo,
            "batch_size": self.settings.batch_size,
            "compute_factor": round(self.compute_factor, 4),
            "peak_memory_gib": None if self.peak_mib is None else round(self.peak_mib / 1024, 2),
            "memory_budget_gib": None if self.budget_mib is None else round(self.budget_mib / 1024, 2),
        }

    @property
    def blocks(self) -> list[Block]:
        """All blocks of the grid, or its strips (recomputed: cheap, and keeps the plan small)."""
        return plan_units(self.grid, self.settings.strategy)


@dataclass(frozen=True)
class BlockReport:
    """What one block did."""

    index: int
    tiles: int
    skipped: int
    pixels: int
    seconds: float
    layout: str = ""


def check_settings(settings: SegmentSettings, card: ModelCard) -> tuple[SegmentSettings, list[str]]:
    """Validate the settings against the model; fill in the halo; return warnings worth printing."""
    notes = []
    stride = card.total_stride
    if card.normalization.channels != 3:
        raise FcnpipeError(
            f"the {card.arch} model reads {card.normalization.channels} input channels (colour and more); "
            "segmenting reads colour rasters, so it takes models of colour alone."
        )
    unknown = set(settings.outputs) - set(OUTPUTS)
    if unknown or not settings.outputs:
        raise FcnpipeError(f"--outputs takes a comma-separated list of {', '.join(OUTPUTS)}.")
    outputs = tuple(o for o in OUTPUTS if o in settings.outputs or o == "labels")
    if settings.strategy not in get_args(Strategy):
        raise FcnpipeError(f"--strategy is tiles or stream, not {settings.strategy!r}.")
    if settings.strategy == "stream" and not supports_streaming(card.arch):
        raise FcnpipeError(
            f"--strategy stream runs the FCN family only ({', '.join(STREAMING_ARCHITECTURES)}), "
            f"not {card.arch}: segment it with --strategy tiles."
        )
    tile = settings.tile_size
    if tile is not None and (tile < stride or tile % stride):
        raise FcnpipeError(f"--tile-size must be auto or a positive multiple of {stride}, not {tile}.")
    chunk = settings.chunk if tile is None else min(settings.chunk, tile)
    if chunk % stride:
        raise FcnpipeError(f"the chunk ({chunk}) must be a multiple of the model's alignment ({stride}).")
    if tile is not None and tile % chunk:
        raise FcnpipeError(f"--tile-size ({tile}) must be a multiple of the chunk ({chunk}).")
    halo = card.halo if settings.halo is None else aligned_halo(settings.halo, stride, card.margin)
    if halo < card.receptive_field.radius:
        notes.append(
            f"halo {halo} px is below the receptive field ({card.receptive_field.radius} px): "
            "tile borders may show seams."
        )
    if (
        (settings.batch_size is not None and settings.batch_size < 1)
        or settings.prefetch < 1
        or (settings.block < 1)
    ):
        raise FcnpipeError("--batch-size, prefetch and block must be at least 1.")
    if settings.logits_dtype not in ("float16", "float32"):
        raise FcnpipeError(f"logits are stored as float16 or float32, not {settings.logits_dtype!r}.")
    if settings.probabilities_dtype not in ("uint8", "float16"):
        raise FcnpipeError(
            f"probabilities are stored as uint8 or float16, not {settings.probabilities_dtype!r}."
        )
    if settings.precision not in ("bf16", "fp32"):
        raise FcnpipeError(f"precision must be bf16 or fp32, not {settings.precision!r}.")
    return replace(settings, halo=halo, chunk=chunk, outputs=outputs), notes


def default_output(input_path: Location) -> Location:
    """``scene.zarr`` beside ``scene.tif`` (in the same folder or bucket prefix)."""
    if input_path.scheme in ("http", "https"):
        raise FcnpipeError(f"{input_path.redacted()} is read over HTTP; say where to write with --output.")
    return input_path.with_suffix(".zarr")


def plan_scene(
    input_path: str | Path | Location,
    weights: Path,
    settings: SegmentSettings,
    *,
    output: str | Path | Location | None = None,
    overwrite: bool = False,
    workers: int = 1,
    dry_run: bool = False,
) -> Plan:
    """Check the input, weights and settings, size the tiles, prepare the store, list the blocks to do.

    ``workers`` is how many processes will share the blocks (and, on a CPU, the memory). A
    ``dry_run`` plans the same way but writes nothing and runs no network.
    """
    source = Location.of(input_path)
    card = ModelCard.from_dict(read_checkpoint(weights)["card"])
    settings, notes = check_settings(settings, card)
    info = inspect_raster(source, channels=3, bands=settings.bands, value_range=settings.value_range)
    if info.crs_wkt is None:
        notes.append(f"{source.redacted()} has no CRS: the mosaic is written without one.")
    sha = file_sha256(weights)
    out = Location.of(output) if output is not None else default_output(source)
    check_writable(out)  # before reading what is there: an HTTP URL is refused, not fetched
    state = None if overwrite else read_state(out)
    check_strategy(out, state, settings.strategy)
    settings, sizing = choose_sizing(settings, card, info, weights, sha, workers, state, dry_run)
    notes.extend(sizing.notes)
    assert settings.halo is not None and settings.tile_size is not None
    grid = GridSpec(
        info.height, info.width, core=settings.tile_size, halo=settings.halo,
        chunk=settings.chunk, stride=card.total_stride, block=settings.block, margin=card.margin,
    )  # fmt: skip
    blocks = plan_units(grid, settings.strategy)
    spec = MosaicSpec(
        info, card, sha, settings.outputs, settings.logits_dtype, settings.chunk,
        settings_record(settings), len(blocks), settings.probabilities_dtype,
    )  # fmt: skip
    if not dry_run:
        done = blocks_done(prepare(out, spec, overwrite=overwrite))
    elif state is not None and state.get("fingerprint") == spec.fingerprint():
        done = blocks_done(open_mosaic_group(out, "r"))
    else:
        done = np.zeros(len(blocks), dtype=bool)
    todo = tuple(b.index for b in blocks if not done[b.index])
    return Plan(info, str(out), str(weights), sha, card, grid, settings, todo, tuple(notes),
                sizing.peak_mib, sizing.budget_mib)  # fmt: skip


def check_strategy(out: Location, state: dict[str, Any] | None, strategy: str) -> None:
    """Refuse to resume a mosaic begun with the other strategy: its blocks are another partition."""
    begun = (state or {}).get("settings", {}).get("strategy", "tiles")
    if state is not None and begun != strategy:
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
    if settings.tile_size is None and recorded.get("tile_size"):
        settings = replace(settings, tile_size=int(recorded["tile_size"]), block=int(recorded["block"]))
    device = pick_device(settings.device)
    probe = card.memory.get(device.type)
    # a CPU runs one tile at a time: a given tile needs no probe there
    needs_probe = settings.tile_size is None or (settings.batch_size is None and device.type == "cuda")
    if probe is None and needs_probe and not dry_run:
        probe = measured_probe(weights, sha, str(device))
    assert settings.halo is not None
    sizing = size_tiles(
        info.height, info.width, halo=settings.halo, margin=card.margin, chunk=settings.chunk,
        stride=card.total_stride, block=settings.block, probe=probe,
        budget_mib=memory_budget_mib(settings.memory_budget, device, workers), device=device,
        tile_size=settings.tile_size, batch_size=settings.batch_size, workers=workers,
        classes=card.num_classes, outputs=settings.outputs, prefetch=settings.prefetch,
        stream=settings.strategy == "stream",
    )  # fmt: skip
    block = int(recorded["block"]) if recorded.get("block") else sizing.block
    chosen = replace(settings, tile_size=sizing.tile_size, batch_size=sizing.batch_size, block=block)
    return chosen, sizing


@functools.lru_cache(maxsize=4)
def measured_probe(weights: str | Path, sha256: str, device: str) -> MemoryProbe | None:
    """Probe a checkpoint's memory on ``device`` (once per process) when its card has no probe there."""
    model, card = load_checkpoint(Path(weights))
    target = torch.device(device)
    return probe_memory(model.to(target), inference_forward(model, card.normalization), target)


def settings_record(settings: SegmentSettings) -> dict[str, Any]:
    """The settings that change the bytes written (not device or batch size, which do not)."""
    data = asdict(settings)
    for key in (
        "memory_budget",
        "device",
        "batch_size",
        "prefetch",
        "bands",
        "value_range",
        "outputs",
        "chunk",
        "logits_dtype",
        "probabilities_dtype",
    ):
        data.pop(key)
    if data["strategy"] == "tiles":  # as before strategies existed: mosaics begun then still resume
        data.pop("strategy")
    return data


@functools.lru_cache(maxsize=2)
def cached_engine(weights: str, sha256: str, settings: EngineSettings) -> Engine:
    """Load a model once per process (per weights file and settings) and keep it."""
    model, card = load_checkpoint(Path(weights))
    return Engine(model, card.normalization, card.num_classes, settings, card.heads)


def segment_block(plan: Plan, index: int) -> BlockReport:
    """Segment one block's tiles (or stream one strip), write its chunks, then record it in the manifest."""
    start = time.perf_counter()
    block = plan.blocks[index]
    engine = cached_engine(plan.weights, plan.weights_sha256, plan.settings.engine())
    group = open_mosaic_group(plan.output, "r+")
    reader = RasterReader(plan.input)
    skipped = pixels = 0
    try:
        if plan.streamed:  # a strip: one tile, written a row of chunks at a time
            results = stream_strip(engine, reader, block.tiles[0], plan.grid.chunk)
        else:
            results = engine.run(reader, block.tiles)
        for result in results:
            write_core(group, result.tile.core, result.labels, result.probabilities, result.logits,
                       result.head_labels)  # fmt: skip
            skipped += result.skipped
            pixels += 0 if result.skipped else result.tile.core.height * result.tile.core.width
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
