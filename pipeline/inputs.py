"""Which rasters a batch means: a folder or bucket prefix, a glob, or a text file that lists them."""

from __future__ import annotations

import glob
from itertools import takewhile
from pathlib import Path

from fcn import FcnpipeError
from pipeline import storage
from pipeline.storage import Location

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")


def is_raster_name(name: str) -> bool:
    """A file name with a raster suffix."""
    return Path(name).suffix.lower() in RASTER_SUFFIXES


def expand_inputs(spec: str) -> list[Location]:
    """The rasters ``spec`` names, sorted and without repeats; possibly none (a watched folder).

    ``spec`` is a folder or bucket prefix (its rasters, by suffix, not recursing), a text file
    (``.txt``: one path or URL per line, relative to the file's folder; blank lines and ``#``
    comments ignored), a glob such as ``scenes/**/*.tif`` or ``s3://bucket/incoming/*.tif``, or
    one raster. A folder, list or raster that does not exist is an error; an empty folder or a
    glob that matches nothing yet is not.
    """
    where = Location.of(spec)
    found = expand_local(where) if where.is_local else expand_url(where)
    return sorted(set(found))


def expand_local(where: Location) -> list[Location]:
    """A local folder, list, glob or raster."""
    path = where.path
    if path.is_dir():
        return [Location(str(p)) for p in path.iterdir() if p.is_file() and is_raster_name(p.name)]
    if path.is_file() and path.suffix.lower() == ".txt":
        return read_list(where)
    if path.is_file():
        return [where]
    if not storage.has_wildcards(where):
        raise FcnpipeError(
            f"{where} does not exist (give a folder, a glob such as 'scenes/*.tif', or a .txt list)."
        )
    base = Path(*[part for part in takewhile(lambda p: not storage.has_wildcards(Location(p)), path.parts)])
    if not base.is_dir():
        raise FcnpipeError(f"the folder {base} of {where} does not exist.")
    return [Location(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]


def expand_url(where: Location) -> list[Location]:
    """A bucket prefix, list, glob or raster."""
    if storage.has_wildcards(where):
        return storage.glob(where)
    if where.suffix.lower() == ".txt":
        return read_list(where)
    if is_raster_name(where.name):
        storage.probe(where)
        return [where]
    if where.scheme in ("http", "https"):
        raise FcnpipeError(f"{where.redacted()} cannot be listed over HTTP; name the rasters or a .txt list.")
    with storage.access(where):
        keys = storage.list_keys(where)
    return [where.joinpath(k) for k in keys if "/" not in k and is_raster_name(k)]


def read_list(where: Location) -> list[Location]:
    """The entries of a ``.txt`` list, relative to its folder (or prefix); each must exist."""
    text = storage.read_bytes(where).decode()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    found = [resolve(where.parent, line) for line in lines if line]
    missing = [str(p) for p in found if not storage.is_file(p)]
    if missing:
        raise FcnpipeError(f"{where.redacted()} lists files that do not exist: {', '.join(missing[:5])}.")
    return found


def resolve(folder: Location, entry: str) -> Location:
    """A list entry: a URL as it is, a path relative to the list's folder (or bucket prefix)."""
    named = Location(entry)
    if not named.is_local:
        return named
    if folder.is_local:
        return Location(str(folder.path / Path(entry).expanduser()))  # an absolute entry stays so
    return folder.joinpath(entry)


def batch_outputs(inputs: list[Location], output_dir: Location | None) -> list[Location]:
    """``scene.zarr`` beside each input, or in ``output_dir``; two inputs may not share an output."""
    outputs = [(output_dir.joinpath(p.name) if output_dir else p).with_suffix(".zarr") for p in inputs]
    seen: dict[Location, Location] = {}
    for source, out in zip(inputs, outputs, strict=True):
        if out in seen:
            raise FcnpipeError(f"{seen[out]} and {source} would both write {out}; give them different names.")
        seen[out] = source
    return outputs
