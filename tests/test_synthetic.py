"""The synthetic orthophoto benchmark: deterministic, complete, georeferenced, needs context."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Compression
from rasterio.transform import Affine
from scipy import ndimage

from fcn import FcnpipeError
from pipeline.training.data.synthetic import (
    CLASSES,
    IGNORE_INDEX,
    PALETTE,
    generate_scene,
    make_benchmark,
    write_scene,
)

Scene = tuple[NDArray[np.uint8], NDArray[np.uint8]]
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def scenes() -> dict[int, Scene]:
    return {seed: generate_scene(512, seed) for seed in SEEDS}


def colour_codes(image: NDArray[np.uint8], levels: int = 16) -> NDArray[np.int64]:
    """Quantise each pixel's RGB to one of levels**3 bins."""
    q = image.astype(np.int64) * levels // 256
    return (q[0] * levels + q[1]) * levels + q[2]


def fit_colour_lookup(image: NDArray[np.uint8], label: NDArray[np.uint8]) -> NDArray[np.int64]:
    """The best classifier that sees only a pixel's (quantised) colour: majority class per bin."""
    counts = np.zeros((16**3, len(CLASSES)), np.int64)
    np.add.at(counts, (colour_codes(image).ravel(), label.ravel()), 1)
    return counts.argmax(axis=1)


def test_same_seed_gives_the_same_bytes(scenes: dict[int, Scene]) -> None:
    image, label = generate_scene(512, 0)
    assert image.tobytes() == scenes[0][0].tobytes()
    assert label.tobytes() == scenes[0][1].tobytes()


def test_different_seeds_give_different_scenes(scenes: dict[int, Scene]) -> None:
    for a, b in itertools.combinations(SEEDS, 2):
        assert not np.array_equal(scenes[a][0], scenes[b][0])
        assert (scenes[a][1] != scenes[b][1]).mean() > 0.3


@pytest.mark.parametrize("size", [512, (97, 160), (300, 41), 64, 1])
def test_image_and_label_shapes_and_values(size: int | tuple[int, int]) -> None:
    image, label = generate_scene(size, 11)
    h, w = (size, size) if isinstance(size, int) else size
    assert image.shape == (3, h, w) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert label.shape == (h, w) and label.dtype == np.uint8
    assert label.max() < len(CLASSES)


def test_rejects_an_empty_size() -> None:
    with pytest.raises(FcnpipeError):
        generate_scene((0, 10), 0)


def test_palette_gives_each_class_its_own_colour() -> None:
    assert len(PALETTE) == len(CLASSES) == len(set(PALETTE))
    assert all(len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) for rgb in PALETTE)


def test_every_class_appears_in_a_512_scene(scenes: dict[int, Scene]) -> None:
    for seed, (_, label) in scenes.items():
        present = set(np.unique(label).tolist())
        assert present == set(range(len(CLASSES))), f"seed {seed} lacks {set(range(6)) - present}"


def test_colour_alone_is_ambiguous(scenes: dict[int, Scene]) -> None:
    for train, test in itertools.permutations(SEEDS[:3], 2):
        lookup = fit_colour_lookup(*scenes[train])
        image, label = scenes[test]
        accuracy = (lookup[colour_codes(image)] == label).mean()
        majority = np.bincount(label.ravel()).max() / label.size
        # Colour helps (better than always guessing the commonest class) but is far from enough.
        assert majority < accuracy < 0.9, (train, test, accuracy)


def test_labels_are_spatially_coherent(scenes: dict[int, Scene]) -> None:
    for label in (label for _, label in scenes.values()):
        pairs = np.concatenate([(label[1:] == label[:-1]).ravel(), (label[:, 1:] == label[:, :-1]).ravel()])
        padded = np.pad(label, 1, mode="edge")
        all_four = (
            (padded[:-2, 1:-1] == label)
            & (padded[2:, 1:-1] == label)
            & (padded[1:-1, :-2] == label)
            & (padded[1:-1, 2:] == label)
        )
        assert pairs.mean() > 0.9
        assert all_four.mean() > 0.75


def dark_share(image: NDArray[np.uint8], label: NDArray[np.uint8], cls: int) -> float:
    """The share of a class's pixels far darker than the class's median: those in shadow."""
    luma = image.astype(np.float32).mean(axis=0)[label == cls]
    return float((luma < 0.65 * np.median(luma)).mean())


def test_shadowed_ground_and_road_keep_their_class(scenes: dict[int, Scene]) -> None:
    ground, road = CLASSES.index("bare_ground"), CLASSES.index("road")
    for image, label in scenes.values():
        assert dark_share(image, label, ground) > 0.05
    images = np.concatenate([image for image, _ in scenes.values()], axis=2)
    labels = np.concatenate([label for _, label in scenes.values()], axis=1)
    assert dark_share(images, labels, road) > 0.02


def test_object_sizes_vary_between_scenes(scenes: dict[int, Scene]) -> None:
    building = CLASSES.index("building")
    medians = []
    for _, label in scenes.values():
        parts, _ = ndimage.label(label == building)
        medians.append(np.median(np.bincount(parts.ravel())[1:]))
    assert max(medians) > 1.5 * min(medians)


@pytest.mark.slow  # wall-clock: the machine running the default suite is shared
def test_a_512_scene_takes_well_under_a_second() -> None:
    best = float("inf")
    for seed in range(3):
        start = time.perf_counter()
        generate_scene(512, seed)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0


@pytest.mark.slow
def test_a_2048_scene_takes_under_ten_seconds() -> None:
    start = time.perf_counter()
    generate_scene(2048, 0)
    assert time.perf_counter() - start < 10.0


def test_written_geotiffs_read_back_with_georeferencing(tmp_path: Path) -> None:
    image, label = generate_scene((300, 520), 7)
    write_scene(
        tmp_path / "image.tif",
        tmp_path / "label.tif",
        image,
        label,
        origin=(1000.0, 2000.0),
        resolution=2.0,
        crs="EPSG:3857",
    )
    expected_transform = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 2000.0)
    with rasterio.open(tmp_path / "image.tif") as src:
        assert src.crs == CRS.from_epsg(3857) and src.transform == expected_transform
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.block_shapes == [(256, 256)] * 3
        assert src.compression == Compression.deflate
        np.testing.assert_array_equal(src.read(), image)
    with rasterio.open(tmp_path / "label.tif") as src:
        assert src.crs == CRS.from_epsg(3857) and src.transform == expected_transform
        assert src.count == 1 and src.nodata == IGNORE_INDEX
        assert src.block_shapes == [(256, 256)]
        colormap = src.colormap(1)
        assert [colormap[i][:3] for i in range(len(PALETTE))] == list(PALETTE)
        np.testing.assert_array_equal(src.read(1), label)


def test_write_scene_rejects_mismatched_arrays(tmp_path: Path) -> None:
    image, label = generate_scene(32, 0)
    with pytest.raises(FcnpipeError):
        write_scene(tmp_path / "i.tif", tmp_path / "l.tif", image, label[:-1])
    with pytest.raises(FcnpipeError):
        write_scene(tmp_path / "i.tif", tmp_path / "l.tif", image[0], label)


def read_raster(path: Path) -> NDArray[np.uint8]:
    with rasterio.open(path) as src:
        bands: NDArray[np.uint8] = src.read()
    return bands


def read_split(root: Path, split: str) -> list[str]:
    return (root / f"{split}.txt").read_text().split()


def test_benchmark_layout_splits_and_footprints(tmp_path: Path) -> None:
    root = make_benchmark(tmp_path / "bench", scenes=7, size=48, seed=3)
    assert root == tmp_path / "bench"
    splits = {split: read_split(root, split) for split in ("train", "val", "test")}
    stems = [stem for names in splits.values() for stem in names]
    assert len(stems) == len(set(stems)) == 7
    assert all(splits.values())
    assert len(splits["train"]) > len(splits["val"]) and len(splits["train"]) > len(splits["test"])
    assert all(stem.startswith(f"{split}_") for split, names in splits.items() for stem in names)
    assert {p.stem for p in (root / "images").glob("*.tif")} == set(stems)
    assert {p.stem for p in (root / "labels").glob("*.tif")} == set(stems)

    description = json.loads((root / "classes.json").read_text())
    assert description["classes"] == list(CLASSES)
    assert description["palette"] == [list(rgb) for rgb in PALETTE]
    assert description["ignore_index"] == IGNORE_INDEX
    assert (description["seed"], description["size"]) == (3, 48)

    footprints = []
    for stem in stems:
        with (
            rasterio.open(root / "images" / f"{stem}.tif") as image,
            rasterio.open(root / "labels" / f"{stem}.tif") as label,
        ):
            assert image.transform == label.transform and image.shape == label.shape == (48, 48)
            footprints.append(image.bounds)
    for a, b in itertools.combinations(footprints, 2):
        apart = a.right <= b.left or b.right <= a.left or a.top <= b.bottom or b.top <= a.bottom
        assert apart, (a, b)


@pytest.mark.parametrize(("scenes", "sizes"), [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1))])
def test_benchmark_split_sizes(tmp_path: Path, scenes: int, sizes: tuple[int, int, int]) -> None:
    root = make_benchmark(tmp_path, scenes=scenes, size=16)
    assert tuple(len(read_split(root, s)) for s in ("train", "val", "test")) == sizes


def test_benchmark_is_reproducible(tmp_path: Path) -> None:
    first = make_benchmark(tmp_path / "a", scenes=3, size=40, seed=5)
    second = make_benchmark(tmp_path / "b", scenes=3, size=40, seed=5)
    other = make_benchmark(tmp_path / "c", scenes=3, size=40, seed=6)
    for stem in read_split(first, "train"):
        path = Path("images") / f"{stem}.tif"
        assert np.array_equal(read_raster(first / path), read_raster(second / path))
        assert not np.array_equal(read_raster(first / path), read_raster(other / path))


def test_benchmark_reads_back_as_a_dataset(tmp_path: Path) -> None:
    from pipeline.training.data import open_dataset
    from pipeline.training.data.synthetic import CLASSES, make_benchmark

    root = make_benchmark(tmp_path / "bench", scenes=3, size=40, seed=2)
    dataset = open_dataset(f"synthetic-ortho:{root}", "train")
    assert dataset.class_names == CLASSES
    image, label = dataset[0]
    assert image.shape == (40, 40, 3) and label.shape == (40, 40)
    assert set(label.flat) <= set(range(len(CLASSES)))
