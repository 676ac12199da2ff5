"""The Prefect API of terminal runs: one local server, started by the first run and kept (flows/api.py).

These run the real ``fcnpipe`` entry point with no server configured (a fresh PREFECT_HOME and
FCNPIPE_HOME), so the run starts Prefect's own API application, or finds the one kept there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from fcnpipe.main import app
from flows.api import configured_api, free_port
from pipeline.outputs.mosaic import read_state
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from tests.conftest import ROOT, command_env, noise_image, write_tif
from tests.faults import FaultProxy
from tests.test_flow import chunk_bytes

FLOW = "flows/segment_mosaic.py"


def unconfigured_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any Prefect setting, with its own Prefect and fcnpipe homes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FCNPIPE_"))}
    return env | {"PREFECT_HOME": str(home), "FCNPIPE_HOME": str(home / "fcnpipe"), "DO_NOT_TRACK": "1",
                  "FCNPIPE_WARM": "0", **extra}  # fmt: skip


def kept_server(home: Path) -> int | None:
    """The pid of the local API kept for this home, if its process is alive."""
    record = home / "fcnpipe" / "api.json"
    if not record.is_file():
        return None
    pid = int(json.loads(record.read_text())["pid"])
    return pid if Path(f"/proc/{pid}").exists() else None


def gone(pid: int, within: float) -> bool:
    """Whether process ``pid`` ends (or is left a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def start(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """The real ``fcnpipe`` executable (the console script beside this interpreter) in its own process."""
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("fcnpipe")), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_settings_that_may_name_an_api_are_left_to_prefect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert not configured_api()
    (tmp_path / "pyproject.toml").write_text('[tool.prefect.api]\nurl = "http://127.0.0.1:4200/api"\n')
    assert configured_api()
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert not configured_api()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
    )
    assert configured_api()


def test_help_and_option_mistakes_start_no_api(tmp_path: Path) -> None:
    env = unconfigured_env(tmp_path / "prefect")
    for args in (["run", FLOW, "--help"], ["run", FLOW, "--input", "missing.tif"], ["api", "status"]):
        output, _ = start(args, env).communicate(timeout=60)
        assert kept_server(tmp_path / "prefect") is None, output.decode()


def test_the_first_run_starts_an_api_that_later_runs_use_until_stopped(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(64, 96, seed=1))
    # Run from a project of the user's with a flows/ package of its own, which must not shadow ours.
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "flows" / "__init__.py").write_text("")
    home = tmp_path / "prefect"
    env = unconfigured_env(home)
    pids = []
    for name in ("first", "second"):
        args = ["run", str(ROOT / FLOW), "--input", str(scene), "--weights", str(pointwise_checkpoint),
                "--output", str(tmp_path / f"{name}.zarr")]  # fmt: skip
        output, _ = start(args, env, cwd=project).communicate(timeout=300)
        assert "complete" in output.decode() and "Traceback" not in output.decode(), output.decode()
        pids.append(kept_server(home))
    assert pids[0] is not None and pids[0] == pids[1], "the second run did not use the first run's API"
    assert home.is_dir()  # the runs' records went to the Prefect home they were given
    status, _ = start(["api", "status"], env).communicate(timeout=60)
    assert "answering" in status.decode()
    stopped, _ = start(["api", "stop"], env).communicate(timeout=60)
    assert "stopped the local Prefect API" in stopped.decode()
    assert gone(pids[0], within=15), "fcnpipe api stop left the server running"


@pytest.mark.slow  # ~20 s of waiting
def test_the_kept_api_stops_by_itself_when_idle(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(64, 64, seed=2))
    home = tmp_path / "prefect"
    args = ["run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint)]
    output, _ = start(args, unconfigured_env(home, FCNPIPE_API_IDLE_SECONDS="2")).communicate(timeout=300)
    assert "complete" in output.decode(), output.decode()
    pid = kept_server(home)
    assert pid is not None
    assert gone(pid, within=30), "an idle kept API did not stop"


def test_a_silent_configured_server_is_one_sentence(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(64, 64, seed=3))
    url = f"http://127.0.0.1:{free_port()}/api"
    env = unconfigured_env(tmp_path / "prefect", PREFECT_API_URL=url,
                           PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")  # fmt: skip
    proc = start(["run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint)], env)
    output, _ = proc.communicate(timeout=120)
    text = " ".join(output.decode().split())
    assert proc.returncode == 1, text
    assert f"the Prefect API at PREFECT_API_URL={url} does not answer" in text, text
    assert "Traceback" not in text
    assert kept_server(tmp_path / "prefect") is None  # a configured server is never replaced
    assert not (tmp_path / "scene.zarr").exists()


def test_a_server_that_stops_while_starting_is_one_sentence_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fcn.errors import FcnpipeError
    from flows.api import local_api, stop_local_api, wait_api

    # A database in a folder that does not exist: the server cannot migrate it and exits.
    broken = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'folder' / 'prefect.db'}"
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", broken)
    monkeypatch.setenv("FCNPIPE_HOME", str(tmp_path / "fcnpipe"))
    url = local_api()
    try:
        with pytest.raises(FcnpipeError, match="embedded server stopped while starting: ") as caught:
            wait_api(url)
        assert "OperationalError" in str(caught.value) and "unable to open database file" in str(caught.value)
        assert "\n" not in str(caught.value)
    finally:
        stop_local_api()


def start_run(args: list[str], api_url: str, **extra: str) -> subprocess.Popen[str]:
    """The real CLI reporting to ``api_url`` (the test's API behind a fault proxy)."""
    env = command_env() | {"PREFECT_API_URL": api_url, **extra}
    return subprocess.Popen([sys.executable, "-m", "fcnpipe", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def outage_mid_run(
    tmp_path: Path, checkpoint: Path, seconds: float | None, **extra: str
) -> tuple[subprocess.Popen[str], str, Path, Path, FaultProxy, list[str]]:
    """Run a pointwise stand-in (plumbing: the API, not the network) over 10 one-tile blocks; once
    planning has made the store, the API answers 503 for ``seconds`` (None: until the run ends)."""
    scene = write_tif(tmp_path / "scene.tif", noise_image(128, 320, seed=4))
    reference = tmp_path / "reference.zarr"
    settings = SegmentSettings(tile_size=64, halo=32, block=1)
    run_local(plan_scene(scene, checkpoint, settings, output=reference))
    out = tmp_path / "out.zarr"
    args = ["run", FLOW, "--input", str(scene), "--weights", str(checkpoint), "--tile-size", "64",
            "--halo", "32", "--block", "1", "--output", str(out)]  # fmt: skip
    api = urlsplit(command_env()["PREFECT_API_URL"])
    proxy = FaultProxy(api.netloc).start()
    proc = start_run(args, f"{proxy.url}{api.path}", **extra)
    deadline = time.monotonic() + 120
    while not (out / "zarr.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proxy.outage(503)
    if seconds is not None:
        time.sleep(seconds)
        proxy.restore()
    output, _ = proc.communicate(timeout=600)
    return proc, output, out, reference, proxy, args


@pytest.mark.usefixtures("prefect_api")
def test_a_run_rides_out_an_api_answering_503_for_a_while(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    proc, output, out, reference, proxy, _ = outage_mid_run(tmp_path, pointwise_checkpoint, 8.0)
    proxy.close()
    assert proxy.injected["outage 503"] > 0  # the run did meet the outage
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "EventsWorker" not in output, output
    assert read_state(out)["complete"]  # type: ignore[index]
    assert chunk_bytes(out) == chunk_bytes(reference)


@pytest.mark.slow  # ~25 s
@pytest.mark.usefixtures("prefect_api")
def test_an_api_that_stays_down_stops_the_run_in_one_sentence_and_it_resumes(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    proc, output, out, reference, proxy, args = outage_mid_run(
        tmp_path, pointwise_checkpoint, None, PREFECT_CLIENT_MAX_RETRIES="1"
    )
    proxy.close()
    assert proc.returncode == 1, output
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("segment:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert "the Prefect API at http://127.0.0.1:" in lines[0] and "503 Service Unavailable" in lines[0]
    assert "run the same command again to resume" in lines[0]
    assert not read_state(out)["complete"]  # type: ignore[index]

    rerun = CliRunner().invoke(app, args)  # the same command, the API back
    assert rerun.exit_code == 0, rerun.output
    assert chunk_bytes(out) == chunk_bytes(reference)
