"""Many scenes -> one mosaic each: the segment flow over a folder, a glob or a list of rasters.

Idempotent, so it can run on a schedule (cron, or a Prefect deployment of this flow): a scene whose
mosaic is already complete with the same model and settings is skipped, an interrupted one is
resumed, and only new scenes cost compute. A scene that fails is reported and the others go on;
the run ends with a non-zero exit if any failed.

    fcnpipe run flows/segment_batch.py --inputs 'incoming/*.tif' --output-dir mosaics/
"""

# No ``from __future__ import annotations``: a served flow is pickled by value, and its
# parameters' annotations must be types, not names of types (Prefect validates them).

from typing import Any

from prefect import flow, get_run_logger

from fcn import FcnpipeError
from flows.runtime import shared_cluster
from flows.segment_mosaic import segment_mosaic
from pipeline.inputs import batch_outputs, expand_inputs
from pipeline.settings import ClusterSettings, SegmentSettings, Target
from pipeline.storage import Location


@flow(name="segment-batch")
def segment_batch(
    inputs: str,
    output_dir: Target = None,
    settings: SegmentSettings = SegmentSettings(),
    cluster: ClusterSettings = ClusterSettings(),
    overwrite: bool = False,
    cog: bool = False,
) -> dict[str, Any]:
    """Segment every raster INPUTS names: a folder or bucket prefix, a glob, or a .txt list.

    For example 'scenes/*.tif' or 's3://bucket/incoming/*.tif'. Each scene gets scene.zarr beside
    it (or in --output-dir, a folder or bucket prefix), and with --cog a scene.labels.tif.
    Complete mosaics are skipped, interrupted ones resumed; every segment setting is the segment
    flow's. With --workers or --gpus, one local cluster serves every scene.

    Args:
        inputs: The rasters: a folder or bucket prefix, a glob, or a .txt file with one per line.
        output_dir: Where the mosaics go (a folder or bucket prefix); default: beside each scene.
        settings: How to segment each scene (pipeline.settings.SegmentSettings; each field is an option).
        cluster: Where the blocks run (pipeline.settings.ClusterSettings; each field is an option).
        overwrite: Make every mosaic again, complete ones included.
        cog: Also export each scene's labels as scene.labels.tif, a Cloud-Optimized GeoTIFF.
    """
    paths = expand_inputs(inputs)
    if not paths:
        note = f"{Location(inputs).redacted()} names no rasters yet; nothing to do."
        get_run_logger().warning(note)
        return {"scenes": 0, "segmented": 0, "already_complete": 0, "warnings": [note]}
    out_dir = Location.of(output_dir) if output_dir is not None else None
    targets = batch_outputs(paths, out_dir)
    if out_dir is not None and out_dir.is_local:
        out_dir.path.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    with shared_cluster(cluster) as where:
        for path, target in zip(paths, targets, strict=True):
            labels_cog = target.with_suffix(".labels.tif").text if cog else None
            name = path.redacted()
            try:
                result = segment_mosaic(input=path.text, output=target.text, settings=settings,
                                        cluster=where, overwrite=overwrite, cog=labels_cog)  # fmt: skip
                (skipped if result.get("already_complete") else done).append(name)
            except FcnpipeError as exc:
                sentence = str(exc) if name in str(exc) else f"{name}: {exc}"
                get_run_logger().error(sentence)
                failed.append(sentence)
    if failed:
        raise FcnpipeError(
            f"{len(failed)} of {len(paths)} scenes failed ({'; '.join(failed)}); "
            f"{len(done)} were segmented and {len(skipped)} were already complete."
        )
    return {"scenes": len(paths), "segmented": len(done), "already_complete": len(skipped)}
