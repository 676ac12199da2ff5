"""A run stops when asked (pipeline/stopping.py, fcnpipe/main.py): real signals to real runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
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
            "--halo", "32", "--block", "1", "--strategy", "tiles", "--output", str(out)]  # fmt: skip
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


def test_a_signal_stops_training_within_5_s_and_its_resume_reaches_the_same_weights(tmp_path: Path) -> None:
    # The per-pixel stand-in keeps this about stopping and resuming, not the network.
    from fcn import load_checkpoint
    from pipeline.training.data.synthetic import make_benchmark
    from tests.test_train_flows import TINY

    benchmark = make_benchmark(tmp_path / "synthetic", scenes=4, size=48, seed=1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    train = str(ROOT / "flows" / "train.py")
    common = ["--dataset", f"synthetic-ortho:{benchmark}", "--arch", "pointwise", "--init", "scratch",
              "--recipe", str(recipe), "--eval-every", "5", "--max-steps", "100"]  # fmt: skip
    proc = fcnpipe("run", train, *common, "--out", str(tmp_path / "stopped"))
    last = tmp_path / "stopped" / "pointwise" / "last.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0].decode()
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    took = time.monotonic() - sent
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 130, output
    assert took < 5, f"stopped {took:.1f} s after SIGINT"
    said = " ".join(output.split()).split("stopped (SIGINT); ")[1:]
    assert len(said) == 1 and f"--resume {last} continues it" in said[0], output
    assert "Traceback" not in output, output

    resumed = CliRunner().invoke(app, ["run", train, *common, "--resume", str(last)])
    assert resumed.exit_code == 0, resumed.output
    full = CliRunner().invoke(app, ["run", train, *common, "--out", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    a, _ = load_checkpoint(last)
    b, _ = load_checkpoint(tmp_path / "full" / "pointwise" / "last.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
