"""Overviews inside the mosaic: levels by 2, mode for labels, mean for probabilities.

Each level ``k`` is a group ``overviews/k`` that xarray and rioxarray open like the root
(``xr.open_zarr(path, group="overviews/1", decode_coords="all")``): ``labels`` (and a further
head's ``labels_<head>``), ``probabilities`` when the mosaic has them, pixel-centre ``x``/``y`` and
a ``spatial_ref`` whose GeoTransform is the root's with the pixel size doubled per level. Levels
halve until one chunk holds the whole level.
Logits get no overviews (an average of logits is neither a logit nor a probability).

The root group describes the pyramid in the zarr-conventions ``multiscales`` convention (v0.1.0,
the one GeoZarr builds on), as an array-based layout of the labels: ``labels`` →
``overviews/1/labels`` → ``overviews/2/labels`` …, each entry with its relative ``transform``, its
``resampling_method`` and, for GIS readers, the absolute ``proj:shape`` and ``proj:transform``.

Each level is computed from the one before, one output chunk at a time (a 2c × 2c read for a c × c
write), so memory stays at a few chunks whatever the size of the scene.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from affine import Affine
from numpy.typing import NDArray
from zarr.codecs import ZstdCodec

from pipeline.grid import windows
from pipeline.outputs.geozarr import declared, geo_attributes
from pipeline.outputs.mosaic import PROBABILITY_NODATA, consolidate, parse_geotransform, write_coordinates

MULTISCALES_CONVENTION = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1.0/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1.0/README.md",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}
RESAMPLING = {"labels": "mode", "probabilities": "average"}


def level_shapes(height: int, width: int, chunk: int) -> list[tuple[int, int]]:
    """Shapes of the overview levels: halve (rounding up) until one chunk holds the level."""
    shapes = []
    while max(height, width) > chunk:
        height, width = -(-height // 2), -(-width // 2)
        shapes.append((height, width))
    return shapes


def pad_even(values: NDArray[Any], fill: float) -> NDArray[Any]:
    """Pad the last two axes to even lengths with ``fill``."""
    h, w = values.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return values
    padded = np.full((*values.shape[:-2], h + h % 2, w + w % 2), fill, dtype=values.dtype)
    padded[..., :h, :w] = values
    return padded


def quarters(values: NDArray[Any]) -> list[NDArray[Any]]:
    """The four pixels of every 2 × 2 window, in scan order (top-left, top-right, ...)."""
    return [values[..., r::2, c::2] for r in (0, 1) for c in (0, 1)]


def mode2(labels: NDArray[Any], nodata: int) -> NDArray[Any]:
    """2 × 2 mode of a label image, nodata ignored; ties go to the first pixel in scan order.

    A window with no valid pixel is nodata. An odd last row or column forms windows of its own.
    """
    q = quarters(pad_even(labels, nodata))
    valid = [v != nodata for v in q]
    counts = np.stack([sum((p == o) & vo for o, vo in zip(q, valid, strict=True)) * vp
                       for p, vp in zip(q, valid, strict=True)])  # fmt: skip
    out = np.choose(counts.argmax(axis=0), q)
    out[counts.max(axis=0) == 0] = nodata
    return np.asarray(out, dtype=labels.dtype)


def mean2(probabilities: NDArray[np.uint8], nodata: int = PROBABILITY_NODATA) -> NDArray[np.uint8]:
    """2 × 2 mean of quantised probabilities (class, y, x), nodata ignored, rounded half up.

    A pixel is nodata in every class or in none, so the first class's mask serves all of them.
    """
    q = quarters(pad_even(probabilities, nodata))
    valid = [v[:1] != nodata for v in q]
    count = sum(m.astype(np.uint16) for m in valid)
    total = sum(np.where(m, v, 0).astype(np.uint16) for v, m in zip(q, valid, strict=True))
    mean = (2 * total + count) // (2 * np.maximum(count, 1))
    return np.where(count > 0, mean, nodata).astype(np.uint8)


def nanmean2(probabilities: NDArray[np.floating[Any]]) -> NDArray[np.floating[Any]]:
    """2 × 2 mean of float probabilities (class, y, x), NaN (nodata) ignored, in float32."""
    q = np.stack(quarters(pad_even(probabilities, np.nan))).astype(np.float32)
    valid = ~np.isnan(q)
    count = valid.sum(axis=0)
    mean = np.where(valid, q, 0).sum(axis=0) / np.maximum(count, 1)
    return np.where(count > 0, mean, np.nan).astype(probabilities.dtype)


def resampling(name: str) -> str:
    """How the array ``name`` is resampled: mode for label maps (every head's), mean for probabilities."""
    return RESAMPLING["labels" if name.startswith("labels") else name]


def downsample(name: str, values: NDArray[Any], nodata: Any) -> NDArray[Any]:
    """One level down for the array ``name``: mode for label maps, mean for probabilities."""
    if resampling(name) == "mode":
        return mode2(values, int(nodata))
    return nanmean2(values) if values.dtype.kind == "f" else mean2(values, int(nodata))


def build_pyramid(group: zarr.Group) -> list[tuple[int, int]]:
    """(Re)write every overview level of a mosaic from its full-resolution arrays; return their shapes.

    Idempotent: a rerun after an interruption rewrites the levels from scratch. Works on its own
    handle of the store (consolidated metadata would hide half-written levels) and consolidates the
    metadata again at the end; handles opened before see the old metadata.
    """
    group = zarr.open_group(store=group.store, mode="r+", use_consolidated=False)
    labels = group["labels"]
    assert isinstance(labels, zarr.Array)
    height, width = labels.shape[-2:]
    chunk = int(labels.chunks[-1])
    names = [n for n in group.array_keys() if n.startswith("labels") or n in RESAMPLING]
    grid_mapping = group["spatial_ref"].attrs
    root_transform = parse_geotransform(str(grid_mapping["GeoTransform"]))
    crs_wkt = str(grid_mapping["crs_wkt"]) if "crs_wkt" in grid_mapping else None
    num_classes = int(group["class"].shape[0])  # type: ignore[union-attr]
    shapes = level_shapes(height, width, chunk)
    if "overviews" in group:
        del group["overviews"]
    overviews = group.create_group("overviews")
    source: zarr.Group = group
    for level, shape in enumerate(shapes, start=1):
        transform = scaled(root_transform, 2**level)
        target = overviews.create_group(str(level), attributes=geo_attributes(shape, transform, crs_wkt))
        write_coordinates(target, shape, transform, crs_wkt, num_classes)
        for name in names:
            src = source[name]
            assert isinstance(src, zarr.Array)
            dst = target.create_array(
                name, shape=(*src.shape[:-2], *shape), chunks=(*src.shape[:-2], chunk, chunk),
                dtype=src.dtype, fill_value=src.fill_value, compressors=ZstdCodec(level=3),
                dimension_names=src.metadata.dimension_names,  # type: ignore[union-attr]
                attributes={**dict(src.attrs), "resampling_method": resampling(name)},
            )  # fmt: skip
            nodata = src.fill_value
            for window in windows(shape[0], shape[1], chunk):
                rows, cols = window.slices()
                read = (slice(2 * rows.start, 2 * rows.stop), slice(2 * cols.start, 2 * cols.stop))
                block = np.asarray(src[(..., *read)])
                dst[(..., rows, cols)] = downsample(name, block, nodata)
        source = target
    described = multiscales_attrs(height, width, root_transform, shapes)
    existing = group.attrs.get("zarr_conventions", [])
    assert isinstance(existing, list)
    described["zarr_conventions"] = declared(existing, described["zarr_conventions"])
    group.attrs.update(described)
    consolidate(group)
    return shapes


def scaled(transform: Affine, factor: int) -> Affine:
    """The affine of a level whose pixels are ``factor`` times larger (same origin)."""
    return transform @ Affine.scale(factor)


def multiscales_attrs(
    height: int, width: int, transform: Affine, shapes: list[tuple[int, int]]
) -> dict[str, Any]:
    """Root attributes describing the pyramid of ``labels`` (zarr-conventions multiscales v0.1.0)."""

    def entry(asset: str, level: int, shape: tuple[int, int]) -> dict[str, Any]:
        level_transform = list(scaled(transform, 2**level))[:6]
        return {"asset": asset, "proj:shape": list(shape), "proj:transform": level_transform}

    identity = {"scale": [1.0, 1.0], "translation": [0.0, 0.0]}
    layout = [{**entry("labels", 0, (height, width)), "transform": identity}]
    previous = "labels"
    for level, shape in enumerate(shapes, start=1):
        asset = f"overviews/{level}/labels"
        layout.append({
            **entry(asset, level, shape),
            "derived_from": previous,
            "transform": {"scale": [2.0, 2.0], "translation": [0.0, 0.0]},
            "resampling_method": "mode",
        })  # fmt: skip
        previous = asset
    return {
        "zarr_conventions": [MULTISCALES_CONVENTION],
        "multiscales": {"layout": layout, "resampling_method": "mode"},
    }


def read_level(group: zarr.Group, level: int, name: str = "labels") -> NDArray[Any]:
    """The whole of one level's array (level 0 is the full resolution); for tests and small scenes."""
    node = group[name] if level == 0 else group[f"overviews/{level}/{name}"]
    assert isinstance(node, zarr.Array)
    return np.asarray(node[...])
