"""A STAC Item beside each mosaic, so catalogues, stac-browser and STAC-aware notebooks find the outputs.

``scene.stac.json`` sits beside ``scene.zarr`` (in the same folder or bucket prefix) and describes:

- where: the scene's footprint in EPSG:4326 (``geometry``, ``bbox``) and, with the projection
  extension, its CRS, grid shape and affine transform (the GeoZarr ``proj:``/``spatial:`` figures);
- when: ``datetime`` is the acquisition time the raster declares (GDAL's ``IMAGERY`` domain, else
  ``TIFFTAG_DATETIME``), as STAC asks of derived data; without one it is the run's time, and
  ``fcnpipe:datetime_source`` says which. ``created`` is always the run's time;
- what: the mosaic, the preview and (when exported) the labels COG as assets, with the classes,
  their colours and the label nodata value (classification extension; raster extension on the COG);
- how: ``fcnpipe:model`` (architecture, checkpoint hash, class count) and ``fcnpipe:settings``
  (tile, halo, batch, compute factor).

Asset hrefs are relative to the Item (``./scene.zarr``) and the Item has no self link, so the
folder can be moved or synced to a bucket and still resolve. An output elsewhere (a COG exported to
another folder) keeps its full, redacted location.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pystac
import shapely.geometry
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio.errors does not export it
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_geom

from fcn import ModelCard
from pipeline.outputs.geozarr import geo_attributes
from pipeline.outputs.mosaic import label_arrays, label_dtype, label_nodata
from pipeline.raster import RasterInfo, open_raster
from pipeline.storage import Location, is_file, read_bytes, write_bytes

if TYPE_CHECKING:  # segment.py imports this module to write the Item after a run
    from pipeline.plan import Plan

EDGE_POINTS = 21  # points per footprint edge: a projected edge is a curve in EPSG:4326
MOSAIC, PREVIEW, COG = "mosaic", "preview", "cog"


def item_location(mosaic: Location) -> Location:
    """``scene.stac.json`` beside ``scene.zarr``."""
    return mosaic.with_name(f"{mosaic.stem}.stac.json")


def footprint(info: RasterInfo) -> dict[str, Any] | None:
    """The scene's outline as a GeoJSON polygon in EPSG:4326 (None without a CRS, or a local one).

    The pixel grid's outline is sampled along each edge before it is transformed, so the curve a
    straight projected edge becomes is followed (and a rotated grid is outlined exactly).
    """
    if info.crs_wkt is None:
        return None
    grid = info.affine
    steps = [i / (EDGE_POINTS - 1) for i in range(EDGE_POINTS - 1)]
    w, h = info.width, info.height
    ring = (
        [(w * t, 0.0) for t in steps]
        + [(w, h * t) for t in steps]
        + [(w * (1 - t), h) for t in steps]
        + [(0.0, h * (1 - t)) for t in steps]
    )
    points = [grid * p for p in ring]
    polygon = {"type": "Polygon", "coordinates": [[*points, points[0]]]}
    try:
        lonlat = shapely.geometry.shape(transform_geom(CRS.from_wkt(info.crs_wkt), "EPSG:4326", polygon))
    except (CRSError, CPLE_BaseError):  # a local (engineering) CRS has no way to longitudes
        return None
    # a north-up grid's outline runs clockwise; GeoJSON (RFC 7946) asks for counter-clockwise
    return dict(shapely.geometry.mapping(shapely.orient_polygons(lonlat)))


def acquired(info: RasterInfo) -> tuple[datetime, str] | None:
    """The acquisition time the raster declares, and the tag that declared it."""
    with open_raster(Location(info.path)) as src:
        declared = [
            ("IMAGERY:ACQUISITIONDATETIME", src.tags(ns="IMAGERY").get("ACQUISITIONDATETIME")),
            ("TIFFTAG_DATETIME", src.tags().get("TIFFTAG_DATETIME")),
        ]
    for tag, text in declared:
        when = parse_time(text) if text else None
        if when is not None:
            return when, tag
    return None


def parse_time(text: str) -> datetime | None:
    """A TIFF (``2021:06:15 10:30:00``) or ISO 8601 time in UTC; one without a zone is taken as UTC."""
    for parse in (lambda t: datetime.strptime(t, "%Y:%m:%d %H:%M:%S"), datetime.fromisoformat):
        try:
            when = parse(text)
        except ValueError:
            continue
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return None  # not a time: the Item falls back to the run's


def classes(
    names: Sequence[str], palette: Sequence[tuple[int, int, int]], counts: dict[str, int] | None = None
) -> list[Classification]:
    """The classes (machine name, title, colour, pixel count) and the label nodata value as a class."""
    found = []
    for value, (title, rgb) in enumerate(zip(names, palette, strict=True)):
        name = re.sub(r"[^0-9A-Za-z_-]+", "_", title).strip("_") or f"class_{value}"  # the schema's pattern
        count = None if counts is None else counts.get(title)
        colour = "".join(f"{c:02X}" for c in rgb)
        found.append(Classification.create(value, name=name, title=title, color_hint=colour, count=count))
    nodata = label_nodata(len(names))
    found.append(Classification.create(nodata, name="nodata", title="no data", nodata=True))
    return found


def href(target: Location, folder: Location) -> str:
    """``./name`` for a file in ``folder`` (the Item's own), else the target's full, redacted location."""
    if target.is_local and folder.is_local and target.path.resolve().parent == folder.path.resolve():
        return f"./{target.name}"
    if not target.is_local and target.parent == folder:
        return f"./{target.name}"
    return str(target.path.resolve()) if target.is_local else target.redacted()


def add_cog(item: pystac.Item, cog: Location, folder: Location, found: list[Classification]) -> None:
    """The labels COG as an asset: one band, its data type, nodata value and classes."""
    asset = pystac.Asset(
        href(cog, folder), title="labels (Cloud-Optimized GeoTIFF)", media_type=pystac.MediaType.COG,
        roles=["data"],
    )  # fmt: skip
    item.add_asset(COG, asset)
    count = sum(1 for c in found if not c.nodata)
    band = RasterBand.create(nodata=label_nodata(count), data_type=DataType(str(label_dtype(count))))
    ClassificationExtension.ext(band).classes = found
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=[band])


def build_item(
    mosaic: Location,
    info: RasterInfo,
    card: ModelCard,
    model_sha256: str,
    settings: dict[str, Any],
    run: dict[str, Any],
    *,
    created: datetime,
    acquisition: tuple[datetime, str] | None = None,
) -> pystac.Item:
    """The Item of a finished mosaic.

    ``settings`` is the run's settings record (``SegmentSettings.record``), ``run`` the summary
    ``finish`` returns (preview, class counts).
    """
    geometry = footprint(info)
    bbox = list(shapely.geometry.shape(geometry).bounds) if geometry is not None else None
    when, source = acquisition if acquisition is not None else (created, "run")
    properties = {
        "fcnpipe:datetime_source": source,
        "fcnpipe:model": {"arch": card.arch, "sha256": model_sha256[:12], "classes": card.num_classes},
        "fcnpipe:settings": settings,
    }
    item = pystac.Item(mosaic.stem, geometry, bbox, when, properties)
    item.common_metadata.created = created
    grid = geo_attributes((info.height, info.width), info.affine, info.crs_wkt)
    code = grid.get("proj:code")
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=code, wkt2=None if code else grid.get("proj:wkt2"), shape=grid["spatial:shape"],
        transform=grid["spatial:transform"], bbox=grid["spatial:bbox"] if info.crs_wkt else None,
    )  # fmt: skip
    folder = mosaic.parent
    found = classes(card.class_names, card.palette, run.get("class_pixels"))
    zarr_asset = pystac.Asset(
        href(mosaic, folder), title="segmentation mosaic (Zarr v3, GeoZarr)",
        media_type=pystac.MediaType.VND_ZARR, roles=["data"],
    )  # fmt: skip
    item.add_asset(MOSAIC, zarr_asset)
    ClassificationExtension.ext(zarr_asset, add_if_missing=True).classes = found
    preview = Location(run["preview"])
    item.add_asset(PREVIEW, pystac.Asset(href(preview, folder), title="preview with legend",
                                         media_type=pystac.MediaType.PNG, roles=["overview"]))  # fmt: skip
    return item


def save(item: pystac.Item, where: Location) -> None:
    """Write the Item as JSON (one write, local or in a bucket), without a self link."""
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    write_bytes(where, (json.dumps(data, indent=2) + "\n").encode())


def write_item(plan: Plan, run: dict[str, Any]) -> Location:
    """Describe a finished run's mosaic beside it (a COG exported later: ``attach_cog``); its location."""
    mosaic = plan.output
    card = label_arrays(plan.card)["labels"]  # the first head's classes, with several
    item = build_item(
        mosaic, plan.input, card, plan.weights_sha256, plan.settings.record(), run, created=datetime.now(UTC),
        acquisition=acquired(plan.input),
    )  # fmt: skip
    where = item_location(mosaic)
    save(item, where)
    return where


def attach_cog(mosaic: str | Location, cog: str | Location) -> Location | None:
    """Add a labels COG exported later to the Item beside ``mosaic``, if there is one; its location.

    Only a COG that readers of the Item can reach is added: one on this disk to a local mosaic's
    Item, one in object storage to a stored mosaic's (never a local path into a bucket's Item).
    """
    mosaic, cog = Location.of(mosaic), Location.of(cog)
    where = item_location(mosaic)
    if mosaic.is_local != cog.is_local or not is_file(where):
        return None
    item = pystac.Item.from_dict(json.loads(read_bytes(where)), migrate=False)
    found = ClassificationExtension.ext(item.assets[MOSAIC]).classes or []
    item.assets.pop(COG, None)  # a new export replaces the old one
    add_cog(item, cog, mosaic.parent, found)
    save(item, where)
    return where
