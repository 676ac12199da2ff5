"""The NYUDv2 readers (``pipeline.training.data.nyud``) against a tiny replica of the FCN layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from tests.conftest import assert_contract, label_map, save_image, save_mat, smooth_image, write_lines

NYUD_IDS = ["5001", "5002", "5003"]


@pytest.fixture
def nyud_root(tmp_path: Path) -> Path:
    for seed, key in enumerate(NYUD_IDS):
        save_image(tmp_path / "data" / "images" / f"img_{key}.png", smooth_image(seed))
        save_image(tmp_path / "hha" / f"img_{key}.png", 255 - smooth_image(seed))
        segmentation = label_map([0, 1, 40], seed).astype(np.uint8)
        save_mat(tmp_path / "segmentation" / f"img_{key}.mat", {"segmentation": segmentation})
    for split, keys in zip(
        ["train", "val", "test"], [NYUD_IDS[:1], NYUD_IDS[1:2], NYUD_IDS[2:]], strict=True
    ):
        write_lines(tmp_path / f"{split}.txt", keys)
    return tmp_path


def test_nyud_trainval_is_train_then_val_and_the_release_lists_fill_in(nyud_root: Path) -> None:
    assert open_dataset(f"nyud:{nyud_root}", "trainval").keys == NYUD_IDS[:2]
    (nyud_root / "val.txt").rename(nyud_root / "val-elsewhere.txt")  # the folder's train, the release's val?
    with pytest.raises(FcnpipeError, match=r"has train\.txt but no val\.txt, so its trainval is unclear"):
        open_dataset(f"nyud:{nyud_root}", "trainval")
    for split in ("train", "test"):
        (nyud_root / f"{split}.txt").unlink()
    trainval = open_dataset(f"nyud:{nyud_root}", "trainval")
    test = open_dataset(f"nyud:{nyud_root}", "test")
    # The release's 795 training frames (381 + 414) and 654 test frames, disjoint, of the 1,449
    # it numbers 5001-6449.
    assert (len(trainval), len(test), len(set(trainval.keys))) == (795, 654, 795)
    assert not set(trainval.keys) & set(test.keys)
    assert all(5001 <= int(key) <= 6449 for key in [*trainval.keys, *test.keys])


def test_nyud_reads_rgb_and_shifts_40_classes_with_void_255(nyud_root: Path) -> None:
    val = open_dataset(f"nyud:{nyud_root}", "val")
    assert len(val) == 1
    image, label = val[0]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([255, 0, 39], 1))
    assert (val.num_classes, val.class_names[0], val.class_names[-1]) == (40, "wall", "otherprop")
    assert_contract(val)


@pytest.mark.parametrize("hha_dir", ["hha", "data/hha"])
def test_nyud_hha_returns_hha_in_place_of_rgb(nyud_root: Path, hha_dir: str) -> None:
    if hha_dir != "hha":
        (nyud_root / "hha").rename(nyud_root / hha_dir)
    rgb_image, rgb_label = open_dataset(f"nyud:{nyud_root}", "test")[0]
    hha_image, hha_label = open_dataset(f"nyud-hha:{nyud_root}", "test")[0]
    np.testing.assert_array_equal(hha_image, 255 - smooth_image(2))
    np.testing.assert_array_equal(hha_label, rgb_label)
    assert not np.array_equal(hha_image, rgb_image)
