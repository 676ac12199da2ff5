"""The segment flow on Prefect's real engine, through the real CLI: options, errors, resume after kill -9."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import StateType
from pydantic import BaseModel
from typer.testing import CliRunner

from fcnpipe.main import app
from pipeline.outputs.mosaic import MANIFEST, ROWS_DONE, read_state
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import fcnpipe, noise_image, one_thread_reference, write_tif

ROOT = Path(__file__).resolve().parents[1]
FLOW = str(ROOT / "flows" / "segment_mosaic.py")
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("prefect_api")


def chunk_bytes(store: Path) -> dict[str, bytes]:
    """Every data chunk of a mosaic, by path; metadata (which holds timings) and the manifest (which
    records the layout that computed each block) left out."""
    files = (
        p for p in sorted(store.rglob("*")) if p.is_file() and "fcnpipe" not in p.relative_to(store).parts
    )
    return {str(p.relative_to(store)): p.read_bytes() for p in files if "/c/" in f"/{p.relative_to(store)}"}


def test_flow_writes_a_complete_mosaic_with_the_options_given(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model (a 1x1 convolution) keeps this fast.
    scene = write_tif(tmp_path / "scene.tif", noise_image(100, 130))
    args = ["run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint), "--tile-size", "64"]
    result = runner.invoke(app, [*args, "--outputs", "labels,probabilities"])
    assert result.exit_code == 0, result.output
    assert "complete" in result.output and "6 tiles" in result.output
    state = read_state(tmp_path / "scene.zarr")
    assert state is not None and state["complete"] and state["report"]["tiles"] == 6
    group = zarr.open_group(str(tmp_path / "scene.zarr"), mode="r")
    assert set(group.array_keys()) >= {"labels", "probabilities"} and "logits" not in group
    assert group["labels"].chunks == (64, 64)  # the chunk follows a tile smaller than 512
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "scene.zarr").rglob("*")}
    again = runner.invoke(app, [*args, "--outputs", "labels,probabilities"])  # as a schedule would
    assert again.exit_code == 0 and "already complete; nothing to do" in again.output, again.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "scene.zarr").rglob("*")} == stamps


def test_flow_output_equals_the_pipeline_run_directly(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(100, 130, seed=3))
    run_local(
        plan_scene(
            scene, pointwise_checkpoint, SegmentSettings(tile_size=64), output=tmp_path / "direct.zarr"
        )
    )
    args = ["--input", str(scene), "--weights", str(pointwise_checkpoint), "--tile-size", "64"]
    result = runner.invoke(app, ["run", FLOW, *args, "--output", str(tmp_path / "flow.zarr")])
    assert result.exit_code == 0, result.output
    assert chunk_bytes(tmp_path / "flow.zarr") == chunk_bytes(tmp_path / "direct.zarr")


def test_help_after_the_flow_file_lists_its_options() -> None:
    result = runner.invoke(app, ["run", FLOW, "--help"])
    assert result.exit_code == 0
    options = "input output weights config tile-size halo batch-size device outputs bands overwrite workers"
    for option in [f"--{o}" for o in options.split()] + ["--dask-address"]:
        assert option in result.output


def test_help_describes_every_option_with_its_default_after_the_config(tmp_path: Path) -> None:
    config = tmp_path / "big-tiles.yaml"
    config.write_text("tile_size: 1536\nbatch_size: 2\n")
    plain = " ".join(runner.invoke(app, ["run", FLOW, "--help"], terminal_width=200).output.split())
    configured = runner.invoke(app, ["run", FLOW, "--config", str(config), "--help"], terminal_width=200)
    assert configured.exit_code == 0, configured.output
    text = " ".join(configured.output.split())
    assert "--tile-size int or 'auto' 1536 The output core of a tile" in text
    assert "--batch-size int or 'auto' 2 Tiles per forward pass" in text
    assert "--tile-size int or 'auto' auto The output core" in plain  # the built-in default
    assert "None" not in plain


@pytest.mark.parametrize("name", ["segment_mosaic", "segment_batch", "train", "evaluate"])
def test_every_flow_parameter_has_a_description(name: str) -> None:
    from fcnpipe.flowfile import docstring_parts, import_flow, read_flow

    flow = import_flow(read_flow(ROOT / "flows" / f"{name}.py"))
    _, described = docstring_parts(flow.fn.__doc__ or "")
    params = set(inspect.signature(flow.fn).parameters)
    assert params == set(described), params ^ set(described)
    assert all(len(text) > 10 for text in described.values())
    from prefect.utilities.callables import parameter_schema

    shown_in_ui = parameter_schema(flow.fn).model_dump()["properties"]  # Prefect reads the same section
    for param, text in described.items():
        assert " ".join(shown_in_ui[param]["description"].split()) == text


@pytest.mark.parametrize("name", ["segment_mosaic", "segment_batch"])
def test_both_segment_flows_offer_every_segment_setting(name: str) -> None:
    """Options are derived from the flow itself (its signature, as Prefect sees it): every field of
    the settings models, so no flow can miss an option again."""
    from fcnpipe.flowfile import import_flow, model_options, read_flow
    from pipeline.settings import ClusterSettings, SegmentSettings

    path = ROOT / "flows" / f"{name}.py"
    flow = import_flow(read_flow(path))
    derived: set[str] = set()
    for parameter in inspect.signature(flow.fn).parameters.values():
        kind = parameter.annotation
        fields = model_options(parameter.name, kind) if isinstance(kind, type) and issubclass(
            kind, BaseModel) else []  # fmt: skip
        derived |= {o.name for o in fields}
    every = set(SegmentSettings.model_fields) | set(ClusterSettings.model_fields)
    assert derived == every, derived ^ every
    offered = {o.name for o in read_flow(path).options}  # what the command line offers, unrun
    assert every <= offered, every - offered
    assert "strategy" in offered  # the option the batch flow once lacked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{tmp}/missing.tif"], "does not exist"),
        (
            ["--input", "{scene}", "--tile-szie", "64"],
            "unknown option '--tile-szie'; did you mean --tile-size?",
        ),
        (["--input", "{scene}", "--tile-size", "big"], "--tile-size 'big' is not a valid int"),
        (["--tile-size", "64"], "missing required option --input"),
        (["--input", "{scene}", "--weights", "{tmp}/none.pt"], "checkpoint {tmp}/none.pt does not exist"),
        (["--input", "{scene}", "--outputs", "labels,edges"], "outputs"),
        (["--input", "{scene}", "--device", "cuda:7"], "no CUDA GPU"),
        (["--input", "{scene}", "--config", "{tmp}/none.yaml"], "config {tmp}/none.yaml does not exist"),
    ],
)
def test_bad_input_gets_one_sentence_and_exit_1(
    tmp_path: Path, pointwise_checkpoint: Path, args: list[str], message: str
) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(40, 40))
    words = [a.format(tmp=tmp_path, scene=scene) for a in args]
    if "--weights" not in words:
        words += ["--weights", str(pointwise_checkpoint)]
    result = runner.invoke(app, ["run", FLOW, *words])
    assert result.exit_code == 1, result.output
    assert message.format(tmp=tmp_path) in " ".join(result.output.split())
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    assert not (tmp_path / "scene.zarr").exists() or not read_state(tmp_path / "scene.zarr")["complete"]  # type: ignore[index]


def test_config_file_is_data_and_options_override_it(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(70, 70))
    config = tmp_path / "segment.yaml"
    config.write_text(f"weights: {pointwise_checkpoint}\ntile_size: 32\noutputs: [labels, logits]\n")
    result = runner.invoke(
        app, ["run", FLOW, "--input", str(scene), "--config", str(config), "--tile-size", "64"]
    )
    assert result.exit_code == 0, result.output
    group = zarr.open_group(str(tmp_path / "scene.zarr"), mode="r")
    assert "logits" in group and read_state(tmp_path / "scene.zarr")["report"]["tiles"] == 4  # type: ignore[index]
    config.write_text("tile_size: 64\nrm_rf: true\n")
    result = runner.invoke(app, ["run", FLOW, "--input", str(scene), "--config", str(config), "--overwrite"])
    assert result.exit_code == 1 and "rm-rf is not a setting" in result.output


def test_the_disk_filling_up_leaves_the_mosaic_incomplete(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    small = tmp_path / "small-disk"
    small.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        scene = write_tif(tmp_path / "scene.tif", noise_image(1024, 1024, seed=9))
        args = ["--input", str(scene), "--weights", str(pointwise_checkpoint), "--tile-size", "128"]
        result = runner.invoke(
            app, ["run", FLOW, *args, "--outputs", "labels,logits", "--output", str(small / "s.zarr")]
        )
        assert result.exit_code == 1
        assert "disk filled up" in result.output and "Traceback" not in result.output
        state = read_state(small / "s.zarr")
        assert state is not None and not state["complete"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


# The default run kills and resumes a run into a bucket (tests/test_storage.py), which goes through
# this same bookkeeping on the store with fewer guarantees; this local-disk twin runs under -m slow.
@pytest.mark.slow
def test_rerun_after_kill_9_resumes_and_gives_identical_bytes(tmp_path: Path, fcn8s_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(256, 320, seed=4))
    # Small halo: this test is about bookkeeping, and a cheaper tile leaves time to kill mid-run.
    # Blocks of tiles: what a kill -9 loses is counted in tiles.
    common = ["--input", str(scene), "--weights", str(fcn8s_checkpoint), "--tile-size", "64", "--halo", "32",
              "--strategy", "tiles"]  # fmt: skip
    settings = SegmentSettings(strategy="tiles", tile_size=64, halo=32, block=1)
    reference = plan_scene(scene, fcn8s_checkpoint, settings, output=tmp_path / "reference.zarr")
    assert reference.settings.block == 1
    run_local(reference)

    out = tmp_path / "killed.zarr"
    config = tmp_path / "one-block.yaml"
    config.write_text("block: 1\n")
    args = ["run", FLOW, *common, "--config", str(config), "--output", str(out)]
    proc = fcnpipe(*args)
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / MANIFEST / "c"
        done = len(list(manifest.iterdir())) if manifest.is_dir() else 0
        if done >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode() if proc.stdout else ""
    state = read_state(out)
    assert state is not None and not state["complete"]
    total = len(reference.blocks)
    done = len(list((out / MANIFEST / "c").iterdir()))
    assert 3 <= done < total

    rerun = runner.invoke(app, args)  # in this process: the same layout, without a second start-up
    output = rerun.output
    assert rerun.exit_code == 0, output
    assert f"wrote {out}: {total - done} tiles" in " ".join(output.split())  # finished blocks skipped
    assert not list(out.rglob("*.partial"))
    assert read_state(out)["complete"]  # type: ignore[index]
    assert chunk_bytes(out) == chunk_bytes(tmp_path / "reference.zarr")
    labels = zarr.open_group(str(out), mode="r")["labels"][:]  # type: ignore[index]
    assert np.array_equal(labels, zarr.open_group(str(tmp_path / "reference.zarr"), mode="r")["labels"][:])  # type: ignore[index]


@pytest.mark.slow
def test_a_stream_killed_midway_through_its_strip_resumes_from_its_rows_to_identical_bytes(
    tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(640, 96, seed=6))  # one strip, 10 rows of chunks
    settings = SegmentSettings(strategy="stream", chunk=64)
    run_local(plan_scene(scene, fcn8s_checkpoint, settings, output=tmp_path / "reference.zarr"))

    out = tmp_path / "killed.zarr"
    args = ["run", FLOW, "--input", str(scene), "--weights", str(fcn8s_checkpoint), "--strategy", "stream",
            "--chunk", "64", "--output", str(out)]  # fmt: skip
    proc = fcnpipe(*args)
    rows = out / ROWS_DONE / "c" / "0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if rows.is_dir() and len(list(rows.iterdir())) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode() if proc.stdout else ""
    written = len(list(rows.iterdir()))
    assert 2 <= written < 10 and not (out / MANIFEST / "c" / "0").exists()  # died inside the strip
    labels = out / "labels" / "c"  # chunks labels/c/<row>/<column>: those of the recorded rows
    recorded = [p for p in labels.rglob("*") if p.is_file() and int(p.parent.name) < written]
    kept = {p: p.stat().st_mtime_ns for p in recorded}

    rerun = runner.invoke(app, args)  # the same command
    assert rerun.exit_code == 0, rerun.output
    assert read_state(out)["complete"]  # type: ignore[index]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # the rows it had written stay
    assert chunk_bytes(out) == chunk_bytes(tmp_path / "reference.zarr")


def block_task_runs() -> list[str]:
    """States of the task runs of the newest segment-blocks flow run, as the API recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["segment-blocks"])),
            sort=FlowRunSort.START_TIME_DESC, limit=1,
        )  # fmt: skip
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
    return [t.state.type.value for t in tasks if t.state is not None]


def test_dask_workers_write_the_same_bytes_and_report_to_one_api(
    tmp_path: Path, pointwise_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plumbing: the stand-in model; 2 worker processes of a real distributed.LocalCluster.
    from distributed import Client, LocalCluster
    from prefect.settings import get_current_settings

    scene = write_tif(tmp_path / "scene.tif", noise_image(150, 200, seed=8))
    config = tmp_path / "one-block.yaml"
    config.write_text("block: 1\nchunk: 32\n")
    common = [
        "--input",
        str(scene),
        "--weights",
        str(pointwise_checkpoint),
        "--tile-size",
        "32",
        "--config",
        str(config),
    ]
    # Workers run torch on one thread: the same bytes are promised for the same layout.
    settings = SegmentSettings(tile_size=32, chunk=32, block=1)
    one_thread_reference(scene, pointwise_checkpoint, settings, tmp_path / "direct.zarr")

    # The real CLI in its own process: everything it and its workers print is here.
    proc = fcnpipe("run", FLOW, *common, "--workers", "2", "--output", str(tmp_path / "local.zarr"))
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, output
    for bad in ("Traceback", "ERROR", "error", "database is locked", "temporary server"):
        assert bad not in output, output
    states = block_task_runs()
    assert len(states) == 5 * 7 and set(states) == {"COMPLETED"}  # one task per block, all recorded
    assert chunk_bytes(tmp_path / "local.zarr") == chunk_bytes(tmp_path / "direct.zarr")

    # An existing scheduler; its workers know the API from their environment.
    monkeypatch.setenv("PREFECT_API_URL", str(get_current_settings().api.url))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster):  # fmt: skip
        args = [
            *common,
            "--dask-address",
            cluster.scheduler_address,
            "--output",
            str(tmp_path / "remote.zarr"),
        ]
        result = runner.invoke(app, ["run", FLOW, *args])
        assert result.exit_code == 0, result.output
    assert len(block_task_runs()) == 5 * 7
    assert chunk_bytes(tmp_path / "remote.zarr") == chunk_bytes(tmp_path / "direct.zarr")


def test_the_default_model_is_used_when_no_weights_are_given(
    tmp_path: Path, pointwise_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plumbing: the stand-in sits where the default model lives ($FCNPIPE_HOME/models/).
    from pipeline.settings import default_model_path

    monkeypatch.setenv("FCNPIPE_HOME", str(tmp_path / "home"))
    default = default_model_path()
    default.parent.mkdir(parents=True)
    default.write_bytes(pointwise_checkpoint.read_bytes())
    scene = write_tif(tmp_path / "scene.tif", noise_image(40, 50))
    result = runner.invoke(app, ["run", FLOW, "--input", str(scene), "--tile-size", "64"])
    assert result.exit_code == 0, result.output
    assert read_state(tmp_path / "scene.zarr")["model"]["arch"] == "pointwise"  # type: ignore[index]


def test_the_summary_counts_training_the_default_model_apart_from_segmenting(
    tmp_path: Path, pointwise_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plumbing: "training" here takes 3 s and leaves the stand-in model where the default lives;
    # the property is the accounting: Mpx/s and the segment time exclude it, the phases name it.
    import flows.segment_mosaic
    from pipeline.settings import default_model_path

    monkeypatch.setenv("FCNPIPE_HOME", str(tmp_path / "home"))

    def slow_default_model(device: str, keep_training_files: bool = False) -> Path:
        time.sleep(3)
        default_model_path().parent.mkdir(parents=True)
        default_model_path().write_bytes(pointwise_checkpoint.read_bytes())
        return default_model_path()

    monkeypatch.setattr(flows.segment_mosaic, "default_weights", slow_default_model)
    scene = write_tif(tmp_path / "scene.tif", noise_image(40, 50))
    result = runner.invoke(app, ["run", FLOW, "--input", str(scene)], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = read_state(tmp_path / "scene.zarr")["report"]  # type: ignore[index]
    assert report["seconds"] < 3 and report["mpx_per_s"] > 0.002 / 3
    line = " ".join(result.output.split())
    assert "time: training the default model" in line and ", planning" in line and "segmenting" in line
    trained = float(line.split("training the default model ")[1].split(" s")[0])
    assert trained >= 3


def test_flow_writes_a_preview_and_a_report_with_class_areas(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    from PIL import Image
    from prefect.client.orchestration import get_client
    from rio_cogeo.cogeo import cog_validate

    image = noise_image(90, 120, seed=6)
    image[image == 0] = 1
    image[:, :20, :] = 0  # a nodata strip: not part of the valid area
    scene = write_tif(tmp_path / "scene.tif", image, nodata=0)
    cog = tmp_path / "labels.tif"
    args = ["run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint), "--tile-size", "32",
            "--cog", str(cog)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert cog_validate(cog, quiet=True)[0]
    with rasterio.open(cog) as labels:
        assert (labels.read(1) == 255).sum() == (image == 0).all(axis=0).sum()
    report = read_state(tmp_path / "scene.zarr")["report"]  # type: ignore[index]
    valid = int((image != 0).any(axis=0).sum())
    assert sum(report["class_pixels"].values()) == valid
    assert sum(report["class_area_m2"].values()) == pytest.approx(valid * 0.25)  # 0.5 m pixels
    preview = Image.open(report["preview"])
    assert preview.height == 90 and preview.width > 120  # the scene plus a legend
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(limit=50)
    markdown = [a for a in artifact if a.key == "segment-report"]
    assert markdown and "area (m²)" in str(markdown[0].data)


def test_batch_flow_on_an_empty_folder_has_nothing_to_do(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    """A watched folder with nothing in it yet is not an error (a schedule runs on it)."""
    batch = ROOT / "flows" / "segment_batch.py"
    args = ["run", str(batch), "--inputs", str(tmp_path), "--weights", str(pointwise_checkpoint)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "names no rasters yet" in result.output and "scenes: 0" in result.output


def test_batch_flow_segments_each_scene_skips_done_ones_and_reports_failures(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    """Idempotent over a folder: good scenes are segmented once, a broken one fails alone."""
    batch = ROOT / "flows" / "segment_batch.py"
    folder = tmp_path / "incoming"
    folder.mkdir()
    images = {f"s{i}": noise_image(48 + 16 * i, 80, seed=i) for i in range(3)}
    for name, image in images.items():
        write_tif(folder / f"{name}.tif", image)
    (folder / "broken.tif").write_text("not a raster\n")
    out = tmp_path / "mosaics"
    args = ["run", str(batch), "--inputs", str(folder), "--weights", str(pointwise_checkpoint),
            "--output-dir", str(out), "--tile-size", "32"]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 1 and "Traceback" not in first.output
    assert "1 of 4 scenes failed" in first.output and "broken.tif is not a raster" in first.output
    for name, image in images.items():
        state = read_state(out / f"{name}.zarr")
        assert state is not None and state["complete"]
        labels = zarr.open_group(str(out / f"{name}.zarr"), mode="r")["labels"]
        assert labels.shape == image.shape[1:]  # type: ignore[union-attr]
    assert not (out / "broken.zarr").exists()

    (folder / "broken.tif").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "segmented: 0, already_complete: 3" in again.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps  # nothing rewritten
    # as the Prefect API (and its UI) saw them: a skipped scene is a completed subflow, not a failed one
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["segment-mosaic"])))
    seen = Counter(run.state_name for run in runs if str(out) in str(run.parameters.get("output")))
    assert seen == {"Completed": 3, "Failed": 1, "Skipped": 3}, seen
    skipped = [run for run in runs if run.state_name == "Skipped"]
    assert all(run.state_type == StateType.COMPLETED for run in skipped)
