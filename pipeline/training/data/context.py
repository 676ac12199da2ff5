"""PASCAL-Context in the 59-class task (plus background) that the FCN paper evaluates.

Layout: the VOC2010 root (``JPEGImages/``, ``ImageSets/``) and the PASCAL-Context annotations:
``trainval/<id>.mat`` (variable ``LabelMap`` with the full 459 labels), ``labels.txt`` (``index:
name`` of those 459) and ``59_labels.txt`` (``index: name`` of the 59 task classes; a ``0:
background`` line is allowed and skipped). Either both in one folder (the annotations unpacked into
the VOC2010 root), or side by side as the FCN reference keeps them: ``PATH/pascal/VOC2010`` (or
``PATH/VOC2010``, ``PATH/VOCdevkit/VOC2010``) and ``PATH/pascal-context``.

As in the FCN reference, a full label becomes task class ``k`` (1..59, the k-th line of
``59_labels.txt``) when its name matches the task name with spaces removed, where the task names
``diningtable``, ``bedcloth`` and ``clothes`` are spelled ``table``, ``bedclothes`` and ``cloth`` in
``labels.txt``. Every other label is background (0), which is a class, not void: the 60-way output
scores every pixel, so ``ignore_index`` (255) never occurs.

Splits: ``ImageSets/Main/<split>.txt`` as in the reference (VOC2010 train/val, 4,998 / 5,105
images, all annotated by PASCAL-Context), else ``ImageSets/Segmentation/<split>.txt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fcn.errors import FcnpipeError
from pipeline.training.data.base import ImageArray, LabelArray, SegmentationDataset
from pipeline.training.data.files import load_mat, read_lines, read_rgb, require_dirs, split_file

# Task spelling -> spelling in the full label list.
RENAMED = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def read_index_names(path: Path) -> list[tuple[int, str]]:
    """Read the ``index: name`` lines of a PASCAL-Context label list."""
    if not path.is_file():
        raise FcnpipeError(
            f"pascal-context needs {path} (lines 'index: name') to map the 459 full labels to "
            "the 59 classes; put it beside trainval/ (it comes with the PASCAL-Context download)."
        )
    entries = []
    for line in read_lines(path):
        index, sep, name = line.partition(":")
        if not sep or not index.strip().isdigit():
            raise FcnpipeError(f"{path} has a line {line!r}; every line must read 'index: name'.")
        entries.append((int(index), name.strip()))
    return entries


def lookup_table(full: list[tuple[int, str]], task: list[str]) -> NDArray[np.int64]:
    """Map each full label index to its task class (1-based, in ``task`` order), others to 0."""
    full_index = {name.replace(" ", ""): index for index, name in full}
    table = np.zeros(max(full_index.values()) + 1, dtype=np.int64)
    for position, name in enumerate(task, start=1):
        key = RENAMED.get(name.replace(" ", ""), name.replace(" ", ""))
        if key not in full_index:
            raise FcnpipeError(f"the 59-class name {name!r} is not among the full labels.")
        table[full_index[key]] = position
    return table


def first_with(root: Path, marker: str, places: tuple[str, ...]) -> Path:
    """``root`` if it holds ``marker``, else the first of ``places`` under it that does (else ``root``)."""
    for folder in (root, *(root / place for place in places)):
        if (folder / marker).is_dir():
            return folder
    return root


class PascalContext(SegmentationDataset):
    """PASCAL-Context: background plus the 59 most frequent classes."""

    name = "pascal-context"

    def __init__(self, root: Path, split: str) -> None:
        self._voc = first_with(root, "JPEGImages", ("pascal/VOC2010", "VOC2010", "VOCdevkit/VOC2010"))
        self._context = first_with(root, "trainval", ("pascal-context",))
        require_dirs(self.name, self._voc, "JPEGImages")
        require_dirs(self.name, self._context, "trainval")
        task = [name for index, name in read_index_names(self._context / "59_labels.txt") if index != 0]
        self._table = lookup_table(read_index_names(self._context / "labels.txt"), task)
        self.class_names = ("background", *task)
        candidates = [Path("ImageSets", sets, f"{split}.txt") for sets in ("Main", "Segmentation")]
        super().__init__(root, split, read_lines(split_file(self.name, self._voc, split, candidates)))

    def load_image(self, key: str) -> ImageArray:
        """Read ``JPEGImages/<key>.jpg`` of the VOC2010 root."""
        return read_rgb(self._voc / "JPEGImages" / f"{key}.jpg")

    def load_label(self, key: str) -> LabelArray:
        """Read ``trainval/<key>.mat``, its full labels mapped to the 59 classes or background."""
        path = self._context / "trainval" / f"{key}.mat"
        full = load_mat(path, "LabelMap").astype(np.int64)
        if full.min() < 0 or full.max() >= self._table.size:
            raise FcnpipeError(f"{path} holds labels that labels.txt does not list.")
        return self._table[full]
