"""The SIFT Flow readers (``pipeline.training.data.siftflow``) against a tiny replica of the release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from pipeline.training.data.siftflow import SCENES
from tests.conftest import (
    assert_contract,
    assert_jpeg_close,
    label_map,
    save_image,
    save_mat,
    smooth_image,
    write_lines,
)

SIFT_STEMS = ["coast_arnat59", "street_par177", "tallbuilding_sky7"]


@pytest.fixture
def siftflow_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(SIFT_STEMS):
        save_image(tmp_path / "Images" / SCENES / f"{stem}.jpg", smooth_image(seed))
        semantic = label_map([0, 1, 28, 33], seed).astype(np.uint16)
        save_mat(tmp_path / "SemanticLabels" / SCENES / f"{stem}.mat", {"S": semantic})
        geometric = label_map([-1, 0, 1, 2, 3], seed).astype(np.int16)
        save_mat(tmp_path / "GeoLabels" / SCENES / f"{stem}.mat", {"S": geometric})
    # A list may name scenes bare or as file paths, with either separator.
    write_lines(tmp_path / "TrainSet1.txt", [SIFT_STEMS[0], f"{SCENES}\\{SIFT_STEMS[1]}.jpg"])
    write_lines(tmp_path / "TestSet1.txt", [f"{SCENES}/{SIFT_STEMS[2]}.jpg"])
    return tmp_path


def test_siftflow_semantic_labels_shift_to_zero_based_with_void_255(siftflow_root: Path) -> None:
    train = open_dataset(f"siftflow:{siftflow_root}", "train")
    assert len(train) == 2
    image, label = train[1]
    assert_jpeg_close(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([255, 0, 27, 32], 1))
    assert (train.num_classes, train.class_names[27], train.ignore_index) == (33, "sky", 255)
    assert_contract(train)


def test_siftflow_geo_maps_both_void_codes_to_255(siftflow_root: Path) -> None:
    test = open_dataset(f"siftflow-geo:{siftflow_root}", "test")
    assert len(test) == 1
    np.testing.assert_array_equal(test[0][1], label_map([255, 255, 0, 1, 2], 2))
    assert test.class_names == ("sky", "horizontal", "vertical")
    assert_contract(test)


def test_siftflow_prefers_a_reference_split_list(siftflow_root: Path) -> None:
    write_lines(siftflow_root / "test.txt", SIFT_STEMS[:2])
    assert len(open_dataset(f"siftflow:{siftflow_root}", "test")) == 2


def test_siftflow_without_lists_reads_the_reference_release_lists(siftflow_root: Path) -> None:
    for listing in ("TrainSet1.txt", "TestSet1.txt"):
        (siftflow_root / listing).unlink()
    trainval = open_dataset(f"siftflow:{siftflow_root}", "trainval")
    test = open_dataset(f"siftflow:{siftflow_root}", "test")
    # The release's lists: the 2,688 scenes less the two unannotated ones, as 2,486 and 200.
    assert (len(trainval), len(test)) == (2486, 200)
    assert not set(trainval.keys) & set(test.keys)
    assert all(key.count("_") == 1 and "/" not in key for key in trainval.keys)  # scene names
    with pytest.raises(FcnpipeError, match="no 'train' split"):
        open_dataset(f"siftflow:{siftflow_root}", "train")
