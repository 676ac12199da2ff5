"""Every object store the README names, on a real server of its API on 127.0.0.1: a mosaic written
there is the local run's, metadata and overviews included, whatever the server does with
conditional writes (pipeline/storage.py, ``PlainWrites``)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fcn import FcnpipeError
from fcnpipe.main import app
from pipeline.outputs.mosaic import read_state
from pipeline.raster import inspect_raster
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import (
    AZURE_NAMINGS,
    ROOT,
    AzuriteServer,
    Bucket,
    Container,
    fcnpipe,
    new_bucket,
    new_container,
    new_gcs_bucket,
    noise_image,
)
from tests.test_storage import write_cog

pytestmark = pytest.mark.usefixtures("prefect_api")
FLOW = str(ROOT / "flows" / "segment_mosaic.py")
RUN_SPECIFIC = ("zarr.json", "fcnpipe/")  # the root's attributes hold the source URL and the run's report


def same_objects(local: Path) -> dict[str, bytes]:
    """Every file of a local mosaic that a run elsewhere must write identically, by key."""
    files = (p for p in sorted(local.rglob("*")) if p.is_file() and not p.name.endswith(".partial"))
    keyed = {str(p.relative_to(local)): p.read_bytes() for p in files}
    return {k: v for k, v in keyed.items() if k != RUN_SPECIFIC[0] and not k.startswith(RUN_SPECIFIC[1])}


SLOW = (
    "moto",
    "azurite-connection-string",
)  # moto: test_storage's bucket tests; GDAL reads the string itself
SERVERS = [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
    for name in ["moto", "s3rver", *(f"azurite-{naming}" for naming in AZURE_NAMINGS)]
]


@pytest.fixture(params=SERVERS)
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Bucket | Container:
    """A new bucket or container on each server, the environment set as its users set it: moto;
    s3rver, which ignores conditional writes; Azurite, with each family of Azure's names."""
    if request.param == "moto":
        return new_bucket(request.getfixturevalue("s3_server"), monkeypatch, request)
    if request.param == "s3rver":
        return new_bucket(request.getfixturevalue("s3rver_server"), monkeypatch, request)
    naming = request.param.removeprefix("azurite-")
    return new_container(request.getfixturevalue("azurite_server"), monkeypatch, request, naming)


def test_a_mosaic_in_a_bucket_is_the_local_one_overviews_and_metadata_included(
    store: Bucket | Container, tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model (a 1x1 convolution); the point is which bytes reach the server.
    bucket = store
    scene = write_cog(tmp_path / "scene.tif", noise_image(300, 260, seed=5))
    settings = SegmentSettings(tile_size=64, chunk=64)
    run_local(plan_scene(scene, pointwise_checkpoint, settings, output=tmp_path / "local.zarr"))
    url = bucket.upload(scene, "in/scene.tif")
    args = ["run", FLOW, "--input", url, "--output", bucket.url("out/scene.zarr"), "--weights",
            str(pointwise_checkpoint), "--tile-size", "64", "--chunk", "64"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    local = same_objects(tmp_path / "local.zarr")
    remote = bucket.objects("out/scene.zarr/")
    assert {k: remote.get(k) for k in local} == local
    assert any(k.startswith("overviews/") and k.endswith("/zarr.json") for k in local)
    groups = [json.loads(v) for k, v in local.items() if k.startswith("overviews/") and k.count("/") == 2]
    assert groups and all("spatial:transform" in g["attributes"] for g in groups), groups  # georeferenced
    root, local_root = (
        json.loads(remote["zarr.json"]),
        json.loads((tmp_path / "local.zarr/zarr.json").read_text()),
    )
    geo = {k: v for k, v in local_root["attributes"].items() if k.startswith(("spatial:", "proj:"))}
    assert geo and {k: root["attributes"].get(k) for k in geo} == geo
    assert read_state(bucket.url("out/scene.zarr"))["complete"]  # type: ignore[index]


def test_a_missing_container_or_refused_key_is_one_sentence_naming_it(
    azurite_server: AzuriteServer,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    container = new_container(azurite_server, monkeypatch, request, "obstore-names")
    url = container.upload(write_cog(tmp_path / "scene.tif", noise_image(40, 40)), "scene.tif")
    with pytest.raises(FcnpipeError, match="the container 'no-such-container' does not exist"):
        inspect_raster("az://no-such-container/scene.tif")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite_server.key[:-4] + "AAA=")  # a wrong key
    with pytest.raises(
        FcnpipeError, match=r"refused these credentials.*AZURE_STORAGE_ACCOUNT_KEY"
    ) as refused:
        inspect_raster(url)
    assert azurite_server.key[:20] not in str(refused.value)


def test_scenes_in_a_gcs_bucket_are_listed_and_read_as_local_ones(
    gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tmp_path: Path,
    pointwise_checkpoint: Path,
) -> None:  # fmt: skip
    """fake-gcs-server, configured as Google's SDKs find an emulator (STORAGE_EMULATOR_HOST): GDAL
    reads the scenes and obstore lists the prefix. Its mosaics go to a local folder: obstore writes
    to GCS with the XML API, which fake-gcs-server does not serve (fsouza/fake-gcs-server#331), so
    writing to gs:// is not tested here."""
    bucket = new_gcs_bucket(gcs_endpoint, monkeypatch, request)
    for i in range(2):
        bucket.upload(write_cog(tmp_path / f"s{i}.tif", noise_image(90, 110, seed=i)), f"in/s{i}.tif")
    batch = str(ROOT / "flows" / "segment_batch.py")
    args = ["run", batch, "--inputs", bucket.url("in/"), "--output-dir", str(tmp_path / "remote"),
            "--weights", str(pointwise_checkpoint), "--tile-size", "32", "--chunk", "32"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "segmented: 2" in result.output, result.output
    for i in range(2):
        settings = SegmentSettings(tile_size=32, chunk=32)
        run_local(
            plan_scene(tmp_path / f"s{i}.tif", pointwise_checkpoint, settings, output=tmp_path / f"l{i}.zarr")
        )
        assert same_objects(tmp_path / "remote" / f"s{i}.zarr") == same_objects(tmp_path / f"l{i}.zarr")


BEYOND_MOTO = ["s3rver", "azurite-obstore-names", "azurite-gdal-names"]  # moto's batch: tests/test_storage.py


@pytest.mark.slow  # ~45 s a server (kill -9 and resume on a disk stays in the default run: test_flow)
@pytest.mark.parametrize("store", ["moto", *BEYOND_MOTO], indirect=True)
def test_kill_9_mid_run_then_resume_gives_the_local_bytes_on_every_server(
    store: Bucket | Container, tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    scene = write_cog(tmp_path / "scene.tif", noise_image(256, 320, seed=4))
    # Small halo: the test is about bookkeeping, and cheaper tiles leave time to kill mid-run.
    settings = SegmentSettings(tile_size=64, halo=32, block=1)
    reference = plan_scene(scene, fcn8s_checkpoint, settings, output=tmp_path / "local.zarr")
    run_local(reference)
    url = store.upload(scene, "in/scene.tif")
    config = tmp_path / "one-block.yaml"
    config.write_text("block: 1\n")
    out = store.url("out/scene.zarr")
    args = ["run", FLOW, "--input", url, "--weights", str(fcn8s_checkpoint), "--tile-size", "64",
            "--halo", "32", "--config", str(config), "--output", out]  # fmt: skip
    proc = fcnpipe(*args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(store.objects("out/scene.zarr/fcnpipe/blocks_done/c/")) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode() if proc.stdout else ""
    state = read_state(out)
    assert state is not None and not state["complete"]
    done = len(store.objects("out/scene.zarr/fcnpipe/blocks_done/c/"))
    assert 3 <= done < len(reference.blocks)

    rerun = CliRunner().invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(reference.blocks) - done} tiles" in rerun.output  # recorded blocks were skipped
    assert read_state(out)["complete"]  # type: ignore[index]
    local = same_objects(tmp_path / "local.zarr")
    remote = store.objects("out/scene.zarr/")
    assert {k: remote.get(k) for k in local} == local  # chunks, overviews and their metadata


@pytest.mark.slow  # ~30 s a server: two worker processes
@pytest.mark.parametrize("store", BEYOND_MOTO, indirect=True)
def test_the_batch_flow_over_a_prefix_on_every_server(
    store: Bucket | Container, tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model; two worker processes write to the server themselves.
    scenes = {f"s{i}": tmp_path / f"s{i}.tif" for i in range(2)}
    for i, path in enumerate(scenes.values()):
        write_cog(path, noise_image(60, 70 + 10 * i, seed=i))
    for name, path in scenes.items():
        store.upload(path, f"in/{name}.tif")
    batch = str(ROOT / "flows" / "segment_batch.py")
    args = ["run", batch, "--inputs", store.url("in/"), "--output-dir", store.url("out"),
            "--weights", str(pointwise_checkpoint), "--tile-size", "32", "--chunk", "32",
            "--workers", "2"]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "segmented: 2, already_complete: 0" in first.output, first.output
    for name, path in scenes.items():
        settings = SegmentSettings(tile_size=32, chunk=32)
        run_local(plan_scene(path, pointwise_checkpoint, settings, output=tmp_path / f"{name}.zarr"))
        local = same_objects(tmp_path / f"{name}.zarr")
        remote = store.objects(f"out/{name}.zarr/")
        assert {k: remote.get(k) for k in local} == local
    before = store.objects("out/")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "segmented: 0, already_complete: 2" in again.output, again.output
    assert store.objects("out/") == before  # nothing rewritten
