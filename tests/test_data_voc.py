"""The PASCAL VOC and SBD readers (``pipeline.training.data.voc``) against tiny replicas of their layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn.checkpoint import default_palette
from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from tests.conftest import (
    H,
    W,
    assert_contract,
    assert_jpeg_close,
    label_map,
    save_image,
    save_mat,
    smooth_image,
    write_lines,
)

VOC_VALUES = [0, 15, 255]


def save_palette_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette([c for rgb in default_palette(256) for c in rgb])
    image.save(path)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(["2007_000032", "2007_000033", "2007_000039"]):
        save_image(tmp_path / "JPEGImages" / f"{stem}.jpg", smooth_image(seed))
        save_palette_png(tmp_path / "SegmentationClass" / f"{stem}.png", label_map(VOC_VALUES, seed))
    splits = tmp_path / "ImageSets" / "Segmentation"
    write_lines(splits / "train.txt", ["2007_000032", "2007_000033"])
    write_lines(splits / "val.txt", ["2007_000039"])
    write_lines(tmp_path / "seg11valid.txt", ["2007_000033"])
    return tmp_path


def test_voc_reads_palette_indices_with_255_void(voc_root: Path) -> None:
    train = open_dataset(f"voc:{voc_root}", "train")
    assert len(train) == 2 and len(open_dataset(f"voc:{voc_root}", "val")) == 1
    image, label = train[1]
    assert_jpeg_close(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map(VOC_VALUES, 1))
    assert (train.num_classes, train.ignore_index, train.class_names[15]) == (21, 255, "person")
    assert train.palette[15] == (192, 128, 128)
    assert_contract(train)


@pytest.mark.parametrize("where", [".", "ImageSets/Segmentation"])
def test_voc_seg11valid_is_found_at_the_root_or_with_the_other_lists(voc_root: Path, where: str) -> None:
    (voc_root / "seg11valid.txt").rename(voc_root / where / "seg11valid.txt")
    valid = open_dataset(f"voc:{voc_root}", "seg11valid")
    assert len(valid) == 1
    assert_jpeg_close(valid[0][0], smooth_image(1))


def test_voc_greyscale_jpeg_comes_back_as_three_equal_channels(voc_root: Path) -> None:
    # VOC holds a few greyscale JPEGs; the network still needs three channels.
    grey = smooth_image(2)[..., 0]
    save_image(voc_root / "JPEGImages" / "2007_000039.jpg", grey)
    image = open_dataset(f"voc:{voc_root}", "val")[0][0]
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert np.abs(image[..., 1].astype(int) - grey).mean() < 4


def test_voc_label_saved_as_colours_is_refused(voc_root: Path) -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    save_image(voc_root / "SegmentationClass" / "2007_000039.png", rgb)
    with pytest.raises(FcnpipeError, match="class indices"):
        open_dataset(f"voc:{voc_root}", "val")[0]


def test_voc_without_its_folders_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FcnpipeError, match="JPEGImages/, SegmentationClass/"):
        open_dataset(f"voc:{tmp_path}", "train")


@pytest.fixture
def sbd_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(["2008_000002", "2008_000003", "2008_000007"]):
        save_image(tmp_path / "img" / f"{stem}.jpg", smooth_image(seed))
        gtcls = {
            "Segmentation": label_map([0, 3, 20], seed).astype(np.uint8),
            "Boundaries": np.zeros((1, 1)),
            "CategoriesPresent": np.array([3, 20]),
        }
        save_mat(tmp_path / "cls" / f"{stem}.mat", {"GTcls": gtcls})
    write_lines(tmp_path / "train.txt", ["2008_000002", "2008_000003"])
    write_lines(tmp_path / "val.txt", ["2008_000007"])
    return tmp_path


def test_sbd_reads_the_segmentation_field_of_gtcls(sbd_root: Path) -> None:
    val = open_dataset(f"sbd:{sbd_root}", "val")
    assert len(val) == 1 and len(open_dataset(f"sbd:{sbd_root}", "train")) == 2
    image, label = val[0]
    assert_jpeg_close(image, smooth_image(2))
    np.testing.assert_array_equal(label, label_map([0, 3, 20], 2))
    assert val.num_classes == 21
    assert_contract(val)
