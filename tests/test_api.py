"""The Prefect API of a terminal run: started by ``fcnpipe run`` as it begins, stopped with it.

These run the real ``fcnpipe`` entry point with no server configured (a fresh PREFECT_HOME), so
the run starts Prefect's own API application in a child process and reports to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcnpipe.entry import starts_a_flow
from flows.api import configured_api, free_port
from tests.conftest import ROOT, noise_image, write_tif

FLOW = "flows/segment_mosaic.py"


def unconfigured_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any Prefect setting, with its own Prefect home (no profile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(home), "DO_NOT_TRACK": "1", **extra}


def api_servers_of(parent: int) -> list[int]:
    """The pids of ``flows.api`` servers started by process ``parent`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "flows.api" in words and words[-2:-1] == [str(parent)]:
            found.append(int(entry.name))
    return found


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


def test_only_a_flow_run_starts_an_api() -> None:
    assert starts_a_flow(["run", FLOW, "--input", "a.tif"])
    assert not starts_a_flow(["run", FLOW, "--help"])
    assert not starts_a_flow(["run"])
    assert not starts_a_flow(["schedule", FLOW, "--cron", "0 3 * * *"])
    assert not starts_a_flow(["inspect", "a.zarr"])


def test_a_run_without_a_server_starts_one_and_stops_it(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(64, 96, seed=1))
    # Run from a project of the user's with a flows/ package of its own, which must not shadow ours.
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "flows" / "__init__.py").write_text("")
    args = ["run", str(ROOT / FLOW), "--input", str(scene), "--weights", str(pointwise_checkpoint)]
    proc = start(args, unconfigured_env(tmp_path / "prefect"), cwd=project)
    seen: list[int] = []
    while proc.poll() is None and not seen:
        seen = api_servers_of(proc.pid)
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=300)
    text = output.decode()
    assert proc.returncode == 0, text
    assert "complete" in text and "Traceback" not in text
    assert seen, "the run finished without starting its own API"
    time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in seen), "the run's API outlived it"
    assert (tmp_path / "prefect").is_dir()  # the run's records went to the Prefect home it was given


def test_the_api_stops_when_its_run_is_killed(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(64, 64, seed=2))
    # A run that will wait on its flow: the checkpoint does not exist, but the API starts first.
    proc = start(["run", FLOW, "--input", str(scene), "--weights", str(tmp_path / "none.pt")],
                 unconfigured_env(tmp_path / "prefect"))  # fmt: skip
    deadline = time.monotonic() + 60
    servers: list[int] = []
    while time.monotonic() < deadline and not servers and proc.poll() is None:
        servers = api_servers_of(proc.pid)
        time.sleep(0.02)
    if not servers:
        proc.kill()
        pytest.fail(f"no API was started: {proc.communicate()[0].decode()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in servers):
        time.sleep(0.1)
    alive = [pid for pid in servers if Path(f"/proc/{pid}").exists()]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the API outlived its killed run"


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
    assert not api_servers_of(proc.pid)
    assert not (tmp_path / "scene.zarr").exists()


def test_a_server_that_stops_while_starting_is_one_sentence_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fcn.errors import FcnpipeError
    from flows.api import LAUNCHED, launch_api, stop, wait_api

    # A database in a folder that does not exist: the server cannot migrate it and exits.
    broken = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'folder' / 'prefect.db'}"
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", broken)
    url = launch_api()
    try:
        with pytest.raises(FcnpipeError, match="embedded server stopped while starting: ") as caught:
            wait_api(url)
        assert "OperationalError" in str(caught.value) and "unable to open database file" in str(caught.value)
        assert "\n" not in str(caught.value)
    finally:
        stop(LAUNCHED[url])
