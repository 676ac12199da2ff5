"""pipeline/checkpoints.py: --weights as a URL, fetched once per machine into a cache by SHA-256."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fcn import FcnpipeError
from fcnpipe.main import app
from pipeline.checkpoints import local_checkpoint
from tests.conftest import ROOT, Bucket, noise_image, write_tif
from tests.test_storage import chunks_on_disk, http_folder  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("prefect_api")
FLOW = str(ROOT / "flows" / "segment_mosaic.py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_in_a_bucket_are_fetched_once_per_machine_and_give_the_local_file_s_mosaic(
    bucket: Bucket, tmp_path: Path, pointwise_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plumbing: the stand-in model (a 1x1 convolution); the point is where the weights come from.
    monkeypatch.setenv("FCNPIPE_HOME", str(tmp_path / "home"))
    scene = write_tif(tmp_path / "scene.tif", noise_image(96, 128))
    url = bucket.upload(pointwise_checkpoint, "models/pointwise.pt")
    common = ["run", FLOW, "--input", str(scene), "--tile-size", "32", "--chunk", "32"]
    local = CliRunner().invoke(app, [*common, "--weights", str(pointwise_checkpoint), "--output",
                                     str(tmp_path / "local.zarr")])  # fmt: skip
    assert local.exit_code == 0, local.output
    remote = CliRunner().invoke(app, [*common, "--weights", url, "--output", str(tmp_path / "remote.zarr")])
    assert remote.exit_code == 0, remote.output
    assert chunks_on_disk(tmp_path / "remote.zarr") == chunks_on_disk(tmp_path / "local.zarr")
    cached = tmp_path / "home" / "weights" / f"{digest(pointwise_checkpoint)}.pt"
    assert cached.is_file() and digest(cached) == digest(pointwise_checkpoint)
    assert sorted(p.name for p in cached.parent.glob("*.pt")) == [cached.name]  # one copy, by digest
    stamp = cached.stat().st_mtime_ns

    again = CliRunner().invoke(app, [*common, "--weights", url, "--output", str(tmp_path / "again.zarr")])
    assert again.exit_code == 0, again.output
    assert cached.stat().st_mtime_ns == stamp  # the same object: not fetched again

    bucket.upload(write_tif(tmp_path / "other.tif", noise_image(8, 8)), "models/pointwise.pt")  # replaced
    with pytest.raises(FcnpipeError, match="not the checkpoint this run was planned with"):
        local_checkpoint(url, digest(pointwise_checkpoint)[::-1])  # a worker holding a plan of another
    assert not (cached.parent / f"{digest(pointwise_checkpoint)[::-1]}.pt").exists()


def test_weights_over_https_are_fetched_and_an_unchanged_url_is_not_fetched_again(
    http_folder: tuple[str, Path, list[tuple[str | None, int]]],  # noqa: F811
    tmp_path: Path,
    pointwise_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FCNPIPE_HOME", str(tmp_path / "home"))
    base, folder, log = http_folder
    shutil.copy(pointwise_checkpoint, folder / "model.pt")
    path = local_checkpoint(f"{base}/model.pt")
    assert digest(path) == digest(pointwise_checkpoint)
    gets = len(log)
    assert local_checkpoint(f"{base}/model.pt") == path and len(log) == gets  # only a HEAD this time
    with pytest.raises(FcnpipeError, match="does not exist"):
        local_checkpoint(f"{base}/missing.pt")
