"""The outputs stage of a run: the pyramid, preview, report and STAC Item, then the complete-mark.

Run once every block is recorded; the complete-mark is written last.
"""

from __future__ import annotations

import io
from typing import Any

import zarr

from pipeline.outputs.mosaic import (
    block_layouts,
    label_arrays,
    label_nodata,
    mark_complete,
    open_mosaic_group,
)
from pipeline.outputs.pyramid import build_pyramid
from pipeline.outputs.report import class_pixels, markdown_report, pixel_area, preview
from pipeline.outputs.stac import write_item
from pipeline.plan import BlockReport, Plan
from pipeline.storage import Location, write_bytes


def finish(plan: Plan, reports: list[BlockReport], seconds: float) -> dict[str, Any]:
    """Mark the mosaic complete (only if every block is recorded) and return the run's summary."""
    group = open_mosaic_group(plan.output, "r+")
    tiles = sum(r.tiles for r in reports)
    pixels = sum(r.pixels for r in reports)
    report: dict[str, Any] = {
        "strategy": plan.settings.strategy,
        "blocks_run": len(reports),
        "tiles": tiles,
        "tiles_skipped": sum(r.skipped for r in reports),
        "megapixels": pixels / 1e6,
        "seconds": round(seconds, 3),
        "mpx_per_s": round(pixels / 1e6 / seconds, 4) if seconds > 0 else None,
        "tile_size": plan.grid.core,
        "halo": plan.grid.halo,
        "batch_size": plan.settings.batch_size,
        "compute_factor": round(plan.compute_factor, 4),
    }
    if plan.predicted:  # --strategy auto: what each strategy was predicted to cost
        report["predicted_cost"] = dict(plan.predicted)
    cards = label_arrays(plan.card)
    card = cards.pop("labels")
    labels = group["labels"]
    assert isinstance(labels, zarr.Array)
    counts = class_pixels(labels, card.num_classes)
    area = pixel_area(plan.input)
    report["class_pixels"] = dict(zip(card.class_names, counts.tolist(), strict=True))
    if area is not None:
        report["class_area_m2"] = {name: n * area for name, n in report["class_pixels"].items()}
    for name, head in cards.items():  # a model's further heads: their own label maps
        head_counts = class_pixels(group[name], head.num_classes)  # type: ignore[arg-type]
        report[f"class_pixels_{name}"] = dict(zip(head.class_names, head_counts.tolist(), strict=True))
    report["layouts"] = block_layouts(group)
    report["warnings"] = layout_warnings(report["layouts"])
    report["overviews"] = [list(shape) for shape in build_pyramid(group)]
    group = open_mosaic_group(plan.output, "r+")  # the pyramid changed the root's metadata
    path = preview_path(plan)
    levels = [labels, *(group[f"overviews/{k}/labels"] for k in range(1, len(report["overviews"]) + 1))]
    image = preview(levels, plan.input, card, label_nodata(card.num_classes))  # type: ignore[arg-type]
    png = io.BytesIO()
    image.save(png, format="PNG")
    write_bytes(path, png.getvalue())
    report["preview"] = path.redacted()
    # Before the complete-mark: a rerun of a complete mosaic stops at once, and would never write it.
    report["stac"] = write_item(plan, report).redacted()
    mark_complete(group, report)
    return {**report, "markdown": markdown_report(plan.input, card, report, counts)}


def layout_warnings(layouts: dict[str, int]) -> list[str]:
    """A warning when the blocks were computed under more than one layout (a resume elsewhere)."""
    if len(layouts) < 2:
        return []
    listed = "; ".join(f"{layout} ({n} blocks)" for layout, n in layouts.items())
    return [
        f"the blocks of this mosaic were computed under {len(layouts)} layouts ({listed}): "
        "across them, values may differ in the last bits and a few near-tied labels may differ "
        "(README, 'Which bytes are promised')."
    ]


def preview_path(plan: Plan) -> Location:
    """``scene.preview.png`` beside ``scene.zarr``."""
    out = plan.output
    return out.with_name(f"{out.stem}.preview.png")
