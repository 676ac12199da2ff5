"""The warm runner (fcnpipe/warm.py): real commands handed to a real kept process, real signals.

Each test runs ``python -m fcnpipe`` in its own process with ``FCNPIPE_WARM=1`` and a fcnpipe home
of this module's own. The runner logs each run it forks (``warm.log``), which is how a test tells
a run handed over from one that ran in its own process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcnpipe import warm
from fcnpipe.main import RESUME
from pipeline.outputs.mosaic import MANIFEST, read_state
from tests.conftest import ROOT, command_env, fcnpipe, noise_image, write_tif
from tests.test_flow import chunk_bytes

FLOW = str(ROOT / "flows" / "segment_mosaic.py")
pytestmark = pytest.mark.usefixtures("prefect_api")


def served(home: Path) -> int:
    """How many runs the runners of this home have forked."""
    log = home / "warm.log"
    return len(re.findall(r"warm runner \d+: run \d+ started", log.read_text())) if log.is_file() else 0


def ready(home: Path, timeout: float = 240) -> dict[str, object]:
    """The runner's record once it listens (its preload takes a few seconds on a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads((home / "warm.json").read_text())
            if record.get("ready") and warm.alive(int(record["pid"])):
                return dict(record)
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no warm runner became ready in {timeout:.0f} s: {(home / 'warm.log').read_text()}")


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def gone(pid: int, within: float) -> bool:
    """Whether process ``pid`` has ended (or become a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's fcnpipe home; its runner is stopped at the end."""
    folder = tmp_path_factory.mktemp("warm-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FCNPIPE_HOME", str(folder))
        try:
            yield folder
        finally:
            warm.stop()


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a command that may hand over to this home's runner."""
    return {**os.environ, "FCNPIPE_HOME": str(home), "FCNPIPE_WARM": "1", **extra}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tif(tmp_path_factory.mktemp("warm-scene") / "scene.tif", noise_image(96, 160, seed=9))


def run(*args: str, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``fcnpipe *args`` to its end: exit status and output."""
    proc = fcnpipe(*args, env=env)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode()


@pytest.fixture(scope="module")
def first_run(
    home: Path, scene: Path, pointwise_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A run in its own process (no runner yet), which leaves a runner behind: its mosaic."""
    out = tmp_path_factory.mktemp("warm-first") / "first.zarr"
    code, said = run("run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint),
                     "--tile-size", "64", "--output", str(out), env=env_for(home))  # fmt: skip
    assert code == 0, said
    assert served(home) == 0
    ready(home)
    return out


def test_a_run_leaves_a_runner_and_the_next_run_goes_through_it_to_the_same_bytes(
    home: Path, first_run: Path, scene: Path, pointwise_checkpoint: Path, tmp_path: Path
) -> None:
    # Plumbing: the stand-in model (a 1x1 convolution) keeps this fast.
    before = served(home)
    out = tmp_path / "warm.zarr"
    code, said = run("run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint),
                     "--tile-size", "64", "--output", str(out), env=env_for(home))  # fmt: skip
    assert code == 0, said
    assert served(home) == before + 1, "the run did not go through the warm runner"
    assert f"wrote {out}" in said, said
    assert read_state(out)["complete"]  # type: ignore[index]
    assert chunk_bytes(out) == chunk_bytes(first_run)
    mode = stat.S_IMODE(os.stat(json.loads((home / "warm.json").read_text())["socket"]).st_mode)
    assert mode & 0o077 == 0, f"the runner's socket is open to others: {oct(mode)}"


def test_a_failing_warm_run_says_one_sentence_and_exits_1(
    home: Path, first_run: Path, pointwise_checkpoint: Path, tmp_path: Path
) -> None:
    not_a_raster = tmp_path / "notes.tif"
    not_a_raster.write_text("not a raster\n")
    before = served(home)
    code, said = run("run", FLOW, "--input", str(not_a_raster), "--weights", str(pointwise_checkpoint),
                     env=env_for(home))  # fmt: skip
    assert served(home) == before + 1
    assert code == 1, said
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "notes.tif" in errors[0], said
    assert "Traceback" not in said


def start_slow_run(
    home: Path, scene: Path, checkpoint: Path, out: Path
) -> tuple[list[str], subprocess.Popen[bytes]]:
    """Start the slow run through the runner, wait until two blocks are written: its arguments, process."""
    args = ["run", FLOW, "--input", str(scene), "--weights", str(checkpoint), "--tile-size", "64",
            "--halo", "32", "--block", "1", "--strategy", "tiles", "--output", str(out)]  # fmt: skip
    proc = fcnpipe(*args, env=env_for(home))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / MANIFEST / "c"
        if manifest.is_dir() and len(list(manifest.iterdir())) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0].decode()
    return args, proc


@pytest.mark.slow  # ~18 s; Ctrl-C of an own-process run stays (test_stopping)
def test_ctrl_c_stops_a_warm_run_within_5_s_and_the_same_command_resumes_to_identical_bytes(
    home: Path, first_run: Path, stoppable_scene: tuple[Path, Path], fcn8s_checkpoint: Path, tmp_path: Path
) -> None:
    scene, reference = stoppable_scene
    runner = ready(home)
    before = served(home)
    out = tmp_path / "stopped.zarr"
    args, proc = start_slow_run(home, scene, fcn8s_checkpoint, out)
    assert served(home) == before + 1
    (child,) = children(int(runner["pid"]))
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends Ctrl-C: to the command's group only
    proc.wait(timeout=60)
    took = time.monotonic() - sent
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 130, output
    assert took < 5, f"stopped {took:.1f} s after SIGINT"
    assert [line for line in output.splitlines() if line.startswith("stopped")] == [
        f"stopped (SIGINT); {RESUME}"
    ]
    assert "Traceback" not in output, output
    assert gone(child, within=5), "the run's process outlived its command"
    assert not read_state(out)["complete"]  # type: ignore[index]

    code, said = run(*args, env=env_for(home))  # the same command
    assert code == 0, said
    assert chunk_bytes(out) == chunk_bytes(reference)


@pytest.mark.slow  # ~17 s
def test_a_command_killed_outright_stops_its_warm_run_and_the_store_resumes(
    home: Path, first_run: Path, stoppable_scene: tuple[Path, Path], fcn8s_checkpoint: Path, tmp_path: Path
) -> None:
    scene, reference = stoppable_scene
    runner = ready(home)
    out = tmp_path / "killed.zarr"
    args, proc = start_slow_run(home, scene, fcn8s_checkpoint, out)
    (child,) = children(int(runner["pid"]))
    os.kill(proc.pid, signal.SIGKILL)  # no chance to pass anything on: the child sees its socket close
    assert gone(child, within=10), "the run went on after its command was killed"
    assert not read_state(out)["complete"]  # type: ignore[index]
    code, said = run(*args, env=env_for(home))
    assert code == 0, said
    assert chunk_bytes(out) == chunk_bytes(reference)


@pytest.mark.slow  # ~18 s
def test_a_command_with_another_environment_runs_itself_and_replaces_the_runner(
    home: Path, first_run: Path, scene: Path, pointwise_checkpoint: Path, tmp_path: Path
) -> None:
    old = ready(home)
    before = served(home)
    other = env_for(home, OMP_NUM_THREADS="1")  # read when torch is imported: another runner's
    assert warm.key(command_env(other)) != old["key"]
    code, said = run("run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint),
                     "--tile-size", "64", "--output", str(tmp_path / "other.zarr"), env=other)  # fmt: skip
    assert code == 0, said
    assert served(home) == before, "a command with another environment went through the runner"
    new = ready(home)
    assert new["pid"] != old["pid"] and new["key"] == warm.key(command_env(other))
    assert gone(int(old["pid"]), within=15), "the replaced runner is still there"


@pytest.mark.slow  # ~17 s
def test_a_dead_runner_costs_the_next_command_nothing(
    home: Path, first_run: Path, scene: Path, pointwise_checkpoint: Path, tmp_path: Path
) -> None:
    old = ready(home)
    os.kill(int(old["pid"]), signal.SIGKILL)
    assert gone(int(old["pid"]), within=10)
    before = served(home)
    out = tmp_path / "after.zarr"
    code, said = run("run", FLOW, "--input", str(scene), "--weights", str(pointwise_checkpoint),
                     "--tile-size", "64", "--output", str(out), env=env_for(home))  # fmt: skip
    assert code == 0, said
    assert served(home) == before  # it ran in its own process
    assert ready(home)["pid"] != old["pid"]  # and left a new runner


@pytest.mark.slow  # ~10 s of waiting
def test_an_idle_runner_stops_by_itself(tmp_path: Path) -> None:
    env = command_env(env_for(tmp_path, FCNPIPE_API_IDLE_SECONDS="1"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FCNPIPE_HOME", str(tmp_path))
        patch.setenv("FCNPIPE_WARM", "1")
        warm.start_if_absent(env)
        record = ready(tmp_path)
        try:
            assert gone(int(record["pid"]), within=30), "the runner outlived its idle time"
            assert not (tmp_path / "warm.json").exists() and not Path(str(record["socket"])).exists()
        finally:
            warm.stop()
