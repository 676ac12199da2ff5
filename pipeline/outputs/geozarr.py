"""The GeoZarr conventions ``proj:`` and ``spatial:``, written beside the CF grid mapping.

xarray and rioxarray read a mosaic's georeferencing from its CF grid mapping (``spatial_ref``);
GDAL ≥ 3.13 also reads the zarr-conventions family GeoZarr builds on: ``proj:`` (the CRS as an
authority code and WKT2) and ``spatial:`` (the dimensions, shape, affine transform and bounds of
the grid), each declared in the group's ``zarr_conventions`` list, as the ``multiscales``
description of the pyramid is. The root and every overview level carry their own, so a reader
that opens one level alone finds it georeferenced.
"""

from __future__ import annotations

from typing import Any

from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds

PROJ_CONVENTION = {
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
SPATIAL_CONVENTION = {
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "name": "spatial:",
    "description": "Spatial coordinate information",
}


def declared(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conventions of every list, each once (by uuid), in order of first appearance."""
    seen: dict[str, dict[str, Any]] = {}
    for conventions in lists:
        for convention in conventions:
            seen.setdefault(str(convention["uuid"]), convention)
    return list(seen.values())


def geo_attributes(shape: tuple[int, int], grid: Affine, crs_wkt: str | None) -> dict[str, Any]:
    """``spatial:`` (and, with a CRS, ``proj:``) attributes of a grid of ``shape`` pixels."""
    height, width = shape
    west, south, east, north = array_bounds(height, width, grid)
    attrs: dict[str, Any] = {
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": [height, width],
        "spatial:transform_type": "affine",
        "spatial:transform": list(grid)[:6],
        "spatial:bbox": [west, south, east, north],
        "spatial:registration": "pixel",
    }
    conventions = [SPATIAL_CONVENTION]
    if crs_wkt is not None:
        crs = CRS.from_wkt(crs_wkt)
        authority = crs.to_authority()
        if authority is not None:
            attrs["proj:code"] = f"{authority[0]}:{authority[1]}"
        attrs["proj:wkt2"] = crs.to_wkt(version="WKT2_2019")
        conventions = [PROJ_CONVENTION, SPATIAL_CONVENTION]
    attrs["zarr_conventions"] = conventions
    return attrs
