"""PASCAL VOC segmentation (2011/2012) and the Semantic Boundaries Dataset (SBD), 21 classes.

VOC layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs whose indices are
the classes, 255 on object boundaries = void) and ``ImageSets/Segmentation/<split>.txt``. The FCN
paper's ``seg11valid`` split (VOC2011 val minus the images in SBD train) is read from
``ImageSets/Segmentation/seg11valid.txt``, ``seg11valid.txt`` at the root, or, failing both, the
list fcnpipe ships in ``splits/voc/``: the reference's ``data/pascal/seg11valid.txt`` (736 ids,
github.com/shelhamer/fcn.berkeleyvision.org), so "train on SBD, validate on seg11valid" needs no
file but the two datasets.

SBD layout (``benchmark_RELEASE/dataset``): ``img/<id>.jpg``, ``cls/<id>.mat`` (struct ``GTcls``
with field ``Segmentation``) and ``<split>.txt`` at the root. SBD has no void label.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.training.data.base import ImageArray, LabelArray, SegmentationDataset
from pipeline.training.data.files import (
    load_mat,
    read_index_png,
    read_lines,
    read_rgb,
    require_dirs,
    shipped_split,
    split_file,
)

CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

SPLITS = Path("ImageSets", "Segmentation")


class VOC(SegmentationDataset):
    """PASCAL VOC segmentation: background and 20 object classes, 255 void."""

    name = "voc"
    class_names = CLASSES

    def __init__(self, root: Path, split: str) -> None:
        require_dirs(self.name, root, "JPEGImages", "SegmentationClass")
        candidates = [SPLITS / f"{split}.txt"]
        if split == "seg11valid":
            candidates += [Path("seg11valid.txt"), *shipped_split("voc", split)]
        super().__init__(root, split, read_lines(split_file(self.name, root, split, candidates)))

    def load_image(self, key: str) -> ImageArray:
        """Read ``JPEGImages/<key>.jpg``."""
        return read_rgb(self.root / "JPEGImages" / f"{key}.jpg")

    def load_label(self, key: str) -> LabelArray:
        """Read the palette indices of ``SegmentationClass/<key>.png``."""
        return read_index_png(self.root / "SegmentationClass" / f"{key}.png")


class SBD(SegmentationDataset):
    """The Semantic Boundaries Dataset's class segmentations: the VOC classes on 11k images."""

    name = "sbd"
    class_names = CLASSES

    def __init__(self, root: Path, split: str) -> None:
        require_dirs(self.name, root, "img", "cls")
        listing = split_file(self.name, root, split, [Path(f"{split}.txt")])
        super().__init__(root, split, read_lines(listing))

    def load_image(self, key: str) -> ImageArray:
        """Read ``img/<key>.jpg``."""
        return read_rgb(self.root / "img" / f"{key}.jpg")

    def load_label(self, key: str) -> LabelArray:
        """Read ``GTcls.Segmentation`` of ``cls/<key>.mat``."""
        gtcls = load_mat(self.root / "cls" / f"{key}.mat", "GTcls")
        return gtcls[0]["Segmentation"][0].astype("int64")  # type: ignore[no-any-return]
