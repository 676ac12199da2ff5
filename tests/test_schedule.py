"""Scheduled batch jobs: the batch flow served as a deployment on a real ``prefect server start``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fcnpipe.main import app
from flows.api import free_port
from flows.serving import RESUMES, SERVING_STOPPED
from pipeline.outputs.mosaic import MANIFEST, read_state
from tests.conftest import ROOT, noise_image, write_tif

BATCH = str(ROOT / "flows" / "segment_batch.py")
runner = CliRunner()


def wait_for(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Prefect settings from the test session, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **extra}


def stop(proc: subprocess.Popen[bytes]) -> str:
    """Interrupt a process group as Ctrl-C would; its output."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.stdout.read().decode() if proc.stdout else ""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``prefect server start`` on 127.0.0.1, a free port and a temporary database."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = clean_env(
        PREFECT_HOME=str(home),
        # The scheduler looks for deployments to schedule every 60 s by default; sooner here.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
    )
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
               "--no-ui", "--analytics-off"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return proc.poll() is not None  # stop waiting if it died

    wait_for(healthy, 180, "prefect server start")
    assert proc.poll() is None, stop(proc)
    yield url
    stop(proc)


def deployment_runs(url: str, deployment: str) -> list[dict[str, Any]]:
    """Every run of the deployment, as the server recorded them."""
    import json

    body = json.dumps({"deployments": {"name": {"any_": [deployment]}}, "limit": 200}).encode()
    request = urllib.request.Request(f"{url}/flow_runs/filter", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return list(json.loads(response.read()))


def flow_runs(url: str, deployment: str) -> list[tuple[str, str]]:
    """(state, start time) of every run of the deployment."""
    return [(r["state_type"], r["start_time"] or "") for r in deployment_runs(url, deployment)]


def final_states(url: str, deployment: str) -> list[tuple[str, str]]:
    """(state, its message) of every run of the deployment."""
    return [(r["state_type"], r["state"]["message"] or "") for r in deployment_runs(url, deployment)]


def artifacts(url: str, key: str) -> int:
    """How many artifacts with ``key`` the server holds."""
    import json

    body = json.dumps({"artifacts": {"key": {"any_": [key]}}}).encode()
    request = urllib.request.Request(f"{url}/artifacts/filter", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return len(json.loads(response.read()))


def test_a_scheduled_batch_segments_a_new_scene_once_and_skips_it_after(
    prefect_server: str, tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model; the point is the schedule.
    incoming, mosaics = tmp_path / "incoming", tmp_path / "mosaics"
    incoming.mkdir()
    write_tif(incoming / "scene.tif", noise_image(64, 96, seed=1))  # a new scene, waiting
    command = [sys.executable, "-m", "fcnpipe", "schedule", BATCH, "--interval", "5s",
               "--name", "every-5s", "--inputs", str(incoming), "--output-dir", str(mosaics),
               "--weights", str(pointwise_checkpoint), "--tile-size", "32"]  # fmt: skip
    env = clean_env(PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="2")
    served = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        mosaic = mosaics / "scene.zarr"

        def complete() -> bool:  # and the run that made it ended (it consolidates after the mark)
            state = read_state(mosaic) if mosaic.exists() else None
            ended = any(kind == "COMPLETED" for kind, _ in flow_runs(prefect_server, "every-5s"))
            return bool(state and state["complete"]) and ended

        wait_for(complete, 240, "the new scene's mosaic")
        finished_at = time.time()
        stamps = {p: p.stat().st_mtime_ns for p in mosaic.rglob("*") if p.is_file()}

        def later_run_completed() -> bool:
            starts = [s for state, s in flow_runs(prefect_server, "every-5s") if state == "COMPLETED" and s]
            return any(
                datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() > finished_at for s in starts
            )

        wait_for(later_run_completed, 240, "a scheduled run after the mosaic was complete")
        assert {p: p.stat().st_mtime_ns for p in mosaic.rglob("*") if p.is_file()} == stamps  # skipped
        assert artifacts(prefect_server, "segment-report") >= 1  # the scene's run shows its report
        states = [s for s, _ in flow_runs(prefect_server, "every-5s")]
        assert "FAILED" not in states and "CRASHED" not in states, states
    finally:
        output = stop(served)
    assert "serving segment-batch as deployment 'every-5s' every 0:00:05" in output, output
    assert "Traceback" not in output, output


def test_ctrl_c_stops_a_scheduled_run_midway_as_cancelled_keeping_what_it_wrote(
    prefect_server: str, tmp_path: Path, fcn8s_checkpoint: Path, stoppable_scene: tuple[Path, Path]
) -> None:
    scene, _ = stoppable_scene  # 10 blocks of one tile, slow enough to stop midway
    incoming, mosaics = tmp_path / "incoming", tmp_path / "mosaics"
    incoming.mkdir()
    shutil.copy(scene, incoming / "scene.tif")
    options = ["--inputs", str(incoming), "--output-dir", str(mosaics), "--weights", str(fcn8s_checkpoint),
               "--tile-size", "64", "--halo", "32", "--block", "1", "--strategy", "tiles"]  # fmt: skip
    every = ["--interval", "5s", "--name", "midway"]
    command = [sys.executable, "-m", "fcnpipe", "schedule", BATCH, *every, *options]
    env = clean_env(PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="2")
    served = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    mosaic = mosaics / "scene.zarr"
    try:
        wait_for(lambda: len(list((mosaic / MANIFEST / "c").glob("*"))) >= 2, 240, "the run's first blocks")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {stop(served)}") from None
    sent = time.monotonic()
    output = stop(served)  # Ctrl-C reaches the serving command and its run, as a terminal sends it
    took = time.monotonic() - sent
    assert served.returncode == 130 and took < 20, (served.returncode, took, output)
    assert "Traceback" not in output, output
    assert output.splitlines()[-1] == f"stopped (SIGINT); {SERVING_STOPPED}", output
    states = final_states(prefect_server, "midway")  # later runs wait, scheduled, or were cancelled as due
    assert states.count(("CANCELLED", f"stopped (SIGINT); {RESUMES}")) == 1, states
    assert not {"COMPLETED", "FAILED", "CRASHED", "RUNNING"} & {state for state, _ in states}, states
    state = read_state(mosaic)
    assert state is not None and not state["complete"]  # what it wrote is kept for the next run
    # (a stopped run resuming to identical bytes: tests/test_stopping.py, by the same plan)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (Linux's /proc)."""
    try:
        return [int(n) for n in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_ctrl_c_while_a_scheduled_run_starts_up_cancels_it_as_its_flow_begins(
    prefect_server: str, tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model; the point is a Ctrl-C that lands before the run's flow works.
    incoming = tmp_path / "incoming"
    write_tif(incoming / "scene.tif", noise_image(64, 96, seed=1))
    command = [sys.executable, "-m", "fcnpipe", "schedule", BATCH, "--interval", "5s", "--name", "starting",
               "--inputs", str(incoming), "--weights", str(pointwise_checkpoint),
               "--tile-size", "32"]  # fmt: skip
    env = clean_env(PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="2")
    served = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: children(served.pid), 240, "the run's process")  # it imports for seconds
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {stop(served)}") from None
    output = stop(served)
    assert served.returncode == 130 and "Traceback" not in output, output
    states = final_states(prefect_server, "starting")
    assert states.count(("CANCELLED", f"stopped (SIGINT); {RESUMES}")) == 1, states
    assert not {"COMPLETED", "FAILED", "CRASHED", "RUNNING"} & {state for state, _ in states}, states
    assert not (incoming / "scene.zarr").exists()  # stopped before it planned


def test_schedule_without_a_server_or_a_time_is_one_sentence(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    args = ["schedule", BATCH, "--inputs", str(tmp_path), "--weights", str(pointwise_checkpoint)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "say when to run: --cron" in result.output, result.output
    with temporary_settings({PREFECT_API_URL: None}):
        result = runner.invoke(app, [*args, "--interval", "10m"])
    assert result.exit_code == 1 and "a schedule needs a Prefect server" in result.output, result.output
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        result = runner.invoke(app, [*args, "--interval", "10m"])
    assert result.exit_code == 1 and "no Prefect server answers at" in result.output, result.output
    assert "prefect server start" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*args, "--interval", "soon"])
    assert result.exit_code == 1 and "--interval 'soon' is not a duration" in result.output
