"""NYU Depth v2 (1,449 indoor RGB-D frames) in the 40-class task of Gupta et al., FCN layout.

Layout: ``data/images/img_<id>.png`` (RGB), ``segmentation/img_<id>.mat`` (variable
``segmentation``, classes 1..40 and 0 void, shifted to 0..39 and 255), HHA encodings of depth in
``data/hha/img_<id>.png`` (the FCN reference) or ``hha/img_<id>.png``, depth in millimetres as
16-bit PNGs in ``data/depth/img_<id>.png`` (the reference's ``nyud_layers.py``), and
``{train,val,test}.txt``
listing ids such as ``5001`` (else the reference's lists fcnpipe ships, ``splits/nyud/``;
``trainval`` is ``train`` then ``val``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fcn.errors import FcnpipeError
from fcn.normalization import CAFFE_NYUD_COLOR, CAFFE_NYUD_HHA, NYUD_LOG_DEPTH, Normalization
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


class NYUDColorDepth(NYUD):
    """NYUDv2 colour and depth as four channels (RGB, then depth in millimetres), for ``fcn32s-color-d``.

    Depth is fed as the reference feeds it, whatever the colour's normalisation: its logarithm less
    the mean log depth 7.844 (``fcn.normalization.NYUD_LOG_DEPTH``).
    """

    name = "nyud-color-d"

    def __init__(self, root: Path, split: str) -> None:
        require_dirs(self.name, root, "data/depth")
        super().__init__(root, split)

    def extra_inputs(self, colour: Normalization) -> tuple[Normalization, ...]:
        """Log depth after the colour."""
        return (NYUD_LOG_DEPTH,)

    def load_image(self, key: str) -> ImageArray:
        """Colour and ``data/depth/img_<key>.png`` stacked, as float32."""
        depth = read_depth(self.root / "data" / "depth" / f"img_{key}.png")
        return stacked(self.name, key, super().load_image(key).astype(np.float32), depth[..., None])


class NYUDColorHHA(NYUD):
    """NYUDv2 colour and HHA as six channels (RGB, then HHA as stored), for ``fcn32s-color-hha``."""

    name = "nyud-color-hha"

    def __init__(self, root: Path, split: str) -> None:
        if not any((root / d).is_dir() for d in NYUDHHA.image_dirs):
            raise FcnpipeError(
                f"{root} is not a {self.name} folder: it lacks {' or '.join(NYUDHHA.image_dirs)}/."
            )
        super().__init__(root, split)
        self.hha = NYUDHHA(root, split)

    def extra_inputs(self, colour: Normalization) -> tuple[Normalization, ...]:
        """HHA after the colour, in the colour's scale and spread, less HHA's own mean and unflipped.

        From the Caffe VGG16 this is the reference's HHA input exactly (``CAFFE_NYUD_HHA``).
        """
        mean = tuple(m * colour.scale for m in CAFFE_NYUD_HHA.mean)
        return (Normalization(channel_order="RGB", scale=colour.scale, mean=mean, std=colour.std),)

    def load_image(self, key: str) -> ImageArray:
        """Colour and HHA side by side."""
        return stacked(self.name, key, super().load_image(key), self.hha.load_image(key))


def stacked(dataset: str, key: str, colour: ImageArray, more: ImageArray) -> ImageArray:
    """The colour image and further channels of one sample side by side; sizes must agree."""
    if colour.shape[:2] != more.shape[:2]:
        raise FcnpipeError(
            f"{dataset} sample {key!r} has a {colour.shape[1]}x{colour.shape[0]} colour image but "
            f"{more.shape[1]}x{more.shape[0]} further channels; fix it or drop it from the split list."
        )
    return np.concatenate([colour, more], axis=2)


def read_depth(path: Path) -> ImageArray:
    """A depth PNG (16-bit millimetres) as an H x W float32 array."""
    try:
        with Image.open(path) as image:
            return np.array(image, dtype=np.float32)
    except FileNotFoundError:
        raise FcnpipeError(f"missing depth {path}; the dataset folder is incomplete.") from None
