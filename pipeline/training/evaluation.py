"""Evaluation outputs (the paper-style table, a JSON report, a confusion image) and tiled scoring.

Tiled scoring segments large scenes through the tiling pipeline instead of whole-image passes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image
from rich.console import Console
from rich.table import Table

from fcn import FcnpipeError
from pipeline.tiling.segment import SegmentSettings, plan_scene, run_local
from pipeline.training.data import ConfusionMatrix, SegmentationDataset
from pipeline.training.data.ortho import GeoTiffDataset

METRIC_NAMES = {
    "pixel_accuracy": "pixel acc.",
    "mean_accuracy": "mean acc.",
    "mean_iu": "mean IU",
    "fw_iu": "f.w. IU",
}


def evaluate_tiled(
    weights: Path, dataset: SegmentationDataset, *, tile_size: int, device: str, limit: int | None = None
) -> tuple[ConfusionMatrix, int]:
    """Score GeoTIFF scenes segmented by the tiling pipeline (exact halo) instead of whole-image passes.

    The pipeline reads bands 1-3, as whole-image scoring does, and honours the scenes' nodata and
    masks: it predicts nothing there, so labelled pixels under a mask are left out of the matrix
    and counted (the second value). Without masks the matrix equals the whole-image one.
    """
    if not isinstance(dataset, GeoTiffDataset):
        raise FcnpipeError(
            "tiled evaluation reads GeoTIFF scenes: use an ortho, synthetic-ortho, vaihingen or "
            "potsdam dataset."
        )
    matrix = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    settings = SegmentSettings(tile_size=tile_size, device=device, precision="fp32", bands=(1, 2, 3))
    keys = dataset.keys if limit is None else dataset.keys[:limit]
    unscored = 0
    with tempfile.TemporaryDirectory(prefix="fcnpipe-eval-") as tmp:
        for key in keys:
            out = Path(tmp) / f"{key}.zarr"
            run_local(plan_scene(dataset.image_path(key), weights, settings, output=out))
            labels = zarr.open_array(str(out / "labels"), mode="r")
            predicted, truth = np.asarray(labels[:]), dataset.load_label(key)
            masked = predicted == labels.fill_value
            unscored += int(np.count_nonzero(masked & (truth >= 0) & (truth < dataset.num_classes)))
            matrix.update(np.where(masked, dataset.ignore_index, truth), np.where(masked, 0, predicted))
    return matrix, unscored


def print_table(
    matrix: ConfusionMatrix,
    class_names: tuple[str, ...],
    console: Console | None = None,
    head: str | None = None,
) -> None:
    """The four metrics as in the paper's tables, then IU per class (of one ``head`` when named)."""
    console = console or Console()
    scores = matrix.scores()
    title = "FCN metrics (%)" if head is None else f"FCN metrics (%), {head} head"
    table = Table(*METRIC_NAMES.values(), title=title)
    table.add_row(*(f"{100 * scores[k]:.1f}" for k in METRIC_NAMES))
    console.print(table)
    per_class = Table("class", "IU (%)", "pixels (gt)")
    for name, iu, count in zip(class_names, matrix.per_class_iu(), matrix.hist.sum(1), strict=True):
        per_class.add_row(name, "-" if np.isnan(iu) else f"{100 * iu:.1f}", str(int(count)))
    console.print(per_class)


def write_report(
    path: Path, matrix: ConfusionMatrix, class_names: tuple[str, ...], context: dict[str, Any]
) -> None:
    """Write the JSON report and ``<report>.confusion.png`` (rows: truth, normalised per row)."""
    per_class = matrix.per_class_iu()
    report = {
        **context,
        "metrics": {k: None if np.isnan(v) else v for k, v in matrix.scores().items()},  # JSON has no NaN
        "per_class_iu": {
            n: None if np.isnan(v) else float(v) for n, v in zip(class_names, per_class, strict=True)
        },
        "class_names": list(class_names),
        "confusion_matrix": matrix.hist.tolist(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False))
    confusion_image(matrix.hist).save(path.with_suffix(".confusion.png"))


def confusion_image(hist: np.ndarray, cell: int = 24) -> Image.Image:
    """Rows normalised to sum 1, drawn dark for 1 and white for 0, ``cell`` pixels per entry."""
    totals = hist.sum(axis=1, keepdims=True)
    rates = np.divide(hist, totals, out=np.zeros(hist.shape), where=totals > 0)
    grey = (255 * (1 - rates)).astype(np.uint8)
    return Image.fromarray(np.kron(grey, np.ones((cell, cell), dtype=np.uint8)), mode="L")
