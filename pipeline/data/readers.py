"""The dataset registry: ``open_dataset("NAME:PATH", split)`` and the names it knows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fcn.errors import FcnpipeError
from pipeline.data.base import SegmentationDataset
from pipeline.data.camvid import CamVid
from pipeline.data.context import PascalContext
from pipeline.data.isprs import Potsdam, Vaihingen
from pipeline.data.nyud import NYUD, NYUDHHA
from pipeline.data.ortho import Ortho
from pipeline.data.siftflow import SiftFlow, SiftFlowGeo
from pipeline.data.voc import SBD, VOC

Opener = Callable[[Path, str], SegmentationDataset]

DATASETS: dict[str, Opener] = {
    "camvid": CamVid,
    "voc": VOC,
    "sbd": SBD,
    "siftflow": SiftFlow,
    "siftflow-geo": SiftFlowGeo,
    "nyud": NYUD,
    "nyud-hha": NYUDHHA,
    "pascal-context": PascalContext,
    "ortho": Ortho,
    # The generated benchmark (pipeline.data.synthetic.make_benchmark) is written in the ortho layout.
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
