"""Downloads checked against a checksum in the code, and archives unpacked only inside their folder.

A file is written as ``<name>.part`` beside its target, resumed from where it stopped with a
``Range`` request, checked against its checksum, and only then renamed into place. An archive is
unpacked into a staging folder beside its target, every member checked first, and the staging
folder renamed into place at the end: a failure leaves no half-written target behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from fcn.errors import FcnpipeError
from pipeline.storage import Location

CHUNK = 1 << 20
TIMEOUT_S = 60
SHOWN_HEX = 12  # how much of a digest an error message shows

Progress = Callable[[int, int | None], None]
"""Told ``(bytes so far, total bytes or None)`` as a download proceeds."""


@dataclass(frozen=True)
class Checksum:
    """A published digest: ``md5`` or ``sha256``.

    ``hexdigest`` is the whole digest, or for torch hub files the leading hex digits that their
    name carries (``vgg16-397923af.pth``), which is all torch hub itself checks.
    """

    algorithm: str
    hexdigest: str

    def __post_init__(self) -> None:
        if self.algorithm not in ("md5", "sha256") or len(self.hexdigest) < 8:
            raise ValueError(f"not a checksum: {self.algorithm}:{self.hexdigest}")

    def of(self, path: Path) -> str:
        """The digest of a file, in this checksum's algorithm."""
        digest = hashlib.new(self.algorithm)
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        return digest.hexdigest()

    def matches(self, hexdigest: str) -> bool:
        """Whether a computed digest is the published one (or begins with the published prefix)."""
        return hexdigest.startswith(self.hexdigest.lower())


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """A download progress bar on stderr when ``enabled`` (a terminal), else no progress at all."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.progress import Progress as Bar

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("download", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def download_base() -> str | None:
    """``FCNPIPE_DOWNLOAD_BASE``: a mirror (or a test server) serving every file by its name.

    Read by the command line and the flows, the edges, and passed down from there.
    """
    return os.environ.get("FCNPIPE_DOWNLOAD_BASE") or None


def host_of(url: str) -> str:
    """The host a URL names, for messages."""
    return urlsplit(url).hostname or url


def download(url: str, target: Path, checksum: Checksum, *, progress: Progress | None = None) -> Path:
    """Download ``url`` to ``target`` unless it is there already, resuming a ``.part`` left behind.

    The file is renamed into place only once its checksum matches; a mismatch deletes it.
    """
    if target.is_file():
        return target
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    fetch_into(url, part, target, progress)
    got = checksum.of(part)
    if not checksum.matches(got):
        part.unlink()
        raise FcnpipeError(
            f"{target.name} from {host_of(url)} failed its {checksum.algorithm} check (expected "
            f"{checksum.hexdigest[:SHOWN_HEX]}…, got {got[:SHOWN_HEX]}…), so it was deleted; run the "
            "same command again, and if it fails again the server holds another file."
        )
    os.replace(part, target)
    return target


def fetch_into(url: str, part: Path, target: Path, progress: Progress | None) -> None:
    """Write the bytes of ``url`` to ``part``, after the bytes already there if the server resumes."""
    have = part.stat().st_size if part.is_file() else 0
    shown = Location(url).redacted()  # a mirror's URL may carry credentials: never print them
    request = urllib.request.Request(url, headers={"User-Agent": "fcnpipe"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after what we hold: the part is whole
            return
        raise FcnpipeError(
            f"{host_of(url)} answered HTTP {exc.code} ({exc.reason}) for {shown}; download it by hand "
            f"and place it at {target}."
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FcnpipeError(
            f"could not reach {host_of(url)} ({reason}); check the network, or download {shown} by hand "
            f"and place it at {target}."
        ) from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = int(length) + (have if resumed else 0) if length is not None else None
        done = have if resumed else 0
        # A server that ignores Range sends the whole file again: start the part afresh.
        with part.open("ab" if resumed else "wb") as f:
            try:
                while block := response.read(CHUNK):
                    f.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
            except (http.client.IncompleteRead, OSError) as exc:
                raise stopped(url, part, done, total) from exc
    if total is not None and done < total:
        raise stopped(url, part, done, total)


def stopped(url: str, part: Path, done: int, total: int | None) -> FcnpipeError:
    """The sentence for a download the connection cut short."""
    of = f" of {total}" if total is not None else ""
    return FcnpipeError(
        f"the download from {host_of(url)} stopped after {done}{of} bytes; {part.name} is kept, so run "
        "the same command again to resume it."
    )


# --- archives ------------------------------------------------------------------------------------


def archive_kind(path: Path) -> str:
    """``tar`` or ``zip``, from the file name."""
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    raise FcnpipeError(f"{path.name} is not a .tar, .tar.gz, .tgz or .zip archive.")


def inside(root: Path, member: str) -> bool:
    """Whether the archive member path ``member`` stays inside ``root`` once resolved."""
    if PurePosixPath(member).is_absolute() or Path(member).is_absolute():
        return False
    resolved = (root / member).resolve()
    return resolved == root or resolved.is_relative_to(root)


def refuse(archive: Path, member: str, why: str) -> FcnpipeError:
    """The sentence for an archive member that would land outside its folder."""
    return FcnpipeError(f"{archive.name} holds {member!r}, which {why}; nothing was extracted.")


def checked_tar_members(tar: tarfile.TarFile, root: Path, archive: Path) -> list[tarfile.TarInfo]:
    """Every member of ``tar``, refusing any that would write or point outside ``root``."""
    members = tar.getmembers()
    for m in members:
        if not inside(root, m.name):
            raise refuse(archive, m.name, "would be written outside the target folder")
        if m.issym():
            linked = str(PurePosixPath(m.name).parent / m.linkname)
            if PurePosixPath(m.linkname).is_absolute() or not inside(root, linked):
                raise refuse(archive, m.name, f"links to {m.linkname!r} outside the target folder")
        elif m.islnk() and not inside(root, m.linkname):
            raise refuse(archive, m.name, f"links to {m.linkname!r} outside the target folder")
        elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise refuse(archive, m.name, "is a device or pipe, not a file")
    return members


def checked_zip_members(archive_file: zipfile.ZipFile, root: Path, archive: Path) -> list[str]:
    """Every member name of a zip archive, refusing any that would write outside ``root``."""
    names = archive_file.namelist()
    for info in archive_file.infolist():
        if not inside(root, info.filename) or "\\" in info.filename:
            raise refuse(archive, info.filename, "would be written outside the target folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            # zipfile writes a link's target as a file's text; a link in a dataset is not wanted.
            raise refuse(archive, info.filename, "is a symbolic link")
    return names


def unpack(archive: Path, into: Path) -> None:
    """Unpack every member of ``archive`` into the existing folder ``into``, after checking them all."""
    root = into.resolve()
    try:
        if archive_kind(archive) == "tar":
            with tarfile.open(archive) as tar:
                members = checked_tar_members(tar, root, archive)
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: the library's own check too
                    tar.extractall(root, members=members, filter="data")
                else:
                    tar.extractall(root, members=members)
        else:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(root, members=checked_zip_members(zipped, root, archive))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise FcnpipeError(
            f"{archive.name} is not a readable archive ({exc}); delete it and fetch again."
        ) from None


def require_new(target: Path) -> None:
    """Refuse a target folder that exists with something in it: fetching never writes over a folder."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FcnpipeError(f"{target} already exists and is not empty; choose another folder or remove it.")


@contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target`` that becomes ``target`` if the block succeeds, else vanishes."""
    require_new(target)
    stage = target.with_name(f".{target.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)  # what an interrupted earlier run left
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if target.is_dir():
        target.rmdir()  # empty, as checked above
    os.replace(stage, target)


def extract_all(
    archives: Sequence[Path], target: Path, arrange: Callable[[Path], None] | None = None
) -> Path:
    """Unpack ``archives`` into the new folder ``target``, then ``arrange`` it, all or nothing."""
    with staging(target) as stage:
        for archive in archives:
            unpack(archive, stage)
        if arrange is not None:
            arrange(stage)
    return target
