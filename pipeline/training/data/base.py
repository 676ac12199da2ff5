"""What every dataset reader is: a list of sample keys and two loaders, image and label."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fcn.checkpoint import RGB, default_palette
from fcn.errors import FcnpipeError
from fcn.normalization import CAFFE_VGG16, Normalization

ImageArray = NDArray[Any]
"""An H x W x 3 uint8 RGB image; H x W x C when further channels follow the colour (NYUD's depth
in millimetres as float32, or its HHA encoding: :meth:`SegmentationDataset.extra_inputs`)."""
LabelArray = NDArray[np.int64]
"""An H x W map of class indices, with the dataset's ``ignore_index`` where there is no label; for a
dataset with several heads, one such map per head (heads x H x W)."""
Sample = tuple[ImageArray, LabelArray]

VOID = 255


class SegmentationDataset(ABC):
    """A split of a segmentation dataset: ``dataset[i]`` reads the i-th ``(image, label)`` pair."""

    name: str
    class_names: tuple[str, ...]
    ignore_index: int = VOID
    reference_input: Normalization = CAFFE_VGG16
    """What the FCN reference's data layer feeds a network started from the Caffe VGG16 for this
    dataset: its mean, in its channel order. ImageNet's mean unless a dataset's layer says otherwise
    (VOC and PASCAL-Context subtract it, to within 1e-5)."""
    head_sizes: tuple[tuple[str, int], ...] = ()
    """``(name, classes)`` of each labelling when a sample has several (``class_names`` runs through
    them in order); empty for one labelling (``fcn.checkpoint.Head``)."""

    def __init__(self, root: Path, split: str, keys: list[str]) -> None:
        self.root = root
        self.split = split
        self.keys = keys

    @property
    def num_classes(self) -> int:
        """How many classes the labels distinguish (the ignore value not counted)."""
        return len(self.class_names)

    def extra_inputs(self, colour: Normalization) -> tuple[Normalization, ...]:
        """How the channels after the colour are normalised when the colour is by ``colour`` (none here)."""
        return ()

    @property
    def channels(self) -> int:
        """How many channels an image has: the colour's three and any further ones."""
        return 3 + sum(group.channels for group in self.extra_inputs(self.reference_input))

    @property
    def palette(self) -> list[RGB]:
        """One RGB colour per class for drawing label maps; the VOC colour map unless overridden."""
        return default_palette(self.num_classes)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Sample:
        key = self.keys[index]
        image, label = self.load_image(key), self.load_label(key)
        if image.shape[:2] != label.shape[-2:]:
            raise FcnpipeError(
                f"{self.name} sample {key!r} has a {image.shape[1]}x{image.shape[0]} image but "
                f"a {label.shape[-1]}x{label.shape[-2]} label; fix it or drop it from the "
                f"{self.split} list."
            )
        return image, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {self.split!r}, n={len(self)})"

    @abstractmethod
    def load_image(self, key: str) -> ImageArray:
        """Read the RGB image of one sample."""

    @abstractmethod
    def load_label(self, key: str) -> LabelArray:
        """Read the label map of one sample."""


def shift_void(raw: NDArray[np.generic]) -> LabelArray:
    """Labels stored as 1..K with 0 (or negative) for void become 0..K-1 with 255 for void."""
    label = raw.astype(np.int64) - 1
    label[label < 0] = VOID
    return label
