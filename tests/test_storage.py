"""Scenes and mosaics in object storage: a real S3 API on 127.0.0.1 (moto's standalone server with
authentication on), reached through GDAL's /vsis3/, zarr's ObjectStore over obstore, and the CLI."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.shutil import copy as gdal_copy
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from fcn import FcnpipeError
from fcnpipe.main import app
from pipeline.outputs.finish import finish
from pipeline.outputs.mosaic import read_state
from pipeline.raster import inspect_raster
from pipeline.settings import SegmentSettings
from pipeline.storage import Location, read_bytes, write_bytes
from pipeline.tiling.segment import plan_scene, run_local, segment_block
from tests.conftest import ROOT, Bucket, noise_image, write_tif

pytestmark = pytest.mark.usefixtures("prefect_api")
FLOW = str(ROOT / "flows" / "segment_mosaic.py")
BATCH = str(ROOT / "flows" / "segment_batch.py")
runner = CliRunner()


def write_cog(path: Path, image: np.ndarray) -> Path:
    """A real Cloud-Optimized GeoTIFF (GDAL's COG driver, 128-px tiles) of ``image``."""
    plain = write_tif(path.with_suffix(".plain.tif"), image)
    gdal_copy(str(plain), str(path), driver="COG", BLOCKSIZE=128, COMPRESS="DEFLATE")
    plain.unlink()
    return path


def chunks_on_disk(store: Path) -> dict[str, bytes]:
    """Every data chunk of a local mosaic, by key (metadata and the manifest of layouts left out)."""
    files = (
        p for p in sorted(store.rglob("*")) if p.is_file() and "fcnpipe" not in p.relative_to(store).parts
    )
    return {str(p.relative_to(store)): p.read_bytes() for p in files if "/c/" in f"/{p.relative_to(store)}"}


def chunks_in(bucket: Bucket, prefix: str) -> dict[str, bytes]:
    """Every data chunk of a mosaic in a bucket, by key relative to the mosaic."""
    objects = bucket.objects(prefix + "/").items()
    return {k: v for k, v in objects if "/c/" in f"/{k}" and not k.startswith("fcnpipe/")}


def one_sentence(output: str) -> str:
    """The CLI's output as one line, after checking that it is one error and no traceback."""
    assert "Traceback" not in output and output.count("error:") == 1, output
    return " ".join(output.split())


# --- locations and configuration ----------------------------------------------------------------


def test_locations_keep_urls_whole_and_redact_what_is_secret(tmp_path: Path) -> None:
    scene = Location("s3://bucket/incoming/scene.tif")
    assert scene.with_suffix(".zarr").text == "s3://bucket/incoming/scene.zarr"
    assert scene.parent.joinpath("b.tif").text == "s3://bucket/incoming/b.tif"
    assert (scene.bucket, scene.key, scene.stem) == ("bucket", "incoming/scene.tif", "scene")
    signed = Location("https://user:pw@host.example:8443/a/scene.tif?X-Amz-Signature=abc&X-Amz-Credential=k")
    assert signed.redacted() == "https://host.example:8443/a/scene.tif"
    local = Location(str(tmp_path / "scene.tif"))
    assert local.is_local and local.with_suffix(".zarr").path == tmp_path / "scene.zarr"


def test_gdal_variables_alone_reach_the_same_server_for_reads_and_writes(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_port = bucket.server.endpoint.removeprefix("http://")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_S3_ENDPOINT", host_port)
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    target = Location(bucket.url("notes/hello.txt"))
    write_bytes(target, b"hello")  # obstore, configured from GDAL's variables
    assert bucket.objects("notes/") == {"hello.txt": b"hello"} and read_bytes(target) == b"hello"
    url = bucket.upload(write_cog(tmp_path / "scene.tif", noise_image(70, 90)), "gdal-vars/scene.tif")
    info = inspect_raster(url)  # GDAL's /vsis3/ with its own variables
    assert (info.height, info.width, info.path) == (70, 90, url)


def test_a_profile_s_credentials_serve_reads_and_writes(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = bucket.upload(write_cog(tmp_path / "scene.tif", noise_image(50, 60)), "profile/scene.tif")
    credentials, config = tmp_path / "credentials", tmp_path / "config"
    credentials.write_text(
        f"[imagery]\naws_access_key_id = {bucket.server.key_id}\n"
        f"aws_secret_access_key = {bucket.server.secret}\n"
    )
    config.write_text("[profile imagery]\nregion = us-east-1\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "imagery")
    assert inspect_raster(url).width == 60  # GDAL, credentials from the profile
    write_bytes(Location(bucket.url("profile/out.txt")), b"written")  # obstore, the same
    assert bucket.objects("profile/out.txt") == {"": b"written"}


# --- the main job in a bucket -------------------------------------------------------------------


def test_a_cog_in_a_bucket_becomes_a_mosaic_in_the_bucket_with_the_local_run_s_bytes(
    bucket: Bucket, tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model (a 1x1 convolution); the point is where bytes go.
    scene = write_cog(tmp_path / "scene.tif", noise_image(150, 210, seed=11))
    settings = SegmentSettings(tile_size=64, chunk=32, outputs=("labels", "probabilities", "logits"))
    run_local(plan_scene(scene, pointwise_checkpoint, settings, output=tmp_path / "local.zarr"))
    url = bucket.upload(scene, "incoming/scene.tif")
    config = tmp_path / "chunk.yaml"
    config.write_text("chunk: 32\n")
    args = ["run", FLOW, "--input", url, "--weights", str(pointwise_checkpoint), "--tile-size", "64",
            "--config", str(config), "--outputs", "labels,probabilities,logits"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {bucket.url('incoming/scene.zarr')}" in result.output  # beside the input
    remote = chunks_in(bucket, "incoming/scene.zarr")
    assert remote == chunks_on_disk(tmp_path / "local.zarr") and len(remote) > 50
    state = read_state(bucket.url("incoming/scene.zarr"))
    assert state is not None and state["complete"] and state["source"] == url
    assert bucket.objects("incoming/scene.preview.png")[""].startswith(b"\x89PNG")
    everything = b"".join(bucket.objects().values()) + result.output.encode()
    assert bucket.server.secret.encode() not in everything

    # What reads a mosaic reads it from the bucket, and exports may go there.
    mosaic = bucket.url("incoming/scene.zarr")
    inspected = runner.invoke(app, ["inspect", mosaic])
    assert inspected.exit_code == 0 and "complete (" in inspected.output, inspected.output
    cog, gpkg = bucket.url("out/labels.tif"), bucket.url("out/labels.gpkg")
    exported = runner.invoke(app, ["export", mosaic, "--cog", cog, "--vector", gpkg])
    assert exported.exit_code == 0, exported.output
    (tmp_path / "labels.tif").write_bytes(bucket.objects("out/labels.tif")[""])
    assert cog_validate(tmp_path / "labels.tif", quiet=True)[0]
    with rasterio.open(tmp_path / "labels.tif") as src:
        local_labels = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")["labels"][:]  # type: ignore[index]
        assert np.array_equal(src.read(1), local_labels)
    assert set(bucket.objects("out/")) == {"labels.tif", "labels.gpkg"}  # no temporaries left
    again = runner.invoke(app, ["export", mosaic, "--cog", cog])
    assert again.exit_code == 1 and "exists; pass --overwrite" in one_sentence(again.output)


@pytest.mark.slow  # ~30 s with two workers; a batch over a gs:// prefix stays (test_servers)
def test_the_batch_flow_takes_a_bucket_glob_and_skips_what_is_done(
    bucket: Bucket, tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model.
    for i in range(2):
        bucket.upload(
            write_cog(tmp_path / f"s{i}.tif", noise_image(60, 70 + 10 * i, seed=i)), f"incoming/s{i}.tif"
        )
    bucket.upload(write_tif(tmp_path / "deep.tif", noise_image(40, 40)), "incoming/older/deep.tif")
    (tmp_path / "notes.txt").write_text("not a raster\n")
    bucket.upload(tmp_path / "notes.txt", "incoming/notes.txt")
    # Two worker processes (one cluster for the whole batch) write to the bucket themselves.
    args = ["run", BATCH, "--inputs", bucket.url("incoming/*.tif"), "--output-dir", bucket.url("mosaics"),
            "--weights", str(pointwise_checkpoint), "--tile-size", "32", "--workers", "2"]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "segmented: 2, already_complete: 0" in first.output
    for i in range(2):
        assert read_state(bucket.url(f"mosaics/s{i}.zarr"))["complete"]  # type: ignore[index]
    assert read_state(bucket.url("mosaics/deep.zarr")) is None  # '*' does not cross a '/'
    before = bucket.objects("mosaics/")
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "segmented: 0, already_complete: 2" in again.output, again.output
    assert bucket.objects("mosaics/") == before

    folder = runner.invoke(app, [*args[:3], bucket.url("incoming/"), *args[4:-2]])  # a prefix: its rasters
    assert folder.exit_code == 0 and "already_complete: 2" in folder.output, folder.output


# --- what goes wrong, in one sentence -----------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-bucket", "the bucket 'no-such-bucket' does not exist"),
        ("no-key", "s3://{bucket}/missing.tif does not exist"),
        (
            "wrong-secret",
            "the storage service refused these credentials (SignatureDoesNotMatch); check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        ),
        ("output-no-bucket", "the bucket 'no-such-bucket' does not exist"),
        ("output-https", "outputs go to a local path or to s3://, gs://, az://"),
    ],
)
def test_a_bad_bucket_key_or_credential_is_one_sentence_that_names_no_secret(
    case: str, message: str, bucket: Bucket, tmp_path: Path, pointwise_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url = bucket.upload(write_cog(tmp_path / "scene.tif", noise_image(40, 40)), f"{case}.tif")
    args = ["--input", url, "--weights", str(pointwise_checkpoint), "--tile-size", "32"]
    wrong = "wrong-secret-0123456789abcdef0123456789"
    if case == "no-bucket":
        args[1] = "s3://no-such-bucket/scene.tif"
    elif case == "no-key":
        args[1] = bucket.url("missing.tif")
    elif case == "wrong-secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    elif case == "output-no-bucket":
        args += ["--output", "s3://no-such-bucket/scene.zarr"]
    else:
        args += ["--output", "https://example.invalid/scene.zarr"]
    result = runner.invoke(app, ["run", FLOW, *args])
    assert result.exit_code == 1, result.output
    assert message.format(bucket=bucket.name) in one_sentence(result.output)
    assert bucket.server.secret not in result.output and wrong not in result.output
    assert set(bucket.objects()) == {f"{case}.tif"}  # nothing half-written


# --- range reads --------------------------------------------------------------------------------


class RangeRequests(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP range support, recording every GET's range and length."""

    log: list[tuple[str | None, int]]

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        header = self.headers.get("Range")
        start, end = 0, len(data) - 1
        if header:
            first, _, last = header.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        body = data[start : end + 1]
        self.log.append((header, len(body)))
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path, list[tuple[str | None, int]]]]:
    """A folder served on 127.0.0.1 with range support, its URL, and the log of GETs."""
    folder = tmp_path / "served"
    folder.mkdir()
    log: list[tuple[str | None, int]] = []
    handler = type("Handler", (RangeRequests,), {"log": log})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, log
    server.shutdown()


def test_a_cog_over_https_is_read_by_ranges_never_whole(
    http_folder: tuple[str, Path, list[tuple[str | None, int]]], tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model; the point is how the input is read.
    base, folder, log = http_folder
    image = np.random.default_rng(0).integers(0, 256, (3, 2048, 2048), dtype=np.uint8)  # incompressible
    size = write_cog(folder / "scene.tif", image).stat().st_size
    settings = SegmentSettings(tile_size=512, chunk=512)
    plan = plan_scene(f"{base}/scene.tif", pointwise_checkpoint, settings, output=tmp_path / "scene.zarr")
    log.clear()
    reports = [segment_block(plan, index) for index in plan.todo]
    assert log and all(header is not None for header, _ in log)  # every GET asked for a range
    assert max(length for _, length in log) <= size / 8  # about a tile's worth at a time
    log.clear()
    finish(plan, reports, 1.0)  # the preview reads the COG's overview, not the full resolution
    assert sum(length for _, length in log) < size / 2
    labels = zarr.open_group(str(tmp_path / "scene.zarr"), mode="r")["labels"]
    assert labels.shape == (2048, 2048)  # type: ignore[union-attr]
    with pytest.raises(FcnpipeError, match="is read over HTTP; say where to write with --output"):
        plan_scene(f"{base}/scene.tif", pointwise_checkpoint, settings)
    with pytest.raises(FcnpipeError, match="does not exist"):
        inspect_raster(f"{base}/missing.tif")
