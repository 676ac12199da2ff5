"""After a run: area per class (block by block), a colour preview with a legend, a markdown report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from rasterio.crs import CRS
from rasterio.enums import Resampling

from fcn import ModelCard
from pipeline.plan import auto_choice
from pipeline.raster import RasterInfo, expand_palette, open_raster
from pipeline.storage import Location


def class_pixels(labels: zarr.Array[Any], num_classes: int) -> NDArray[np.int64]:
    """Pixels per class, counted one chunk row at a time (memory: one row of chunks)."""
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    rows = labels.chunks[0]
    for start in range(0, labels.shape[0], rows):
        block = np.asarray(labels[start : start + rows])
        counts += np.bincount(np.minimum(block.ravel(), num_classes), minlength=num_classes + 1)
    return counts[:num_classes]


def pixel_area(info: RasterInfo) -> float | None:
    """Area of one pixel in m² when the CRS is projected in metres, else None."""
    if info.crs_wkt is None:
        return None
    crs = CRS.from_wkt(info.crs_wkt)
    if not crs.is_projected or (crs.linear_units_factor[1] != 1.0):
        return None
    return abs(info.affine.determinant)


def preview(
    levels: list[zarr.Array[Any]], info: RasterInfo, card: ModelCard, nodata: int, longest: int = 1024
) -> Image.Image:
    """Labels in the palette blended over the input, both downsampled to ``longest`` px, with a legend.

    ``levels`` are the labels from full resolution down (the mosaic's pyramid): the preview reads
    the smallest level still at least ``longest`` px on its longer side, so it stays cheap on a
    gigapixel mosaic and shows mode-downsampled classes rather than every n-th pixel.
    """
    labels = levels[0]
    for level in levels[1:]:
        if max(level.shape) >= longest:
            labels = level
    step = max(1, math.ceil(max(labels.shape) / longest))
    small = np.asarray(labels[::step, ::step])
    h, w = small.shape
    with open_raster(Location(info.path)) as src:
        if info.palette is not None:  # indices: sampled, not averaged, then coloured by the table
            index = src.read(1, out_shape=(h, w), resampling=Resampling.nearest)
            rgb: NDArray[Any] = expand_palette(index, info.palette)
        else:
            rgb = src.read(list(info.bands), out_shape=(len(info.bands), h, w), resampling=Resampling.average)
        rgb = rgb.astype(np.float32)
    if info.value_range is not None:
        lo, hi = info.value_range
        rgb = (rgb - lo) * (255.0 / (hi - lo))
    base = np.clip(rgb, 0, 255).transpose(1, 2, 0)
    palette = np.array([*card.palette, (0, 0, 0)], dtype=np.float32)
    colours = palette[np.minimum(small, card.num_classes)]
    valid = (small != nodata)[..., None]
    blended = np.where(valid, 0.5 * base + 0.5 * colours, base).astype(np.uint8)
    return with_legend(Image.fromarray(blended), card)


def with_legend(image: Image.Image, card: ModelCard) -> Image.Image:
    """The image with a column of colour swatches and class names on its right."""
    row = 18
    canvas = Image.new("RGB", (image.width + 170, max(image.height, row * card.num_classes + 8)), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour) in enumerate(zip(card.class_names, card.palette, strict=True)):
        y = 4 + i * row
        draw.rectangle((image.width + 6, y, image.width + 20, y + 12), fill=colour, outline="black")
        draw.text((image.width + 26, y), name, fill="black")
    return canvas


def tiling_line(run: dict[str, Any]) -> str:
    """How the scene was tiled (or streamed) and what exactness cost; with auto, what it weighed."""
    pieces = "strips" if run.get("strategy") == "stream" else "tiles"
    line = (
        f"- {pieces} of {run['tile_size']} px with a {run['halo']} px halo, batches of {run['batch_size']}: "
        f"compute factor {run['compute_factor']:.3f} (network pixels per scene pixel)"
    )
    return line + (f"; {auto_choice(run['predicted_cost'])}" if run.get("predicted_cost") else "")


def markdown_report(info: RasterInfo, card: ModelCard, run: dict[str, Any], counts: NDArray[np.int64]) -> str:
    """The run report: scene, size, CRS, resolution, tiles, speed, time and area per class."""
    area = pixel_area(info)
    crs = CRS.from_wkt(info.crs_wkt).to_string() if info.crs_wkt else "none"
    grid = info.affine
    lines = [
        f"# Segmentation of `{Path(info.path).name}`",
        "",
        f"- size: {info.width} x {info.height} px; CRS: {crs}; "
        f"resolution: {math.hypot(grid.a, grid.d):g} x {math.hypot(grid.b, grid.e):g}",
        f"- tiles processed: {run['tiles'] - run['tiles_skipped']}, "
        f"skipped (no data): {run['tiles_skipped']}",
        f"- {run['megapixels']:.2f} Mpx in {run['seconds']:.1f} s ({run['mpx_per_s'] or 0:.3f} Mpx/s)",
        *([tiling_line(run)] if "compute_factor" in run else []),
        f"- model: {card.arch}, {card.num_classes} classes",
        *(f"- computed on: {layout} ({n} blocks)" for layout, n in run.get("layouts", {}).items()),
        "",
        "| class | pixels | " + ("area (m²) |" if area else "share |"),
        "|---|---|---|",
    ]
    total = max(int(counts.sum()), 1)
    for name, count in zip(card.class_names, counts, strict=True):
        value = f"{count * area:,.1f}" if area else f"{count / total:.1%}"
        lines.append(f"| {name} | {int(count)} | {value} |")
    return "\n".join(lines)
