"""Which rasters a batch means: a folder, a glob, or a text file that lists them."""

from __future__ import annotations

import glob
from pathlib import Path

from fcn import FcnpipeError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")


def expand_inputs(spec: str) -> list[Path]:
    """The rasters ``spec`` names, sorted and without repeats.

    ``spec`` is a folder (its rasters, by suffix, not recursing), a text file (``.txt``: one path per
    line, relative to the file's folder; blank lines and ``#`` comments ignored), a glob such as
    ``scenes/**/*.tif``, or one raster.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES]
    elif path.is_file() and path.suffix.lower() == ".txt":
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        found = [(path.parent / line).expanduser() for line in lines if line]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise FcnpipeError(f"{path} lists files that do not exist: {', '.join(missing[:5])}.")
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    if not found:
        raise FcnpipeError(
            f"{spec} names no rasters (give a folder, a glob such as 'scenes/*.tif', or a .txt list)."
        )
    return sorted(set(found))


def batch_outputs(inputs: list[Path], output_dir: Path | None) -> list[Path]:
    """``scene.zarr`` beside each input, or in ``output_dir``; two inputs may not share an output."""
    outputs = [(output_dir / p.name if output_dir else p).with_suffix(".zarr") for p in inputs]
    seen: dict[Path, Path] = {}
    for source, out in zip(inputs, outputs, strict=True):
        if out in seen:
            raise FcnpipeError(f"{seen[out]} and {source} would both write {out}; give them different names.")
        seen[out] = source
    return outputs
