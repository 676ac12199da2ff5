"""Tiles sized to the device: the core (and batch) of least compute whose peak memory fits a budget.

Exactness has a price: every tile is read with a halo as wide as the receptive field, and the
network computes the halo too (the compute factor, :func:`pipeline.grid.compute_factor`).
A larger core spreads the same halo over more pixels, so among the cores (multiples of the chunk
and of the network's alignment) whose peak memory fits the budget, the planner takes the one with
the least compute factor, and of equal ones the least memory: on an 8192 px scene a core of 2048
costs what one of 2560 does, whose last column of tiles is mostly halo. Peak memory is predicted
by the model's measured memory probe (:mod:`fcn.memory`) plus what the engine holds beside the
network (tiles read ahead, outputs). No activation may reach 2**31 elements (32-bit
indexing in cuDNN and several kernels), whatever memory is free.

Batches: a CPU gains little from batching convolutions, so it runs one tile at a time
(BENCHMARKS.md, "Least-cost tiling"). On a GPU an automatic tile also runs alone (one large tile
keeps the device busy; not yet measured against batches of smaller ones), and a tile size given
by hand gets the largest batch (up to 8) that fits.

Strips (``--strategy stream``): the same choice over strip widths. A strip holds a band of rows
in flight and, where a skip joins a deeper path, the rows that path lags behind (up to the halo),
so its memory is taken as the probe's at ``STREAM_ROWS`` plus the halo's rows of the strip's read
width, times the network's measured ``memory`` cost of streaming
(:data:`pipeline.tiling.strips.STREAM_COSTS`: the copies its concatenations make). Its cost is
:func:`pipeline.grid.strip_compute_factor`; it never batches.

With several workers, each needs tiles to work on: the core shrinks until there are at least as
many tiles as workers, and blocks hold fewer cores until there are as many blocks.

The budget is a share of the memory a run may take: on CPU (and MPS) of the RAM available now,
split between the local workers; on CUDA of the device's free memory, per GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psutil
import torch

from fcn import FcnpipeError
from fcn.memory import LARGEST_INDEXABLE, MemoryProbe
from pipeline.grid import GridSpec, compute_factor, largest_read, strip_compute_factor, tile_count
from pipeline.settings import parse_budget
from pipeline.tiling.strips import STREAM_BAND, StreamCost

CPU_SHARE = 0.5  # of the RAM available now: the rest is the page cache, Zarr's buffers, other work
CUDA_SHARE = 0.8  # of the device's free memory
MAX_BATCH = 8
FALLBACK_TILE = 1024  # when the model's memory cannot be probed
MIB = 2**20
# Full-resolution rows a stream holds at its peak: a band, conv1_1's 100 zero rows at the first
# one, the line buffers and the concatenations that copy them (BENCHMARKS.md, streaming).
STREAM_ROWS = 2 * STREAM_BAND


@dataclass(frozen=True)
class Sizing:
    """The tile, batch and block a run uses, and the memory that was planned for."""

    tile_size: int
    batch_size: int
    block: int
    peak_mib: float | None  # predicted peak of one batch (None without a probe)
    budget_mib: float | None
    notes: tuple[str, ...] = ()


def available_mib(device: torch.device) -> float:
    """Memory a run could take now: the GPU's free memory, or the RAM available."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free / MIB
    return float(psutil.virtual_memory().available) / MIB


def memory_budget_mib(text: str | None, device: torch.device, workers: int = 1) -> float:
    """The budget per worker, in MiB: ``None`` (the default share), ``"60%"``, or ``"8GB"``/``"512MiB"``.

    On a CPU the budget is the whole machine's and local workers share it; on CUDA it is per GPU.
    """
    share = 1 if device.type == "cuda" else max(workers, 1)
    if text is None:
        return available_mib(device) * (CUDA_SHARE if device.type == "cuda" else CPU_SHARE) / share
    try:
        kind, value = parse_budget(text)
    except ValueError as exc:
        raise FcnpipeError(f"--memory-budget {exc}.") from None
    if kind == "share":
        return available_mib(device) * value / share
    return value / MIB / share


def beside_network_mib(read_px: int, core_px: int, batch: int, prefetch: int, classes: int,
                       outputs: tuple[str, ...]) -> float:  # fmt: skip
    """What the engine holds beside the network for one batch: reads ahead and the outputs."""
    reads = (prefetch + batch) * read_px * 3 * 4  # the worst case: float32 bands
    per_core_px = 1 + (classes * 2 * 4 if len(outputs) > 1 else 0)  # labels; softmax and copies
    return (reads + batch * core_px * per_core_px) / MIB


def size_tiles(
    height: int,
    width: int,
    *,
    halo: int,
    margin: int,
    chunk: int,
    stride: int,
    block: int,
    probe: MemoryProbe | None,
    budget_mib: float,
    device: torch.device,
    tile_size: int | None = None,
    batch_size: int | None = None,
    workers: int = 1,
    classes: int = 2,
    outputs: tuple[str, ...] = ("labels",),
    prefetch: int = 4,
    stream: StreamCost | None = None,
) -> Sizing:
    """Choose the core and batch (where not given) and the block for a scene; see the module.

    With ``stream`` (the network's cost of streaming) the core is a strip's width, the batch 1 and
    every strip its own block.
    """
    unit = math.lcm(chunk, stride)
    what = "strips" if stream is not None else "tiles"
    if probe is None:
        tile = tile_size or max(unit, FALLBACK_TILE // unit * unit)
        fallback = f"no memory probe could be made on this device: {what} of {tile} px, the fallback."
        batch = 1 if stream is not None else batch_size or (4 if device.type == "cuda" else 1)
        told = () if tile_size else (fallback,)
        blocks = 1 if stream is not None else fewer_blocks(height, width, tile, block, workers)
        return Sizing(tile, batch, blocks, None, None, told)

    def grid(core: int) -> GridSpec:
        return GridSpec(height, width, core=core, halo=halo, chunk=min(chunk, core), stride=stride,
                        margin=margin)  # fmt: skip

    def peak(core: int, batch: int) -> tuple[float, float]:
        rows, cols = largest_read(grid(core))
        core_px = min(core, height) * min(core, width)
        copies = 1.0
        if stream is not None:  # a band and the lag in flight, a row of chunks gathered
            rows, core_px = min(STREAM_ROWS + halo, rows), min(chunk, height) * min(core, width)
            copies = stream.memory
        memory = probe.peak_mib(batch * rows * cols) * copies
        memory += beside_network_mib(rows * cols, core_px, batch, prefetch, classes, outputs)
        return memory, batch * probe.largest_activation(rows * cols)

    def fits(core: int, batch: int) -> bool:
        memory, elements = peak(core, batch)
        return memory <= budget_mib and elements <= LARGEST_INDEXABLE

    if tile_size is not None:
        cores = [tile_size]
    else:
        last = -(-(width if stream is not None else max(height, width)) // unit)  # one core covers the scene
        cores = [k * unit for k in range(1, last + 1)]
    if stream is not None:
        batches = [1]
    elif batch_size is not None:
        batches = [batch_size]
    elif tile_size is not None and device.type == "cuda":
        batches = list(range(MAX_BATCH, 0, -1))
    else:
        batches = [1]
    notes: list[str] = []
    choices = [(core, batch) for core in cores for batch in batches if fits(core, batch)]
    if not choices:
        core, batch = cores[0], batches[-1]
        memory, elements = peak(core, batch)
        if tile_size is None:
            raise FcnpipeError(
                f"a {what[:-1]} of {core} px (with its {halo} px halo) needs about {memory / 1024:.1f} GiB, "
                f"more than the memory budget of {budget_mib / 1024:.1f} GiB; raise --memory-budget "
                "or run on a device with more memory."
                if elements <= LARGEST_INDEXABLE
                else f"even a {what[:-1]} of {core} px would hold an activation of more than 2**31 elements, "
                "which the network's kernels cannot index; set a smaller chunk in the config (chunk:)."
            )
        notes.append(
            f"{what} of {core} px in batches of {batch} need about {memory / 1024:.1f} GiB, "
            f"above the memory budget of {budget_mib / 1024:.1f} GiB (--tile-size auto fits it)."
        )
        choices = [(core, batch)]

    def units(core: int) -> int:
        return math.ceil(width / core) if stream is not None else tile_count(grid(core))

    enough = [c for c in choices if units(c[0]) >= workers]
    if not enough:  # a scene too small to give every worker a tile: as many tiles as fit
        enough = [min(choices)]

    def cost(choice: tuple[int, int]) -> tuple[float, int, float]:
        factor = (strip_compute_factor if stream is not None else compute_factor)(grid(choice[0]))
        return round(factor, 6), -choice[1], peak(*choice)[0]

    core, batch = min(enough, key=cost)
    blocks = 1 if stream is not None else fewer_blocks(height, width, core, block, workers)
    return Sizing(core, batch, blocks, peak(core, batch)[0], budget_mib, tuple(notes))


def fewer_blocks(height: int, width: int, core: int, block: int, workers: int) -> int:
    """The largest block (up to ``block`` cores a side) that gives every worker a block to do."""
    rows, cols = math.ceil(height / core), math.ceil(width / core)
    while block > 1 and math.ceil(rows / block) * math.ceil(cols / block) < workers:
        block -= 1
    return block
