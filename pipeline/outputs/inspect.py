"""What a mosaic holds, for people and scripts: ``fcnpipe inspect MOSAIC.zarr``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import zarr
from rasterio.crs import CRS

from fcn import FcnpipeError
from pipeline.outputs.mosaic import blocks_done, open_mosaic_group, parse_geotransform, read_state
from pipeline.settings import OUTPUTS
from pipeline.storage import Location


def describe_mosaic(path: str | Path | Location) -> dict[str, Any]:
    """Shape, chunks, georeferencing, classes, arrays, completeness and provenance of a mosaic."""
    where = Location.of(path)
    state = read_state(where)
    if state is None:
        raise FcnpipeError(f"{where.redacted()} is not an fcnpipe mosaic.")
    group = open_mosaic_group(where, "r")
    labels = group["labels"]
    assert isinstance(labels, zarr.Array)
    ref = dict(group["spatial_ref"].attrs)
    transform = parse_geotransform(str(ref["GeoTransform"]))
    crs = CRS.from_wkt(ref["crs_wkt"]) if "crs_wkt" in ref else None
    done = blocks_done(group)
    model = state["model"]
    classes = label_classes(dict(group.attrs))
    return {
        "path": where.redacted(),
        "complete": bool(state.get("complete")),
        "blocks_done": int(done.sum()),
        "blocks_total": int(done.size),
        "shape": list(labels.shape),
        "chunks": list(labels.chunks),
        "arrays": [name for name in group.array_keys() if name in OUTPUTS or name.startswith("labels")],
        "overviews": overview_shapes(dict(group.attrs)),
        "crs": crs.to_string() if crs else None,
        "transform": list(transform)[:6],
        "resolution": [math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)],
        "classes": classes.pop("labels"),
        "head_classes": classes,  # a further head's label array's, by its name
        "source": state.get("source"),
        "model": {"arch": model["arch"], "sha256": model["sha256"], "provenance": model.get("provenance")},
        "settings": state.get("settings"),
        "fingerprint": state.get("fingerprint"),
        "report": state.get("report"),
    }


def label_classes(attrs: dict[str, Any]) -> dict[str, list[str]]:
    """The class names of each label array: ``labels``, and a further head's (``labels_geometric``)."""
    heads = attrs.get("heads") or {"labels": attrs}
    return {array: [str(n) for n in head["class_names"]] for array, head in heads.items()}


def overview_shapes(attrs: dict[str, Any]) -> list[list[int]]:
    """Shapes of the pyramid levels below full resolution, from the ``multiscales`` layout."""
    layout = (attrs.get("multiscales") or {}).get("layout", [])
    return [list(entry["proj:shape"]) for entry in layout[1:]]


def summary_lines(info: dict[str, Any]) -> list[str]:
    """The description as a few readable lines."""
    status = "complete" if info["complete"] else "incomplete"
    h, w = info["shape"]
    lines = [
        f"{info['path']}: {status} ({info['blocks_done']} of {info['blocks_total']} blocks done)",
        f"size {w} x {h} px, chunks {info['chunks'][1]} x {info['chunks'][0]}, "
        f"arrays {', '.join(info['arrays'])}",
        "overviews " + (", ".join(f"{w} x {h}" for h, w in info["overviews"]) or "none"),
        f"crs {info['crs'] or 'none'}, resolution {info['resolution'][0]:g} x {info['resolution'][1]:g}",
        f"classes ({len(info['classes'])}): {', '.join(info['classes'])}",
        *(
            f"{array} classes ({len(names)}): {', '.join(names)}"
            for array, names in info["head_classes"].items()
        ),
        f"model {info['model']['arch']} (sha256 {info['model']['sha256'][:12]}), source {info['source']}",
    ]
    if info["report"]:
        r = info["report"]
        lines.append(f"last run: {r['tiles']} tiles ({r['tiles_skipped']} skipped), {r['seconds']} s")
    return lines
