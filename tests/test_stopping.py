"""A run stops when asked (pipeline/stopping.py, fcnpipe/main.py): real signals to real runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fcnpipe.main import RESUME, app
from pipeline import stopping
from pipeline.outputs.mosaic import MANIFEST, read_state
from tests.conftest import ROOT, fcnpipe
from tests.test_flow import chunk_bytes

FLOW = str(ROOT / "flows" / "segment_mosaic.py")
pytestmark = pytest.mark.usefixtures("prefect_api")


def test_check_raises_only_once_a_stop_was_asked_for() -> None:
    stopping.REQUESTED.clear()
    stopping.check()
    stopping.request()
    try:
        with pytest.raises(stopping.Stopped):
            stopping.check("segmenting")
    finally:
        stopping.REQUESTED.clear()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_run_within_5_s_and_the_same_command_resumes_to_identical_bytes(
    tmp_path: Path, fcn8s_checkpoint: Path, stoppable_scene: tuple[Path, Path], number: signal.Signals
) -> None:
    scene, reference = stoppable_scene  # 10 blocks of one tile

    out = tmp_path / "stopped.zarr"
    args = ["run", FLOW, "--input", str(scene), "--weights", str(fcn8s_checkpoint), "--tile-size", "64",
            "--halo", "32", "--block", "1", "--output", str(out)]  # fmt: skip
    proc = fcnpipe(*args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / MANIFEST / "c"
        if manifest.is_dir() and len(list(manifest.iterdir())) >= 2:
            break
        time.sleep(0.05)
    sent = time.monotonic()
    # Ctrl-C reaches the whole foreground group, as a terminal sends it; SIGTERM the process alone
    os.killpg(proc.pid, number) if number == signal.SIGINT else os.kill(proc.pid, number)
    proc.wait(timeout=60)
    took = time.monotonic() - sent
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 128 + number, output
    assert took < 5, f"stopped {took:.1f} s after {number.name}"
    said = [line for line in output.splitlines() if line.startswith("stopped")]
    assert said == [f"stopped ({number.name}); {RESUME}"]
    assert "Traceback" not in output and "EventsWorker" not in output, output
    state = read_state(out)
    assert state is not None and not state["complete"]

    rerun = CliRunner().invoke(app, args)  # the same command
    assert rerun.exit_code == 0, rerun.output
    assert read_state(out)["complete"]  # type: ignore[index]
    assert chunk_bytes(out) == chunk_bytes(reference)
