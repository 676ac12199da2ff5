"""The CamVid reader (``pipeline.training.data.camvid``) against a tiny replica of its folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from tests.conftest import assert_contract, label_map, smooth_image, write_lines

CAMVID = Path("/work/shared/data/camvid")


def test_camvid_reads_listed_pairs_by_their_last_two_path_components(camvid_root: Path) -> None:
    train = open_dataset(f"camvid:{camvid_root}", "train")
    assert len(train) == 2 and len(open_dataset(f"camvid:{camvid_root}", "val")) == 1
    image, label = train[1]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([0, 5, 10, 11], 1))
    assert (train.num_classes, train.ignore_index, train.class_names[0]) == (11, 11, "Sky")
    assert train.palette[3] == (128, 64, 128)  # Road
    assert_contract(train)


def test_camvid_missing_split_names_the_missing_list(camvid_root: Path) -> None:
    with pytest.raises(FcnpipeError, match=r"'test' split: test\.txt"):
        open_dataset(f"camvid:{camvid_root}", "test")


def test_camvid_malformed_line_is_reported(camvid_root: Path) -> None:
    write_lines(camvid_root / "train.txt", ["train/a.png"])
    with pytest.raises(FcnpipeError, match="line 1"):
        open_dataset(f"camvid:{camvid_root}", "train")


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"the real CamVid copy is not at {CAMVID}")
def test_real_camvid_frames_are_360x480_with_labels_up_to_void() -> None:
    train = open_dataset(f"camvid:{CAMVID}", "train")
    assert len(train) == 367
    assert len(open_dataset(f"camvid:{CAMVID}", "val")) == 101
    for index in (0, 200, -1):
        image, label = train[index]
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.int64
        assert label.min() >= 0 and label.max() <= 11
