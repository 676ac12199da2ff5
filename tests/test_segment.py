"""The pipeline without Prefect: exact stitching, georeferencing, masks, and bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
import zarr
from affine import Affine
from rasterio.enums import ColorInterp
from torch import nn

from fcn import FcnpipeError, load_checkpoint
from pipeline.outputs.mosaic import read_state
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import noise_image, write_tif

EXACT = SegmentSettings(
    tile_size=256, chunk=64, block=2, outputs=("labels", "logits"), logits_dtype="float32"
)


def whole_image_logits(checkpoint: Path, image: np.ndarray) -> torch.Tensor:
    model, card = load_checkpoint(checkpoint)
    with torch.no_grad():
        return model(card.normalization.apply(torch.from_numpy(image).float()[None]))[0]  # type: ignore[no-any-return]


def stitched(path: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return group["logits"][:], group["labels"][:]  # type: ignore[index, return-value]


def check_exact(tmp_path: Path, checkpoint: Path, height: int, width: int, settings: SegmentSettings) -> None:
    image = noise_image(height, width, seed=height)
    scene = write_tif(tmp_path / "scene.tif", image)
    plan = plan_scene(scene, checkpoint, settings)
    assert plan.grid.halo >= 221  # the receptive field's radius, from the checkpoint
    run_local(plan)
    reference = whole_image_logits(checkpoint, image)
    logits, labels = stitched(tmp_path / "scene.zarr")
    span = float(reference.max() - reference.min())
    assert span > 0
    assert np.abs(logits - reference.numpy()).max() <= 1e-4 * span
    assert np.array_equal(labels, reference.argmax(0).numpy())


def test_stitched_logits_equal_one_whole_image_pass(tmp_path: Path, fcn8s_checkpoint: Path) -> None:
    # 333 x 700 with 256-px cores: the right-hand tiles' reads are cut by the halo, not the image.
    check_exact(tmp_path, fcn8s_checkpoint, 333, 700, EXACT)


@pytest.mark.slow
def test_stitched_logits_equal_one_whole_image_pass_700x913(tmp_path: Path, fcn8s_checkpoint: Path) -> None:
    check_exact(tmp_path, fcn8s_checkpoint, 700, 913, EXACT.model_copy(update=dict(tile_size=128)))


@pytest.mark.slow  # ~15 s
def test_a_halo_below_the_receptive_field_shows_seams(
    tmp_path: Path, fcn8s_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = noise_image(96, 400, seed=5)
    scene = write_tif(tmp_path / "scene.tif", image)
    plan = plan_scene(scene, fcn8s_checkpoint, EXACT.model_copy(update=dict(tile_size=64, halo=64)))
    assert any("below the receptive field" in w for w in plan.warnings)
    run_local(plan)
    reference = whole_image_logits(fcn8s_checkpoint, image).numpy()
    logits, labels = stitched(tmp_path / "scene.zarr")
    error = np.abs(logits - reference).max() / (reference.max() - reference.min())
    mismatch = float((labels != reference.argmax(0)).mean())
    with capsys.disabled():
        print(
            f"\nhalo 64 px (< receptive field): seam error {error:.2e} of the logit range, "
            f"{mismatch:.1%} labels differ"
        )
    assert error > 1e-4


def test_images_smaller_than_a_tile_work(tmp_path: Path, fcn8s_checkpoint: Path) -> None:
    for h, w in ((2, 2), (37, 50)):
        out = tmp_path / f"{h}x{w}"
        out.mkdir()
        check_exact(out, fcn8s_checkpoint, h, w, EXACT)


def test_georeferencing_round_trips_through_xarray_and_rioxarray(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing only: the stand-in (a 1x1 convolution) is enough to write a mosaic.
    import rioxarray  # noqa: F401  (registers .rio)

    image = noise_image(70, 90)
    cases = {
        "north-up": {"crs": "EPSG:32633", "transform": Affine(0.5, 0, 500000, 0, -0.5, 4500000)},
        "rotated": {"crs": "EPSG:3857", "transform": Affine(0.4, 0.1, 1000, 0.1, -0.4, 2000)},
    }
    for name, profile in cases.items():
        scene = write_tif(tmp_path / f"{name}.tif", image, nodata=0, **profile)
        run_local(plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32)))
        ds = xr.open_zarr(tmp_path / f"{name}.zarr", decode_coords="all")
        with rasterio.open(scene) as src:
            assert ds.labels.rio.crs == src.crs
            assert ds.labels.rio.transform().almost_equals(src.transform)
            assert ds.labels.rio.shape == (src.height, src.width)
        assert ds.labels.rio.encoded_nodata == 255
        raw = xr.open_zarr(tmp_path / f"{name}.zarr", decode_coords="all", mask_and_scale=False)
        assert raw.labels.rio.nodata == 255 and raw.labels.dtype == np.uint8
        assert ds.attrs["class_names"] == [f"class_{i}" for i in range(4)]


def test_no_crs_works_warns_and_writes_no_crs(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "plain.tif", noise_image(40, 40), crs=None, transform=Affine.identity())
    plan = plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))
    assert any("no CRS" in w for w in plan.warnings)
    run_local(plan)
    ds = xr.open_zarr(tmp_path / "plain.zarr", decode_coords="all")
    assert "crs_wkt" not in ds.spatial_ref.attrs and ds.labels.rio.crs is None


class CountingForward:
    """Counts the model's forward passes (images, not batches)."""

    def __init__(self, model: nn.Module) -> None:
        self.images = 0
        model.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.images += inputs[0].shape[0]


def test_nodata_cores_are_skipped_and_masked_pixels_are_nodata(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    from pipeline.tiling.segment import cached_engine

    image = noise_image(128, 192)
    image[image == 0] = 1  # keep 0 for nodata
    image[:, :64, :64] = 0  # one whole 64 x 64 core of nodata
    image[:, 100:110, 150:170] = 0  # a masked patch inside a processed core
    scene = write_tif(tmp_path / "masked.tif", image, nodata=0)
    settings = SegmentSettings(tile_size=64, chunk=32, outputs=("labels", "probabilities", "logits"))
    plan = plan_scene(scene, pointwise_checkpoint, settings)
    engine = cached_engine(plan.weights, plan.weights_sha256, plan.settings)
    counter = CountingForward(engine.model)
    report = run_local(plan)
    assert counter.images == 6 - 1 and report["tiles_skipped"] == 1
    group = zarr.open_group(str(tmp_path / "masked.zarr"), mode="r")
    labels, probs, logits = group["labels"][:], group["probabilities"][:], group["logits"][:]  # type: ignore[index]
    nodata = (image == 0).all(axis=0)
    assert (labels[nodata] == 255).all() and (labels[~nodata] < 4).all()
    assert (probs[:, nodata] == 255).all() and np.isnan(logits[:, nodata]).all()
    # Probabilities are quantised to 0..254 and sum to ~1 where there is data.
    total = probs[:, ~nodata].astype(int).sum(axis=0) / 254
    assert np.abs(total - 1).max() < 4 / 254


def labels_of(scene: Path, checkpoint: Path) -> np.ndarray:
    run_local(plan_scene(scene, checkpoint, SegmentSettings(tile_size=64, chunk=32)))
    return zarr.open_group(str(scene.with_suffix(".zarr")), mode="r")["labels"][:]  # type: ignore[index, return-value]


def test_bands_follow_the_colour_interpretation_the_raster_declares(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    rgb = noise_image(40, 48, seed=5)
    reference = labels_of(write_tif(tmp_path / "rgb.tif", rgb, photometric="rgb"), pointwise_checkpoint)
    # Blue, green, red, near-infrared (declared so): read as red, green, blue.
    bgrn = np.concatenate([rgb[::-1], noise_image(40, 48, seed=6, bands=1)])
    path = write_tif(tmp_path / "bgrn.tif", bgrn, photometric="minisblack")
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    plan = plan_scene(path, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))
    assert plan.input.bands == (3, 2, 1) and "red, green and blue" in plan.input.why
    assert np.array_equal(labels_of(path, pointwise_checkpoint), reference)
    # A paletted band: its colour table expands it to the RGB image it stands for.
    colours = np.unique(rgb.reshape(3, -1).T, axis=0)[:200]
    index = np.abs(rgb.reshape(3, -1).T[:, None, :].astype(int) - colours[None].astype(int)).sum(-1).argmin(1)
    paletted = index.reshape(1, 40, 48).astype(np.uint8)
    path = write_tif(tmp_path / "paletted.tif", paletted)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(colours)})
    expanded = colours[paletted[0]].transpose(2, 0, 1).copy()
    expected = labels_of(
        write_tif(tmp_path / "expanded.tif", expanded, photometric="rgb"), pointwise_checkpoint
    )
    assert np.array_equal(labels_of(path, pointwise_checkpoint), expected)
    # Hints name bands that exist; complex values are refused plainly.
    two = write_tif(tmp_path / "two.tif", noise_image(40, 48, bands=2))
    with pytest.raises(FcnpipeError, match=r"--bands 1,2,2\)"):
        plan_scene(two, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))
    slc = write_tif(tmp_path / "slc.tif", (noise_image(40, 48, bands=1) + 1j).astype(np.complex64))
    with pytest.raises(FcnpipeError, match=r"complex values \(complex64.*amplitude"):
        plan_scene(slc, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32, bands=(1, 1, 1)))


def test_bands_dtypes_and_scaling(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    rgbn = write_tif(tmp_path / "rgbn.tif", noise_image(40, 40, bands=4), photometric="minisblack")
    with pytest.raises(FcnpipeError, match=r"declares no red, green and blue.*--bands 1,2,3\)"):
        plan_scene(rgbn, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))
    plan_scene(rgbn, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32, bands=(1, 2, 3)))
    # RGBA: the alpha band is the mask, not a fourth channel.
    rgba_image = noise_image(40, 40, bands=4)
    rgba_image[3] = 255
    rgba_image[3, :10] = 0
    rgba = write_tif(tmp_path / "rgba.tif", rgba_image, photometric="rgb", alpha="yes")
    run_local(plan_scene(rgba, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32)))
    labels = zarr.open_group(str(tmp_path / "rgba.zarr"), mode="r")["labels"][:]  # type: ignore[index]
    assert (labels[:10] == 255).all() and (labels[10:] < 4).all()
    grey = write_tif(tmp_path / "grey.tif", noise_image(40, 40, bands=1))
    with pytest.raises(FcnpipeError, match=r"has one band .* repeat it with --bands 1,1,1"):
        plan_scene(grey, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))
    plan_scene(grey, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32, bands=(1, 1, 1)))
    with pytest.raises(FcnpipeError, match="band 5 does not exist"):
        plan_scene(grey, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32, bands=(1, 1, 5)))
    image8 = noise_image(40, 40)
    wide = write_tif(tmp_path / "u16.tif", image8.astype(np.uint16) * 16)
    with pytest.raises(
        FcnpipeError, match=r"uint16 values; declare how they map to 0-255 with --value-range"
    ):
        plan_scene(wide, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))
    # uint16 = 16 x uint8, declared as 0..4080: the same labels as the uint8 image.
    plan = plan_scene(
        wide, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32, value_range=(0, 4080))
    )
    run_local(plan)
    run_local(
        plan_scene(
            write_tif(tmp_path / "u8.tif", image8),
            pointwise_checkpoint,
            SegmentSettings(tile_size=64, chunk=32),
        )
    )
    a = zarr.open_group(str(tmp_path / "u16.zarr"), mode="r")["labels"][:]  # type: ignore[index]
    b = zarr.open_group(str(tmp_path / "u8.zarr"), mode="r")["labels"][:]  # type: ignore[index]
    assert np.array_equal(a, b)
    for dtype in ("int16", "float32"):
        path = write_tif(tmp_path / f"{dtype}.tif", image8.astype(dtype))
        with pytest.raises(FcnpipeError, match=f"{dtype} values"):
            plan_scene(path, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))


def test_inputs_that_are_not_rasters_get_one_sentence(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    settings = SegmentSettings(tile_size=64, chunk=32)
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n")
    empty_vrt = tmp_path / "empty.vrt"
    empty_vrt.write_text('<VRTDataset rasterXSize="0" rasterYSize="0"></VRTDataset>')
    cases = {
        tmp_path / "missing.tif": "does not exist",
        text: "is not a raster that GDAL can read",
        empty_vrt: r"(not a raster that GDAL can read|holds no pixels)",
        write_tif(tmp_path / "dot.tif", noise_image(1, 1)): r"is 1x1 pixels: too small to segment",
        write_tif(tmp_path / "line.tif", noise_image(1, 40)): r"is 40x1 pixels: too small to segment",
    }
    for path, message in cases.items():
        with pytest.raises(FcnpipeError, match=message):
            plan_scene(path, pointwise_checkpoint, settings)
        assert not path.with_suffix(".zarr").exists()


def test_settings_that_do_not_fit_the_model_are_refused(tmp_path: Path, fcn8s_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", noise_image(40, 40))
    for settings, message in (
        (SegmentSettings(tile_size=100), "multiple of 32"),
        (SegmentSettings(tile_size=96, chunk=64), "multiple of the chunk"),
    ):
        with pytest.raises(FcnpipeError, match=message):
            plan_scene(scene, fcn8s_checkpoint, settings)
    with pytest.raises(FcnpipeError, match="--outputs 'edges' is not a valid"):  # refused as given
        SegmentSettings(outputs=("labels", "edges"))


def test_existing_outputs_are_protected(
    tmp_path: Path, pointwise_checkpoint: Path, fcn8s_checkpoint: Path
) -> None:
    scene = write_tif(tmp_path / "s.tif", noise_image(40, 40))
    settings = SegmentSettings(tile_size=64, chunk=32)
    run_local(plan_scene(scene, pointwise_checkpoint, settings))
    out = tmp_path / "s.zarr"
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    again = plan_scene(scene, pointwise_checkpoint, settings)
    assert again.complete and again.todo == ()  # the same plan again: nothing to do, not an error
    with pytest.raises(FcnpipeError, match="another scene, model or configuration"):
        plan_scene(scene, fcn8s_checkpoint, settings)
    with pytest.raises(FcnpipeError, match="another scene, model or configuration"):
        plan_scene(scene, pointwise_checkpoint, settings.model_copy(update=dict(tile_size=32)))
    after = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    assert before == after  # nothing was touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FcnpipeError, match="not an fcnpipe mosaic"):
            plan_scene(scene, pointwise_checkpoint, settings, output=other, overwrite=overwrite)
    assert (other / "keep.txt").read_text() == "mine"
    plan = plan_scene(
        scene, pointwise_checkpoint, settings.model_copy(update=dict(tile_size=32)), overwrite=True
    )
    run_local(plan)
    assert read_state(out)["complete"]  # type: ignore[index]


def test_an_output_that_cannot_be_written_gets_one_sentence(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    scene = write_tif(tmp_path / "s.tif", noise_image(40, 40))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FcnpipeError, match="cannot write"):
        plan_scene(
            scene, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32), output=blocker / "s.zarr"
        )


def test_inspect_describes_complete_and_interrupted_mosaics(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from fcnpipe.main import app
    from pipeline.tiling.segment import segment_block

    scene = write_tif(tmp_path / "s.tif", noise_image(100, 130))
    plan = plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=32, chunk=32, block=2))
    segment_block(plan, plan.todo[0])  # one block of six, then "killed"
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(tmp_path / "s.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert not info["complete"] and (info["blocks_done"], info["blocks_total"]) == (1, 6)
    assert info["shape"] == [100, 130] and info["crs"] == "EPSG:32633" and info["resolution"] == [0.5, 0.5]
    run_local(plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=32, chunk=32, block=2)))
    text = runner.invoke(app, ["inspect", str(tmp_path / "s.zarr")]).output
    assert "complete (6 of 6 blocks done)" in text and "incomplete" not in text
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nothing.zarr")])
    assert missing.exit_code == 1 and "is not an fcnpipe mosaic" in missing.output


def test_tiles_of_one_geometry_share_batches(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    """A block's edge tiles no longer break up the batches of its interior tiles."""
    from pipeline.tiling.engine import geometry
    from pipeline.tiling.segment import cached_engine

    scene = write_tif(tmp_path / "grid.tif", noise_image(64 * 5, 64 * 5, seed=3))
    settings = SegmentSettings(strategy="tiles", tile_size=64, halo=32, chunk=32, block=5, batch_size=4)
    plan = plan_scene(scene, pointwise_checkpoint, settings)
    engine = cached_engine(plan.weights, plan.weights_sha256, plan.settings)
    batches: list[int] = []
    engine.model.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    run_local(plan)
    (block,) = plan.blocks
    groups = Counter(geometry(t) for t in block.tiles)
    assert len(groups) == 9 and sum(groups.values()) == 25  # corners, edges and the 3 x 3 interior
    expected = [n for g in groups.values() for n in [4] * (g // 4) + [g % 4] * (g % 4 > 0)]
    assert sorted(batches) == sorted(expected)  # the interior's 9 tiles in batches of 4, 4, 1


def test_any_gdal_layout_gives_the_same_mosaic(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    """Striped or tiled, compressed, BigTIFF, COG, or a VRT over another file: the same labels."""
    import rasterio.shutil

    image = noise_image(150, 230, seed=4)
    plain = write_tif(tmp_path / "plain.tif", image)
    layouts = {
        "striped": {"compress": "deflate", "blockysize": 7},
        "tiled": {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "lzw", "predictor": 2},
        "bigtiff": {"BIGTIFF": "YES", "compress": "zstd"},
    }
    scenes = [write_tif(tmp_path / f"{name}.tif", image, **profile) for name, profile in layouts.items()]
    rasterio.shutil.copy(plain, tmp_path / "cog.tif", driver="COG", BLOCKSIZE=64)
    vrt = tmp_path / "scene.vrt"
    with rasterio.open(plain) as src:
        rasterio.shutil.copy(src, vrt, driver="VRT")
    settings = SegmentSettings(tile_size=64, chunk=32)
    expected = None
    for scene in [plain, *scenes, tmp_path / "cog.tif", vrt]:
        run_local(plan_scene(scene, pointwise_checkpoint, settings))
        labels = zarr.open_group(str(scene.with_suffix(".zarr")), mode="r")["labels"][:]  # type: ignore[index]
        expected = labels if expected is None else expected
        np.testing.assert_array_equal(labels, expected, err_msg=scene.name)
    assert len(np.unique(expected)) > 1
    # The files really are laid out as named.
    with rasterio.open(scenes[0]) as striped, rasterio.open(scenes[1]) as tiled, rasterio.open(vrt) as v:
        assert striped.block_shapes[0] == (7, 230) and tiled.block_shapes[0] == (64, 64)
        assert v.driver == "VRT"
    assert (tmp_path / "bigtiff.tif").read_bytes()[2:4] == b"\x2b\x00"  # BigTIFF's version number, 43
    with rasterio.open(tmp_path / "cog.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


@pytest.mark.parametrize("internal", [True, False], ids=["internal-mask", "external-msk"])
def test_dataset_masks_are_honoured(tmp_path: Path, pointwise_checkpoint: Path, internal: bool) -> None:
    """A GDAL mask band (inside the TIFF, or a .msk beside it) marks nodata like a nodata value."""
    image = noise_image(64, 96, seed=5)
    mask = np.full((64, 96), 255, dtype=np.uint8)
    mask[10:30, 40:90] = 0
    scene = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal):
        write_tif(scene, image)
        with rasterio.open(scene, "r+") as dst:
            dst.write_mask(mask)
    assert (tmp_path / "masked.tif.msk").exists() != internal
    run_local(plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32)))
    labels = zarr.open_group(str(tmp_path / "masked.zarr"), mode="r")["labels"][:]  # type: ignore[index]
    assert ((labels == 255) == (mask == 0)).all()


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_signed_and_float_rasters_with_a_declared_range(
    tmp_path: Path, pointwise_checkpoint: Path, dtype: str
) -> None:
    """int16 and float32 values mapped by --value-range give the labels of the same 8-bit image."""
    image8 = noise_image(40, 56, seed=8)
    lo, hi = (-1000.0, 1040.0) if dtype == "int16" else (0.0, 1.0)
    scaled = (image8.astype(np.float64) * (hi - lo) / 255 + lo).astype(dtype)
    wide = write_tif(tmp_path / f"{dtype}.tif", scaled)
    with pytest.raises(FcnpipeError, match="--value-range"):
        plan_scene(wide, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32))
    run_local(
        plan_scene(wide, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32, value_range=(lo, hi)))
    )
    run_local(plan_scene(write_tif(tmp_path / "u8.tif", image8), pointwise_checkpoint,
                         SegmentSettings(tile_size=64, chunk=32)))  # fmt: skip
    a = zarr.open_group(str(tmp_path / f"{dtype}.zarr"), mode="r")["labels"][:]  # type: ignore[index]
    b = zarr.open_group(str(tmp_path / "u8.zarr"), mode="r")["labels"][:]  # type: ignore[index]
    assert np.mean(a == b) > 0.999  # float rounding may move a pixel that sits on a class boundary


def test_inspect_raster_says_what_would_be_read(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fcnpipe.main import app

    image = np.concatenate([noise_image(40, 48)[::-1], noise_image(40, 48, bands=1)])
    path = write_tif(tmp_path / "bgrn.tif", image, photometric="minisblack", nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    result = CliRunner().invoke(app, ["inspect-raster", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "48 x 40 px, 4 band(s), CRS EPSG:32633" in text
    assert "bands fed to the model: 3,2,1 (the bands the raster declares red, green and blue" in text
    assert "values: uint8, fed as they are" in text and "mask: the nodata value 0" in text
    refused = CliRunner().invoke(app, ["inspect-raster", str(path), "--bands", "1,9,2"])
    assert refused.exit_code == 1 and "band 9 does not exist" in refused.output
