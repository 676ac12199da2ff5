"""The output: a georeferenced Zarr v3 mosaic with a done-manifest, written in whole chunks.

Layout (what ``xr.open_zarr(path, decode_coords="all")`` and rioxarray read):

- ``labels`` (y, x): uint8 class indices (uint16 past 255 classes), ``_FillValue`` = nodata;
- ``labels_<head>`` (y, x) for each head after the first of a model with several (SIFT Flow's
  two-headed net: ``labels`` semantic, ``labels_geometric``), each with its own classes;
- ``probabilities`` (class, y, x), on request: uint8, p = value / 254 (CF ``scale_factor``),
  255 = nodata; or float16 on request, NaN = nodata (with several heads, each head's classes sum
  to one);
- ``logits`` (class, y, x), on request: float16 (float32 on request), NaN = nodata;
- ``x``, ``y`` pixel-centre coordinates and a ``spatial_ref`` grid mapping carrying ``crs_wkt``
  and GDAL's ``GeoTransform`` (CF and rioxarray conventions).

The manifest is the ``fcnpipe/blocks_done`` array, one chunk per block: each block writes only its
own chunk, after its data chunks, so tasks never contend. A finished block's entry is the layout
that computed it (device, threads, precision, library versions: ``engine.compute_layout``), an
unfinished one's is empty. The root attribute ``fcnpipe.complete`` turns true last, after every
block is recorded.

The store is a local folder or a bucket prefix (``pipeline.storage`` says how each guarantee
holds on an object store).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine
from numpy.typing import NDArray
from zarr.codecs import ZstdCodec

from fcn import FcnpipeError, ModelCard
from fcn.checkpoint import Head
from pipeline.grid import Window
from pipeline.home import home
from pipeline.outputs.geozarr import geo_attributes
from pipeline.raster import RasterInfo
from pipeline.storage import Location, access, check_writable, delete_tree, exists, is_file, zarr_store

PROBABILITY_SCALE = 254
PROBABILITY_NODATA = 255
MANIFEST = "fcnpipe/blocks_done"
ROWS_DONE = "fcnpipe/rows_done"
"""A streamed mosaic's record of each strip's rows of chunks written: (strip, row), one chunk each."""


class AlreadyComplete(FcnpipeError):
    """The output is a complete mosaic of the same scene, model and settings: nothing to do."""


def label_dtype(num_classes: int) -> np.dtype[Any]:
    """uint8 while the classes and one nodata value fit, uint16 beyond."""
    return np.dtype("uint8") if num_classes <= 255 else np.dtype("uint16")


def label_nodata(num_classes: int) -> int:
    """The largest value of the label dtype: never a class index."""
    return int(np.iinfo(label_dtype(num_classes)).max)


def head_array(head: Head) -> str:
    """The name of a further head's label array (the first head's is ``labels``)."""
    return f"labels_{head.name}"


def label_arrays(card: ModelCard) -> dict[str, ModelCard]:
    """Each label array of a mosaic by ``card``'s model, with the card of the classes it holds."""
    first, *rest = card.heads
    return {"labels": card.head_card(first)} | {head_array(h): card.head_card(h) for h in rest}


@dataclass(frozen=True)
class MosaicSpec:
    """What a mosaic is made of; its hash decides whether an existing store can be resumed."""

    scene: RasterInfo
    card: ModelCard
    model_sha256: str
    outputs: tuple[str, ...]
    logits_dtype: str
    chunk: int
    settings: dict[str, Any]
    blocks: int
    probabilities_dtype: str = "uint8"

    def fingerprint(self) -> str:
        """A hash of everything that changes the bytes written."""
        data = {
            "scene": [
                Location(self.scene.path).redacted(),
                self.scene.height,
                self.scene.width,
                self.scene.bands,
            ],
            "value_range": self.scene.value_range,
            "model": self.model_sha256,
            "outputs": list(self.outputs),
            "logits_dtype": self.logits_dtype,
            "probabilities_dtype": self.probabilities_dtype,
            "chunk": self.chunk,
            "settings": self.settings,
            "blocks": self.blocks,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered between runs while the file is unchanged.

    A checkpoint is half a gigabyte for the FCNs, about a second to hash on every run and for every
    scene of a batch. The digest is kept in ``sha256.json`` in fcnpipe's home under the file's path,
    keyed as git's index keys a file: inode, size, and modification and change times (any write
    changes the change time, and nothing can set it back).
    """
    stat = path.stat()
    key = f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
    return hashed_file(str(path.resolve()), key)


KEPT_DIGESTS = 64
"""How many files' digests ``sha256.json`` keeps (the most recent)."""


@functools.lru_cache(maxsize=32)
def hashed_file(path: str, key: str) -> str:
    """SHA-256 of the file at ``path`` (``key`` says which version), kept, else read in 8 MiB pieces."""
    kept_file = home() / "sha256.json"
    try:
        kept = json.loads(kept_file.read_text())
        assert isinstance(kept, dict)
    except (OSError, ValueError, AssertionError):
        kept = {}
    entry = kept.get(path)
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("sha256"), str):
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 << 20):
            digest.update(piece)
    kept.pop(path, None)
    kept[path] = {"key": key, "sha256": digest.hexdigest()}
    kept = dict(list(kept.items())[-KEPT_DIGESTS:])
    try:
        kept_file.parent.mkdir(parents=True, exist_ok=True)
        scratch = kept_file.with_name(f".sha256.{os.getpid()}.json")
        scratch.write_text(json.dumps(kept, indent=1) + "\n")
        os.replace(scratch, kept_file)  # whole, or not at all: another run may read it now
    except OSError:
        pass  # a read-only home: the digest is computed again next time
    return digest.hexdigest()


def gdal_geotransform(transform: Affine) -> str:
    """An affine as GDAL's GeoTransform string (c a b f d e), each number exactly (``repr``)."""
    return " ".join(repr(v) for v in transform.to_gdal())


def parse_geotransform(text: str) -> Affine:
    """GDAL's GeoTransform string (c a b f d e) back to an affine."""
    return Affine.from_gdal(*(float(v) for v in text.split()))


def open_mosaic_group(location: str | Path | Location, mode: str) -> zarr.Group:
    """The mosaic's root group, on a disk or in a bucket (``mode`` "r" or "r+")."""
    where = Location.of(location)
    with access(where):
        return zarr.open_group(store=zarr_store(where, read_only=mode == "r"), mode=mode)  # type: ignore[arg-type]


def read_state(location: str | Path | Location) -> dict[str, Any] | None:
    """The ``fcnpipe`` attributes of an existing mosaic, or None when ``location`` holds none."""
    where = Location.of(location)
    if not is_file(where.joinpath("zarr.json")):  # a bucket that cannot be read says so
        return None
    try:
        group = zarr.open_group(store=zarr_store(where, read_only=True), mode="r")
    except Exception:  # any unreadable store is "not a mosaic" to the caller
        return None
    state = group.attrs.get("fcnpipe")
    return dict(state) if isinstance(state, dict) else None


def prepare(location: str | Path | Location, spec: MosaicSpec, *, overwrite: bool) -> zarr.Group:
    """Create the store, or reopen it to resume; refuse to touch a store made by something else."""
    where = Location.of(location)
    shown = where.redacted()
    check_writable(where)
    state = read_state(where)
    if state is None and exists(where) and not is_empty_folder(where):
        # never delete what fcnpipe did not make
        raise FcnpipeError(f"{shown} exists and is not an fcnpipe mosaic; choose another --output.")
    if state is not None and not overwrite:
        if state.get("fingerprint") != spec.fingerprint():
            raise FcnpipeError(
                f"{shown} was made from another scene, model or configuration; "
                "pass --overwrite to replace it or choose another --output."
            )
        if state.get("complete"):
            raise AlreadyComplete(f"{shown} is already complete; pass --overwrite to make it again.")
        if where.is_local:
            for partial in where.path.rglob("*.partial"):  # zarr's temporary files, left by a killed run
                partial.unlink()
        return open_mosaic_group(where, "r+")
    if state is not None:
        discard(where)
    elif where.is_local and where.path.is_file():
        where.path.unlink()
    try:
        group = create(where, spec)
    except OSError as exc:
        raise FcnpipeError(f"cannot write {shown}: {exc.strerror or exc}.") from None
    consolidate(group)
    return group


def is_empty_folder(location: Location) -> bool:
    """A local folder with nothing in it (a bucket prefix with no keys does not exist)."""
    return location.is_local and location.path.is_dir() and not any(location.path.iterdir())


def discard(location: Location) -> None:
    """Delete a mosaic fcnpipe made: first mark it incomplete, then its entries, its root last.

    However a crash interrupts this, what is left is still recognisably an fcnpipe mosaic (its
    root ``zarr.json`` goes last) and never one that claims to be complete.
    """
    group = open_mosaic_group(location, "r+")
    state = group.attrs["fcnpipe"]
    assert isinstance(state, dict)
    group.attrs["fcnpipe"] = {**state, "complete": False}
    delete_tree(location, last="zarr.json")


def create(location: Location, spec: MosaicSpec) -> zarr.Group:
    """Write the empty store: arrays, coordinates, grid mapping, attributes, manifest."""
    scene, card = spec.scene, spec.card
    h, w, c, k = scene.height, scene.width, spec.chunk, card.num_classes
    transform = Affine(*scene.transform)
    with access(location):
        group = zarr.open_group(store=zarr_store(location, read_only=False), mode="w", zarr_format=3)
    zstd = ZstdCodec(level=3)
    common = {"grid_mapping": "spatial_ref"}
    arrays = label_arrays(card)
    for name, head in arrays.items():
        nodata = label_nodata(head.num_classes)
        group.create_array(
            name, shape=(h, w), chunks=(c, c), dtype=label_dtype(head.num_classes), fill_value=nodata,
            compressors=zstd, dimension_names=("y", "x"),
            attributes={**common, "_FillValue": nodata, "long_name": "class index",
                        "flag_values": list(range(head.num_classes)),
                        "flag_meanings": " ".join(head.class_names)},
        )  # fmt: skip
    if "probabilities" in spec.outputs and spec.probabilities_dtype == "float16":
        group.create_array(
            "probabilities", shape=(k, h, w), chunks=(k, c, c), dtype="float16", fill_value=np.nan,
            compressors=zstd, dimension_names=("class", "y", "x"),
            attributes={**common, "long_name": "class probability"},
        )  # fmt: skip
    elif "probabilities" in spec.outputs:
        group.create_array(
            "probabilities", shape=(k, h, w), chunks=(k, c, c), dtype="uint8",
            fill_value=PROBABILITY_NODATA, compressors=zstd, dimension_names=("class", "y", "x"),
            attributes={**common, "_FillValue": PROBABILITY_NODATA,
                        "scale_factor": 1 / PROBABILITY_SCALE, "long_name": "class probability"},
        )  # fmt: skip
    if "logits" in spec.outputs:
        group.create_array(
            "logits", shape=(k, h, w), chunks=(k, c, c), dtype=spec.logits_dtype, fill_value=np.nan,
            compressors=zstd, dimension_names=("class", "y", "x"),
            attributes={**common, "long_name": "class logit"},
        )  # fmt: skip
    write_coordinates(group, (h, w), transform, scene.crs_wkt, k)
    group.create_array(MANIFEST, shape=(spec.blocks,), chunks=(1,), dtype=str, fill_value="")
    if spec.settings.get("strategy") == "stream":
        group.create_array(ROWS_DONE, shape=(spec.blocks, -(-h // c)), chunks=(1, 1), dtype=bool,
                           fill_value=False)  # fmt: skip
    group.attrs.update(
        {
            "fcnpipe": {
                "complete": False,
                "fingerprint": spec.fingerprint(),
                "blocks_total": spec.blocks,
                "outputs": list(spec.outputs),
                "source": Location(scene.path).redacted(),
                "model": {**card.to_dict(), "sha256": spec.model_sha256},
                "settings": spec.settings,
            },
            "class_names": list(arrays["labels"].class_names),
            "palette": [list(p) for p in arrays["labels"].palette],
            **({"heads": heads_attribute(arrays)} if len(arrays) > 1 else {}),
            **geo_attributes((h, w), transform, scene.crs_wkt),
        }
    )
    return group


def heads_attribute(arrays: dict[str, ModelCard]) -> dict[str, Any]:
    """The root's ``heads``: each label array's class names and colours (models with several heads)."""
    return {
        name: {"class_names": list(card.class_names), "palette": [list(p) for p in card.palette]}
        for name, card in arrays.items()
    }


def write_coordinates(
    group: zarr.Group,
    shape: tuple[int, int],
    transform: Affine,
    crs_wkt: str | None,
    num_classes: int,
) -> None:
    """Pixel-centre x/y coordinates, class indices and the CF grid mapping ``spatial_ref``.

    For the full-resolution arrays and for each overview level (with its own shape and transform).
    """
    cols, rows = np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5
    # For a rotated grid (b, d != 0) these are the coordinates along the first row and column;
    # the exact georeferencing is the GeoTransform on spatial_ref, which rioxarray prefers.
    t = transform
    coords = {"x": t.a * cols + t.b * 0.5 + t.c, "y": t.d * 0.5 + t.e * rows + t.f}
    for name, values in coords.items():
        arr = group.create_array(name, shape=values.shape, dtype="float64", fill_value=0.0,
                                 dimension_names=(name,), attributes={"axis": name.upper()})  # fmt: skip
        arr[:] = values
    classes = group.create_array(
        "class", shape=(num_classes,), dtype="int32", fill_value=0, dimension_names=("class",)
    )
    classes[:] = np.arange(num_classes)
    grid_mapping: dict[str, Any] = {"GeoTransform": gdal_geotransform(transform)}
    if crs_wkt is not None:
        grid_mapping |= {"crs_wkt": crs_wkt, "spatial_ref": crs_wkt}
    ref = group.create_array("spatial_ref", shape=(), dtype="int64", fill_value=0, dimension_names=(),
                             attributes=grid_mapping)  # fmt: skip
    ref[()] = 0


def write_core(
    group: zarr.Group,
    core: Window,
    labels: NDArray[Any],
    probabilities: NDArray[Any] | None = None,
    logits: NDArray[np.floating[Any]] | None = None,
    head_labels: dict[str, NDArray[Any]] | None = None,
) -> None:
    """Write one core's arrays; cores cover whole chunks, so no other writer touches them."""
    rows, cols = core.slices()
    group["labels"][rows, cols] = labels  # type: ignore[index]
    for name, values in (head_labels or {}).items():
        group[name][rows, cols] = values  # type: ignore[index]
    if probabilities is not None:
        group["probabilities"][:, rows, cols] = probabilities  # type: ignore[index]
    if logits is not None:
        group["logits"][:, rows, cols] = logits  # type: ignore[index]


def mark_block_done(group: zarr.Group, index: int, layout: str) -> None:
    """Record a finished block and the layout that computed it (its own chunk: no other writer)."""
    manifest = group[MANIFEST]
    assert isinstance(manifest, zarr.Array)
    manifest[index] = layout if holds_layouts(manifest.dtype) else 1


def strip_rows(group: zarr.Group) -> zarr.Array[Any] | None:
    """The record of strips' rows written (None in a tiled mosaic, or one streamed before it existed)."""
    try:
        rows = group[ROWS_DONE]
    except KeyError:
        return None
    assert isinstance(rows, zarr.Array)
    return rows


def rows_written(record: zarr.Array[Any] | None, index: int) -> int:
    """How many of strip ``index``'s rows of chunks, from the top, are written."""
    if record is None:
        return 0
    done = np.asarray(record[index, :])
    return len(done) if done.all() else int(np.argmin(done))


def mark_row_written(record: zarr.Array[Any] | None, index: int, row: int) -> None:
    """Record that strip ``index``'s row of chunks ``row`` is written (after its chunks; written once)."""
    if record is not None:
        record[index, row] = True


def holds_layouts(dtype: Any) -> bool:
    """A manifest of layout strings (mosaics before layouts were recorded hold 0/1)."""
    return np.dtype(dtype).kind in "UOT"


def manifest_entries(group: zarr.Group) -> NDArray[Any]:
    """The manifest as read: a layout per block ("" when not done), or 0/1 in older mosaics."""
    return np.asarray(group[MANIFEST][:])  # type: ignore[index]


def blocks_done(group: zarr.Group) -> NDArray[np.bool_]:
    """Which blocks the manifest records as finished."""
    entries = manifest_entries(group)
    return np.asarray(entries != ("" if holds_layouts(entries.dtype) else 0), dtype=bool)


def block_layouts(group: zarr.Group) -> dict[str, int]:
    """How many finished blocks each layout computed (empty for mosaics older than layouts)."""
    entries = manifest_entries(group)
    if not holds_layouts(entries.dtype):
        return {}
    layouts, counts = np.unique(entries[entries != ""], return_counts=True)
    return {str(layout): int(count) for layout, count in zip(layouts, counts, strict=True)}


def mark_complete(group: zarr.Group, report: dict[str, Any]) -> None:
    """Mark the mosaic complete, only when every block is recorded; consolidate metadata."""
    done = blocks_done(group)
    if not done.all():
        raise FcnpipeError(f"{int((~done).sum())} blocks are not written; the mosaic is not complete.")
    state = dict(group.attrs["fcnpipe"])  # type: ignore[arg-type]
    group.attrs["fcnpipe"] = {**state, "complete": True, "report": report}
    consolidate(group)


def consolidate(group: zarr.Group) -> None:
    """Consolidate metadata so that xarray opens the store in one read (and without a warning)."""
    with warnings.catch_warnings():
        # zarr notes that consolidation is not yet in the v3 spec; xarray and zarr both read it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(group.store)
