"""The dataset registry: ``open_dataset("NAME:PATH", split)`` and the names it knows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fcn.errors import FcnpipeError
from pipeline.training.data.base import SegmentationDataset
from pipeline.training.data.camvid import CamVid
from pipeline.training.data.context import PascalContext
from pipeline.training.data.isprs import Potsdam, Vaihingen
from pipeline.training.data.nyud import NYUD, NYUDHHA, NYUDColorDepth, NYUDColorHHA
from pipeline.training.data.ortho import Ortho
from pipeline.training.data.siftflow import SiftFlow, SiftFlowBoth, SiftFlowGeo
from pipeline.training.data.voc import SBD, VOC

Opener = Callable[[Path, str], SegmentationDataset]

DATASETS: dict[str, Opener] = {
    "camvid": CamVid,
    "voc": VOC,
    "sbd": SBD,
    "siftflow": SiftFlow,
    "siftflow-geo": SiftFlowGeo,
    "siftflow-both": SiftFlowBoth,
    "nyud": NYUD,
    "nyud-hha": NYUDHHA,
    "nyud-color-d": NYUDColorDepth,
    "nyud-color-hha": NYUDColorHHA,
    "pascal-context": PascalContext,
    "ortho": Ortho,
    # The generated benchmark (training.data.synthetic.make_benchmark) is written in the ortho layout.
    "synthetic-ortho": Ortho,
    "vaihingen": Vaihingen,
    "potsdam": Potsdam,
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`open_dataset`."""
    return sorted(DATASETS)


def open_dataset(spec: str, split: str) -> SegmentationDataset:
    """Open one split of the dataset ``spec`` = ``NAME:PATH``, e.g. ``camvid:/data/camvid``."""
    name, sep, path = spec.partition(":")
    if not sep or not path:
        raise FcnpipeError(f"dataset {spec!r} must read NAME:PATH, e.g. camvid:/data/camvid.")
    if name not in DATASETS:
        raise FcnpipeError(f"unknown dataset {name!r}; choose one of: {', '.join(available_datasets())}.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FcnpipeError(f"the {name} folder {root} does not exist.")
    return DATASETS[name](root, split)
