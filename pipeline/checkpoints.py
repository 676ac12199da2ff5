"""Checkpoints named by URL (``s3://``, ``gs://``, ``az://``, ``https://``): fetched once per machine.

A cluster rarely shares a disk, so ``--weights`` may be a URL. The machine that plans the run
fetches it (unless its cache already holds that object), computes its SHA-256, and the plan carries
the URL and the digest. Every worker then looks in its own cache, ``$FCNPIPE_HOME/weights/
<sha256>.pt``, and fetches the URL only if the file is not there; a fetched file is checked against
the digest before it is used, so a worker never segments with another model than the one planned.
A file appears in the cache whole or not at all (fetched to a temporary name, then renamed).

Which object a URL named is remembered by its size and ETag (or Last-Modified), so a later run
re-fetches only when the object changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import obstore

from fcn import FcnpipeError
from pipeline.home import home
from pipeline.storage import Location, access, http_get, object_store


def is_url(value: str | Path) -> bool:
    """Whether a checkpoint is named by a URL rather than a path on this machine."""
    return not Location.of(str(value)).is_local


def cache() -> Path:
    """The folder that holds fetched checkpoints, by digest."""
    return home() / "weights"


def local_checkpoint(weights: str | Path, sha256: str | None = None) -> Path:
    """A path on this machine for ``weights``: itself if local, else the cached copy of the URL.

    With ``sha256`` (a worker, from the plan) the cache is looked up by digest and a fetch must
    match it; without (the planning machine) the object is fetched unless the cache holds this
    version of it.
    """
    if not is_url(weights):
        return Path(weights).expanduser()
    location = Location.of(str(weights))
    if sha256 is not None:
        cached = cache() / f"{sha256}.pt"
        return cached if cached.is_file() else fetch(location, expected=sha256)
    version = object_version(location)
    known = read_index().get(location.redacted(), {})
    cached = cache() / f"{known.get('sha256')}.pt"
    if known.get("version") == version and cached.is_file():
        return cached
    path = fetch(location)
    write_index(location.redacted(), version, path.stem)
    return path


def fetch(location: Location, expected: str | None = None) -> Path:
    """Fetch ``location`` into the cache under its digest (checked against ``expected`` if given)."""
    folder = cache()
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{os.getpid()}.part"
    digest = hashlib.sha256()
    try:
        with part.open("wb") as out:
            for chunk in stream(location):
                digest.update(chunk)
                out.write(chunk)
        found = digest.hexdigest()
        if expected is not None and found != expected:
            raise FcnpipeError(
                f"{location.redacted()} is not the checkpoint this run was planned with (its SHA-256 is "
                f"{found[:12]}…, the plan's {expected[:12]}…): it changed during the run; run again."
            )
        target = folder / f"{found}.pt"
        os.replace(part, target)  # whole, or not at all: other workers may look now
        return target
    finally:
        part.unlink(missing_ok=True)


def stream(location: Location) -> Iterable[Any]:
    """The object's bytes, in pieces (an HTTP(S) URL as given, a pre-signed query included)."""
    if location.scheme in ("http", "https"):
        http_get(location, first_byte_only=True)  # one sentence for a missing or refused URL
        return http_pieces(location)
    with access(location):
        return obstore.get(object_store(location.parent), location.name).stream(min_chunk_size=8 << 20)


def http_pieces(location: Location) -> Iterator[bytes]:
    """An HTTP(S) body in 8 MiB pieces."""
    with urllib.request.urlopen(location.text, timeout=60) as response:
        while piece := response.read(8 << 20):
            yield piece


def object_version(location: Location) -> str:
    """What identifies this version of the object: size and ETag (or Last-Modified)."""
    if location.scheme in ("http", "https"):
        request = urllib.request.Request(location.text, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                headers = response.headers
                tag = headers.get("ETag") or headers.get("Last-Modified")
                return f"{headers.get('Content-Length')}:{tag}"
        except OSError:
            return ""  # a URL signed for GET only: fetched each time
    with access(location):
        meta = obstore.head(object_store(location.parent), location.name)
    return f"{meta['size']}:{meta.get('e_tag') or meta.get('last_modified')}"


def read_index() -> dict[str, dict[str, str]]:
    """Which version of which URL is cached under which digest."""
    try:
        index = json.loads((cache() / "index.json").read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def write_index(url: str, version: str, sha256: str) -> None:
    """Remember a URL's version and digest (whole or not at all; a read-only home skips it)."""
    if not version:
        return
    index = read_index() | {url: {"version": version, "sha256": sha256}}
    try:
        scratch = cache() / f".index.{os.getpid()}.json"
        scratch.write_text(json.dumps(index, indent=1) + "\n")
        os.replace(scratch, cache() / "index.json")
    except OSError:
        pass
