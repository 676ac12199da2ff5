"""Score a checkpoint on a dataset split with the FCN paper's four metrics."""

# No ``from __future__ import annotations``: a served flow is pickled by value, and its
# parameters' annotations must be types, not names of types (Prefect validates them).

from pathlib import Path
from typing import Any

from prefect import flow

from fcn import load_checkpoint
from pipeline.tiling.engine import pick_device
from pipeline.training.data import open_dataset
from pipeline.training.evaluation import (
    dataset_heads,
    evaluate_heads,
    evaluate_tiled,
    heads_scores,
    print_table,
    write_report,
)
from pipeline.training.train import check_input


@flow(name="evaluate")
def evaluate(
    weights: Path,
    dataset: str,
    split: str = "val",
    limit: int | None = None,
    report: Path | None = None,
    device: str = "auto",
    tiled: bool = False,
    tile_size: int = 512,
) -> dict[str, Any]:
    """Evaluate WEIGHTS on DATASET (NAME:PATH) and print pixel accuracy, mean accuracy, mean IU, fw IU.

    With --tiled the images (GeoTIFF scenes of an ortho dataset) go through the tiling pipeline,
    which gives the whole-image numbers when the halo covers the receptive field; pixels under a
    scene's nodata or mask, where the pipeline predicts nothing, are left out and counted.
    --report writes a JSON report (metrics, per-class IU, confusion matrix) and a confusion-matrix
    PNG beside it. A dataset labelled for several heads (siftflow-both) is scored head by head:
    a table for each, and REPORT-HEAD.json beside the first head's report (scores-geometric.json).

    Args:
        weights: The checkpoint to score.
        dataset: The data as NAME:PATH.
        split: The split to score.
        limit: Score only this many images.
        report: Write a JSON report here (and a confusion-matrix PNG beside it).
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        tiled: Score GeoTIFF scenes through the tiling pipeline.
        tile_size: The tile of --tiled, in px.
    """
    data = open_dataset(dataset, split)
    notes = []
    if tiled:
        matrix, unscored = evaluate_tiled(weights, data, tile_size=tile_size, device=device, limit=limit)
        matrices = {"classes": matrix}
        if unscored:
            notes.append(f"{unscored} labelled pixels lie under the scenes' nodata or masks, where the "
                         "tiling pipeline predicts nothing; they are not scored.")  # fmt: skip
    else:
        model, card = load_checkpoint(weights, num_classes=data.num_classes)
        check_input(card, data, str(weights))
        matrices = evaluate_heads(model, data, card.normalization, pick_device(device), limit=limit)
    heads = dataset_heads(data)
    context = {"weights": str(weights), "dataset": dataset, "split": split, "tiled": tiled}
    for head, matrix in zip(heads, matrices.values(), strict=True):
        names = data.class_names[head.channels]
        print_table(matrix, names, head=head.name if len(heads) > 1 else None)
        if report is not None:  # a further head's report beside the first: report.<head>.json
            path = (
                report if head is heads[0] else report.with_name(f"{report.stem}-{head.name}{report.suffix}")
            )
            write_report(path, matrix, names, context | ({"head": head.name} if len(heads) > 1 else {}))
    return {"report": str(report) if report else None, "warnings": notes, **heads_scores(matrices)}
