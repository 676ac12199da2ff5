"""The ISPRS Vaihingen and Potsdam readers (``pipeline.training.data.isprs``) against tiny replicas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fcn import build_model, load_checkpoint
from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from pipeline.training.data.ortho import GeoTiffDataset
from pipeline.training.evaluation import evaluate as evaluate_whole
from pipeline.training.evaluation import evaluate_tiled
from tests.conftest import (
    ISPRS_COLOURS,
    H,
    W,
    assert_contract,
    four_band,
    isprs_label,
    randomize,
    save_model,
    smooth_image,
    write_lines,
    write_tif,
)

VAIHINGEN_AREAS = (1, 2, 3)  # official train, test, train
POTSDAM_TILES = ("2_10", "2_13", "6_7")  # official train, test, train


def make_vaihingen(root: Path, eroded: bool = False) -> Path:
    """Areas 1-3 as ISPRS distributes them, with the DSMs a reader must leave alone."""
    for seed, area in enumerate(VAIHINGEN_AREAS):
        name = f"top_mosaic_09cm_area{area}"
        write_tif(root / "top" / f"{name}.tif", smooth_image(seed).transpose(2, 0, 1))
        label = (
            root / "gts_eroded_for_participants" / f"{name}_noBoundary.tif"
            if eroded
            else root / "gts_for_participants" / f"{name}.tif"
        )
        write_tif(label, isprs_label(seed)[0])
        write_tif(root / "dsm" / f"dsm_09cm_matching_area{area}.tif", np.zeros((1, H, W), np.float32))
    return root


def make_potsdam(root: Path, rgbir: bool = False, eroded: bool = False) -> Path:
    """Three tiles as ISPRS distributes them: RGB or RGBIR images, full or eroded labels."""
    image_dir, image_suffix = ("4_Ortho_RGBIR", "RGBIR") if rgbir else ("2_Ortho_RGB", "RGB")
    label_dir, label_suffix = (
        ("5_Labels_all_noBoundary", "label_noBoundary") if eroded else ("5_Labels_all", "label")
    )
    for seed, tile in enumerate(POTSDAM_TILES):
        image = four_band(seed) if rgbir else four_band(seed)[:3]
        write_tif(root / image_dir / f"top_potsdam_{tile}_{image_suffix}.tif", image)
        write_tif(root / label_dir / f"top_potsdam_{tile}_{label_suffix}.tif", isprs_label(seed)[0])
    return root


def isprs_keys(name: str) -> list[str]:
    return [f"area{a}" for a in VAIHINGEN_AREAS] if name == "vaihingen" else list(POTSDAM_TILES)


def test_vaihingen_labels_decode_to_the_index_maps_their_colours_were_painted_from(tmp_path: Path) -> None:
    root = make_vaihingen(tmp_path)
    ds = open_dataset(f"vaihingen:{root}", "train")
    assert ds.keys == ["area1", "area3"]
    for index, seed in enumerate((0, 2)):
        image, label = ds[index]
        np.testing.assert_array_equal(image, smooth_image(seed))  # IRRG bands 1-3, as stored
        np.testing.assert_array_equal(label, isprs_label(seed)[1])
    assert ds.palette == [ISPRS_COLOURS[i] for i in range(6)]
    assert ds.class_names[1] == "building" and ds.class_names[5] == "clutter"
    assert_contract(ds)


@pytest.mark.parametrize("rgbir", [False, True], ids=["2_Ortho_RGB", "4_Ortho_RGBIR"])
def test_potsdam_image_is_bands_1_to_3_of_the_rgb_tile_or_else_the_rgbir_one(
    tmp_path: Path, rgbir: bool
) -> None:
    root = make_potsdam(tmp_path, rgbir=rgbir)
    ds = open_dataset(f"potsdam:{root}", "test")
    assert ds.keys == ["2_13"]
    image, label = ds[0]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, isprs_label(1)[1])
    folder = "4_Ortho_RGBIR" if rgbir else "2_Ortho_RGB"
    assert isinstance(ds, GeoTiffDataset) and ds.image_path("2_13").parent == root / folder
    assert_contract(ds)


@pytest.mark.parametrize("name", ["vaihingen", "potsdam"])
def test_isprs_eroded_labels_are_read_when_the_full_ones_are_absent(tmp_path: Path, name: str) -> None:
    root = (make_vaihingen if name == "vaihingen" else make_potsdam)(tmp_path, eroded=True)
    ds = open_dataset(f"{name}:{root}", "train")
    for index, seed in enumerate((0, 2)):
        np.testing.assert_array_equal(ds[index][1], isprs_label(seed)[1])


def test_isprs_default_splits_are_the_official_tiles_present(tmp_path: Path) -> None:
    vaihingen, potsdam = make_vaihingen(tmp_path / "v"), make_potsdam(tmp_path / "p")
    assert open_dataset(f"vaihingen:{vaihingen}", "train").keys == ["area1", "area3"]
    assert open_dataset(f"vaihingen:{vaihingen}", "test").keys == ["area2"]
    assert open_dataset(f"potsdam:{potsdam}", "train").keys == ["2_10", "6_7"]
    assert open_dataset(f"potsdam:{potsdam}", "test").keys == ["2_13"]


@pytest.mark.parametrize(("name", "example"), [("vaihingen", "area11"), ("potsdam", "2_10")])
def test_isprs_val_needs_a_list_of_held_out_training_tiles(tmp_path: Path, name: str, example: str) -> None:
    root = (make_vaihingen if name == "vaihingen" else make_potsdam)(tmp_path)
    with pytest.raises(
        FcnpipeError, match=rf"no official val split: list held-out training tiles in .*val\.txt.*{example}"
    ):
        open_dataset(f"{name}:{root}", "val")
    keys = isprs_keys(name)
    write_lines(root / "val.txt", keys[2:])
    write_lines(root / "train.txt", keys[:1])
    assert open_dataset(f"{name}:{root}", "val").keys == keys[2:]
    assert open_dataset(f"{name}:{root}", "train").keys == keys[:1]


def test_isprs_split_list_naming_a_tile_without_image_or_label_is_refused(tmp_path: Path) -> None:
    root = make_vaihingen(tmp_path)
    write_lines(root / "val.txt", ["area3", "area5"])
    with pytest.raises(FcnpipeError, match=r"no image, e\.g\. 'area5'"):
        open_dataset(f"vaihingen:{root}", "val")
    write_lines(root / "val.txt", ["area3"])
    (root / "gts_for_participants" / "top_mosaic_09cm_area3.tif").unlink()
    with pytest.raises(FcnpipeError, match=r"no label, e\.g\. 'area3'"):
        open_dataset(f"vaihingen:{root}", "val")


def test_isprs_label_that_is_not_an_8_bit_colour_raster_is_refused(tmp_path: Path) -> None:
    root = make_potsdam(tmp_path)
    write_tif(root / "5_Labels_all" / "top_potsdam_2_13_label.tif", isprs_label(1)[1][None].astype(np.uint8))
    with pytest.raises(FcnpipeError, match="1-band uint8 raster; ISPRS labels are 8-bit RGB"):
        open_dataset(f"potsdam:{root}", "test")[0]


def test_tiled_scoring_of_an_isprs_benchmark_equals_whole_image_scoring(tmp_path: Path) -> None:
    """Plumbing, so the 1x1 stand-in: the tiling pipeline reads the benchmark's own image files."""
    ds = open_dataset(f"potsdam:{make_potsdam(tmp_path / 'potsdam', rgbir=True)}", "train")
    weights = save_model(
        tmp_path / "pointwise.pt", randomize(build_model("pointwise", 6), seed=3, scale=1.0), "pointwise"
    )
    tiled, unscored = evaluate_tiled(weights, ds, tile_size=32, device="cpu")
    model, card = load_checkpoint(weights)
    whole = evaluate_whole(model, ds, card.normalization, torch.device("cpu"))
    assert unscored == 0 and tiled.hist.sum() > 0
    np.testing.assert_array_equal(tiled.hist, whole.hist)
