"""Object storage through bad weather: a fault-injecting proxy (tests/faults.py) between fcnpipe and
a real S3 server on 127.0.0.1 (moto), and the guarantees that must hold through it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner
from zarr.abc.store import Store

from fcnpipe.main import app
from pipeline.outputs.mosaic import read_state
from pipeline.settings import SegmentSettings
from pipeline.storage import Location, list_keys, zarr_store
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import ROOT, Bucket, fcnpipe, noise_image
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


async def listings(store: Store, proxy: FaultProxy) -> tuple[list[str], list[str]]:
    """zarr's listings of ``store`` under c/ and at its top, the latter's first answer cut too."""
    every = [key async for key in store.list_prefix("c/")]
    proxy.weather.scripted = {proxy.requests + 1: "truncate"}
    return every, [key async for key in store.list_dir("")]


def test_a_listing_whose_body_breaks_off_is_listed_again_whole(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by bench/faults.py: a cut listing failed the run as it finished the mosaic.
    client = bucket.server.client()
    keys = [f"out/m.zarr/c/{i}" for i in range(30)] + ["out/m.zarr/zarr.json"]
    for key in keys:
        client.put_object(Bucket=bucket.name, Key=key, Body=b"x")
    mosaic = Location.of(bucket.url("out/m.zarr"))
    for script in ({1: "truncate"}, {1: "truncate", 2: "truncate"}):
        with FaultProxy(bucket.server.endpoint.split("//")[1], Weather(scripted=script)) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            assert sorted(list_keys(mosaic)) == sorted(k.removeprefix("out/m.zarr/") for k in keys)
            proxy.weather.scripted = {proxy.requests + 1: "truncate"}
            prefix, top = asyncio.run(listings(zarr_store(mosaic, read_only=True), proxy))
        assert sorted(prefix) == sorted(k.removeprefix("out/m.zarr/") for k in keys if "/c/" in k)
        assert sorted(top) == ["c", "zarr.json"]
        assert proxy.injected["truncate"] == len(script) + 2


@pytest.mark.slow  # waits out the store's retries (about a minute)
def test_a_store_that_stays_down_ends_the_run_in_one_sentence_and_it_resumes(
    bucket: Bucket, tmp_path: Path, pointwise_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plumbing: the stand-in model; the point is the store going away mid-run.
    scene = write_cog(tmp_path / "scene.tif", noise_image(512, 512, seed=3))
    settings = SegmentSettings(tile_size=64, chunk=64, block=1)
    run_local(plan_scene(scene, pointwise_checkpoint, settings, output=tmp_path / "clean.zarr"))
    url = bucket.upload(scene, "in/scene.tif")
    out = bucket.url("out/scene.zarr")
    config = tmp_path / "one-block.yaml"
    config.write_text("block: 1\n")
    args = ["run", FLOW, "--input", url, "--output", out, "--weights", str(pointwise_checkpoint),
            "--tile-size", "64", "--chunk", "64", "--config", str(config)]  # fmt: skip
    with FaultProxy(bucket.server.endpoint.split("//")[1]) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        proc = fcnpipe(*args, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(bucket.objects("out/scene.zarr/fcnpipe/blocks_done/c/")) >= 3:
                proxy.outage(503)
                break
            time.sleep(0.05)
        down = time.monotonic()
        output = proc.communicate(timeout=600)[0].decode()
        waited = time.monotonic() - down
    print(f"ended {waited:.0f} s after the outage began:\n{output}")
    assert proc.returncode == 1, output
    assert "Traceback" not in output and output.count("error:") == 1, output
    assert "kept answering SlowDown through every retry" in output and "run the same command again" in output
    state = read_state(out)
    assert state is not None and not state["complete"]
    again = runner.invoke(app, args)  # the server is back
    assert again.exit_code == 0, again.output
    assert chunks_in(bucket, "out/scene.zarr") == chunks_on_disk(tmp_path / "clean.zarr")
