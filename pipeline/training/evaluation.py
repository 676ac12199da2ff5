"""Evaluation outputs (the paper-style table, a JSON report, a confusion image) and tiled scoring.

Tiled scoring segments large scenes through the tiling pipeline instead of whole-image passes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn

from fcn import FcnpipeError
from fcn.checkpoint import Head, head_layout
from fcn.inputs import autocast, network_input
from fcn.margin import same_size_forward
from fcn.normalization import Normalization
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from pipeline.training.data import ConfusionMatrix, SegmentationDataset
from pipeline.training.data.ortho import GeoTiffDataset


def dataset_heads(dataset: SegmentationDataset) -> tuple[Head, ...]:
    """The heads a dataset's labels are for (one, over every class, unless it names several)."""
    return head_layout(dataset.head_sizes, dataset.num_classes)


@torch.inference_mode()
def evaluate_heads(
    model: nn.Module,
    dataset: SegmentationDataset,
    normalization: Normalization,
    device: torch.device,
    limit: int | None = None,
    precision: str = "fp32",
) -> dict[str, ConfusionMatrix]:
    """Score whole images at their native size, one at a time like the reference: a confusion per head."""
    heads = dataset_heads(dataset)
    matrices = {head.name: ConfusionMatrix(head.classes, dataset.ignore_index) for head in heads}
    was_training = model.training
    model.eval()
    try:
        for index in range(len(dataset) if limit is None else min(limit, len(dataset))):
            image, label = dataset[index]
            rgb = torch.from_numpy(image).permute(2, 0, 1)[None]
            with autocast(device, precision):
                logits = same_size_forward(model, network_input(rgb, normalization, device))
            for head, truth in zip(heads, label.reshape(-1, *label.shape[-2:]), strict=True):
                matrices[head.name].update(truth, logits[:, head.channels].argmax(1)[0].cpu().numpy())
    finally:
        model.train(was_training)
    return matrices


def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    normalization: Normalization,
    device: torch.device,
    limit: int | None = None,
    precision: str = "fp32",
) -> ConfusionMatrix:
    """The confusion of the first (or only) head: :func:`evaluate_heads`."""
    matrices = evaluate_heads(model, dataset, normalization, device, limit, precision)
    return next(iter(matrices.values()))


def heads_scores(matrices: dict[str, ConfusionMatrix]) -> dict[str, float]:
    """The first head's four metrics under their names; each further head's prefixed by its own."""
    (_, first), *rest = matrices.items()
    scores = first.scores()
    for name, matrix in rest:
        scores |= {f"{name}_{metric}": value for metric, value in matrix.scores().items()}
    return scores


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
