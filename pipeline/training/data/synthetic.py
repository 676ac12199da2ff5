"""A synthetic orthophoto segmentation benchmark, drawn from a seed and shipped as code.

A scene is painted in layers, each one writing colour and class where it lies: textured bare
ground, grass, a river or ponds, a road network with lane markings, cars in the lanes, buildings
with pitched or flat roofs, and trees. Everything that stands up also writes a height map, from
which shadows are cast away from the sun; a shadowed pixel keeps the class of what it falls on,
so a dark pixel alone does not say its class. Cars share colours with roofs, grey roofs with
asphalt, and every scene has its own size factor for objects (0.7-1.4), sun, illumination gain,
colour cast and brightness gradient, so colour alone is not enough: context is needed.

Sizes are in pixels of a nominal 0.5 m ground resolution. Everything is numpy and
``scipy.ndimage``; objects are drawn in their own small windows, so a 2048 x 2048 scene takes a
few seconds on one core.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.transform import Affine
from scipy import fft, ndimage  # type: ignore[import-untyped]

from fcn.errors import FcnpipeError

Float = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
Bytes = npt.NDArray[np.uint8]
Colour = tuple[int, int, int]

CLASSES: Final = ("bare_ground", "building", "road", "vegetation", "water", "car")
PALETTE: Final[tuple[Colour, ...]] = (
    (180, 150, 110),
    (220, 40, 40),
    (110, 110, 110),
    (40, 160, 60),
    (40, 110, 220),
    (250, 220, 30),
)
IGNORE_INDEX: Final = 255
ORIGIN: Final = (500000.0, 4500000.0)
RESOLUTION: Final = 0.5
CRS: Final = "EPSG:32633"

_GROUND, _BUILDING, _ROAD, _VEGETATION, _WATER, _CAR = range(len(CLASSES))

# Cars and roofs share red, grey, white and dark tones, so a small red rectangle is not a car by
# its colour alone.
_ROOF_COLOURS: Final[tuple[Colour, ...]] = (
    (172, 88, 62),
    (150, 66, 52),
    (128, 128, 132),
    (88, 88, 94),
    (206, 204, 198),
    (122, 98, 78),
    (186, 116, 84),
    (110, 120, 128),
)
_CAR_COLOURS: Final[tuple[Colour, ...]] = (
    (232, 232, 230),
    (196, 198, 202),
    (128, 128, 132),
    (34, 36, 40),
    (168, 42, 38),
    (52, 72, 128),
    (150, 66, 52),
)
_SPLITS: Final = (("train", 0.70), ("val", 0.15), ("test", 0.15))
_SCENES_PER_ROW: Final = 8
_ROAD_PIECE: Final = 128.0
_SCENE_GAP_M: Final = 100.0


@dataclass(frozen=True)
class _Look:
    """What is shared by every object of a scene: size, sun and the direction of the street grid."""

    scale: float
    sun: tuple[float, float]  # unit (dy, dx) pointing towards the sun
    shadow_length: float  # shadow length per unit of height
    grid_angle: float


@dataclass
class _Canvas:
    """The scene being painted: colour (H, W, 3), class, and height above ground for shadows."""

    rgb: Float
    label: Bytes
    height: Float

    @classmethod
    def blank(cls, shape: tuple[int, int]) -> _Canvas:
        """Make an empty canvas: black, bare ground, flat."""
        return cls(
            np.zeros((*shape, 3), np.float32),
            np.full(shape, _GROUND, np.uint8),
            np.zeros(shape, np.float32),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.label.shape[0], self.label.shape[1]


@dataclass(frozen=True)
class _Patch:
    """A window of the canvas with each pixel's position in a frame rotated onto an object."""

    rows: slice
    cols: slice
    u: Float  # along the object's direction (sin angle, cos angle) in (y, x)
    v: Float  # across it, along (cos angle, -sin angle)


@dataclass(frozen=True)
class _Road:
    """A road or river centre line through (y, x), optionally a bounded segment, gently bending."""

    y: float
    x: float
    angle: float
    half_length: float
    half_width: float
    sidewalk: float
    bend: float
    wavelength: float
    phase: float
    main: bool
    line: float  # half width of painted lines
    dash: float  # period of the dashed centre line

    def across(self, patch: _Patch) -> Float:
        """Signed distance of the patch's pixels from the (bent) centre line."""
        wave = np.sin(patch.u * np.float32(2 * math.pi / self.wavelength) + np.float32(self.phase))
        across: Float = patch.v - np.float32(self.bend) * wave
        return across

    def point(self, s: float, offset: float) -> tuple[float, float]:
        """Locate the point ``s`` along the centre line and ``offset`` across it."""
        across = self.bend * math.sin(2 * math.pi * s / self.wavelength + self.phase) + offset
        return (
            self.y + s * math.sin(self.angle) + across * math.cos(self.angle),
            self.x + s * math.cos(self.angle) - across * math.sin(self.angle),
        )

    def heading(self, s: float) -> float:
        """Direction of the centre line at ``s``."""
        phase = 2 * math.pi * s / self.wavelength + self.phase
        return self.angle - math.atan(self.bend * 2 * math.pi / self.wavelength * math.cos(phase))


@dataclass(frozen=True)
class _Box:
    """A rotated rectangle standing on the ground: a building or a car."""

    y: float
    x: float
    angle: float
    half_length: float
    half_width: float
    height: float
    colour: Colour
    roof: str  # "gable", "hip" or "flat"; unused for cars


@dataclass
class _RoadLayers:
    """The road network traced road by road before it is painted in one go."""

    asphalt: Mask
    walk: Mask
    crossings: Bytes
    marks: Mask


def generate_scene(size: tuple[int, int] | int, seed: int) -> tuple[Bytes, Bytes]:
    """Draw an aerial scene: an RGB uint8 image (3, H, W) and its class map (H, W), from ``seed``.

    ``size`` is (H, W) or one side of a square. Classes are :data:`CLASSES`; the same seed gives
    the same bytes.
    """
    shape = _shape(size)
    rng = np.random.default_rng(seed)
    look = _draw_look(rng)
    canvas = _Canvas.blank(shape)
    _paint_ground(canvas, rng, look)
    _paint_grass(canvas, rng, look)
    _paint_water(canvas, rng, look)
    roads = _draw_roads(rng, shape, look)
    _paint_roads(canvas, rng, roads)
    _place_cars(canvas, rng, look, roads)
    _place_buildings(canvas, rng, look, roads)
    _paint_trees(canvas, rng, look, _tree_seeds(canvas, rng, look, roads))
    _darken_shadows(canvas, look)
    return _expose(canvas.rgb, rng), canvas.label


def write_scene(
    path_image: Path,
    path_label: Path,
    image: Bytes,
    label: Bytes,
    *,
    origin: tuple[float, float] = ORIGIN,
    resolution: float = RESOLUTION,
    crs: str = CRS,
) -> None:
    """Write a scene as two GeoTIFFs: the RGB image, and the class map with a colour table.

    ``origin`` is the (x, y) of the upper-left corner in ``crs`` units; pixels are ``resolution``
    units square. Both files are tiled 256 x 256 and deflate-compressed; the label's nodata is 255.
    """
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1:] != label.shape:
        raise FcnpipeError(
            f"a scene needs a (3, H, W) image and an (H, W) label; got {image.shape} and {label.shape}."
        )
    profile = {
        "driver": "GTiff",
        "height": label.shape[0],
        "width": label.shape[1],
        "dtype": "uint8",
        "crs": crs,
        "transform": Affine(resolution, 0.0, origin[0], 0.0, -resolution, origin[1]),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path_image, "w", count=3, photometric="RGB", **profile) as dst:
        dst.write(image.astype(np.uint8, copy=False))
    with rasterio.open(path_label, "w", count=1, nodata=IGNORE_INDEX, **profile) as dst:
        dst.write(label.astype(np.uint8, copy=False), 1)
        dst.write_colormap(1, {i: (*rgb, 255) for i, rgb in enumerate(PALETTE)})


def make_benchmark(out: Path, scenes: int = 12, size: int = 512, seed: int = 0) -> Path:
    """Write ``scenes`` scenes in the ortho layout under ``out`` and return ``out``.

    Layout: ``images/<split>_<k>.tif``, ``labels/<split>_<k>.tif`` (``k`` counts within the
    split), ``train.txt``, ``val.txt``, ``test.txt`` listing stems, and ``classes.json``. Scenes lie
    side by side on a grid of non-overlapping footprints.
    """
    if scenes < 1 or size < 1:
        raise FcnpipeError(
            f"a benchmark needs at least one scene of at least 1 pixel; got {scenes} of {size}."
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    index = 0
    for split, count in _split_counts(scenes):
        stems = [f"{split}_{k}" for k in range(count)]
        for stem in stems:
            image, label = generate_scene(size, _scene_seed(seed, index))
            write_scene(
                out / "images" / f"{stem}.tif",
                out / "labels" / f"{stem}.tif",
                image,
                label,
                origin=_scene_origin(index, size),
            )
            index += 1
        (out / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
    (out / "classes.json").write_text(json.dumps(_class_description(seed, size), indent=2) + "\n")
    return out


def _shape(size: tuple[int, int] | int) -> tuple[int, int]:
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(shape) < 1:
        raise FcnpipeError(f"a scene needs a positive size; got {size}.")
    return shape


def _split_counts(scenes: int) -> list[tuple[str, int]]:
    """Scenes per split, about 70/15/15, at least one per split from three scenes on."""
    held_out = [round(scenes * share) for _, share in _SPLITS[1:]]
    if scenes >= 3:
        held_out = [max(1, n) for n in held_out]
    counts = [scenes - sum(held_out), *held_out]
    return [(name, n) for (name, _), n in zip(_SPLITS, counts, strict=True)]


def _scene_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _scene_origin(index: int, size: int) -> tuple[float, float]:
    """Upper-left corner of scene ``index`` on a grid of footprints with gaps between them."""
    pitch = size * RESOLUTION + _SCENE_GAP_M
    row, col = divmod(index, _SCENES_PER_ROW)
    return ORIGIN[0] + col * pitch, ORIGIN[1] - row * pitch


def _class_description(seed: int, size: int) -> dict[str, object]:
    return {
        "classes": list(CLASSES),
        "palette": [list(rgb) for rgb in PALETTE],
        "ignore_index": IGNORE_INDEX,
        "seed": seed,
        "size": size,
    }


def _draw_look(rng: np.random.Generator) -> _Look:
    azimuth = rng.uniform(0, 2 * math.pi)
    return _Look(
        scale=rng.uniform(0.7, 1.4),
        sun=(math.sin(azimuth), math.cos(azimuth)),
        shadow_length=rng.uniform(0.55, 1.1),
        grid_angle=rng.uniform(0, math.pi),
    )


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float, roughness: float = 3.0) -> Float:
    """Zero-mean, unit-variance noise with features about ``scale`` pixels across.

    Spectral synthesis: white noise shaped by ``(1 + (f * scale)^2)^(-roughness / 2)``, flat below
    ``1 / scale`` and a power law above it (smaller ``roughness``: more fine detail).
    """
    h, w = shape
    fy = fft.fftfreq(h).astype(np.float32)[:, None]
    fx = fft.rfftfreq(w).astype(np.float32)[None, :]
    amplitude = (1 + (fy * fy + fx * fx) * np.float32(scale * scale)) ** np.float32(-roughness / 2)
    white = rng.standard_normal((h, w // 2 + 1, 2), dtype=np.float32).view(np.complex64)[..., 0]
    spectrum = white * amplitude
    spectrum[0, 0] = 0
    field = np.asarray(fft.irfft2(spectrum, s=shape), dtype=np.float32)
    return field / np.float32(field.std() + 1e-12)


def _mix(a: Colour | Float, b: Colour | Float, t: Float) -> Float:
    """Blend two colours per pixel: ``t`` 0 gives ``a`` and 1 gives ``b``; adds an RGB axis."""
    ca, cb = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return ca + (cb - ca) * np.clip(t, 0, 1)[..., None]


def _jitter(rng: np.random.Generator, colour: Colour, spread: float) -> Float:
    """Vary a colour in brightness and slightly in hue."""
    tint = rng.uniform(1 - spread / 3, 1 + spread / 3, 3)
    return (np.asarray(colour) * rng.uniform(1 - spread, 1 + spread) * tint).astype(np.float32)


def _patch(
    shape: tuple[int, int], y: float, x: float, angle: float, half_length: float, half_width: float
) -> _Patch | None:
    """Frame the window holding a rectangle rotated by ``angle``; None when it misses the canvas."""
    sin, cos = math.sin(angle), math.cos(angle)
    reach_y = half_length * abs(sin) + half_width * abs(cos) + 1
    reach_x = half_length * abs(cos) + half_width * abs(sin) + 1
    y0, y1 = max(0, math.floor(y - reach_y)), min(shape[0], math.ceil(y + reach_y) + 1)
    x0, x1 = max(0, math.floor(x - reach_x)), min(shape[1], math.ceil(x + reach_x) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x)
    u = dy * np.float32(sin) + dx * np.float32(cos)
    v = dy * np.float32(cos) - dx * np.float32(sin)
    return _Patch(slice(y0, y1), slice(x0, x1), u, v)


def _box_patch(shape: tuple[int, int], box: _Box, margin: float = 0.0) -> _Patch | None:
    return _patch(shape, box.y, box.x, box.angle, box.half_length + margin, box.half_width + margin)


def _inside(patch: _Patch, half_length: float, half_width: float) -> Mask:
    return (np.abs(patch.u) <= half_length) & (np.abs(patch.v) <= half_width)


def _paint_ground(canvas: _Canvas, rng: np.random.Generator, look: _Look) -> None:
    """Bare soil in two tints with patchy and grainy texture."""
    shape = canvas.shape
    dry = _jitter(rng, (186, 160, 122), 0.08)
    wet = _jitter(rng, (138, 116, 88), 0.1)
    tint = 0.5 + 0.35 * _noise(rng, shape, 120 * look.scale)
    grain = 1 + 0.07 * _noise(rng, shape, 5 * look.scale, roughness=1.6)
    grain += 0.04 * rng.standard_normal(shape, dtype=np.float32)
    canvas.rgb[:] = _mix(dry, wet, tint) * grain[..., None]


def _paint_grass(canvas: _Canvas, rng: np.random.Generator, look: _Look) -> None:
    """Lawns and meadows: the high ground of a smooth random field, a share of 15-40 %."""
    shape = canvas.shape
    field = _noise(rng, shape, 90 * look.scale, roughness=2.5)
    share = rng.uniform(0.15, 0.4)
    grass = field > np.quantile(field[::4, ::4], 1 - share)
    lush = _jitter(rng, (86, 122, 58), 0.1)
    dry = _jitter(rng, (134, 142, 84), 0.1)
    tone = 0.5 + 0.3 * _noise(rng, shape, 40 * look.scale)
    grain = 1 + 0.06 * _noise(rng, shape, 2.5 * look.scale, roughness=1.5)
    canvas.rgb[grass] = (_mix(lush, dry, tone) * grain[..., None])[grass]
    canvas.label[grass] = _VEGETATION


def _paint_water(canvas: _Canvas, rng: np.random.Generator, look: _Look) -> None:
    """Paint a river across the scene or ponds (or both), with shallow banks and ripples."""
    shape = canvas.shape
    wobble = _noise(rng, shape, 25 * look.scale)
    water = np.zeros(shape, bool)
    river = rng.random() < 0.5
    if river:
        _trace_river(water, wobble, rng, look)
    ponds = rng.poisson(shape[0] * shape[1] / 1200**2) + (0 if river else 1)
    for _ in range(ponds):
        _trace_pond(water, wobble, rng, look)
    _fill_water(canvas, rng, look, water)


def _trace_river(water: Mask, wobble: Float, rng: np.random.Generator, look: _Look) -> None:
    h, w = water.shape
    # At least 20 degrees off both road directions, so that no road runs along the river.
    skew = rng.uniform(0.35, math.pi / 2 - 0.35) + math.pi / 2 * rng.integers(2)
    river = _Road(
        y=rng.uniform(0.3, 0.7) * h,
        x=rng.uniform(0.3, 0.7) * w,
        angle=look.grid_angle + skew,
        half_length=math.hypot(h, w),
        half_width=rng.uniform(15, 40) * look.scale,
        sidewalk=0.0,
        bend=rng.uniform(20, 60) * look.scale,
        wavelength=rng.uniform(400, 900) * look.scale,
        phase=rng.uniform(0, 2 * math.pi),
        main=False,
        line=0.0,
        dash=1.0,
    )
    reach = river.half_width * 2 + river.bend
    patch = _patch(water.shape, river.y, river.x, river.angle, river.half_length, reach)
    if patch is None:
        return
    bank = np.float32(river.half_width) * (1 + np.float32(0.2) * wobble[patch.rows, patch.cols])
    water[patch.rows, patch.cols] |= np.abs(river.across(patch)) <= bank


def _trace_pond(water: Mask, wobble: Float, rng: np.random.Generator, look: _Look) -> None:
    h, w = water.shape
    radius = rng.uniform(35, 90) * look.scale
    aspect = rng.uniform(0.5, 1.0)
    y, x = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    patch = _patch(water.shape, y, x, rng.uniform(0, math.pi), radius * 1.3, radius * aspect * 1.3)
    if patch is None:
        return
    rho = np.hypot(patch.u / np.float32(radius), patch.v / np.float32(radius * aspect))
    water[patch.rows, patch.cols] |= rho + np.float32(0.25) * wobble[patch.rows, patch.cols] < 1


def _fill_water(canvas: _Canvas, rng: np.random.Generator, look: _Look, water: Mask) -> None:
    """Deep colour inside, muddy towards the banks, with slow ripples."""
    rows, cols = np.nonzero(water.any(axis=1))[0], np.nonzero(water.any(axis=0))[0]
    if rows.size == 0:
        return
    pad = math.ceil(12 * look.scale)
    h, w = water.shape
    window = (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + pad + 1)),
    )
    inside = water[window]
    depth = ndimage.gaussian_filter(inside.astype(np.float32), 4 * look.scale)
    deep = _jitter(rng, (38, 68, 78), 0.15)
    shallow = _jitter(rng, (92, 104, 84), 0.1)
    colour = _mix(shallow, deep, 2 * depth - 0.6)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.ogrid[window[0], window[1]]
    wavelength = rng.uniform(18, 36) * look.scale
    phase = (yy * math.sin(angle) + xx * math.cos(angle)) * (2 * math.pi / wavelength)
    slow = _noise(rng, inside.shape, 30 * look.scale)
    ripple = 1 + 0.05 * np.sin(phase + 2.5 * slow).astype(np.float32)
    canvas.rgb[window][inside] = (colour * ripple[..., None])[inside]
    canvas.label[window][inside] = _WATER


def _draw_roads(rng: np.random.Generator, shape: tuple[int, int], look: _Look) -> list[_Road]:
    """Lay main roads along the grid direction and streets across them, some ending in blocks."""
    main = _road_family(rng, shape, look, look.grid_angle, main=True)
    across = look.grid_angle + math.pi / 2 + rng.normal(0, 0.08)
    return main + _road_family(rng, shape, look, across, main=False)


def _road_family(
    rng: np.random.Generator, shape: tuple[int, int], look: _Look, angle: float, main: bool
) -> list[_Road]:
    """Lay roughly parallel roads; one main road always crosses the middle of the scene."""
    h, w = shape
    reach = math.hypot(h, w) / 2
    spacing = rng.uniform(200, 320) * look.scale if main else rng.uniform(130, 240) * look.scale
    first = rng.uniform(-0.3, 0.3) * min(h, w)
    offsets = np.concatenate([np.arange(first, reach, spacing), np.arange(first - spacing, -reach, -spacing)])
    offsets += rng.normal(0, 0.1 * spacing, offsets.size) * (offsets != first)
    keep = rng.random(offsets.size) < (0.75 if main else 0.7)
    if main:
        keep[0] = True
    roads = []
    for offset in offsets[keep]:
        tilt = angle + rng.normal(0, 0.04)
        y = h / 2 + offset * math.cos(tilt)
        x = w / 2 - offset * math.sin(tilt)
        roads.append(_road(rng, look, y, x, tilt, reach, main))
    return roads


def _road(
    rng: np.random.Generator,
    look: _Look,
    y: float,
    x: float,
    angle: float,
    reach: float,
    main: bool,
) -> _Road:
    """Draw one road through (y, x): a main road with sidewalks and edge lines, or a street."""
    s = look.scale
    half_length = 2 * reach
    if not main and rng.random() < 0.5:
        half_length = rng.uniform(0.3, 0.7) * reach
        shift = rng.uniform(-0.5, 0.5) * reach
        y, x = y + shift * math.sin(angle), x + shift * math.cos(angle)
    wavelength = rng.uniform(500, 1100) * s
    return _Road(
        y=y,
        x=x,
        angle=angle,
        half_length=half_length,
        half_width=(rng.uniform(8, 11) if main else rng.uniform(5, 6.5)) * s,
        sidewalk=rng.uniform(2.5, 4) * s if main or rng.random() < 0.4 else 0.0,
        bend=rng.uniform(0.02, 0.045) * wavelength if rng.random() < 0.4 else 0.0,
        wavelength=wavelength,
        phase=rng.uniform(0, 2 * math.pi),
        main=main,
        line=max(0.55, 0.5 * s),
        dash=rng.uniform(16, 24) * s,
    )


def _paint_roads(canvas: _Canvas, rng: np.random.Generator, roads: list[_Road]) -> None:
    """Paint sidewalks, then asphalt, then markings except where roads cross."""
    shape = canvas.shape
    layers = _RoadLayers(
        np.zeros(shape, bool),
        np.zeros(shape, bool),
        np.zeros(shape, np.uint8),
        np.zeros(shape, bool),
    )
    for road in roads:
        _trace_road(layers, road, shape)
    walk = layers.walk & ~layers.asphalt
    concrete = _jitter(rng, (176, 174, 168), 0.08)
    canvas.rgb[walk] = concrete * (1 + 0.04 * rng.standard_normal((int(walk.sum()), 1), dtype=np.float32))
    asphalt = _jitter(rng, (104, 104, 106), 0.15)
    wear = (
        1 + 0.08 * _noise(rng, shape, 30, roughness=2) + 0.05 * rng.standard_normal(shape, dtype=np.float32)
    )
    canvas.rgb[layers.asphalt] = asphalt * wear[layers.asphalt][:, None]
    paint = (240, 238, 228) if rng.random() < 0.7 else (232, 200, 80)
    marks = layers.marks & (layers.crossings == 1)
    canvas.rgb[marks] = _jitter(rng, paint, 0.05)
    canvas.label[layers.walk | layers.asphalt] = _ROAD


def _trace_road(layers: _RoadLayers, road: _Road, shape: tuple[int, int]) -> None:
    """Trace a road in short pieces, so only a band around it is computed, not the whole canvas."""
    start, stop = _visible_span(road, shape)
    for s0 in np.arange(start, stop, _ROAD_PIECE):
        s1 = min(float(s0) + _ROAD_PIECE, stop)
        patch = _road_patch(road, shape, float(s0), s1)
        if patch is None:
            continue
        distance = np.abs(road.across(patch))
        # Half-open pieces, so that no pixel is counted twice as a crossing of the road with itself.
        along = (patch.u >= s0) & (patch.u < s1)
        lane = along & (distance <= road.half_width)
        window = (patch.rows, patch.cols)
        layers.asphalt[window] |= lane
        layers.walk[window] |= along & (distance <= road.half_width + road.sidewalk)
        layers.crossings[window] += lane.astype(np.uint8)
        layers.marks[window] |= lane & _markings(road, patch.u, distance)


def _road_patch(road: _Road, shape: tuple[int, int], s0: float, s1: float) -> _Patch | None:
    """Frame the piece of road between ``s0`` and ``s1``, in the road's own coordinates."""
    middle = (s0 + s1) / 2
    y, x = road.y + middle * math.sin(road.angle), road.x + middle * math.cos(road.angle)
    reach = road.half_width + road.sidewalk + road.bend + 1
    patch = _patch(shape, y, x, road.angle, (s1 - s0) / 2, reach)
    if patch is None:
        return None
    return _Patch(patch.rows, patch.cols, patch.u + np.float32(middle), patch.v)


def _markings(road: _Road, along: Float, distance: Float) -> Mask:
    """Mark a dashed centre line, and solid edge lines on main roads."""
    dashes = distance <= road.line
    dashes[dashes] = np.mod(along[dashes], road.dash) < road.dash / 2
    if not road.main:
        return dashes
    edge = np.abs(distance - np.float32(road.half_width - 3 * road.line)) <= road.line
    marks: Mask = dashes | edge
    return marks


def _visible_span(road: _Road, shape: tuple[int, int]) -> tuple[float, float]:
    """Bound the positions along the road whose centre line may be on the canvas."""
    sin, cos = math.sin(road.angle), math.cos(road.angle)
    corners = [(0, 0), (0, shape[1]), (shape[0], 0), (shape[0], shape[1])]
    along = [(cy - road.y) * sin + (cx - road.x) * cos for cy, cx in corners]
    return max(min(along), -road.half_length), min(max(along), road.half_length)


def _place_cars(canvas: _Canvas, rng: np.random.Generator, look: _Look, roads: list[_Road]) -> None:
    """Park cars in the lanes, about one per 60-160 pixels of lane, where the lane is clear."""
    for road in roads:
        start, stop = _visible_span(road, canvas.shape)
        if stop <= start:
            continue
        for _ in range(rng.poisson(2 * (stop - start) / (rng.uniform(60, 160) * look.scale))):
            car = _car(rng, look, road, rng.uniform(start, stop))
            if _fits(canvas, car, 1.0, (_ROAD,)):
                _paint_car(canvas, rng, car)


def _car(rng: np.random.Generator, look: _Look, road: _Road, s: float) -> _Box:
    side = 1 if rng.random() < 0.5 else -1
    y, x = road.point(s, side * road.half_width * rng.uniform(0.4, 0.55))
    heading = road.heading(s) + (0 if side > 0 else math.pi) + rng.normal(0, 0.03)
    return _Box(
        y=y,
        x=x,
        angle=heading,
        half_length=rng.uniform(4.0, 5.0) * look.scale,
        half_width=rng.uniform(1.8, 2.2) * look.scale,
        height=3 * look.scale,
        colour=_CAR_COLOURS[rng.integers(len(_CAR_COLOURS))],
        roof="flat",
    )


def _fits(canvas: _Canvas, box: _Box, margin: float, allowed: tuple[int, ...]) -> bool:
    """Tell whether the box, grown by ``margin``, covers only ``allowed`` classes."""
    h, w = canvas.shape
    if not (0 <= box.y < h and 0 <= box.x < w):
        return False
    patch = _box_patch(canvas.shape, box, margin)
    if patch is None:
        return False
    under = canvas.label[patch.rows, patch.cols][
        _inside(patch, box.half_length + margin, box.half_width + margin)
    ]
    return bool(np.isin(under, allowed).all())


def _paint_car(canvas: _Canvas, rng: np.random.Generator, car: _Box) -> None:
    """Paint a car body with a dark windscreen at the front and a dark rear window."""
    patch = _box_patch(canvas.shape, car)
    if patch is None:
        return
    body = _inside(patch, car.half_length, car.half_width)
    along = patch.u / np.float32(car.half_length)
    shade = np.ones(body.shape, np.float32)
    shade[(along > 0.15) & (along < 0.5)] = 0.3
    shade[(along > -0.75) & (along < -0.5)] = 0.4
    shade[np.abs(patch.v) > car.half_width - 0.7] *= 0.85
    colour = _jitter(rng, car.colour, 0.06)
    rgb = canvas.rgb[patch.rows, patch.cols]
    rgb[body] = colour * shade[body][:, None]
    canvas.label[patch.rows, patch.cols][body] = _CAR
    canvas.height[patch.rows, patch.cols][body] = car.height


def _place_buildings(canvas: _Canvas, rng: np.random.Generator, look: _Look, roads: list[_Road]) -> None:
    """Set buildings back along the roads (some free-standing), never touching one another."""
    h, w = canvas.shape
    attempts = max(8, round(1.2 * h * w / (30 * look.scale) ** 2))
    for _ in range(attempts):
        building = _building(rng, look, roads, canvas.shape)
        if _fits(canvas, building, 2.5 * look.scale, (_GROUND, _VEGETATION)):
            _paint_building(canvas, rng, look, building)


def _building(rng: np.random.Generator, look: _Look, roads: list[_Road], shape: tuple[int, int]) -> _Box:
    s = look.scale
    half_length, half_width = rng.uniform(10, 28) * s, rng.uniform(7, 16) * s
    half_width = min(half_width, half_length)
    if roads and rng.random() < 0.8:
        road = roads[rng.integers(len(roads))]
        start, stop = _visible_span(road, shape)
        along = rng.uniform(start, max(start, stop))
        side = 1 if rng.random() < 0.5 else -1
        # The building faces the road with either its long or its short side.
        if rng.random() < 0.3:
            half_length, half_width = half_width, half_length
        setback = road.half_width + road.sidewalk + rng.uniform(3, 14) * s + half_width
        y, x = road.point(along, side * setback)
        angle = road.heading(along) + rng.normal(0, 0.03)
    else:
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        angle = look.grid_angle + rng.integers(2) * math.pi / 2 + rng.normal(0, 0.1)
    return _Box(
        y=y,
        x=x,
        angle=angle,
        half_length=half_length,
        half_width=half_width,
        height=rng.uniform(6, 18) * s,
        colour=_ROOF_COLOURS[rng.integers(len(_ROOF_COLOURS))],
        roof=("gable", "gable", "hip", "flat")[rng.integers(4)],
    )


def _paint_building(canvas: _Canvas, rng: np.random.Generator, look: _Look, building: _Box) -> None:
    """Paint a roof lit face by face, with darker eaves; keep its height for the shadow."""
    patch = _box_patch(canvas.shape, building)
    if patch is None:
        return
    roof = _inside(patch, building.half_length, building.half_width)
    tone, height = _roof_relief(patch, building, look)
    edge = 0.9 * look.scale
    eaves = ~_inside(patch, building.half_length - edge, building.half_width - edge)
    tone[eaves] *= 0.82 if building.roof == "flat" else 0.9
    tone *= 1 + 0.035 * rng.standard_normal(tone.shape, dtype=np.float32)
    colour = _jitter(rng, building.colour, 0.08)
    canvas.rgb[patch.rows, patch.cols][roof] = colour * tone[roof][:, None]
    canvas.label[patch.rows, patch.cols][roof] = _BUILDING
    canvas.height[patch.rows, patch.cols][roof] = height[roof]


def _roof_relief(patch: _Patch, building: _Box, look: _Look) -> tuple[Float, Float]:
    """Shade a gable, hip or flat roof under the scene's sun: per-pixel brightness and height.

    A pitched roof's faces slope down from the ridge; each face is lit by how much its outward
    direction points at the sun, so the two halves of a gable roof get two tones.
    """
    a, b = building.half_length, building.half_width
    to_side, to_end = b - np.abs(patch.v), a - np.abs(patch.u)
    if building.roof == "flat":
        flat = np.full(patch.u.shape, building.height, np.float32)
        return np.ones(patch.u.shape, np.float32), flat
    sin, cos = math.sin(building.angle), math.cos(building.angle)
    side_light = np.sign(patch.v) * np.float32(cos * look.sun[0] - sin * look.sun[1])
    end_light = np.sign(patch.u) * np.float32(sin * look.sun[0] + cos * look.sun[1])
    if building.roof == "gable":
        light, rise = side_light, to_side
    else:
        on_end = to_end < to_side
        light, rise = np.where(on_end, end_light, side_light), np.minimum(to_side, to_end)
    tone = (np.float32(0.8) + np.float32(0.28) * light).astype(np.float32)
    return tone, (np.float32(building.height) + np.float32(0.5) * rise).astype(np.float32)


def _tree_seeds(
    canvas: _Canvas, rng: np.random.Generator, look: _Look, roads: list[_Road]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Pick tree positions: woods and scattered trees on open ground and grass, street trees."""
    h, w = canvas.shape
    woods = _noise(rng, canvas.shape, 70 * look.scale) > rng.uniform(0.6, 1.2)
    count = rng.poisson(h * w / (7 * look.scale) ** 2)
    ys, xs = rng.integers(0, h, count), rng.integers(0, w, count)
    label = canvas.label[ys, xs]
    chance = np.where(woods[ys, xs], 0.5, 0.012) + np.where(label == _VEGETATION, 0.02, 0.0)
    keep = (rng.random(count) < chance) & ((label == _GROUND) | (label == _VEGETATION))
    street_y, street_x = _street_trees(canvas, rng, look, roads)
    return np.concatenate([ys[keep], street_y]), np.concatenate([xs[keep], street_x])


def _street_trees(
    canvas: _Canvas, rng: np.random.Generator, look: _Look, roads: list[_Road]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Line some roads with trees, just outside the sidewalk."""
    h, w = canvas.shape
    points: list[tuple[float, float]] = []
    for road in roads:
        if rng.random() > 0.35:
            continue
        start, stop = _visible_span(road, canvas.shape)
        step = rng.uniform(16, 26) * look.scale
        offset = road.half_width + road.sidewalk + rng.uniform(2, 5) * look.scale
        for s in np.arange(start, stop, step):
            for side in (-1, 1):
                points.append(road.point(float(s) + rng.normal(0, 1.5), side * offset))
    if not points:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    ys, xs = np.round(np.asarray(points)).astype(np.intp).T
    on = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    ys, xs = ys[on], xs[on]
    free = np.isin(canvas.label[ys, xs], (_GROUND, _VEGETATION))
    return ys[free], xs[free]


def _paint_trees(
    canvas: _Canvas,
    rng: np.random.Generator,
    look: _Look,
    seeds: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]],
) -> None:
    """Paint round, textured crowns, lit on the sun side, over whatever is lower than them."""
    ys, xs = seeds
    if ys.size == 0:
        return
    radius = rng.uniform(3.5, 9.0, ys.size) * look.scale
    top = radius * rng.uniform(1.2, 2.2, ys.size)
    dark, light = _jitter(rng, (58, 86, 44), 0.1), _jitter(rng, (80, 100, 50), 0.1)
    leaf = _mix(dark, light, rng.random(ys.size, dtype=np.float32))
    texture = _noise(rng, canvas.shape, 1.6 * look.scale, roughness=2.0)
    rows, cols, tree = _crowns(canvas.shape, ys, xs, radius)
    dy, dx = (rows - ys[tree]) / radius[tree], (cols - xs[tree]) / radius[tree]
    rho2 = np.minimum(dy * dy + dx * dx, 1.0)
    height = top[tree] * (0.6 + 0.4 * np.sqrt(1 - rho2))
    above = height > canvas.height[rows, cols]
    rows, cols, tree, dy, dx, rho2 = (a[above] for a in (rows, cols, tree, dy, dx, rho2))
    tone = 1 + 0.4 * (dy * look.sun[0] + dx * look.sun[1]) - 0.25 * rho2
    tone += 0.14 * texture[rows, cols]
    canvas.rgb[rows, cols] = leaf[tree] * tone[:, None]
    canvas.label[rows, cols] = _VEGETATION
    canvas.height[rows, cols] = height[above]


def _crowns(
    shape: tuple[int, int],
    ys: npt.NDArray[np.intp],
    xs: npt.NDArray[np.intp],
    radius: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Find the pixels under a crown, and the index of the tree each belongs to.

    Each pixel belongs to its nearest tree (a distance transform), so overlapping crowns meet
    along a seam, as in a canopy.
    """
    tree = np.full(shape, -1, np.intp)
    tree[ys, xs] = np.arange(ys.size)
    distance, (iy, ix) = ndimage.distance_transform_edt(tree < 0, return_indices=True)
    nearest = tree[iy, ix]
    rows, cols = np.nonzero(distance < radius[nearest])
    return rows, cols, nearest[rows, cols]


def _darken_shadows(canvas: _Canvas, look: _Look) -> None:
    """Darken, with a bluish skylight tint, what lies on the ground in the shade of taller things.

    Roofs and crowns keep their own face shading; cars and the ground (roads, grass, water) are
    darkened where a ray towards the sun meets something taller.
    """
    receivers = (canvas.height == 0) | (canvas.label == _CAR)
    shaded = _shadow(canvas.height, look) & receivers
    canvas.rgb[shaded] *= np.asarray([0.42, 0.47, 0.58], np.float32)


def _shadow(height: Float, look: _Look) -> Mask:
    """Find the pixels whose ray towards the sun, rising 1 / shadow_length per pixel, is blocked."""
    h, w = height.shape
    shaded = np.zeros(height.shape, bool)
    reach = math.ceil(float(height.max()) * look.shadow_length)
    last = (0, 0)
    for k in range(1, reach + 1):
        oy, ox = round(k * look.sun[0]), round(k * look.sun[1])
        # A repeated offset with a higher ray adds nothing to the previous step.
        if (oy, ox) == last:
            continue
        last = (oy, ox)
        if abs(oy) >= h or abs(ox) >= w:
            break
        here = (slice(max(0, -oy), h - max(0, oy)), slice(max(0, -ox), w - max(0, ox)))
        there = (slice(max(0, oy), h - max(0, -oy)), slice(max(0, ox), w - max(0, -ox)))
        shaded[here] |= height[there] > height[here] + np.float32(k / look.shadow_length)
    return shaded


def _expose(rgb: Float, rng: np.random.Generator) -> Bytes:
    """Take the picture: illumination, gain and colour cast, haze, slight blur, sensor noise."""
    h, w, _ = rgb.shape
    light = _illumination(rng, (h, w))
    gain = rng.uniform(0.78, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    haze = np.float32(rng.uniform(0, 22))
    out = rgb * light[..., None]
    out *= gain * (1 - haze / 255)
    out += haze
    out = ndimage.gaussian_filter(out, sigma=(0.6, 0.6, 0))
    out += rng.uniform(1.5, 3.5) * rng.standard_normal(out.shape, dtype=np.float32)
    return np.ascontiguousarray(np.clip(out + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1))


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> Float:
    """Light the scene: a linear ramp in a random direction, and slow blotches."""
    h, w = shape
    angle = rng.uniform(0, 2 * math.pi)
    amplitude = rng.uniform(0.08, 0.25) / max(h, w)
    yy, xx = np.ogrid[:h, :w]
    ramp = ((yy - h / 2) * math.sin(angle) + (xx - w / 2) * math.cos(angle)) * amplitude
    blotches = 0.04 * _noise(rng, shape, 250)
    return (1 + ramp + blotches).astype(np.float32)
