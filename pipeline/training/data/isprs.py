"""The ISPRS 2D semantic labeling benchmarks, Vaihingen and Potsdam, in the layouts ISPRS distributes.

Vaihingen: images ``top/top_mosaic_09cm_area<N>.tif`` (IRRG: near-infrared, red, green); labels
``gts_for_participants/top_mosaic_09cm_area<N>.tif``, or when that folder is absent the eroded
``gts_eroded_for_participants/top_mosaic_09cm_area<N>_noBoundary.tif``. Keys: ``area<N>``.

Potsdam: images ``2_Ortho_RGB/top_potsdam_<a>_<b>_RGB.tif``, or when that folder is absent
``4_Ortho_RGBIR/top_potsdam_<a>_<b>_RGBIR.tif`` (bands 1-3 are red, green, blue); labels
``5_Labels_all/top_potsdam_<a>_<b>_label.tif``, else
``5_Labels_all_noBoundary/top_potsdam_<a>_<b>_label_noBoundary.tif``. Keys: ``<a>_<b>``.

Labels are RGB colour rasters in the benchmark's six colours. Each channel is thresholded at 128,
so slightly-off values decode robustly; black (the boundary of the eroded labels) and any other
colour become 255, the ignore value. Other files in the folder (DSMs, nDSMs) are ignored.

Splits: ``<split>.txt`` at the root lists keys, one per line. Without one, ``train`` and ``test``
are the benchmark's official training and test tiles, those present in the folder; the benchmark
has no official ``val`` split, so ``val`` needs a ``val.txt`` of held-out training tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import rasterio
from numpy.typing import NDArray

from fcn.checkpoint import RGB
from fcn.errors import FcnpipeError
from pipeline.training.data.base import VOID, LabelArray
from pipeline.training.data.files import read_lines
from pipeline.training.data.ortho import GeoTiffDataset

CLASS_NAMES = ("impervious surfaces", "building", "low vegetation", "tree", "car", "clutter")
PALETTE: tuple[RGB, ...] = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)


@dataclass(frozen=True)
class Files:
    """One kind of file of a benchmark: its folder, and the file name around each tile's key."""

    folder: str
    prefix: str
    suffix: str

    def find(self, root: Path) -> dict[str, Path]:
        """The files of this kind under ``root``, by key."""
        size = len(self.prefix) + len(self.suffix)
        return {
            p.name[len(self.prefix) : -len(self.suffix)]: p
            for p in sorted((root / self.folder).iterdir())
            if p.name.startswith(self.prefix) and p.name.endswith(self.suffix) and len(p.name) > size
        }


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark keeps its files (in order of preference) and its official tiles."""

    images: tuple[Files, ...]
    labels: tuple[Files, ...]
    train: tuple[str, ...]
    test: tuple[str, ...]
    example_key: str


# The benchmark's official training and test tiles.
VAIHINGEN_TRAIN = tuple(f"area{n}" for n in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37))
VAIHINGEN_TEST = tuple(f"area{n}" for n in (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38))
# fmt: off
POTSDAM_TRAIN = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12",
)
POTSDAM_TEST = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14",
    "6_15", "7_13",
)
# fmt: on

VAIHINGEN = Benchmark(
    images=(Files("top", "top_mosaic_09cm_", ".tif"),),
    labels=(
        Files("gts_for_participants", "top_mosaic_09cm_", ".tif"),
        Files("gts_eroded_for_participants", "top_mosaic_09cm_", "_noBoundary.tif"),
    ),
    train=VAIHINGEN_TRAIN,
    test=VAIHINGEN_TEST,
    example_key="area11",
)
POTSDAM = Benchmark(
    images=(
        Files("2_Ortho_RGB", "top_potsdam_", "_RGB.tif"),
        Files("4_Ortho_RGBIR", "top_potsdam_", "_RGBIR.tif"),
    ),
    labels=(
        Files("5_Labels_all", "top_potsdam_", "_label.tif"),
        Files("5_Labels_all_noBoundary", "top_potsdam_", "_label_noBoundary.tif"),
    ),
    train=POTSDAM_TRAIN,
    test=POTSDAM_TEST,
    example_key="2_10",
)


def colour_codes(channels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The 3-bit code (red 4, green 2, blue 1) of channels-first colours, each channel thresholded at 128."""
    bits = (channels[:3] >= 128).astype(np.uint8)
    codes: NDArray[np.uint8] = (bits[0] << 2) | (bits[1] << 1) | bits[2]
    return codes


def decode_colours(channels: NDArray[np.uint8]) -> LabelArray:
    """Class indices of a 3 x H x W colour label; black and colours of no class become 255."""
    table = np.full(8, VOID, dtype=np.int64)
    table[colour_codes(np.array(PALETTE, dtype=np.uint8).T)] = np.arange(len(PALETTE))
    label: LabelArray = table[colour_codes(channels)]
    return label


def read_colour_label(path: Path) -> LabelArray:
    """Read an ISPRS colour label raster (bands 1-3 red, green, blue, 8-bit) as class indices."""
    with rasterio.open(path) as src:
        if src.count < 3 or src.dtypes[0] != "uint8":
            raise FcnpipeError(
                f"{path} is a {src.count}-band {src.dtypes[0]} raster; ISPRS labels are 8-bit RGB "
                "colour images with red, green and blue as bands 1-3."
            )
        channels: NDArray[np.uint8] = src.read((1, 2, 3))
    return decode_colours(channels)


class Isprs(GeoTiffDataset):
    """One split of an ISPRS benchmark, read from the folder layout ISPRS distributes."""

    benchmark: ClassVar[Benchmark]
    class_names = CLASS_NAMES

    def __init__(self, root: Path, split: str) -> None:
        self._images = self._find(root, self.benchmark.images)
        self._labels = self._find(root, self.benchmark.labels)
        super().__init__(root, split, self._split_keys(root, split))

    def _find(self, root: Path, choices: tuple[Files, ...]) -> dict[str, Path]:
        for files in choices:
            if (root / files.folder).is_dir():
                return files.find(root)
        folders = " or ".join(f"{files.folder}/" for files in choices)
        raise FcnpipeError(f"{root} is not a {self.name} folder: it needs {folders}.")

    def _split_keys(self, root: Path, split: str) -> list[str]:
        listed = root / f"{split}.txt"
        keys = read_lines(listed) if listed.is_file() else self._official_keys(root, split)
        for files, kind in ((self._images, "image"), (self._labels, "label")):
            missing = [k for k in keys if k not in files]
            if missing:
                raise FcnpipeError(
                    f"{len(missing)} {split} tiles of {root} have no {kind}, e.g. {missing[0]!r}; add "
                    f"the file or list the tiles you have in {listed.name}."
                )
        return keys

    def _official_keys(self, root: Path, split: str) -> list[str]:
        official = {"train": self.benchmark.train, "test": self.benchmark.test}.get(split)
        if official is None:
            tiles = "held-out training tiles" if split == "val" else "its tiles"
            raise FcnpipeError(
                f"{self.name} has no official {split} split: list {tiles} in {root / f'{split}.txt'}, "
                f"one key per line (keys look like {self.benchmark.example_key})."
            )
        keys = [k for k in official if k in self._images]
        if not keys:
            raise FcnpipeError(
                f"{root} holds none of the {self.name} {split} tiles, e.g. {official[0]!r}; add them or "
                f"list the tiles to use in {split}.txt."
            )
        return keys

    @property
    def palette(self) -> list[RGB]:
        """The benchmark's label colours."""
        return list(PALETTE)

    def load_label(self, key: str) -> LabelArray:
        """Decode the colour label raster of ``key``: black and unknown colours become 255."""
        return read_colour_label(self._labels[key])


class Vaihingen(Isprs):
    """ISPRS Vaihingen: 9 cm IRRG tiles, read as they are: bands 1-3 become the network's three channels.

    The images have no blue band: the network's red, green, blue inputs receive near-infrared, red
    and green, so a model pretrained on RGB sees false colour (vegetation red) until fine-tuned.
    """

    name = "vaihingen"
    benchmark = VAIHINGEN


class Potsdam(Isprs):
    """ISPRS Potsdam: 5 cm RGB tiles (or RGBIR, of which bands 1-3 are red, green, blue)."""

    name = "potsdam"
    benchmark = POTSDAM
