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

import torch

from fcn.inputs import autocast, network_input
from fcn.streaming import StreamingNet
from pipeline import stopping
from pipeline.grid import Tile, Window, chunk_rows
from pipeline.raster import RasterReader
from pipeline.tiling.engine import CoreResult, Engine, Loaded, prefetch

STREAM_BAND = 256  # input rows per push: a multiple of the FCNs' alignment (32), kernels stay large


def band_windows(read: Window, band: int) -> list[Window]:
    """``read`` cut into bands of ``band`` rows, top to bottom (the last one shorter)."""
    bottom = read.row + read.height
    return [Window(r, read.col, min(band, bottom - r), read.width) for r in range(read.row, bottom, band)]


def stream_strip(
    engine: Engine, reader: RasterReader, strip: Tile, chunk: int, band: int = STREAM_BAND
) -> Iterator[CoreResult]:
    """Stream ``strip`` through the engine's model; yield one result per row of chunks, in order."""
    net = StreamingNet(engine.model, strip.read.height, strip.read.width)
    windows = band_windows(strip.read, band)
    bands = prefetch(reader.read, windows, engine.settings.prefetch)
    columns = strip.crop()[1]
    todo = chunk_rows(strip, chunk)
    pending: list[torch.Tensor] = []
    for number, pixels in enumerate(bands):
        stopping.check("segmenting")
        x = network_input(torch.from_numpy(pixels)[None], engine.normalization, engine.device)
        with autocast(engine.device, engine.settings.precision):
            out = net.push(x, final=number == len(windows) - 1)
        pending.append(out[:, :, :, columns].float())
        while todo and sum(p.shape[2] for p in pending) >= todo[0].core.height:
            tile = todo.pop(0)
            rows = torch.cat(pending, dim=2)
            pending = [rows[:, :, tile.core.height :]]
            core = Loaded(tile, None, reader.valid(tile.core))
            yield from engine.reduce([core], rows[:, :, : tile.core.height])
    assert not todo, "the stream ended before the strip's last row"
