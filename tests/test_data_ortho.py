"""The GeoTIFF orthophoto reader (``pipeline.training.data.ortho``) against tiny tile folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from tests.conftest import (
    assert_contract,
    four_band,
    isprs_label,
    label_map,
    smooth_image,
    write_lines,
    write_tif,
)

ORTHO_STEMS = ["tile_0_0", "tile_0_1", "tile_1_0"]


@pytest.fixture
def ortho_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(ORTHO_STEMS):
        write_tif(tmp_path / "images" / f"{stem}.tif", four_band(seed))
        label = label_map([0, 1, 2, 99], seed).astype(np.uint8)[None]
        write_tif(tmp_path / "labels" / f"{stem}.tif", label, nodata=99)
    (tmp_path / "classes.json").write_text(json.dumps(["ground", "tree", "roof"]))
    return tmp_path


def test_ortho_reads_three_bands_and_maps_label_nodata_to_ignore(ortho_root: Path) -> None:
    ds = open_dataset(f"ortho:{ortho_root}", "train")
    assert len(ds) == 3
    image, label = ds[1]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([0, 1, 2, 255], 1))
    assert (ds.class_names, ds.ignore_index) == (("ground", "tree", "roof"), 255)
    assert_contract(ds)


def test_ortho_without_split_lists_gives_every_tile_to_every_split(ortho_root: Path) -> None:
    keys = {split: open_dataset(f"ortho:{ortho_root}", split).keys for split in ("train", "val")}
    assert keys["train"] == keys["val"] == ORTHO_STEMS


def test_ortho_split_lists_select_tiles_and_a_missing_one_is_an_error(ortho_root: Path) -> None:
    write_lines(ortho_root / "train.txt", ORTHO_STEMS[1:])
    write_lines(ortho_root / "val.txt", ORTHO_STEMS[:1])
    assert open_dataset(f"ortho:{ortho_root}", "train").keys == ORTHO_STEMS[1:]
    np.testing.assert_array_equal(open_dataset(f"ortho:{ortho_root}", "val")[0][0], smooth_image(0))
    with pytest.raises(FcnpipeError, match=r"no test\.txt"):
        open_dataset(f"ortho:{ortho_root}", "test")


def test_ortho_class_names_come_from_classes_txt_or_the_largest_label(ortho_root: Path) -> None:
    (ortho_root / "classes.json").unlink()
    assert open_dataset(f"ortho:{ortho_root}", "val").class_names == (
        "class 0",
        "class 1",
        "class 2",
    )
    write_lines(ortho_root / "classes.txt", ["ground", "tree", "roof", "water"])
    assert open_dataset(f"ortho:{ortho_root}", "val").num_classes == 4


def test_ortho_refuses_images_that_are_not_8_bit(ortho_root: Path) -> None:
    write_tif(ortho_root / "images" / "tile_0_0.tif", four_band(0).astype(np.uint16))
    with pytest.raises(FcnpipeError, match="8-bit"):
        open_dataset(f"ortho:{ortho_root}", "train")[0]


def test_inria_style_gt_masks_become_building_classes(tmp_path: Path) -> None:
    write_tif(tmp_path / "images" / "austin1.tif", four_band(0)[:3])
    write_tif(tmp_path / "gt" / "austin1.tif", label_map([0, 255], 0).astype(np.uint8)[None])
    ds = open_dataset(f"ortho:{tmp_path}", "train")
    np.testing.assert_array_equal(ds[0][1], label_map([0, 1], 0))
    assert ds.class_names == ("background", "building")
    assert_contract(ds)


def test_ortho_refuses_a_three_band_label_and_points_to_the_isprs_readers(ortho_root: Path) -> None:
    write_tif(ortho_root / "labels" / "tile_0_1.tif", isprs_label(1)[0])
    ds = open_dataset(f"ortho:{ortho_root}", "train")
    with pytest.raises(
        FcnpipeError, match=r"has 3 bands; ortho labels hold class indices in band 1 .*vaihingen:PATH"
    ):
        ds[1]
