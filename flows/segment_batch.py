"""Many scenes -> one mosaic each: the segment flow over a folder, a glob or a list of rasters.

Idempotent, so it can run on a schedule (cron, or a Prefect deployment of this flow): a scene whose
mosaic is already complete with the same model and settings is skipped, an interrupted one is
resumed, and only new scenes cost compute. A scene that fails is reported and the others go on;
the run ends with a non-zero exit if any failed.

    fcnpipe run flows/segment_batch.py --inputs 'incoming/*.tif' --output-dir mosaics/
"""

# No ``from __future__ import annotations``: a served flow is pickled by value, and its
# parameters' annotations must be types, not names of types (Prefect validates them).

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from fcn import FcnpipeError
from flows.runtime import shared_cluster
from flows.segment_mosaic import option_defaults as option_defaults  # the same settings, for --help
from flows.segment_mosaic import segment_mosaic
from pipeline.inputs import batch_outputs, expand_inputs
from pipeline.outputs.mosaic import AlreadyComplete
from pipeline.storage import Location


@flow(name="segment-batch")
def segment_batch(
    inputs: str,
    output_dir: str | None = None,
    weights: Path | None = None,
    config: Path | None = None,
    tile_size: int | Literal["auto"] | None = None,
    halo: int | None = None,
    batch_size: int | Literal["auto"] | None = None,
    memory_budget: str | None = None,
    device: str | None = None,
    outputs: str | None = None,
    probabilities_dtype: str | None = None,
    bands: str | None = None,
    value_range: str | None = None,
    overwrite: bool = False,
    workers: int = 0,
    gpus: str | None = None,
    dask_address: str | None = None,
    cog: bool = False,
) -> dict[str, Any]:
    """Segment every raster INPUTS names: a folder or bucket prefix, a glob, or a .txt list.

    For example 'scenes/*.tif' or 's3://bucket/incoming/*.tif'. Each scene gets scene.zarr beside
    it (or in --output-dir, a folder or bucket prefix), and with --cog a scene.labels.tif.
    Complete mosaics are skipped, interrupted ones resumed; other options are the segment flow's.
    With --workers or --gpus, one local cluster serves every scene.

    Args:
        inputs: The rasters: a folder or bucket prefix, a glob, or a .txt file with one per line.
        output_dir: Where the mosaics go (a folder or bucket prefix); default: beside each scene.
        weights: The model checkpoint; default: fcnpipe's default model (trained on first use).
        config: A YAML file of segment settings (configs/segment.yaml); options given here win.
        tile_size: The output core of a tile in px, or auto (as the segment flow).
        halo: Pixels read around each core; default: the checkpoint's (exact).
        batch_size: Tiles per forward pass, or auto.
        memory_budget: Memory a run may plan for: a share of what is free (60%) or an amount (8GB).
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        outputs: What each mosaic holds: labels, and any of probabilities, logits.
        probabilities_dtype: uint8 (p = value / 254) or float16.
        bands: The raster bands that feed the model, e.g. 1,2,3; default: the colour bands.
        value_range: LO,HI: raw values mapped linearly to 0-255 (needed for non-8-bit rasters).
        overwrite: Make every mosaic again, complete ones included.
        workers: One local cluster of this many CPU worker processes for every scene.
        gpus: One local cluster of one worker per GPU (a number, or all) for every scene.
        dask_address: An existing Dask scheduler for every scene, e.g. tcp://host:8786.
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
    options: dict[str, Any] = {
        "weights": weights, "config": config, "tile_size": tile_size, "halo": halo,
        "batch_size": batch_size, "memory_budget": memory_budget, "device": device, "outputs": outputs,
        "probabilities_dtype": probabilities_dtype, "bands": bands,
        "value_range": value_range, "overwrite": overwrite,
    }  # fmt: skip
    done: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    with shared_cluster(workers, gpus, dask_address) as address:
        for path, target in zip(paths, targets, strict=True):
            labels_cog = target.with_suffix(".labels.tif").text if cog else None
            name = path.redacted()
            try:
                segment_mosaic(input=path.text, output=target.text, cog=labels_cog, dask_address=address,
                               gpus=gpus, workers=workers, **options)  # fmt: skip
                done.append(name)
            except AlreadyComplete:
                skipped.append(name)
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
