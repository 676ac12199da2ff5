"""The PASCAL-Context reader (``pipeline.training.data.context``) against tiny replicas of its layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from tests.conftest import (
    assert_contract,
    assert_jpeg_close,
    label_map,
    save_image,
    save_mat,
    smooth_image,
    write_lines,
)

# The full labels, 1-based as in labels.txt.
FULL_LABELS = ["1: accordion", "2: aeroplane", "3: table", "4: wall", "5: potted plant"]
# The task list: background line, then aeroplane, the task's "diningtable", wall, "pottedplant".
TASK_LABELS = ["0: background", "1: aeroplane", "2: diningtable", "3: wall", "4: pottedplant"]


@pytest.fixture
def context_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(["2008_000002", "2008_000003", "2008_000007"]):
        save_image(tmp_path / "JPEGImages" / f"{stem}.jpg", smooth_image(seed))
        full = label_map([1, 2, 3, 4, 5], seed).astype(np.uint16)
        save_mat(tmp_path / "trainval" / f"{stem}.mat", {"LabelMap": full})
    write_lines(tmp_path / "labels.txt", FULL_LABELS)
    write_lines(tmp_path / "59_labels.txt", TASK_LABELS)
    write_lines(tmp_path / "ImageSets" / "Main" / "train.txt", ["2008_000002", "2008_000003"])
    write_lines(tmp_path / "ImageSets" / "Main" / "val.txt", ["2008_000007"])
    return tmp_path


def test_pascal_context_maps_full_labels_to_task_classes_by_name(context_root: Path) -> None:
    val = open_dataset(f"pascal-context:{context_root}", "val")
    assert len(val) == 1 and len(open_dataset(f"pascal-context:{context_root}", "train")) == 2
    image, label = val[0]
    assert_jpeg_close(image, smooth_image(2))
    # accordion is not a task class -> background 0; table is the task's diningtable (2).
    np.testing.assert_array_equal(label, label_map([0, 1, 2, 3, 4], 2))
    assert val.class_names == ("background", "aeroplane", "diningtable", "wall", "pottedplant")
    assert_contract(val)


def test_pascal_context_in_the_references_two_folders_reads_the_same_samples(
    context_root: Path, tmp_path: Path
) -> None:
    """data/pascal/VOC2010 for the images and lists, data/pascal-context for the annotations."""
    data = tmp_path / "data"
    voc, context = data / "pascal" / "VOC2010", data / "pascal-context"
    for name in ("JPEGImages", "ImageSets"):
        shutil.copytree(context_root / name, voc / name)
    for name in ("trainval", "labels.txt", "59_labels.txt"):
        (shutil.copytree if name == "trainval" else shutil.copy)(context_root / name, context / name)
    merged, apart = (open_dataset(f"pascal-context:{r}", "train") for r in (context_root, data))
    assert apart.keys == merged.keys and apart.class_names == merged.class_names
    for (image_a, label_a), (image_b, label_b) in zip(merged, apart, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(label_a, label_b)


def test_pascal_context_without_the_59_class_list_says_so(context_root: Path) -> None:
    (context_root / "59_labels.txt").unlink()
    with pytest.raises(FcnpipeError, match=r"59_labels\.txt"):
        open_dataset(f"pascal-context:{context_root}", "train")


def test_pascal_context_falls_back_to_segmentation_lists(context_root: Path) -> None:
    (context_root / "ImageSets" / "Main").rename(context_root / "ImageSets" / "Segmentation")
    assert len(open_dataset(f"pascal-context:{context_root}", "train")) == 2
