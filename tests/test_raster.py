"""pipeline/raster.py: how a raster's georeferencing is taken, and broken rasters refused at planning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import from_origin

from fcn import FcnpipeError
from pipeline.outputs.mosaic import parse_geotransform
from pipeline.raster import inspect_raster
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import noise_image, write_tif

GRID = from_origin(500000.0, 4000000.0, 2.0, 2.0)  # the grid the control points below are taken from


def write_gcps(path: Path, points: list[tuple[float, float]], height: int = 48, width: int = 64) -> Path:
    """A GeoTIFF georeferenced only by ground control points at the given (row, col) pixel corners,
    each placed where GRID puts that corner, so an affine fits them exactly."""
    gcps = [GroundControlPoint(row=r, col=c, x=(GRID * (c, r))[0], y=(GRID * (c, r))[1]) for r, c in points]
    data = noise_image(height, width)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       gcps=gcps, crs="EPSG:32633") as dst:  # fmt: skip
        dst.write(data)
    return path


def test_gcps_that_an_affine_fits_give_that_affine_and_say_so(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    """A pointwise (1x1) stand-in network: this is about georeferencing, not the model."""
    scene = write_gcps(tmp_path / "gcps.tif", [(0, 0), (0, 64), (48, 0), (48, 64), (24, 30)])
    info = inspect_raster(scene)
    assert Affine(*info.transform).almost_equals(GRID, precision=1e-6)
    assert info.crs_wkt is not None and CRS.from_wkt(info.crs_wkt) == CRS.from_epsg(32633)
    assert any("5 ground control points" in note for note in info.notes)

    plan = plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=32, chunk=32))
    assert any("ground control points" in note for note in plan.warnings)
    run_local(plan)
    ref = zarr.open_group(str(tmp_path / "gcps.zarr"), mode="r")["spatial_ref"]
    assert parse_geotransform(str(ref.attrs["GeoTransform"])).almost_equals(GRID, precision=1e-6)


def test_gcps_no_affine_fits_are_refused_with_gdalwarp(tmp_path: Path) -> None:
    scene = write_gcps(tmp_path / "warped.tif", [(0, 0), (0, 64), (48, 0)])
    with rasterio.open(scene, "r+") as dst:  # move the far corner 10 px off the grid: a warp
        gcps, crs = dst.gcps
        far = GroundControlPoint(row=48, col=64, x=(GRID * (74, 48))[0], y=(GRID * (74, 48))[1])
        dst.gcps = ([*gcps, far], crs)
    with pytest.raises(
        FcnpipeError, match=r"no affine transform fits within half a pixel.*gdalwarp warped.tif"
    ):
        inspect_raster(scene)


@pytest.mark.parametrize(
    "transform", [Affine(0.0, 0.0, 5e5, 0.0, -2.0, 4e6), Affine(np.nan, 0.0, 5e5, 0.0, -2.0, 4e6)]
)
def test_a_zero_or_not_finite_pixel_size_is_refused(tmp_path: Path, transform: Affine) -> None:
    """Written as a VRT, which keeps any six numbers (a GeoTIFF turns a zero scale into one tie point)."""
    write_tif(tmp_path / "source.tif", noise_image(20, 30))
    vrt = tmp_path / "scene.vrt"
    vrt.write_text(one_band_vrt("source.tif", 20, 30, ", ".join(repr(v) for v in transform.to_gdal())))
    with pytest.raises(FcnpipeError, match=r"pixel size of zero|not a number"):
        inspect_raster(vrt, bands=(1, 1, 1))


def test_a_geotiff_with_a_zero_pixel_size_is_refused(tmp_path: Path) -> None:
    """GeoTIFF keeps a zero scale as a lone tie point: too little to place the pixels."""
    scene = write_tif(
        tmp_path / "zero.tif", noise_image(20, 30), transform=Affine(0.0, 0.0, 5e5, 0.0, -2.0, 4e6)
    )
    with pytest.raises(FcnpipeError, match="no pixel size"):
        inspect_raster(scene)


def one_band_vrt(source: str, height: int, width: int, geotransform: str) -> str:
    """A VRT of band 1 of ``source`` (relative to the VRT) with the given GeoTransform."""
    return f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>{geotransform}</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource>
      <SourceFilename relativeToVRT="1">{source}</SourceFilename><SourceBand>1</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>
      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"""


def test_broken_sources_are_one_sentence_naming_file_and_cause_before_any_store(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    whole = write_tif(tmp_path / "whole.tif", noise_image(300, 400), tiled=True, blockxsize=64, blockysize=64)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(one_band_vrt("gone.tif", 300, 400, "500000.0, 2.0, 0.0, 4000000.0, 0.0, -2.0"))
    settings = SegmentSettings(tile_size=64, chunk=64, bands=(1, 1, 1))
    for scene, cause in (
        (truncated, "damaged or truncated"),
        (vrt, r"reads \S*gone.tif, which does not exist"),
    ):
        with pytest.raises(FcnpipeError, match=cause) as raised:
            plan_scene(scene, pointwise_checkpoint, settings)
        assert str(scene) in str(raised.value) and "\n" not in str(raised.value)
        assert not scene.with_suffix(".zarr").exists()  # refused at planning: no store was made
    assert inspect_raster(whole).height == 300  # the file they were made from reads
