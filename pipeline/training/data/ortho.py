"""Orthophoto tiles as GeoTIFF image/label pairs, read with rasterio.

Layout: ``images/<stem>.tif`` and ``labels/<stem>.tif`` (``.tiff`` also accepted), the same stems
in both. Images: the first three bands are red, green, blue, 8-bit. Labels: single-band rasters
whose band 1 holds class indices; pixels equal to the label's nodata value become 255, the ignore
value (so 255 itself is void too). A label with more bands is refused: colour-coded labels such as
the ISPRS benchmarks' have their own readers (``pipeline.training.data.isprs``). An Inria-style folder with
``gt/`` in place of ``labels/`` holds 0/255 building masks, read as 0 background / 1 building.

Splits: ``<split>.txt`` at the root lists stems, one per line. Without any of ``train.txt``,
``val.txt``, ``test.txt`` every split is the whole folder.

Class names: ``classes.json`` (a list of names, or an object ``{"0": name, ...}``) or
``classes.txt`` (one name per line); else ``background, building`` for Inria-style folders; else
``class 0 .. class K-1`` where K-1 is the largest label value found in ``labels/`` (which reads
every label file once, so prefer a classes file for large folders).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning

from fcn.checkpoint import RGB
from fcn.errors import FcnpipeError
from pipeline.training.data.base import VOID, ImageArray, LabelArray, SegmentationDataset
from pipeline.training.data.files import read_lines

SPLITS = ("train", "val", "test")


def tiffs(folder: Path) -> dict[str, Path]:
    """List the GeoTIFFs of a folder by stem."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".tif", ".tiff")}


def opened(path: Path) -> rasterio.DatasetReader:
    """Open a training tile; one without georeferencing (LoveDA's) is as good, so not warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def read_image_raster(path: Path) -> ImageArray:
    """Read bands 1-3 of an 8-bit GeoTIFF as H x W x 3."""
    with opened(path) as src:
        if src.count < 3:
            raise FcnpipeError(
                f"{path} has {src.count} band(s); images need three colour bands (e.g. red, green, "
                "blue) as bands 1-3."
            )
        if src.dtypes[0] != "uint8":
            raise FcnpipeError(
                f"{path} is {src.dtypes[0]}; convert it to 8-bit, e.g. with gdal_translate -ot Byte -scale."
            )
        bands: NDArray[np.uint8] = src.read((1, 2, 3))
    return np.ascontiguousarray(bands.transpose(1, 2, 0))


def read_label_raster(path: Path, binary: bool) -> LabelArray:
    """Read a single-band raster as class indices: nodata to 255, or for a 0/255 mask, 0/1."""
    with opened(path) as src:
        if src.count > 1:
            raise FcnpipeError(
                f"{path} has {src.count} bands; ortho labels hold class indices in band 1 "
                "(ISPRS colour labels: use vaihingen:PATH or potsdam:PATH)."
            )
        band: NDArray[Any] = src.read(1)
        nodata = src.nodata
    if binary:
        return (band > 127).astype(np.int64)
    label = band.astype(np.int64)
    if nodata is not None:
        label[band == nodata] = VOID
    return label


def read_class_names(root: Path) -> tuple[str, ...] | None:
    """Read class names from ``classes.json`` or ``classes.txt``, if either exists."""
    if (root / "classes.json").is_file():
        names = json.loads((root / "classes.json").read_text())
        if isinstance(names, dict) and "classes" in names:  # {"classes": [...], "palette": ...}
            names = names["classes"]
        if isinstance(names, dict):
            try:
                names = [names[str(i)] for i in range(len(names))]
            except KeyError:
                raise FcnpipeError(
                    f"{root / 'classes.json'} must map every index 0..{len(names) - 1} to a name."
                ) from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FcnpipeError(f"{root / 'classes.json'} must be a list of class names.")
        return tuple(names)
    if (root / "classes.txt").is_file():
        return tuple(read_lines(root / "classes.txt"))
    return None


class GeoTiffDataset(SegmentationDataset):
    """Samples whose images are GeoTIFF scenes on disk, so the tiling pipeline can read them directly."""

    _images: dict[str, Path]

    def image_path(self, key: str) -> Path:
        """The GeoTIFF of sample ``key``, for readers that tile it themselves."""
        return self._images[key]

    def load_image(self, key: str) -> ImageArray:
        """Read bands 1-3 of the sample's GeoTIFF as H x W x 3."""
        return read_image_raster(self._images[key])


class Ortho(GeoTiffDataset):
    """GeoTIFF orthophoto tiles with their label rasters."""

    name = "ortho"

    def __init__(self, root: Path, split: str) -> None:
        self._binary = not (root / "labels").is_dir() and (root / "gt").is_dir()
        label_dir = root / ("gt" if self._binary else "labels")
        if not (root / "images").is_dir() or not label_dir.is_dir():
            raise FcnpipeError(
                f"{root} is not an ortho folder: it needs images/ and labels/ (or gt/ for "
                "Inria-style 0/255 masks)."
            )
        self._images, self._labels = tiffs(root / "images"), tiffs(label_dir)
        keys = self._split_keys(root, split)
        unlabelled = [k for k in keys if k not in self._labels]
        if unlabelled:
            raise FcnpipeError(
                f"{len(unlabelled)} images have no label in {label_dir}, e.g. "
                f"{unlabelled[0]!r}; give every image a label of the same name."
            )
        names = read_class_names(root)
        if names is None:
            names = ("background", "building") if self._binary else self._numbered_classes()
        self.class_names = names
        super().__init__(root, split, keys)

    def _split_keys(self, root: Path, split: str) -> list[str]:
        if (root / f"{split}.txt").is_file():
            keys = read_lines(root / f"{split}.txt")
        elif any((root / f"{s}.txt").is_file() for s in SPLITS):
            raise FcnpipeError(f"ortho folder {root} has split lists but no {split}.txt.")
        else:
            keys = list(self._images)
        missing = [k for k in keys if k not in self._images]
        if missing:
            raise FcnpipeError(
                f"{split}.txt lists {len(missing)} stems with no image in {root / 'images'}, "
                f"e.g. {missing[0]!r}."
            )
        return keys

    def _numbered_classes(self) -> tuple[str, ...]:
        top = -1
        for path in self._labels.values():
            label = read_label_raster(path, binary=False)
            valid = label[label != VOID]
            if valid.size:
                top = max(top, int(valid.max()))
        return tuple(f"class {i}" for i in range(top + 1))

    @property
    def palette(self) -> list[RGB]:
        """Colours from ``classes.json`` when it has a palette, else the VOC colour map."""
        path = self.root / "classes.json"
        data = json.loads(path.read_text()) if path.is_file() else None
        if isinstance(data, dict) and len(data.get("palette", [])) == self.num_classes:
            return [(int(c[0]), int(c[1]), int(c[2])) for c in data["palette"]]
        return super().palette

    def load_label(self, key: str) -> LabelArray:
        """Read band 1 of the label raster: nodata becomes 255; Inria masks become 0/1."""
        return read_label_raster(self._labels[key], self._binary)
