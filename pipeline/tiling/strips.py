"""One column strip streamed through an FCN's row operators, its output a chunk row at a time.

The streamed counterpart of :meth:`pipeline.tiling.engine.Engine.run` (``--strategy stream``): a
strip's read (:func:`pipeline.grid.plan_strips`) is read band by band, top to bottom
(range reads, a few bands ahead), normalised and pushed through :class:`fcn.streaming.StreamingNet`
on the engine's device. The logits' rows are gathered until a row of chunks is complete; its core
columns are then reduced on the device as a tile's core is (labels, probabilities, logits),
masked where the input holds no data, and handed back for the tiled path's writer. Memory is set
by the strip's width, the band and the chunk, never by the scene's height.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fcn.inputs import autocast, network_input
from fcn.streaming import StreamingNet
from pipeline import stopping
from pipeline.grid import Tile, Window, chunk_rows
from pipeline.raster import RasterReader
from pipeline.tiling.engine import CoreResult, Engine, Loaded, prefetch

STREAM_BAND = 256  # input rows per push: a multiple of the FCNs' alignment (32), kernels stay large


@dataclass(frozen=True)
class StreamCost:
    """What streaming a network costs beyond its compute factor, measured against its own whole pass.

    ``time``: a streamed pixel's time over a whole-image pass's (each layer joins kept rows to the
    next band and runs shorter kernels), never taken below 1. ``memory``: the stream's peak over
    the whole pass's on an image short enough that both hold all of it (the copies of kept rows
    that concatenations make), never below 1.
    """

    time: float
    memory: float


# bench/stream_archs.py --size 512 --band 128 on this project's 2-core CPU (BENCHMARKS.md, "Every
# network streamed"): time and memory added, stream over whole pass. The run-to-run noise there
# is about 15 %: fcn8s and fcn8s-atonce, one topology, measured 1.31 and 0.98; both take 1.15.
STREAM_COSTS: dict[str, StreamCost] = {
    "deconvnet": StreamCost(1.19, 1.49),
    "dilated8": StreamCost(1.14, 1.81),
    "dilated8-frontend": StreamCost(1.0, 1.62),
    "dilated8-large": StreamCost(1.0, 1.86),
    "fcdensenet103": StreamCost(1.38, 2.57),
    "fcdensenet56": StreamCost(1.27, 2.56),
    "fcdensenet67": StreamCost(1.18, 2.86),
    "fcn16s": StreamCost(1.17, 1.34),
    "fcn32s": StreamCost(1.20, 1.0),
    "fcn32s-alexnet": StreamCost(1.61, 1.34),
    "fcn32s-color-d": StreamCost(1.28, 1.41),
    "fcn32s-color-hha": StreamCost(1.07, 1.56),
    "fcn32s-googlenet": StreamCost(1.69, 3.34),
    "fcn8s": StreamCost(1.15, 1.27),
    "fcn8s-atonce": StreamCost(1.15, 1.47),
    "fcn8s-demo": StreamCost(1.30, 3.23),
    "segnet": StreamCost(1.07, 1.68),
    "segnet-basic": StreamCost(1.12, 1.13),
    "unet": StreamCost(1.0, 1.0),
}
UNMEASURED = StreamCost(
    max(cost.time for cost in STREAM_COSTS.values()), max(cost.memory for cost in STREAM_COSTS.values())
)
"""A network registered without a measurement is assumed to stream as badly as the worst measured."""


def stream_cost(arch: str) -> StreamCost:
    """The measured cost of streaming ``arch`` (the worst measured one's for a network not measured)."""
    return STREAM_COSTS.get(arch, UNMEASURED)


def band_windows(read: Window, band: int) -> list[Window]:
    """``read`` cut into bands of ``band`` rows, top to bottom (the last one shorter)."""
    bottom = read.row + read.height
    return [Window(r, read.col, min(band, bottom - r), read.width) for r in range(read.row, bottom, band)]


def stream_strip(
    engine: Engine, reader: RasterReader, strip: Tile, chunk: int, band: int = STREAM_BAND
) -> Iterator[CoreResult]:
    """Stream ``strip`` through the engine's model; yield one result per row of chunks, in order.

    The output rows above the strip's core (a strip resumed below its top reads a halo above
    it, :func:`pipeline.grid.strip_from`) are computed and dropped.
    """
    net = StreamingNet(engine.model, strip.read.height, strip.read.width)
    windows = band_windows(strip.read, band)
    bands = prefetch(reader.read, windows, engine.settings.prefetch)
    rows_above, columns = strip.crop()
    above = rows_above.start
    todo = chunk_rows(strip, chunk)
    pending: list[torch.Tensor] = []
    for number, pixels in enumerate(bands):
        stopping.check("segmenting")
        x = network_input(torch.from_numpy(pixels)[None], engine.normalization, engine.device)
        with autocast(engine.device, engine.settings.precision):
            out = net.push(x, final=number == len(windows) - 1)
        dropped = min(above, out.shape[2])
        above -= dropped
        pending.append(out[:, :, dropped:, columns].float())
        while todo and sum(p.shape[2] for p in pending) >= todo[0].core.height:
            tile = todo.pop(0)
            rows = torch.cat(pending, dim=2)
            pending = [rows[:, :, tile.core.height :]]
            core = Loaded(tile, None, reader.valid(tile.core))
            yield from engine.reduce([core], rows[:, :, : tile.core.height])
    assert not todo, "the stream ended before the strip's last row"
