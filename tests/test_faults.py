"""Object storage through bad weather: a fault-injecting proxy (tests/faults.py) between fcnpipe and
a real S3 server on 127.0.0.1 (moto), and the guarantees that must hold through it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fcnpipe.main import app
from pipeline.outputs.mosaic import read_state
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import ROOT, Bucket, noise_image
from tests.faults import FaultProxy, Weather
from tests.test_storage import chunks_in, chunks_on_disk, write_cog

pytestmark = pytest.mark.usefixtures("prefect_api")
FLOW = str(ROOT / "flows" / "segment_mosaic.py")
runner = CliRunner()


def test_a_few_percent_of_failed_requests_still_give_the_clean_run_s_bytes(
    bucket: Bucket, tmp_path: Path, pointwise_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plumbing: the stand-in model (a 1x1 convolution); the point is the requests.
    scene = write_cog(tmp_path / "scene.tif", noise_image(768, 640, seed=11))  # 30 tiles of the COG's 128 px
    settings = SegmentSettings(tile_size=128, chunk=128, outputs=("labels", "probabilities"))
    run_local(plan_scene(scene, pointwise_checkpoint, settings, output=tmp_path / "clean.zarr"))
    url = bucket.upload(scene, "in/scene.tif")
    weather = Weather(rates={"503": 0.03, "500": 0.02, "reset": 0.02, "truncate": 0.02, "latency": 0.05},
                      latency_s=0.1, seed=7)  # fmt: skip
    with FaultProxy(bucket.server.endpoint.split("//")[1], weather) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        args = ["run", FLOW, "--input", url, "--output", bucket.url("out/scene.zarr"), "--weights",
                str(pointwise_checkpoint), "--tile-size", "128", "--chunk", "128",
                "--outputs", "labels,probabilities"]  # fmt: skip
        result = runner.invoke(app, args)
    print(proxy.requests, proxy.injected, sum(1 for f in proxy.faulted if "/in/" in f[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.server.endpoint)  # the checks below go direct
    assert result.exit_code == 0, result.output
    # the run met faults on its reads of the scene (GDAL) and on its writes and reads of the mosaic (obstore)
    broken = [(method, path) for method, path, fault in proxy.faulted if fault != "latency"]
    assert any("/in/scene.tif" in path for _, path in broken), proxy.faulted
    assert any(method == "PUT" and "/out/scene.zarr/" in path for method, path in broken), proxy.faulted
    state = read_state(bucket.url("out/scene.zarr"))
    assert state is not None and state["complete"]
    assert chunks_in(bucket, "out/scene.zarr") == chunks_on_disk(tmp_path / "clean.zarr")
