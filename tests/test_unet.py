"""The original U-Net: unpadded convolutions, a margin, and the overlap-tile strategy's mirroring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from fcn import build_model, load_checkpoint
from fcn.margin import mirror_pad, reflect_indices, same_size_forward
from fcn.unet import MARGIN, UNet, valid_size
from pipeline.grid import Window
from pipeline.raster import RasterReader, inspect_raster
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import noise_image, randomize, save_model, write_tif


def test_the_paper_s_geometry() -> None:
    model = UNet(2).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 572, 572)).shape[-2:] == (388, 388)  # Figure 1
        assert model(torch.zeros(1, 3, 300, 201)).shape[-2:] == (300 - 184, 201 - 184)  # any size
    assert MARGIN == 92 and [valid_size(s) for s in (1, 188, 189, 572, 573)] == [188, 188, 204, 572, 588]


@pytest.mark.parametrize("size", [1, 2, 5, 40, 93, 200])
@pytest.mark.parametrize("pad", [1, 4, 39, 92, 250])
def test_mirroring_is_numpy_s_reflect_also_past_a_short_axis(size: int, pad: int) -> None:
    values = np.arange(size)
    expected = np.pad(values, pad, mode="reflect") if size > 1 else np.zeros(size + 2 * pad, int)
    assert np.array_equal(values[reflect_indices(-pad, size + pad, size)], expected)


def test_a_tile_reaching_past_the_image_reads_the_mirrored_image(tmp_path: Path) -> None:
    image = noise_image(50, 70, seed=2)
    reader = RasterReader(inspect_raster(write_tif(tmp_path / "scene.tif", image)))
    mirrored = np.pad(image, ((0, 0), (92, 92), (92, 92)), mode="reflect")
    for window in (Window(-92, -92, 100, 120), Window(-10, 30, 152, 132), Window(0, 0, 50, 70)):
        expected = mirrored[:, window.row + 92 : window.row + 92 + window.height,
                            window.col + 92 : window.col + 92 + window.width]  # fmt: skip
        assert np.array_equal(reader.read(window), expected), window
    reader.close()
    padded = mirror_pad(torch.from_numpy(image)[None].float(), 92)[0].numpy()
    assert np.array_equal(padded, mirrored)  # the whole-image pass mirrors the same way


@pytest.mark.slow  # ~12 s
def test_a_scene_thinner_than_the_margin_still_stitches_exactly(tmp_path: Path) -> None:
    model = randomize(build_model("unet", 3), seed=4)
    checkpoint = save_model(tmp_path / "unet.pt", model, "unet")
    model, card = load_checkpoint(checkpoint)
    assert card.margin == MARGIN and card.halo >= card.receptive_field.radius
    assert (card.halo - MARGIN) % card.total_stride == 0  # tiles start where the mirrored image's grid does
    image = noise_image(40, 150, seed=6)  # 40 rows: the mirroring reflects more than once
    scene = write_tif(tmp_path / "scene.tif", image)
    settings = SegmentSettings(tile_size=64, chunk=64, outputs=("labels", "logits"), logits_dtype="float32",
                               device="cpu")  # fmt: skip
    run_local(plan_scene(scene, checkpoint, settings))
    with torch.no_grad():
        x = card.normalization.apply(torch.from_numpy(image).float()[None])
        reference = same_size_forward(model, x)[0].numpy()
    group = zarr.open_group(str(tmp_path / "scene.zarr"), mode="r")
    span = float(reference.max() - reference.min())
    assert np.abs(group["logits"][:] - reference).max() <= 1e-4 * span  # type: ignore[index, operator]
    assert np.array_equal(group["labels"][:], reference.argmax(0))  # type: ignore[index]
