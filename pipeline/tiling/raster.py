"""Reading the input: any GDAL raster, checked once up front, then windowed reads with its mask.

The input is a local path or a URL (``s3://``, ``gs://``, ``az://``, ``https://``; see
``pipeline.storage``): each read fetches only its window's byte ranges.

Reads are clipped to the image (the grid never asks for pixels outside it): the network takes any
input size, and its own zero padding at the image edge is what a whole-image pass sees too.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window as RioWindow

from fcn import FcnpipeError
from fcn.margin import reflect_indices
from pipeline.storage import Location, gdal_env, probe
from pipeline.tiling.grid import Window

Transform = tuple[float, float, float, float, float, float]


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

    @property
    def pixels(self) -> int:
        """Number of pixels."""
        return self.height * self.width


def choose_bands(path: Location, src: Any, bands: tuple[int, ...] | None, channels: int) -> tuple[int, ...]:
    """The 1-based bands to feed the model: as asked, or all colour bands when they fit exactly."""
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise FcnpipeError(f"{path.redacted()} has bands 1..{src.count}; band {bad[0]} does not exist.")
        if len(bands) != channels:
            raise FcnpipeError(f"the model takes {channels} bands but --bands names {len(bands)}.")
        return bands
    colour = tuple(i + 1 for i, ci in enumerate(src.colorinterp) if ci != ColorInterp.alpha)
    if len(colour) == channels:
        return colour
    example = ",".join(str(i + 1) for i in range(channels))
    raise FcnpipeError(
        f"{path.redacted()} has {len(colour)} bands but the model takes {channels}; "
        f"choose them with --bands (e.g. --bands {example})."
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
        chosen = choose_bands(location, src, bands, channels)
        dtype = src.dtypes[chosen[0] - 1]
        if dtype != "uint8" and value_range is None:
            raise FcnpipeError(
                f"{where} holds {dtype} values; declare how they map to 0-255 with --value-range LO,HI "
                "(or value_range in the config)."
            )
        if value_range is not None and not value_range[1] > value_range[0]:
            raise FcnpipeError(f"the value range {value_range} must run from low to high.")
        flags = [src.mask_flag_enums[b - 1] for b in chosen]
        masked = any(f != [MaskFlags.all_valid] for f in flags)
        return RasterInfo(
            path=location.text,
            height=src.height,
            width=src.width,
            dtype=dtype,
            bands=chosen,
            crs_wkt=src.crs.to_wkt() if src.crs else None,
            transform=tuple(src.transform)[:6],
            nodata=src.nodata,
            masked=masked,
            value_range=value_range,
        )


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
        masks = self._dataset().read_masks(list(self.info.bands), window=to_rasterio(window))
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
        bands, rio_window = list(self.info.bands), to_rasterio(window)
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
