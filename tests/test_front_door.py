"""The command line answers help and option mistakes before torch, Prefect or GDAL load (fcnpipe/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MOSAIC, BATCH = "flows/segment_mosaic.py", "flows/segment_batch.py"
HEAVY = ("torch", "prefect", "rasterio", "zarr", "distributed")

PROBE = """
import json, sys
from fcnpipe.main import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def answer(*args: str) -> tuple[int, list[str], str]:
    """Run the command line in a fresh interpreter: exit status, heavy modules loaded, what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last["code"], last["loaded"], done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["--help"], 0, "Segment gigapixel images"),
        (["run", MOSAIC, "--help"], 0, "--tile-size"),
        (["run", BATCH, "--help"], 0, "--strategy"),
        (["run", MOSAIC, "--input", "{scene}", "--tile-sise", "64"], 1, "did you mean --tile-size?"),
        (["run", MOSAIC, "--input", "{scene}", "--tile-size", "big"], 1, "'big' is not a valid"),
        (["run", MOSAIC, "--input", "{scene}", "--strategy", "strips"], 1, "--strategy"),
        (["run", MOSAIC, "--input", "{missing}"], 1, "does not exist"),
        (["run", MOSAIC, "--input", "{scene}", "--output", "{scene}/x.zarr"], 1, "cannot be written"),
        (["run", BATCH, "--inputs", "x/*.tif", "--gpus", "two"], 1, "--gpus"),
        (["schedule", BATCH, "--interval", "10m", "--inputs", "x", "--halo", "-1"], 1, "--halo"),
    ],
)  # fmt: skip
def test_help_and_option_mistakes_answer_without_loading_torch_or_prefect(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"not read: the answer comes before any read")
    words = [a.format(scene=scene, missing=tmp_path / "missing.tif") for a in args]  # {scene}/x: no folder
    status, loaded, output = answer(*words)
    assert status == code, output
    assert said in " ".join(output.split()), output
    assert loaded == [], f"{loaded} loaded to answer {args}"
    if code:
        assert output.count("error:") == 1 and "Traceback" not in output
