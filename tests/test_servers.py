"""Every object store the README names, on a real server of its API on 127.0.0.1: a mosaic written
there is the local run's, metadata and overviews included, whatever the server does with
conditional writes (pipeline/storage.py, ``PlainWrites``)."""

from __future__ import annotations

import json
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
