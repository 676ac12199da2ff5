"""NYU Depth v2 (1,449 indoor RGB-D frames) in the 40-class task of Gupta et al., FCN layout.

Layout: ``data/images/img_<id>.png`` (RGB), ``segmentation/img_<id>.mat`` (variable
``segmentation``, classes 1..40 and 0 void, shifted to 0..39 and 255), HHA encodings of depth in
``data/hha/img_<id>.png`` (the FCN reference) or ``hha/img_<id>.png``, and ``{train,val,test}.txt``
listing ids such as ``5001`` (else the reference's lists fcnpipe ships, ``splits/nyud/``;
``trainval`` is ``train`` then ``val``).
"""

from __future__ import annotations

from pathlib import Path

from fcn.errors import FcnpipeError
from fcn.normalization import CAFFE_NYUD_COLOR, CAFFE_NYUD_HHA
from pipeline.training.data.base import ImageArray, LabelArray, SegmentationDataset, shift_void
from pipeline.training.data.files import (
    load_mat,
    read_lines,
    read_rgb,
    require_dirs,
    shipped_split,
    split_file,
)

CLASSES = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refridgerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
)


def split_ids(root: Path, split: str) -> list[str]:
    """The ids of ``split``: ``<split>.txt`` at the root, else the reference's list fcnpipe ships.

    ``trainval`` without a list of its own is ``train`` then ``val``, as the reference trains on.
    """
    candidates = [Path(f"{split}.txt"), *shipped_split("nyud", split)]
    if split == "trainval" and not (root / candidates[0]).is_file():
        own = [(root / f"{half}.txt").is_file() for half in ("train", "val")]
        if any(own) and not all(own):  # one half the folder's, one the release's: they may overlap
            raise FcnpipeError(
                f"nyud at {root} has {'train' if own[0] else 'val'}.txt but no "
                f"{'val' if own[0] else 'train'}.txt, so its trainval is unclear: add trainval.txt."
            )
        return split_ids(root, "train") + split_ids(root, "val")
    return read_lines(split_file("nyud", root, split, candidates))


class NYUD(SegmentationDataset):
    """NYUDv2 colour images with 40 classes; 255 void."""

    name = "nyud"
    class_names = CLASSES
    image_dirs: tuple[str, ...] = ("data/images",)
    reference_input = CAFFE_NYUD_COLOR

    def __init__(self, root: Path, split: str) -> None:
        require_dirs(self.name, root, "segmentation")
        found = [d for d in self.image_dirs if (root / d).is_dir()]
        if not found:
            raise FcnpipeError(
                f"{root} is not a {self.name} folder: it lacks {' or '.join(self.image_dirs)}/."
            )
        self.image_dir = root / found[0]
        super().__init__(root, split, split_ids(root, split))

    def load_image(self, key: str) -> ImageArray:
        """Read ``img_<key>.png`` from the image folder."""
        return read_rgb(self.image_dir / f"img_{key}.png")

    def load_label(self, key: str) -> LabelArray:
        """Read ``segmentation/img_<key>.mat``, shifted to 0-based classes with 255 void."""
        return shift_void(load_mat(self.root / "segmentation" / f"img_{key}.mat", "segmentation"))


class NYUDHHA(NYUD):
    """NYUDv2 with the HHA encoding of depth in place of the colour image."""

    name = "nyud-hha"
    image_dirs = ("data/hha", "hha")
    reference_input = CAFFE_NYUD_HHA
