"""SIFT Flow (2,688 outdoor scenes, 256 x 256) with its semantic and geometric labellings.

Layout, as unpacked from ``SiftFlowDataset.zip``: ``Images/<SCENES>/<name>.jpg``,
``SemanticLabels/<SCENES>/<name>.mat`` and ``GeoLabels/<SCENES>/<name>.mat`` (variable ``S``), where
``<SCENES>`` is ``spatial_envelope_256x256_static_8outdoorcategories``. Semantic labels are 1..33
with 0 unlabelled; geometric labels are 1..3 (sky, horizontal, vertical) with 0 or -1 unlabelled.
As in the FCN reference, both are shifted to start at 0 with 255 for unlabelled.

Splits: ``<split>.txt`` at the root if present (the FCN reference's ``trainval.txt``/``test.txt``);
otherwise ``train`` reads ``TrainSet1.txt`` and ``test`` reads ``TestSet1.txt``; failing those,
``trainval`` and ``test`` are the reference's lists that fcnpipe ships (``splits/siftflow/``).
Lines may name a scene bare (``coast_arnat59``) or as a file path (``<SCENES>/coast_arnat59.jpg``).
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import numpy as np

from fcn.checkpoint import RGB, default_palette
from fcn.normalization import CAFFE_SIFTFLOW
from pipeline.training.data.base import ImageArray, LabelArray, SegmentationDataset, shift_void
from pipeline.training.data.files import (
    load_mat,
    read_lines,
    read_rgb,
    require_dirs,
    shipped_split,
    split_file,
)

SCENES = "spatial_envelope_256x256_static_8outdoorcategories"

SEMANTIC_CLASSES = (
    "awning",
    "balcony",
    "bird",
    "boat",
    "bridge",
    "building",
    "bus",
    "car",
    "cow",
    "crosswalk",
    "desert",
    "door",
    "fence",
    "field",
    "grass",
    "moon",
    "mountain",
    "person",
    "plant",
    "pole",
    "river",
    "road",
    "rock",
    "sand",
    "sea",
    "sidewalk",
    "sign",
    "sky",
    "staircase",
    "streetlight",
    "sun",
    "tree",
    "window",
)
GEOMETRIC_CLASSES = ("sky", "horizontal", "vertical")

ORIGINAL_SPLITS = {"train": "TrainSet1.txt", "test": "TestSet1.txt"}


class SiftFlow(SegmentationDataset):
    """SIFT Flow's 33 semantic classes; 255 unlabelled."""

    name = "siftflow"
    class_names: tuple[str, ...] = SEMANTIC_CLASSES
    label_dir = "SemanticLabels"
    reference_input = CAFFE_SIFTFLOW

    def __init__(self, root: Path, split: str) -> None:
        labels = ("SemanticLabels", "GeoLabels") if self.head_sizes else (self.label_dir,)
        require_dirs(self.name, root, f"Images/{SCENES}", *(f"{d}/{SCENES}" for d in labels))
        candidates = [Path(f"{split}.txt")]
        if split in ORIGINAL_SPLITS:
            candidates.append(Path(ORIGINAL_SPLITS[split]))
        candidates += shipped_split("siftflow", split)
        lines = read_lines(split_file(self.name, root, split, candidates))
        # PureWindowsPath splits on both / and \, whichever the list was written with.
        super().__init__(root, split, [PureWindowsPath(line).stem for line in lines])

    def load_image(self, key: str) -> ImageArray:
        """Read ``Images/<SCENES>/<key>.jpg``."""
        return read_rgb(self.root / "Images" / SCENES / f"{key}.jpg")

    def load_label(self, key: str) -> LabelArray:
        """Read variable ``S`` of the label file, shifted to 0-based classes, 255 unlabelled."""
        return shift_void(load_mat(self.root / self.label_dir / SCENES / f"{key}.mat", "S"))


class SiftFlowGeo(SiftFlow):
    """SIFT Flow's geometric labelling: sky, horizontal, vertical; 255 unlabelled."""

    name = "siftflow-geo"
    class_names = GEOMETRIC_CLASSES
    label_dir = "GeoLabels"


class SiftFlowBoth(SiftFlow):
    """Both labellings at once, for the reference's two-headed net: semantic, then geometric.

    A label is a (2, H, W) stack; the classes are the 33 semantic then the 3 geometric ones, each
    labelling with its own colours.
    """

    name = "siftflow-both"
    class_names = SEMANTIC_CLASSES + GEOMETRIC_CLASSES
    head_sizes = (("semantic", len(SEMANTIC_CLASSES)), ("geometric", len(GEOMETRIC_CLASSES)))

    @property
    def palette(self) -> list[RGB]:
        """Each labelling's colours from the start of the colour map."""
        return [colour for _, n in self.head_sizes for colour in default_palette(n)]

    def load_label(self, key: str) -> LabelArray:
        """The semantic and the geometric label of ``key``, stacked."""
        semantic = super().load_label(key)
        geometric = shift_void(load_mat(self.root / SiftFlowGeo.label_dir / SCENES / f"{key}.mat", "S"))
        return np.stack([semantic, geometric])
