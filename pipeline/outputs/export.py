"""From a finished mosaic to files GIS tools open: a Cloud-Optimized GeoTIFF and polygons.

Both read the mosaic one window at a time, so a gigapixel mosaic never has to fit in memory, and
both write a local file under a temporary name that becomes the output only once it is whole: a
rename beside a local output, an upload (which appears whole or not at all) for ``s3://`` and the
other object stores. The mosaic itself may be local or in a bucket.

- COG: the windows go into a tiled GeoTIFF, which GDAL's COG driver copies into the COG layout
  with its overviews (mode for labels, average for probabilities; nodata ignored), zstd; the
  result is checked with rio-cogeo's validator before it takes the output's name.
- Vectors: ``rasterio.features.shapes`` polygonises each block in pixel coordinates (exact
  integers); polygons inside a block are written at once, pieces that touch a block edge are merged
  per class (``shapely.unary_union``) after each row of blocks, so a region is one polygon whatever
  the blocks. Only regions that cross the current row's lower edge wait in memory. Written to a
  GeoPackage with pyogrio.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
import shapely
import shapely.affinity
import shapely.geometry
import zarr
from affine import Affine
from numpy.typing import NDArray
from pyogrio.raw import write as write_layer
from rio_cogeo.cogeo import cog_validate

from fcn import FcnpipeError
from pipeline.grid import Window, windows
from pipeline.outputs.mosaic import (
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    open_mosaic_group,
    parse_geotransform,
    read_state,
)
from pipeline.storage import Location, check_writable, is_file, publish

BLOCK = 2048  # pixels per side of the windows read from the mosaic
GDAL_CACHE_MB = 256  # GDAL's block cache while a COG is made (its default is 5 % of the RAM)


@dataclass(frozen=True)
class Mosaic:
    """A complete mosaic, opened for reading."""

    path: Location
    group: zarr.Group
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    transform: Affine
    crs_wkt: str | None
    labels_name: str = "labels"
    """The label array read: ``labels``, or a further head's (``labels_geometric``)."""
    channel_names: tuple[str, ...] = ()
    """The name of each probability channel: every head's classes, a further head's prefixed by it."""

    @property
    def labels(self) -> zarr.Array[Any]:
        """The full-resolution label array."""
        node = self.group[self.labels_name]
        assert isinstance(node, zarr.Array)
        return node

    @property
    def nodata(self) -> int:
        """The label value of pixels with no data."""
        return int(self.labels.fill_value)

    def class_index(self, name: str) -> int:
        """The index of a class by name, or one clear sentence listing the names."""
        if name not in self.class_names:
            names = ", ".join(self.class_names)
            raise FcnpipeError(f"{self.path} has no class {name!r}; its classes are {names}.")
        return self.class_names.index(name)


def open_mosaic(path: str | Path | Location, labels: str = "labels") -> Mosaic:
    """Open a mosaic for export; refuse one that is not a mosaic or not complete.

    ``labels`` names the label array to read: a model with several heads writes one per head.
    """
    where = Location.of(path)
    state = read_state(where)
    if state is None:
        raise FcnpipeError(f"{where.redacted()} is not an fcnpipe mosaic.")
    if not state.get("complete"):
        raise FcnpipeError(
            f"{where.redacted()} is not complete; finish the run (run the same command again) "
            "before exporting."
        )
    group = open_mosaic_group(where, "r")
    ref = dict(group["spatial_ref"].attrs)
    attrs: dict[str, Any] = dict(group.attrs)
    heads: dict[str, Any] = attrs.get("heads") or {"labels": attrs}
    if labels not in heads:
        raise FcnpipeError(f"{where.redacted()} has no label array {labels!r}; it has {', '.join(heads)}.")
    names = {array: tuple(str(n) for n in head["class_names"]) for array, head in heads.items()}
    channels = tuple(
        name if array == "labels" else f"{array.removeprefix('labels_')}:{name}"
        for array, head_names in names.items()
        for name in head_names
    )
    crs_wkt = ref.get("crs_wkt")
    return Mosaic(
        where,
        group,
        names[labels],
        tuple((int(p[0]), int(p[1]), int(p[2])) for p in heads[labels]["palette"]),
        parse_geotransform(str(ref["GeoTransform"])),
        str(crs_wkt) if crs_wkt else None,
        labels,
        channels,
    )


def refuse_existing(out: Location, overwrite: bool) -> None:
    """An existing output is replaced only with ``overwrite``; a local output's folder must exist."""
    check_writable(out)
    if is_file(out) and not overwrite:
        raise FcnpipeError(f"{out.redacted()} exists; pass --overwrite to replace it.")
    if out.is_local and not out.path.parent.is_dir():
        raise FcnpipeError(f"the folder {out.path.parent} does not exist.")


@contextmanager
def staged(out: Location, suffix: str = "") -> Iterator[Path]:
    """A local file to write ``out`` into, published to ``out`` only if the block ends cleanly.

    Beside a local output (so that publishing is a rename on the same disk); in a temporary
    folder for a URL. ``suffix`` tells two staged files of one output apart.
    """
    folder = out.path.parent if out.is_local else Path(tempfile.mkdtemp(prefix="fcnpipe-export-"))
    partial = folder / f".{out.name}{suffix}.partial{out.suffix}"
    partial.unlink(missing_ok=True)  # left by a killed export
    try:
        yield partial
        if not suffix:
            publish(partial, out)
    except OSError as exc:
        raise FcnpipeError(f"cannot write {out.redacted()}: {exc.strerror or exc}.") from None
    finally:
        partial.unlink(missing_ok=True)
        if not out.is_local:
            shutil.rmtree(folder, ignore_errors=True)


# --- COG ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CogReport:
    """What an export wrote (``path``: the output as given, a path or URL)."""

    path: str
    bands: int
    width: int
    height: int
    overviews: list[int]


def export_cog(
    mosaic_path: str | Path | Location,
    out_path: str | Path | Location,
    *,
    what: str = "labels",
    class_name: str | None = None,
    overwrite: bool = False,
    blocksize: int = 512,
) -> CogReport:
    """Write labels (or probabilities) of a complete mosaic as a validated Cloud-Optimized GeoTIFF.

    Labels carry a colour table from the palette and the class names; ``class_name`` turns them
    into a 0/1 mask of that class. Probabilities are one band per class, or only ``class_name``'s:
    uint8 (p = value / 254, as a band scale) or, from float16 mosaics, float32 with NaN nodata.
    GDAL adds overviews by 2 until one ``blocksize`` tile holds the image.
    """
    if what != "probabilities" and not what.startswith("labels"):
        raise FcnpipeError(
            f"--what must be labels, probabilities or a further head's labels_HEAD, not {what!r}."
        )
    mosaic = open_mosaic(mosaic_path, what if what.startswith("labels") else "labels")
    out = Location.of(out_path)
    if what not in mosaic.group:
        raise FcnpipeError(
            f"{mosaic.path.redacted()} has no {what}; segment with --outputs labels,{what} to have them."
        )
    index = None if class_name is None else mosaic.class_index(class_name)
    refuse_existing(out, overwrite)
    layer = cog_layer(mosaic, what, index)
    with staged(out, ".staging") as staging, staged(out) as partial:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):  # GDAL's default cache grows with the RAM
            write_staging(mosaic, layer, staging)
            rasterio.shutil.copy(
                staging, partial, driver="COG", COMPRESS="ZSTD", BLOCKSIZE=blocksize, BIGTIFF="IF_SAFER",
                OVERVIEWS="IGNORE_EXISTING", OVERVIEW_RESAMPLING=layer.resampling, NUM_THREADS="ALL_CPUS",
            )  # fmt: skip
        staging.unlink()
        valid, errors, _ = cog_validate(partial, quiet=True)
        if not valid:
            raise FcnpipeError(f"GDAL wrote a GeoTIFF that does not validate as a COG: {'; '.join(errors)}.")
        with rasterio.open(partial) as cog:
            report = CogReport(out.text, cog.count, cog.width, cog.height, cog.overviews(1))
    return report


@dataclass(frozen=True)
class CogLayer:
    """What goes into the GeoTIFF: bands, dtype, nodata, colours, names and how to read a window."""

    what: str
    index: int | None
    dtype: str
    nodata: float
    names: tuple[str, ...]
    colormap: dict[int, tuple[int, int, int, int]] | None
    resampling: str
    tags: dict[str, str]

    def read(self, mosaic: Mosaic, window: Window) -> NDArray[Any]:
        """The bands of ``window``, (bands, rows, cols)."""
        rows, cols = window.slices()
        if self.what.startswith("labels"):
            labels = np.asarray(mosaic.labels[rows, cols])
            if self.index is None:
                return np.asarray(labels[None])
            mask = (labels == self.index).astype(np.uint8)
            mask[labels == mosaic.nodata] = self.nodata
            return np.asarray(mask[None])
        probabilities = mosaic.group["probabilities"]
        assert isinstance(probabilities, zarr.Array)
        classes = slice(None) if self.index is None else slice(self.index, self.index + 1)
        return np.asarray(probabilities[classes, rows, cols], dtype=self.dtype)


def cog_layer(mosaic: Mosaic, what: str, index: int | None) -> CogLayer:
    """Describe the bands to export."""
    names, palette = mosaic.class_names, mosaic.palette
    tags = {"CLASS_NAMES": json.dumps(list(names)), "SOURCE_MOSAIC": mosaic.path.redacted()}
    if what.startswith("labels") and index is None:
        colormap = {i: (*palette[i], 255) for i in range(len(names))} | {mosaic.nodata: (0, 0, 0, 0)}
        tags |= {f"CLASS_{i}": name for i, name in enumerate(names)}
        dtype = str(mosaic.labels.dtype)
        return CogLayer(what, None, dtype, mosaic.nodata, (what,), colormap, "MODE", tags)
    if what.startswith("labels"):
        assert index is not None
        colormap = {0: (0, 0, 0, 0), 1: (*palette[index], 255)}
        tags |= {"CLASS": names[index], "CLASS_0": f"not {names[index]}", "CLASS_1": names[index]}
        return CogLayer(what, index, "uint8", 255, (names[index],), colormap, "MODE", tags)
    bands = mosaic.channel_names if index is None else (names[index],)
    if mosaic.group["probabilities"].dtype.kind == "f":  # type: ignore[union-attr]
        return CogLayer(what, index, "float32", float("nan"), bands, None, "AVERAGE", tags)
    tags |= {"SCALE": f"1/{PROBABILITY_SCALE}"}
    return CogLayer(what, index, "uint8", PROBABILITY_NODATA, bands, None, "AVERAGE", tags)


def write_staging(mosaic: Mosaic, layer: CogLayer, path: Path) -> None:
    """A tiled, compressed GeoTIFF of the layer, written window by window."""
    height, width = mosaic.labels.shape
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": len(layer.names),
        "dtype": layer.dtype, "nodata": layer.nodata, "transform": mosaic.transform,
        "crs": rasterio.crs.CRS.from_wkt(mosaic.crs_wkt) if mosaic.crs_wkt else None,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "zstd", "bigtiff": "if_safer",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for window in windows(height, width, BLOCK):
            dst.write(layer.read(mosaic, window), window=rasterio.windows.Window(
                window.col, window.row, window.width, window.height))  # fmt: skip
        dst.update_tags(**layer.tags)
        for band, name in enumerate(layer.names, start=1):
            dst.set_band_description(band, name)
        if layer.what == "probabilities" and layer.dtype == "uint8":
            dst.scales = (1 / PROBABILITY_SCALE,) * len(layer.names)
        if layer.colormap is not None:
            dst.write_colormap(1, layer.colormap)


# --- vectors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorReport:
    """What a vector export wrote (``path``: the output as given, a path or URL)."""

    path: str
    polygons: int
    area_by_class: dict[str, float]


class PolygonWriter:
    """Appends polygons (in map coordinates) to one GeoPackage layer, in batches."""

    def __init__(self, path: Path, crs_wkt: str | None, names: tuple[str, ...], min_area: float) -> None:
        self.path, self.crs_wkt, self.names, self.min_area = path, crs_wkt, names, min_area
        self.count, self.created = 0, False
        self.area: dict[str, float] = dict.fromkeys(names, 0.0)

    def write(self, polygons: list[shapely.Polygon], classes: list[int]) -> None:
        """Write the polygons at least ``min_area`` large (the first call creates the layer)."""
        geometries = np.asarray(polygons, dtype=object)
        areas = shapely.area(geometries)
        keep = np.flatnonzero(areas >= self.min_area)
        if keep.size == 0 and self.created:
            return
        values = np.asarray(classes, dtype=np.int32)[keep]
        names = np.array([self.names[i] for i in values], dtype=object)
        for name, area in zip(names, areas[keep], strict=True):
            self.area[name] += float(area)
        write_layer(
            str(self.path), geometry=shapely.to_wkb(geometries[keep]),
            field_data=[names, values, areas[keep]], fields=["class", "class_index", "area"],
            geometry_type="Polygon", crs=self.crs_wkt, driver="GPKG", layer="labels", append=self.created,
        )  # fmt: skip
        self.created = True
        self.count += int(keep.size)


def export_vector(
    mosaic_path: str | Path | Location,
    out_path: str | Path | Location,
    *,
    class_name: str | None = None,
    min_area: float = 0.0,
    overwrite: bool = False,
    block: int = BLOCK,
) -> VectorReport:
    """Polygons of the label regions of a complete mosaic as a GeoPackage (one polygon per region).

    ``class_name`` keeps one class; ``min_area`` (in the CRS's units squared, m² for a projected
    CRS in metres) drops smaller polygons. Each polygon carries ``class``, ``class_index`` and
    its ``area``.
    """
    mosaic, out = open_mosaic(mosaic_path), Location.of(out_path)
    if min_area < 0:
        raise FcnpipeError(f"--min-area must be zero or more, not {min_area}.")
    only = None if class_name is None else mosaic.class_index(class_name)
    refuse_existing(out, overwrite)
    with staged(out) as partial:
        writer = PolygonWriter(partial, mosaic.crs_wkt, mosaic.class_names, min_area)
        write_polygons(mosaic, writer, only, block)
    return VectorReport(out.text, writer.count, writer.area)


def write_polygons(mosaic: Mosaic, writer: PolygonWriter, only: int | None, block: int) -> None:
    """Polygonise the mosaic block by block, merging regions cut by block edges after each row."""
    to_map = mosaic.transform.to_shapely()
    height, width = mosaic.labels.shape
    pending: dict[int, list[shapely.Polygon]] = {}  # pieces that may continue in the next blocks

    def write(polygons: list[shapely.Polygon], value: int | list[int]) -> None:
        values = value if isinstance(value, list) else [value] * len(polygons)
        writer.write([shapely.affinity.affine_transform(p, to_map) for p in polygons], values)

    for row in range(0, height, block):
        row_end = min(height, row + block)
        for window in (w for w in windows(height, width, block) if w.row == row):
            inner, edge = polygonise(mosaic, window, only, height, width)
            for value, polygon in edge:
                pending.setdefault(value, []).append(polygon)
            write([p for _, p in inner], [v for v, _ in inner])
        # After a row of blocks: merge what is pending; a region that does not reach the row's
        # bottom edge cannot grow any further, so it is written and forgotten.
        for value in sorted(pending):
            merged = list(shapely.get_parts(shapely.unary_union(pending[value])))
            finished = [p for p in merged if p.bounds[3] < row_end or row_end == height]
            pending[value] = [p for p in merged if not (p.bounds[3] < row_end or row_end == height)]
            write(finished, value)


def polygonise(
    mosaic: Mosaic, window: Window, only: int | None, height: int, width: int
) -> tuple[list[tuple[int, shapely.Polygon]], list[tuple[int, shapely.Polygon]]]:
    """The window's regions as polygons in pixel coordinates: (inside the window, touching a cut edge)."""
    rows, cols = window.slices()
    labels = np.asarray(mosaic.labels[rows, cols])
    mask = labels != mosaic.nodata if only is None else labels == only
    shift = Affine.translation(window.col, window.row)
    cut_left, cut_top = window.col > 0, window.row > 0
    cut_right, cut_bottom = window.col + window.width < width, window.row + window.height < height
    inner: list[tuple[int, shapely.Polygon]] = []
    edge: list[tuple[int, shapely.Polygon]] = []
    for geometry, value in rasterio.features.shapes(labels, mask=mask, connectivity=4, transform=shift):
        polygon = shapely.geometry.shape(geometry)
        assert isinstance(polygon, shapely.Polygon)
        x0, y0, x1, y1 = polygon.bounds
        touches = (
            (cut_left and x0 == window.col)
            or (cut_top and y0 == window.row)
            or (cut_right and x1 == window.col + window.width)
            or (cut_bottom and y1 == window.row + window.height)
        )
        (edge if touches else inner).append((int(value), polygon))
    return inner, edge
