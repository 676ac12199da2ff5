"""The STAC Item beside each mosaic: valid STAC 1.1 with the projection, raster and classification
extensions (checked offline against vendored schemas), and true to the scene, the model and the files.

The schemas of the extensions come from tests/fixtures/stac-schemas (README there says from where);
pystac's wheel ships the core Item and GeoJSON schemas itself. A validation that needed anything
else would fetch it, and fail here: every test checks that nothing was added to the schema cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pystac
import pytest
import rasterio
import shapely.geometry
from pystac.validation import JsonSchemaSTACValidator, validate_dict
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from typer.testing import CliRunner

from fcn import ModelCard, build_model, describe, save_checkpoint
from fcn.checkpoint import read_checkpoint
from fcnpipe.main import app
from pipeline.outputs.mosaic import label_nodata, read_state
from pipeline.settings import SegmentSettings
from pipeline.storage import Location, read_bytes
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import Bucket, noise_image, randomize, write_tif

SCHEMAS = Path(__file__).parent / "fixtures" / "stac-schemas"
EXTENSIONS = {
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
}
NAMES = ["impervious surfaces", "building", "low vegetation", "tree"]
PALETTE = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 128, 0)]
ACQUIRED = "2021:06:15 10:30:00"  # TIFF's own date format
SETTINGS = SegmentSettings(tile_size=64, chunk=32)
runner = CliRunner()


def validate_offline(item: dict[str, Any]) -> list[str]:
    """Validate an Item's JSON with pystac's validator and only local schemas; the schemas it used."""
    validator = JsonSchemaSTACValidator()
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        validator.schema_cache[schema["$id"].rstrip("#")] = schema
    known = set(validator.schema_cache)
    used = validate_dict(item, validator=validator)
    assert set(validator.schema_cache) == known, "a schema was fetched: vendor it in tests/fixtures"
    return [str(uri) for uri in used]


def read_item(location: str | Path) -> dict[str, Any]:
    """The Item's JSON, from a disk or a bucket."""
    return dict(json.loads(read_bytes(Location.of(location))))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1x1-convolution stand-in, with class names a STAC ``name`` cannot hold as they are."""
    model = randomize(build_model("pointwise", 4), seed=2, scale=1.0)
    path = tmp_path_factory.mktemp("stac-model") / "pointwise.pt"
    save_checkpoint(path, model, describe(model, "pointwise", class_names=NAMES, palette=PALETTE))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """70 x 90 px of 30 m pixels in UTM 33N (2 km: the footprint's edges bend in EPSG:4326), dated."""
    folder = tmp_path_factory.mktemp("stac-scene")
    path = write_tif(
        folder / "scene.tif", noise_image(70, 90), transform=from_origin(520000, 4650000, 30, 30)
    )
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME=ACQUIRED)
    return path


@pytest.fixture(scope="module")
def item_path(scene: Path, weights: Path) -> Path:
    """A run beside the scene, then ``fcnpipe export --cog`` beside the mosaic (which adds the COG asset)."""
    report = run_local(plan_scene(scene, weights, SETTINGS))
    assert report["stac"] == str(scene.with_name("scene.stac.json"))
    result = runner.invoke(app, ["export", str(scene.with_suffix(".zarr")), "--cog",
                                 str(scene.with_name("scene.labels.tif"))])  # fmt: skip
    assert result.exit_code == 0, result.output
    return scene.with_name("scene.stac.json")


def test_the_item_validates_offline_with_all_three_extensions(item_path: Path) -> None:
    item = read_item(item_path)
    assert set(item["stac_extensions"]) == EXTENSIONS
    assert set(validate_offline(item)) >= EXTENSIONS
    assert pystac.Item.from_file(str(item_path)).id == "scene"


def test_asset_hrefs_are_relative_and_resolve_to_the_outputs(item_path: Path) -> None:
    assets = read_item(item_path)["assets"]
    assert {k: a["href"] for k, a in assets.items()} == {
        "mosaic": "./scene.zarr", "preview": "./scene.preview.png", "cog": "./scene.labels.tif",
    }  # fmt: skip
    assert (item_path.parent / "scene.zarr" / "zarr.json").is_file()
    assert (item_path.parent / "scene.preview.png").read_bytes().startswith(b"\x89PNG")
    with rasterio.open(item_path.parent / "scene.labels.tif") as cog:
        assert cog.count == 1
    assert assets["mosaic"]["roles"] == ["data"] and assets["preview"]["roles"] == ["overview"]
    assert assets["cog"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"


def test_bbox_holds_the_footprint_transformed_independently(item_path: Path, scene: Path) -> None:
    bbox = read_item(item_path)["bbox"]
    with rasterio.open(scene) as src:
        # every pixel corner along the edges: the bbox must hold the curved edges, not only the corners
        rows = [0] * 91 + [70] * 91 + list(range(71)) * 2
        cols = [*range(91), *range(91), *[0] * 71, *[90] * 71]
        xs, ys = rasterio.transform.xy(src.transform, rows, cols, offset="ul")
        lons, lats = warp_transform(src.crs, "EPSG:4326", xs, ys)
    west, south, east, north = bbox
    eps = 1e-9
    assert west - eps <= min(lons) and max(lons) <= east + eps
    assert south - eps <= min(lats) and max(lats) <= north + eps
    assert east - west < 1.5 * (max(lons) - min(lons))  # and is not much larger
    outline = shapely.geometry.shape(read_item(item_path)["geometry"])
    assert outline.exterior.is_ccw and outline.bounds == tuple(bbox)  # RFC 7946's winding


def test_proj_fields_are_the_input_raster_s(item_path: Path, scene: Path) -> None:
    properties = read_item(item_path)["properties"]
    with rasterio.open(scene) as src:
        assert properties["proj:code"] == f"EPSG:{src.crs.to_epsg()}"
        assert properties["proj:shape"] == [src.height, src.width]
        assert properties["proj:transform"] == list(src.transform)[:6]
    assert "proj:wkt2" not in properties  # the code says it all


def test_classes_are_the_card_s_names_and_palette_and_the_nodata_value(
    item_path: Path, weights: Path
) -> None:
    card = ModelCard.from_dict(read_checkpoint(weights)["card"])
    assets = read_item(item_path)["assets"]
    classes = assets["mosaic"]["classification:classes"]
    named = [c for c in classes if not c.get("nodata")]
    assert [c["title"] for c in named] == list(card.class_names)
    assert [c["name"] for c in named] == ["impervious_surfaces", "building", "low_vegetation", "tree"]
    assert [tuple(bytes.fromhex(c["color_hint"])) for c in named] == list(card.palette)
    assert [c["value"] for c in named] == list(range(card.num_classes))
    assert [c["value"] for c in classes if c.get("nodata")] == [label_nodata(card.num_classes)]
    assert sum(c["count"] for c in named) == 70 * 90  # pixels per class, from the run's report
    (band,) = assets["cog"]["raster:bands"]
    assert band["classification:classes"] == classes
    assert (band["nodata"], band["data_type"]) == (255, "uint8")


def test_model_settings_and_the_declared_acquisition_time_are_properties(item_path: Path) -> None:
    properties = read_item(item_path)["properties"]
    assert properties["fcnpipe:model"]["arch"] == "pointwise"
    assert properties["fcnpipe:model"]["classes"] == 4
    # the settings that change the bytes, as the mosaic records them (one record, written twice)
    recorded = read_state(item_path.with_name("scene.zarr"))
    assert recorded is not None and properties["fcnpipe:settings"] == recorded["settings"]
    assert properties["fcnpipe:settings"]["tile_size"] == 64 and properties["fcnpipe:settings"]["halo"] == 0
    assert properties["datetime"] == "2021-06-15T10:30:00Z"
    assert properties["fcnpipe:datetime_source"] == "TIFFTAG_DATETIME"
    assert properties["created"] > properties["datetime"]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # on purpose
def test_a_raster_without_crs_gives_an_item_without_geometry_that_validates(
    tmp_path: Path, weights: Path
) -> None:
    scene = tmp_path / "plain.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=40, height=30, count=3, dtype="uint8") as dst:
        dst.write(noise_image(30, 40))
    report = run_local(plan_scene(scene, weights, SETTINGS))
    item = read_item(report["stac"])
    assert item["geometry"] is None and "bbox" not in item
    assert item["properties"]["proj:code"] is None and "proj:wkt2" not in item["properties"]
    assert item["properties"]["proj:shape"] == [30, 40]
    # no acquisition time declared: the run's, and the Item says so
    assert item["properties"]["datetime"] == item["properties"]["created"]
    assert item["properties"]["fcnpipe:datetime_source"] == "run"
    validate_offline(item)


def test_a_local_engineering_crs_gives_an_item_without_geometry_and_a_complete_mosaic(
    tmp_path: Path, weights: Path
) -> None:
    # A site survey's own grid (LOCAL_CS): no way to longitudes, so no footprint.
    local = rasterio.crs.CRS.from_wkt(
        'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    )
    scene = write_tif(tmp_path / "site.tif", noise_image(30, 40), crs=local)
    report = run_local(plan_scene(scene, weights, SETTINGS))
    assert read_state(tmp_path / "site.zarr")["complete"]  # type: ignore[index]
    item = read_item(report["stac"])
    assert item["geometry"] is None and "bbox" not in item
    assert item["properties"]["proj:wkt2"] and item["properties"]["proj:shape"] == [30, 40]
    validate_offline(item)


def test_an_output_in_a_bucket_gets_its_item_in_the_bucket(
    bucket: Bucket, scene: Path, weights: Path, tmp_path: Path
) -> None:
    out = bucket.url("mosaics/scene.zarr")
    report = run_local(plan_scene(scene, weights, SETTINGS, output=out))
    assert report["stac"] == bucket.url("mosaics/scene.stac.json")
    stored = bucket.objects("mosaics/scene.stac.json")[""]
    assert bucket.server.secret.encode() not in stored and bucket.server.key_id.encode() not in stored
    item = json.loads(stored)
    assert {a["href"] for a in item["assets"].values()} == {"./scene.zarr", "./scene.preview.png"}
    validate_offline(item)
    # A COG exported to this disk is not one the bucket's readers can reach: the Item stays as it is.
    cog = tmp_path / "labels.tif"
    result = runner.invoke(app, ["export", out, "--cog", str(cog)])
    assert result.exit_code == 0 and cog.is_file(), result.output
    assert bucket.objects("mosaics/scene.stac.json")[""] == stored


@pytest.mark.usefixtures("prefect_api")
def test_the_flow_writes_the_item_with_its_cog_and_names_it_in_the_summary(
    tmp_path: Path, weights: Path
) -> None:
    from flows.segment_mosaic import segment_mosaic
    from pipeline.settings import SegmentSettings

    scene = write_tif(tmp_path / "flown.tif", noise_image(40, 50))
    cog = tmp_path / "exports" / "flown.labels.tif"
    cog.parent.mkdir()
    settings = SegmentSettings(weights=weights, tile_size=64)
    summary = segment_mosaic(input=str(scene), settings=settings, cog=str(cog))
    assert summary["stac"] == str(tmp_path / "flown.stac.json")
    item = read_item(summary["stac"])
    assert item["assets"]["cog"]["href"] == str(cog)  # in another folder: its full location
    assert item["properties"]["fcnpipe:settings"]["tile_size"] == 64
    validate_offline(item)
