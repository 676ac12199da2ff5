"""What people open: the pyramid inside the mosaic, the COG export and the polygon export.

The mosaics here come from the 1x1-convolution stand-in (a test about outputs, not the network):
it maps each colour to a class, so a scene of flat colour regions gives label regions with known
shapes — a disc and a rectangle that span several blocks, a patch of one-pixel speckle, and a
nodata corner.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
import shapely
import xarray as xr
import zarr
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate
from scipy import ndimage
from typer.testing import CliRunner

from fcn import FcnpipeError
from fcnpipe.main import app
from pipeline.outputs.export import export_cog, export_vector
from pipeline.outputs.inspect import describe_mosaic
from pipeline.outputs.mosaic import parse_geotransform
from pipeline.outputs.pyramid import level_shapes, read_level
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import write_tif

COLOURS = [(200, 180, 40), (20, 60, 220), (250, 250, 250), (90, 160, 60)]
PIXEL_AREA = 0.25  # write_tif's 0.5 m pixels


def region_image(height: int = 150, width: int = 230, seed: int = 0) -> np.ndarray:
    """Flat colour regions: background, a disc, a rectangle, speckle, and an all-zero nodata corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    region = np.zeros((height, width), dtype=int)
    region[(yy - 75) ** 2 + (xx - 115) ** 2 < 50**2] = 1
    region[10:40, 150:220] = 2
    region[100:150, 0:60] = rng.integers(0, 4, size=(50, 60))
    image = np.asarray(COLOURS, dtype=np.uint8)[region].transpose(2, 0, 1).copy()
    image[:, :20, :30] = 0
    return image


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory, pointwise_checkpoint: Path) -> Path:
    """A complete mosaic with labels and probabilities, 32-px chunks (three overview levels)."""
    folder = tmp_path_factory.mktemp("outputs")
    scene = write_tif(folder / "regions.tif", region_image(), nodata=0)
    settings = SegmentSettings(tile_size=64, chunk=32, outputs=("labels", "probabilities"))
    run_local(plan_scene(scene, pointwise_checkpoint, settings))
    return folder / "regions.zarr"


def labels_of(mosaic: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(mosaic), mode="r")["labels"][:])  # type: ignore[index]


# --- pyramid -------------------------------------------------------------------------------------


def reference_mode(labels: np.ndarray, nodata: int) -> np.ndarray:
    """2x2 mode by counting, window by window: most frequent valid value, ties to the first seen."""
    h, w = labels.shape
    out = np.full(((h + 1) // 2, (w + 1) // 2), nodata, dtype=labels.dtype)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            window = labels[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].ravel()
            values = [int(v) for v in window if v != nodata]
            if values:
                out[r, c] = Counter(values).most_common(1)[0][0]  # insertion order breaks ties
    return out


def reference_mean(probabilities: np.ndarray, nodata: int = 255) -> np.ndarray:
    """2x2 mean of the valid values, rounded half up; nodata where none is valid."""
    k, h, w = probabilities.shape
    out = np.full((k, (h + 1) // 2, (w + 1) // 2), nodata, dtype=np.uint8)
    for r in range(out.shape[1]):
        for c in range(out.shape[2]):
            window = probabilities[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(k, -1)
            valid = window[0] != nodata
            if valid.any():
                out[:, r, c] = np.floor(window[:, valid].mean(axis=1) + 0.5)
    return out


def test_pyramid_levels_have_the_right_shapes_and_match_a_reference_downsampling(mosaic: Path) -> None:
    group = zarr.open_group(str(mosaic), mode="r")
    labels, probabilities = read_level(group, 0), read_level(group, 0, "probabilities")
    shapes = level_shapes(*labels.shape, 32)
    assert shapes == [(75, 115), (38, 58), (19, 29)]
    assert len(np.unique(labels)) >= 3  # several classes and nodata: the test can tell modes apart
    for level, shape in enumerate(shapes, start=1):
        labels, probabilities = reference_mode(labels, 255), reference_mean(probabilities)
        assert read_level(group, level).shape == shape
        np.testing.assert_array_equal(read_level(group, level), labels)
        np.testing.assert_array_equal(read_level(group, level, "probabilities"), probabilities)
    assert "overviews/4" not in group
    assert describe_mosaic(mosaic)["overviews"] == [list(s) for s in shapes]


def test_pyramid_is_described_as_multiscales_and_each_level_opens_georeferenced(mosaic: Path) -> None:
    group = zarr.open_group(str(mosaic), mode="r")
    attrs = dict(group.attrs)
    assert "multiscales" in [c["name"] for c in attrs["zarr_conventions"]]
    layout = attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["labels"] + [f"overviews/{k}/labels" for k in (1, 2, 3)]
    with rasterio.open(mosaic.with_name("regions.tif")) as src:
        crs, transform = src.crs, src.transform
    for level, entry in enumerate(layout):
        array = group[entry["asset"]]
        assert list(array.shape) == entry["proj:shape"]
        assert entry.get("derived_from") == (None if level == 0 else layout[level - 1]["asset"])
        ds = xr.open_zarr(mosaic, group=None if level == 0 else f"overviews/{level}", decode_coords="all")
        assert ds.rio.crs == crs
        expected = transform * transform.scale(2**level)
        assert ds.rio.transform().almost_equals(expected)
        assert list(ds.rio.transform())[:6] == pytest.approx(entry["proj:transform"])
        assert ds["labels"].rio.encoded_nodata == 255


def test_geozarr_proj_and_spatial_attributes_match_the_input_at_every_level(mosaic: Path) -> None:
    with rasterio.open(mosaic.with_name("regions.tif")) as src:
        crs, transform, bounds = src.crs, src.transform, src.bounds
    group = zarr.open_group(str(mosaic), mode="r")
    levels = [group] + [group[f"overviews/{k}"] for k in (1, 2, 3)]
    for level, node in enumerate(levels):
        attrs = dict(node.attrs)
        names = [c["name"] for c in attrs["zarr_conventions"]]
        assert {"proj:", "spatial:"} <= set(names) and len(names) == len(set(names))
        assert attrs["proj:code"] == f"EPSG:{crs.to_epsg()}"
        assert CRS.from_wkt(attrs["proj:wkt2"]) == crs
        assert attrs["spatial:dimensions"] == ["y", "x"]
        assert attrs["spatial:shape"] == list(node["labels"].shape)
        expected = transform * transform.scale(2**level)
        assert attrs["spatial:transform"] == pytest.approx(list(expected)[:6])
        if level == 0:
            assert attrs["spatial:bbox"] == pytest.approx(list(bounds))


def test_pyramid_is_rebuilt_identically(mosaic: Path, tmp_path: Path) -> None:
    from pipeline.outputs.pyramid import build_pyramid

    copy = tmp_path / "copy.zarr"
    import shutil

    shutil.copytree(mosaic, copy)
    group = zarr.open_group(str(copy), mode="r+")
    before = [read_level(group, k) for k in (1, 2, 3)]
    group["overviews/2/labels"][:5, :5] = 0  # type: ignore[index]  # a damaged level is rewritten
    build_pyramid(group)
    group = zarr.open_group(str(copy), mode="r")
    for k, level in enumerate(before, start=1):
        np.testing.assert_array_equal(read_level(group, k), level)


# --- COG -----------------------------------------------------------------------------------------


def test_cog_of_labels_validates_and_keeps_georeferencing_nodata_and_colours(
    mosaic: Path, tmp_path: Path
) -> None:
    out = tmp_path / "labels.tif"
    report = export_cog(mosaic, out, blocksize=64)  # 64-px tiles: a small scene still has overviews
    valid, errors, _ = cog_validate(out, quiet=True)
    assert valid, errors
    state = zarr.open_group(str(mosaic), mode="r").attrs
    with rasterio.open(mosaic.with_name("regions.tif")) as src, rasterio.open(out) as cog:
        assert cog.crs == src.crs and cog.transform == src.transform
        assert (cog.width, cog.height) == (src.width, src.height)
        assert cog.nodata == 255 and cog.dtypes[0] == "uint8"
        assert cog.overviews(1) == report.overviews and len(report.overviews) >= 1
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(cog.read(1), labels_of(mosaic))
        colormap = cog.colormap(1)
        for index, colour in enumerate(state["palette"]):  # type: ignore[arg-type]
            assert colormap[index][:3] == tuple(colour)
        assert eval_names(cog.tags()["CLASS_NAMES"]) == state["class_names"]
        # Overviews are the mode of their pixels: every overview value is a class or nodata.
        overview = cog.read(1, out_shape=(cog.height // 2, cog.width // 2))
        assert set(np.unique(overview)) <= set(np.unique(labels_of(mosaic)))


def eval_names(text: str) -> list[str]:
    import json

    return list(json.loads(text))


def test_cog_of_one_class_probabilities_and_of_a_class_mask(mosaic: Path, tmp_path: Path) -> None:
    group = zarr.open_group(str(mosaic), mode="r")
    names = list(group.attrs["class_names"])  # type: ignore[arg-type]
    labels = labels_of(mosaic)
    index = int(np.bincount(labels[labels != 255]).argmax())
    probs = export_cog(mosaic, tmp_path / "p.tif", what="probabilities", class_name=names[index])
    with rasterio.open(probs.path) as cog:
        assert cog.count == 1 and cog.descriptions == (names[index],)
        assert cog.scales[0] == pytest.approx(1 / 254) and cog.nodata == 255
        np.testing.assert_array_equal(cog.read(1), group["probabilities"][index])  # type: ignore[index]
    assert cog_validate(probs.path, quiet=True)[0]
    mask = export_cog(mosaic, tmp_path / "m.tif", class_name=names[index])
    with rasterio.open(mask.path) as cog:
        data = cog.read(1)
    assert ((data == 1) == (labels == index)).all() and ((data == 255) == (labels == 255)).all()


def test_cog_export_refuses_bad_requests_and_leaves_nothing(mosaic: Path, tmp_path: Path) -> None:
    names = list(zarr.open_group(str(mosaic), mode="r").attrs["class_names"])  # type: ignore[arg-type]
    with pytest.raises(FcnpipeError, match="no class 'lava'"):
        export_cog(mosaic, tmp_path / "x.tif", class_name="lava")
    with pytest.raises(FcnpipeError, match="must be labels, probabilities or a further head"):
        export_cog(mosaic, tmp_path / "x.tif", what="logits")
    existing = tmp_path / "taken.tif"
    existing.write_bytes(b"keep me")
    with pytest.raises(FcnpipeError, match="--overwrite"):
        export_cog(mosaic, existing, class_name=names[0])
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.tif"]


# --- vectors -------------------------------------------------------------------------------------


def test_vector_area_per_class_is_its_pixel_count_times_the_pixel_area(mosaic: Path, tmp_path: Path) -> None:
    out = tmp_path / "regions.gpkg"
    report = export_vector(mosaic, out, block=64)
    labels = labels_of(mosaic)
    names = list(zarr.open_group(str(mosaic), mode="r").attrs["class_names"])  # type: ignore[arg-type]
    info = pyogrio.read_info(out)
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)
    meta, _, geometry, fields = pyogrio.raw.read(out)
    classes, areas = fields[meta["fields"].tolist().index("class")], shapely.area(shapely.from_wkb(geometry))
    assert report.polygons == len(geometry)
    for index, name in enumerate(names):
        expected = (labels == index).sum() * PIXEL_AREA
        assert areas[classes == name].sum() == pytest.approx(expected)
        assert report.area_by_class[name] == pytest.approx(expected)


def test_vector_regions_cut_by_blocks_are_merged_into_one_polygon_each(mosaic: Path, tmp_path: Path) -> None:
    labels = labels_of(mosaic)
    names = list(zarr.open_group(str(mosaic), mode="r").attrs["class_names"])  # type: ignore[arg-type]
    for block in (32, 64, 4096):  # many blocks and rows of blocks, and one block holding it all
        out = tmp_path / f"b{block}.gpkg"
        export_vector(mosaic, out, block=block)
        meta, _, geometry, fields = pyogrio.raw.read(out)
        classes = fields[meta["fields"].tolist().index("class")]
        for index, name in enumerate(names):
            _, components = ndimage.label(labels == index)  # 4-connected, like the polygons
            assert (classes == name).sum() == components, (block, name)
        polygons = shapely.from_wkb(geometry)
        assert shapely.is_valid(polygons).all()
    disc_centre = shapely.Point(*(rasterio.open(mosaic.with_name("regions.tif")).xy(75, 115)))
    assert sum(bool(p.contains(disc_centre)) for p in polygons) == 1


def test_vector_min_area_and_one_class(mosaic: Path, tmp_path: Path) -> None:
    labels = labels_of(mosaic)
    names = list(zarr.open_group(str(mosaic), mode="r").attrs["class_names"])  # type: ignore[arg-type]
    index = int(np.bincount(labels[labels != 255]).argmax())
    out = tmp_path / "big.gpkg"
    report = export_vector(mosaic, out, class_name=names[index], min_area=10.0, block=64)
    component, n = ndimage.label(labels == index)
    sizes = np.bincount(component.ravel())[1:] * PIXEL_AREA
    meta, _, geometry, fields = pyogrio.raw.read(out)
    assert set(fields[meta["fields"].tolist().index("class")]) == {names[index]}
    assert sorted(shapely.area(shapely.from_wkb(geometry))) == pytest.approx(sorted(sizes[sizes >= 10.0]))
    assert report.polygons == (sizes >= 10.0).sum() < n
    none = export_vector(mosaic, tmp_path / "none.gpkg", min_area=1e9, block=64)  # nothing that large
    assert none.polygons == 0 and pyogrio.read_info(none.path)["features"] == 0


# --- the command ---------------------------------------------------------------------------------


def test_export_command_writes_both_and_refuses_an_incomplete_mosaic(
    mosaic: Path, tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    runner = CliRunner()
    cog, gpkg = tmp_path / "l.tif", tmp_path / "l.gpkg"
    result = runner.invoke(app, ["export", str(mosaic), "--cog", str(cog), "--vector", str(gpkg)])
    assert result.exit_code == 0, result.output
    assert cog_validate(cog, quiet=True)[0] and pyogrio.read_info(gpkg)["features"] > 0
    assert str(cog) in result.output and str(gpkg) in result.output
    again = runner.invoke(app, ["export", str(mosaic), "--cog", str(cog)])
    assert again.exit_code == 1 and "--overwrite" in again.output and "Traceback" not in again.output
    nothing = runner.invoke(app, ["export", str(mosaic)])
    assert nothing.exit_code == 1 and "--cog" in nothing.output

    scene = write_tif(tmp_path / "half.tif", region_image(), nodata=0)
    plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))  # planned, never run
    partial = runner.invoke(app, ["export", str(tmp_path / "half.zarr"), "--cog", str(tmp_path / "h.tif")])
    assert partial.exit_code == 1 and "not complete" in partial.output
    assert not (tmp_path / "h.tif").exists()


def test_geotransform_text_round_trips() -> None:
    from affine import Affine

    from pipeline.outputs.mosaic import gdal_geotransform

    affine = Affine(0.5, 0.1, 500000.0, -0.2, -0.5, 4500000.0)
    assert parse_geotransform(gdal_geotransform(affine)) == affine


# --- float16 probabilities -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mosaic16(tmp_path_factory: pytest.TempPathFactory, pointwise_checkpoint: Path) -> Path:
    """The same scene with float16 probabilities."""
    folder = tmp_path_factory.mktemp("outputs16")
    scene = write_tif(folder / "regions.tif", region_image(), nodata=0)
    settings = SegmentSettings(
        tile_size=64, chunk=32, outputs=("labels", "probabilities"), probabilities_dtype="float16"
    )
    run_local(plan_scene(scene, pointwise_checkpoint, settings))
    return folder / "regions.zarr"


def test_float16_probabilities_sum_to_one_match_the_quantised_ones_and_have_nan_nodata(
    mosaic: Path, mosaic16: Path
) -> None:
    group, group8 = zarr.open_group(str(mosaic16), mode="r"), zarr.open_group(str(mosaic), mode="r")
    probs = np.asarray(group["probabilities"][:], dtype=np.float32)  # type: ignore[index]
    probs8 = np.asarray(group8["probabilities"][:])  # type: ignore[index]
    labels = read_level(group, 0)
    np.testing.assert_array_equal(labels, read_level(group8, 0))
    valid = labels != 255
    assert np.isnan(probs[:, ~valid]).all() and not np.isnan(probs[:, valid]).any()
    assert np.abs(probs[:, valid].sum(axis=0) - 1).max() < 4e-3  # float16 steps near 1 are 1e-3
    assert np.abs(probs[:, valid] - probs8[:, valid] / 254).max() <= 1 / 508 + 1e-3
    ds = xr.open_zarr(mosaic16, decode_coords="all")
    assert ds["probabilities"].dtype == np.float16


def test_float16_pyramid_is_the_mean_of_valid_pixels_and_exports_as_float32(
    mosaic16: Path, tmp_path: Path
) -> None:
    group = zarr.open_group(str(mosaic16), mode="r")
    probs = np.asarray(group["probabilities"][:], dtype=np.float32)  # type: ignore[index]
    h, w = probs.shape[1:]
    padded = np.full((probs.shape[0], h + h % 2, w + w % 2), np.nan, dtype=np.float32)
    padded[:, :h, :w] = probs
    windows = padded.reshape(probs.shape[0], (h + 1) // 2, 2, (w + 1) // 2, 2)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        expected = np.nanmean(windows, axis=(2, 4))
    level1 = read_level(group, 1, "probabilities").astype(np.float32)
    np.testing.assert_allclose(level1, expected.astype(np.float16), rtol=1e-3, atol=1e-4, equal_nan=True)
    cog = export_cog(mosaic16, tmp_path / "p16.tif", what="probabilities", blocksize=64)
    with rasterio.open(cog.path) as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata) and src.count == probs.shape[0]
        np.testing.assert_array_equal(src.read(), probs)
    assert cog_validate(cog.path, quiet=True)[0]
