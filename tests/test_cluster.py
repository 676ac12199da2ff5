"""Blocks on Dask clusters: GPU resources, lost workers, and which bytes each layout promises.

Every cluster here is a real ``distributed`` cluster of worker processes on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import zarr
from typer.testing import CliRunner

from fcnpipe.main import app
from flows.api import free_port
from pipeline.outputs.finish import finish
from pipeline.outputs.mosaic import MANIFEST, block_layouts, open_mosaic_group, read_state
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local, segment_block
from tests.conftest import ROOT, fcnpipe, noise_image, one_thread_reference, write_tif

pytestmark = pytest.mark.usefixtures("prefect_api")
FLOW = str(ROOT / "flows" / "segment_mosaic.py")
runner = CliRunner()


def chunk_bytes(store: Path) -> dict[str, bytes]:
    """Every data chunk of a mosaic (the manifest and metadata left out)."""
    files = (
        p for p in sorted(store.rglob("*")) if p.is_file() and "fcnpipe" not in p.relative_to(store).parts
    )
    return {str(p.relative_to(store)): p.read_bytes() for p in files if "/c/" in f"/{p.relative_to(store)}"}


def test_a_resume_under_another_layout_is_recorded_and_warned(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model; the point is the manifest.
    scene = write_tif(tmp_path / "scene.tif", noise_image(96, 128, seed=3))
    plan = plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=32, chunk=32, block=1))
    first = [segment_block(plan, i) for i in plan.todo[:5]]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # "another machine"
    try:
        rest = [segment_block(plan, i) for i in plan.todo[5:]]
    finally:
        torch.set_num_threads(threads)
    layouts = block_layouts(open_mosaic_group(plan.output, "r"))
    assert layouts == {first[0].layout: 5, rest[0].layout: len(plan.todo) - 5}
    assert f"{threads} thread" in first[0].layout and f"{threads + 1} threads" in rest[0].layout
    report = finish(plan, first + rest, 1.0)
    assert len(report["warnings"]) == 1 and "computed under 2 layouts" in report["warnings"][0]
    assert read_state(plan.output)["report"]["layouts"] == layouts  # type: ignore[index]
    assert "computed on: " in report["markdown"]


def test_gpus_on_a_machine_without_cuda_and_with_workers_are_one_sentence(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    scene = write_tif(tmp_path / "scene.tif", noise_image(40, 40))
    common = ["run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint)]
    for extra, message in [
        (["--gpus", "1"], "--gpus was given but this machine has no CUDA GPU"),
        (["--gpus", "all", "--workers", "2"], "give one of them"),
        (["--gpus", "two"], "--gpus: 'two' is neither a number of GPUs nor all"),
    ]:
        result = runner.invoke(app, [*common, *extra])
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "scene.zarr").exists()  # checked before anything is written


def test_gpu_blocks_run_only_on_workers_that_declare_a_gpu_and_never_hang_without_one(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # A mixed cluster: worker "gpu" declares GPU=1 as a GPU machine's worker would (it has no GPU
    # here, so it runs the stand-in model on its CPU), worker "cpu" declares nothing.
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, get_task_stream

    scene = write_tif(tmp_path / "scene.tif", noise_image(96, 96, seed=5))
    config = tmp_path / "one-block.yaml"
    config.write_text("block: 1\n")
    args = ["run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint), "--tile-size", "32",
            "--config", str(config), "--gpus", "all"]  # fmt: skip
    loopback = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    with LocalCluster(n_workers=1, threads_per_worker=1, **loopback) as plain:
        result = runner.invoke(app, [*args, "--dask-address", plain.scheduler_address])
    assert result.exit_code == 1, result.output
    assert "no worker of the Dask cluster" in result.output and "--resources GPU=1" in result.output
    assert not (tmp_path / "scene.zarr").exists()

    options = {"nthreads": 1, "host": "127.0.0.1"}
    workers = {"gpu": {"cls": Nanny, "options": {**options, "resources": {"GPU": 1}}},
               "cpu": {"cls": Nanny, "options": options}}  # fmt: skip
    scheduler = {"cls": Scheduler, "options": loopback}
    with SpecCluster(workers=workers, scheduler=scheduler) as mixed, Client(mixed) as client:
        with get_task_stream(client) as stream:
            result = runner.invoke(app, [*args, "--dask-address", mixed.scheduler_address])
        assert result.exit_code == 0, result.output
        gpu_worker = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
    blocks = [t for t in stream.data if "segment" in t["key"] or "segment" in str(t.get("key"))]
    assert len(blocks) == 9 and {t["worker"] for t in blocks} == {gpu_worker}


def worker_processes(pid: int) -> list[psutil.Process]:
    """The Dask worker processes a CLI process started (multiprocessing spawns them)."""
    children = psutil.Process(pid).children(recursive=True)
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


@pytest.mark.slow  # ~100 s; the Dask byte test stays in the default set (test_flow)
def test_a_worker_killed_mid_run_does_not_lose_the_run_or_change_its_bytes(
    tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(256, 320, seed=4))
    # Small halo: the test is about recovery, and cheaper tiles leave time to kill mid-run.
    settings = SegmentSettings(tile_size=64, halo=32, block=1)
    one_thread_reference(scene, fcn8s_checkpoint, settings, tmp_path / "reference.zarr")
    config = tmp_path / "one-block.yaml"
    config.write_text("block: 1\n")
    out = tmp_path / "cluster.zarr"
    args = ["--input", str(scene), "--weights", str(fcn8s_checkpoint), "--tile-size", "64", "--halo", "32",
            "--config", str(config), "--workers", "2", "--output", str(out)]  # fmt: skip
    proc = fcnpipe("run", FLOW, *args)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        manifest = out / MANIFEST / "c"
        workers = worker_processes(proc.pid)
        if manifest.is_dir() and len(list(manifest.iterdir())) >= 3 and len(workers) == 2:
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    output = proc.communicate(timeout=600)[0].decode()
    assert killed is not None, output
    assert proc.returncode == 0, output
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    state = read_state(out)
    assert state is not None and state["complete"]
    assert chunk_bytes(out) == chunk_bytes(tmp_path / "reference.zarr")  # same layout, same bytes
    reference_layouts = block_layouts(open_mosaic_group(tmp_path / "reference.zarr", "r"))
    assert set(state["report"]["layouts"]) == set(reference_layouts)
    labels = zarr.open_group(str(out), mode="r")["labels"][:]  # type: ignore[index]
    assert np.array_equal(labels, zarr.open_group(str(tmp_path / "reference.zarr"), mode="r")["labels"][:])  # type: ignore[index]


@pytest.mark.slow  # ~60 s; in-process Ctrl-C stays in the default set (test_stopping)
def test_ctrl_c_stops_a_run_on_local_workers_in_one_sentence_and_it_resumes_to_the_same_bytes(
    tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    from fcnpipe.main import RESUME

    scene = write_tif(tmp_path / "scene.tif", noise_image(128, 320, seed=4))  # 10 blocks of one tile
    settings = SegmentSettings(tile_size=64, halo=32, block=1)
    one_thread_reference(scene, fcn8s_checkpoint, settings, tmp_path / "reference.zarr")
    out = tmp_path / "stopped.zarr"
    args = ["run", FLOW, "--input", str(scene), "--weights", str(fcn8s_checkpoint), "--tile-size", "64",
            "--halo", "32", "--block", "1", "--workers", "2", "--output", str(out)]  # fmt: skip
    proc = fcnpipe(*args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / MANIFEST / "c"
        if manifest.is_dir() and len(list(manifest.iterdir())) >= 2:
            break
        time.sleep(0.05)
    workers = worker_processes(proc.pid)
    assert workers, "no worker processes"
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: the workers are in the group too
    output = proc.communicate(timeout=120)[0].decode()
    took = time.monotonic() - sent
    assert proc.returncode == 130, output
    assert took < 10, f"stopped {took:.1f} s after SIGINT"  # the cluster's close included
    said = [line for line in output.splitlines() if line.startswith("stopped")]
    assert said == [f"stopped (SIGINT); {RESUME}"]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert all(not psutil.pid_exists(w.pid) or w.status() == psutil.STATUS_ZOMBIE for w in workers)
    assert not read_state(out)["complete"]  # type: ignore[index]

    rerun = fcnpipe(*args)
    said = rerun.communicate(timeout=600)[0].decode()
    assert rerun.returncode == 0, said
    assert chunk_bytes(out) == chunk_bytes(tmp_path / "reference.zarr")  # same layout, same bytes


@pytest.mark.slow
def test_across_layouts_labels_agree_and_values_stay_within_rounding(
    tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    """What the README promises between thread counts: near-equal values, near-all labels."""
    scene = write_tif(tmp_path / "scene.tif", noise_image(256, 256, seed=7))
    settings = SegmentSettings(tile_size=128, outputs=("labels", "logits"), logits_dtype="float32")
    run_local(plan_scene(scene, fcn8s_checkpoint, settings, output=tmp_path / "many.zarr"))
    one_thread_reference(scene, fcn8s_checkpoint, settings, tmp_path / "one.zarr")
    many = zarr.open_group(str(tmp_path / "many.zarr"), mode="r")
    one = zarr.open_group(str(tmp_path / "one.zarr"), mode="r")
    logits_a, logits_b = many["logits"][:], one["logits"][:]  # type: ignore[index]
    scale = float(np.abs(logits_a).max())
    assert float(np.abs(logits_a - logits_b).max()) <= 1e-5 * scale
    differ = float((many["labels"][:] != one["labels"][:]).mean())  # type: ignore[index]
    assert differ <= 1e-4


def tell_tiles(topic: str, index: int, tiles: int) -> int:
    """On a worker: tell of ``tiles`` tiles of block ``index`` as a segment task does."""
    from flows.runtime import worker_tiles

    tell = worker_tiles(topic, index)
    assert tell is not None, "not on a worker"
    for _ in range(tiles):
        tell(100)
    return tiles


def test_workers_tell_each_tile_as_it_is_written_and_a_retried_block_counts_once(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    from distributed import Client, LocalCluster

    from flows.progress import Meter
    from flows.runtime import BlockProgress, tile_events
    from pipeline.plan import BlockReport

    scene = write_tif(tmp_path / "scene.tif", noise_image(64, 128, seed=1))
    settings = SegmentSettings(tile_size=32, halo=0, block=2)
    plan = plan_scene(scene, pointwise_checkpoint, settings, dry_run=True)
    sizes = [len(plan.blocks[i].tiles) for i in plan.todo]
    assert sizes[:2] == [4, 4], sizes  # two blocks of 2 x 2 tiles
    told: list[int] = []
    progress = BlockProgress(plan, lambda tiles, _: told.append(tiles), Meter(sum(sizes)))
    with (
        # a real Worker on threads (this test is about events through the scheduler, not processes)
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
        tile_events(client, progress) as topic,
    ):
        first = plan.todo[0]
        assert client.submit(tell_tiles, topic, first, 4).result(timeout=60) == 4
        deadline = time.monotonic() + 20
        while len(told) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert told == [1, 1, 1, 1], "each tile is told as it is written, before its block ends"
        # A retried block (its worker was lost) tells its tiles again: they are not counted twice.
        assert client.submit(tell_tiles, topic, first, 4, pure=False).result(timeout=60) == 4
        time.sleep(1)
        progress.block(BlockReport(first, tiles=4, skipped=0, pixels=400, seconds=1.0))
        progress.block(BlockReport(plan.todo[1], tiles=4, skipped=0, pixels=400, seconds=1.0))  # told by none
    assert sum(told) == 8 and told[4:] == [0, 4]


def dask_cluster(port: int) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """A real scheduler and one single-threaded worker, each its own process (as on other machines)."""
    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{port}"

    def start(*words: str) -> subprocess.Popen[bytes]:
        out = subprocess.DEVNULL
        return subprocess.Popen([dask, *words], stdout=out, stderr=out, start_new_session=True)

    scheduler = start(
        "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"
    )
    worker = start(
        "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"
    )
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(1, timeout=60)
    return scheduler, worker


@pytest.mark.slow  # ~45 s: two clusters of real processes
def test_a_lost_scheduler_is_one_sentence_and_the_run_resumes_on_another(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model; the point is the scheduler.
    scene = write_tif(tmp_path / "scene.tif", noise_image(512, 512, seed=4))
    run_local(plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=32, chunk=32, block=1),
                         output=tmp_path / "reference.zarr"))  # fmt: skip
    out = tmp_path / "out.zarr"
    port = free_port()
    args = ["run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint), "--tile-size", "32",
            "--chunk", "32", "--block", "1", "--output", str(out), "--dask-address",
            f"tcp://127.0.0.1:{port}"]  # fmt: skip
    scheduler, worker = dask_cluster(port)
    try:
        proc = fcnpipe(*args)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = out / MANIFEST / "c"
            if done.is_dir() and any(done.iterdir()):
                break
            time.sleep(0.05)
        os.killpg(scheduler.pid, signal.SIGKILL)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        for process in (scheduler, worker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert proc.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Dask scheduler was lost" in errors[0], output
    assert "Traceback" not in output and "distributed." not in output, output
    assert not read_state(out)["complete"]  # type: ignore[index]

    scheduler, worker = dask_cluster(port)  # another scheduler at the same address
    try:
        again = runner.invoke(app, args)
    finally:
        for process in (scheduler, worker):
            os.killpg(process.pid, signal.SIGKILL)
    assert again.exit_code == 0, again.output
    assert chunk_bytes(out) == chunk_bytes(tmp_path / "reference.zarr")


def test_the_batch_flow_streams_strips_on_workers_to_the_bytes_of_an_in_process_stream(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model (its 1x1 convolution streams as any network's layers do); the
    # point is that strips go wherever tiles go: Dask workers, the batch flow.
    folder = tmp_path / "in"
    folder.mkdir()
    scenes = [write_tif(folder / f"s{i}.tif", noise_image(70 + 9 * i, 150, seed=i)) for i in range(2)]
    settings = SegmentSettings(tile_size=64, chunk=32, strategy="stream")
    for scene in scenes:
        one_thread_reference(scene, pointwise_checkpoint, settings, tmp_path / f"{scene.stem}-reference.zarr")
    batch = str(ROOT / "flows" / "segment_batch.py")
    args = ["run", batch, "--inputs", str(folder), "--output-dir", str(tmp_path / "out"), "--weights",
            str(pointwise_checkpoint), "--tile-size", "64", "--chunk", "32", "--strategy", "stream",
            "--workers", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "segmented: 2" in result.output, result.output
    for scene in scenes:
        out = tmp_path / "out" / f"{scene.stem}.zarr"
        state = read_state(out)
        assert state is not None and state["complete"] and state["settings"]["strategy"] == "stream"
        assert chunk_bytes(out) == chunk_bytes(tmp_path / f"{scene.stem}-reference.zarr")
