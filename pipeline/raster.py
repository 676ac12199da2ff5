"""Reading the input: any GDAL raster, checked once up front, then windowed reads with its mask.

The input is a local path or a URL (``s3://``, ``gs://``, ``az://``, ``https://``; see
``pipeline.storage``): each read fetches only its window's byte ranges.

Reads are clipped to the image (the grid never asks for pixels outside it): the network takes any
input size, and its own zero padding at the image edge is what a whole-image pass sees too.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import from_gcps
from rasterio.windows import Window as RioWindow

from fcn import FcnpipeError
from fcn.margin import reflect_indices
from pipeline.grid import Window
from pipeline.storage import Location, forget_cached, gdal_env, probe

T = TypeVar("T")
Transform = tuple[float, float, float, float, float, float]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about an input raster, validated."""

    path: str
    height: int
    width: int
    dtype: str
    bands: tuple[int, ...]
    crs_wkt: str | None
    transform: Transform
    nodata: float | None
    masked: bool
    value_range: tuple[float, float] | None
    palette: tuple[RGB, ...] | None = None  # a colour table: band values index it, giving RGB
    why: str = ""  # why these bands
    notes: tuple[str, ...] = ()  # what the user should know about how it was read (GCPs fitted)

    @property
    def pixels(self) -> int:
        """Number of pixels."""
        return self.height * self.width

    @property
    def affine(self) -> Affine:
        """The transform as an ``affine.Affine`` (kept as six numbers in the plan)."""
        return Affine(*self.transform)


@dataclass(frozen=True)
class BandChoice:
    """The 1-based bands fed to the model, why, and the colour table that expands them (if any)."""

    bands: tuple[int, ...]
    why: str
    palette: tuple[RGB, ...] | None = None


def choose_bands(path: Location, src: Any, bands: tuple[int, ...] | None, channels: int) -> BandChoice:
    """The bands to feed the model: as asked, else by the colour interpretation the raster declares.

    Red, green and blue are taken where declared, in any order (a blue, green, red, near-infrared
    image gives 3,2,1); a single band with a colour table is expanded to RGB; otherwise the bands
    that are not alpha, when there are as many as the model takes. Hints name bands that exist.
    """
    where = path.redacted()
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise FcnpipeError(f"{where} has bands 1..{src.count}; band {bad[0]} does not exist.")
        if len(bands) != channels:
            raise FcnpipeError(f"the model takes {channels} bands but --bands names {len(bands)}.")
        return BandChoice(bands, "as given by --bands")
    interp = list(src.colorinterp)
    if channels == 3 and src.count == 1 and interp[0] == ColorInterp.palette:
        table = src.colormap(1)
        size = max(table) + 1
        lut = tuple(tuple(int(v) for v in table.get(i, (0, 0, 0, 0))[:3]) for i in range(size))
        return BandChoice((1,), "band 1's colour table, expanded to red, green and blue", lut)  # type: ignore[arg-type]
    declared = {ci: i + 1 for i, ci in reversed(list(enumerate(interp)))}
    rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if channels == 3 and all(ci in declared for ci in rgb):
        chosen = tuple(declared[ci] for ci in rgb)
        order = "" if chosen == (1, 2, 3) else f", in that order from bands {','.join(map(str, chosen))}"
        return BandChoice(chosen, f"the bands the raster declares red, green and blue{order}")
    colour = tuple(i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha)
    if len(colour) == channels:
        return BandChoice(colour, f"the raster's {channels} bands that are not alpha")
    if len(colour) == 1:
        hint = ",".join(str(colour[0]) for _ in range(channels))
        raise FcnpipeError(
            f"{where} has one band (grey, elevation or amplitude) but the model takes {channels}; "
            f"repeat it with --bands {hint} (or train a model on such data)."
        )
    available = colour or tuple(range(1, src.count + 1))
    example = ",".join(str(available[min(i, len(available) - 1)]) for i in range(channels))
    raise FcnpipeError(
        f"{where} has {len(colour)} bands that are not alpha and declares no red, green and blue, "
        f"but the model takes {channels}; choose them with --bands (e.g. --bands {example})."
    )


def open_raster(location: Location) -> Any:
    """Open a raster for reading (in the GDAL environment its location needs)."""
    with warnings.catch_warnings(), gdal_env(location):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(location.text)


def inspect_raster(
    path: str | Path | Location,
    *,
    channels: int = 3,
    bands: tuple[int, ...] | None = None,
    value_range: tuple[float, float] | None = None,
) -> RasterInfo:
    """Open ``path`` once and check that the pipeline can read it; raise one clear sentence if not."""
    location = Location.of(path)
    if location.is_local and not location.path.exists():
        raise FcnpipeError(f"input {location} does not exist.")
    try:
        src_ctx = open_raster(location)
    except RasterioIOError:
        probe(location)  # a missing object, bucket or permission gets its own sentence
        raise FcnpipeError(f"{location.redacted()} is not a raster that GDAL can read.") from None
    where = location.redacted()
    with src_ctx as src:
        if src.width < 1 or src.height < 1 or src.count < 1:
            raise FcnpipeError(f"{where} holds no pixels ({src.width}x{src.height}, {src.count} bands).")
        if src.width < 2 or src.height < 2:
            raise FcnpipeError(
                f"{where} is {src.width}x{src.height} pixels: too small to segment "
                "(a scene needs at least 2 pixels on each side)."
            )
        choice = choose_bands(location, src, bands, channels)
        chosen = choice.bands
        dtype = src.dtypes[chosen[0] - 1]
        if "complex" in dtype:
            raise FcnpipeError(
                f"{where} holds complex values ({dtype}, e.g. a single-look complex SAR image), which no "
                "value range maps to colour; segment its amplitude (|value|, as a real raster) instead."
            )
        if dtype != "uint8" and value_range is None and choice.palette is None:
            raise FcnpipeError(
                f"{where} holds {dtype} values; declare how they map to 0-255 with --value-range LO,HI "
                "(or value_range in the config)."
            )
        if value_range is not None and not value_range[1] > value_range[0]:
            raise FcnpipeError(f"the value range {value_range} must run from low to high.")
        flags = [src.mask_flag_enums[b - 1] for b in chosen]
        masked = any(f != [MaskFlags.all_valid] for f in flags)
        transform, crs, notes = georeferencing(src, where)
        check_sources(where, src.files)
        info = RasterInfo(
            path=location.text,
            height=src.height,
            width=src.width,
            dtype=dtype,
            bands=chosen,
            crs_wkt=crs.to_wkt() if crs else None,
            transform=tuple(transform)[:6],
            nodata=src.nodata,
            masked=masked,
            value_range=None if choice.palette is not None else value_range,
            palette=choice.palette,
            why=choice.why,
            notes=notes,
        )
    check_readable(location, info)  # on handles of its own: a read that failed may be tried again
    return info


READ_RETRIES = 4
"""A remote read that fails is tried this many times more, waiting 0.2 s doubling (3 s in all)."""

GCP_TOLERANCE_PX = 0.5  # how far an affine may miss a ground control point and still stand for them


def georeferencing(src: Any, where: str) -> tuple[Affine, CRS | None, tuple[str, ...]]:
    """The raster's affine transform and CRS, checked; from its ground control points if it has only those.

    A mosaic is georeferenced by an affine transform. GCPs that one affine fits within half a pixel
    (a north-up image georeferenced by its corners, say) give that affine, and a note says so;
    GCPs of a warped or rotated-and-sheared image are refused: warping is GDAL's job. A pixel size
    of zero or one that is not a finite number is refused rather than written.
    """
    transform, crs = src.transform, src.crs
    notes: tuple[str, ...] = ()
    gcps, gcp_crs = src.gcps
    if transform.is_identity and gcps:
        name = where.rsplit("/", 1)[-1]
        if len(gcps) < 3:  # also how GeoTIFF keeps a transform whose pixel size is zero: one tie point
            raise FcnpipeError(
                f"{where} has {len(gcps)} ground control point(s) and no pixel size, too little to place "
                f"its pixels; fix its georeferencing first (e.g. gdal_edit.py -a_ullr ... {name})."
            )
        transform, worst = fit_gcps(gcps)
        if worst > GCP_TOLERANCE_PX:
            raise FcnpipeError(
                f"{where} is georeferenced by {len(gcps)} ground control points that no affine "
                f"transform fits within half a pixel (the best misses one by {worst:.1f} px); warp it "
                f"to a grid first, e.g. gdalwarp {name} {name.rsplit('.', 1)[0]}.warped.tif."
            )
        crs = gcp_crs
        notes = (
            f"{where} is georeferenced by {len(gcps)} ground control points; the mosaic uses the affine "
            f"transform that fits them (within {worst:.2f} px).",
        )
    values = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
    if not all(np.isfinite(values)):
        raise FcnpipeError(
            f"{where} has a transform with a value that is not a number ({transform.to_gdal()})."
        )
    if transform.determinant == 0:
        raise FcnpipeError(
            f"{where} has a pixel size of zero (transform {transform.to_gdal()}); fix its georeferencing "
            "(e.g. gdal_edit.py -a_ullr) before segmenting it."
        )
    return transform, crs, notes


def fit_gcps(gcps: list[Any]) -> tuple[Affine, float]:
    """The affine GDAL fits to ground control points (least squares), and its worst miss in pixels."""
    try:
        transform = from_gcps(gcps)
    except Exception:  # GDAL finds no affine (points in a line, say)
        return Affine.identity(), float("inf")
    if not transform.determinant:
        return transform, float("inf")
    inverse = ~transform
    return transform, max(float(np.hypot(*np.subtract(inverse * (g.x, g.y), (g.col, g.row)))) for g in gcps)


def check_sources(where: str, files: list[str]) -> None:
    """Refuse a raster that reads a local file that is not there (a VRT's missing source)."""
    here = Path(files[0]).parent if files else Path()
    local = [f for f in files[1:] if "://" not in f and not f.startswith("/vsi")]
    missing = [f for f in local if not (here / f).exists()]  # relative to the VRT, or absolute
    if missing:
        more = f" ({len(missing)} of its sources are missing)" if len(missing) > 1 else ""
        raise FcnpipeError(f"{where} reads {missing[0]}, which does not exist{more}.")


def check_readable(location: Location, info: RasterInfo) -> None:
    """Refuse a raster whose pixels cannot be read (a truncated file, a source gone bad).

    One pixel is read at each corner and the centre, so the sentence comes now, at planning, and
    not after a store has been made and tiles have run. Over a network, a failed read is tried
    again (``READ_RETRIES``) on a fresh handle before it is believed.
    """
    h, w = info.height, info.width
    corners = ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2))
    reader = RasterReader(info)
    try:
        for row, col in corners:
            reader.read_inside(Window(row, col, 1, 1))
    finally:
        reader.close()


def read_failure(exc: BaseException) -> str:
    """What GDAL said made a read fail (rasterio's own message only says "see previous exception")."""
    cause = exc.__cause__ or exc.__context__ or exc
    said = str(cause.args[2] if len(cause.args) == 3 else cause)
    text = re.sub(r"\?\S*", "", said).strip().rstrip(".")  # no query strings: they can hold signatures
    if "TIFFRead" in text or "IReadBlock" in text:
        return f"the file is damaged or truncated ({text})"
    return text


def expand_palette(index: NDArray[Any], palette: tuple[RGB, ...]) -> NDArray[np.uint8]:
    """(3, H, W) colours of a band of colour-table indices (indices past the table take its last)."""
    lut = np.asarray(palette, dtype=np.uint8)
    return np.ascontiguousarray(lut[np.minimum(index, len(lut) - 1)].transpose(2, 0, 1))


def describe_raster(info: RasterInfo) -> list[str]:
    """What fcnpipe reads from a raster, in lines for people: size, CRS, bands and why, values, mask."""
    with open_raster(Location(info.path)) as src:
        flags = [src.mask_flag_enums[b - 1] for b in info.bands]
        count, resolution = src.count, src.res
    crs = "none" if info.crs_wkt is None else CRS.from_wkt(info.crs_wkt).to_string()
    bands = ",".join(str(b) for b in info.bands)
    if info.palette is not None:
        values = f"{info.dtype} indices into a colour table of {len(info.palette)} entries"
    elif info.value_range is None:
        values = f"{info.dtype}, fed as they are (0-255)"
    else:
        values = f"{info.dtype}, {info.value_range[0]:g}..{info.value_range[1]:g} mapped to 0-255"
    kinds = {flag for band in flags for flag in band}
    if MaskFlags.alpha in kinds:
        mask = "the alpha band"
    elif MaskFlags.nodata in kinds:
        mask = f"the nodata value {info.nodata:g}"
    elif MaskFlags.per_dataset in kinds:
        mask = "the dataset's mask band"
    else:
        mask = "none (every pixel is data)"
    return [
        f"{Location(info.path).redacted()}: {info.width} x {info.height} px, {count} band(s), "
        f"CRS {crs}, pixels {resolution[0]:g} x {resolution[1]:g}",
        f"bands fed to the model: {bands} ({info.why})",
        f"values: {values}",
        f"mask: {mask}",
    ]


class RasterReader:
    """Windowed reads of one raster; safe to share between threads (one dataset handle per thread)."""

    def __init__(self, info: RasterInfo) -> None:
        self.info = info
        self._local = threading.local()

    def _dataset(self) -> Any:
        src = getattr(self._local, "src", None)
        if src is None:
            src = self._local.src = open_raster(Location(self.info.path))
        return src

    def valid(self, window: Window) -> NDArray[np.bool_]:
        """Which pixels of ``window`` hold data (any selected band valid, as GDAL's dataset mask)."""
        if not self.info.masked:
            return np.ones(window.shape, dtype=bool)
        bands, rio_window = list(self.info.bands), to_rasterio(window)
        masks = self.retried(window, lambda: self._dataset().read_masks(bands, window=rio_window))
        return np.asarray(masks.any(axis=0))

    def coarse_valid(self, cell: int) -> NDArray[np.bool_]:
        """Which ``cell`` x ``cell`` cells hold data, from one decimated read of the mask.

        GDAL reads it from the raster's overviews where it has them (a COG does), else decimates
        the full-resolution mask: a prediction (a cell is sampled, not summed), for planning only.
        """
        shape = (-(-self.info.height // cell), -(-self.info.width // cell))
        if not self.info.masked:
            return np.ones(shape, dtype=bool)
        bands = list(self.info.bands)
        whole = Window(0, 0, self.info.height, self.info.width)
        out_shape = (len(bands), *shape)
        masks = self.retried(whole, lambda: self._dataset().read_masks(bands, out_shape=out_shape))
        return np.asarray(masks.any(axis=0))

    def read(self, window: Window) -> NDArray[Any]:
        """The selected bands of ``window`` on the 0-255 scale the model expects.

        8-bit data stays uint8 (4x less to hold and copy; the engine converts it on the device);
        other data is scaled by the declared value range into float32. Where ``window`` reaches
        past the image (networks with a margin), the image is mirrored (``fcn.margin``).
        """
        if window == window.expand(0, self.info.height, self.info.width):
            return self.read_inside(window)
        rows = reflect_indices(window.row, window.row + window.height, self.info.height)
        cols = reflect_indices(window.col, window.col + window.width, self.info.width)
        r0, c0 = int(rows.min()), int(cols.min())  # the pixels the mirrored window is made of
        data = self.read_inside(Window(r0, c0, int(rows.max()) + 1 - r0, int(cols.max()) + 1 - c0))
        return np.ascontiguousarray(data[:, rows - r0][:, :, cols - c0])

    def read_inside(self, window: Window) -> NDArray[Any]:
        """:meth:`read` for a window inside the image."""
        return self.retried(window, lambda: self.read_window(window))

    def retried(self, window: Window, read: Callable[[], T]) -> T:
        """``read()``, tried again on a fresh handle if it fails on a remote raster, then one sentence.

        GDAL retries HTTP errors itself (``pipeline.storage.GDAL_RETRIES``) but not a body cut
        short mid-transfer; a local file that fails to read is broken, and says so at once.
        """
        location = Location(self.info.path)
        remote = not location.is_local
        for attempt in range(READ_RETRIES + 1 if remote else 1):
            try:
                with gdal_env(location):  # what GDAL fetches now is configured as when it opened
                    return read()
            except RasterioIOError as exc:
                if remote and attempt < READ_RETRIES:
                    self.close()
                    forget_cached(location)
                    time.sleep(0.2 * 2**attempt)
                    continue
                where = Location(self.info.path).redacted()
                raise FcnpipeError(
                    f"cannot read {where} (rows {window.row}..{window.row + window.height - 1}, columns "
                    f"{window.col}..{window.col + window.width - 1}): {read_failure(exc)}."
                ) from None
        raise AssertionError("unreachable")

    def read_window(self, window: Window) -> NDArray[Any]:
        """:meth:`read_inside` without the sentence."""
        bands, rio_window = list(self.info.bands), to_rasterio(window)
        if self.info.palette is not None:  # one band of indices into the colour table
            return expand_palette(self._dataset().read(1, window=rio_window), self.info.palette)
        if self.info.value_range is None:
            return np.asarray(self._dataset().read(bands, window=rio_window))
        data = self._dataset().read(bands, window=rio_window, out_dtype="float32")
        lo, hi = self.info.value_range
        return np.asarray(np.clip((data - lo) * (255.0 / (hi - lo)), 0.0, 255.0, dtype=np.float32))

    def close(self) -> None:
        """Close this thread's dataset handle (others close when their thread ends)."""
        src = getattr(self._local, "src", None)
        if src is not None:
            src.close()
            self._local.src = None


def to_rasterio(window: Window) -> RioWindow:
    """The same window as rasterio's type."""
    return RioWindow(window.col, window.row, window.width, window.height)
