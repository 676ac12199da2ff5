"""Exact at the least cost: the compute factor, tiles sized to a memory budget, and the dry run."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from fcn import FcnpipeError, build_model, load_checkpoint
from fcn.memory import LARGEST_INDEXABLE, MemoryProbe, added_peak_mib, probe_memory
from fcnpipe.main import app
from pipeline.grid import GridSpec, compute_factor, plan_tiles
from pipeline.outputs.mosaic import read_state
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local
from pipeline.tiling.sizing import memory_budget_mib, size_tiles
from tests.conftest import noise_image, write_tif
from tests.test_segment import EXACT, check_exact

ROOT = Path(__file__).resolve().parents[1]
FLOW = str(ROOT / "flows" / "segment_mosaic.py")
CPU = torch.device("cpu")


def test_compute_factor_against_grids_worked_by_hand() -> None:
    # Rows of 100 px in cores of 32 with an 8 px halo read [0,40) [24,72) [56,100) [88,100):
    # 40 + 48 + 44 + 12 = 144 px; columns of 60 read [0,40) [24,60): 40 + 36 = 76 px.
    spec = GridSpec(100, 60, core=32, halo=8, chunk=32, stride=8)
    assert compute_factor(spec) == pytest.approx(144 * 76 / (100 * 60))
    # A scene smaller than one core is read once, whole: one whole-image pass.
    assert compute_factor(GridSpec(50, 40, core=64, halo=32, chunk=64, stride=32)) == 1.0
    # A network 4 px short per side (stride 8, halo 12) reads 4 px of mirror past each edge:
    # [-4,44) [20,76) [52,104) [84,104) = 48 + 56 + 52 + 20 = 176 px per 100.
    unet_like = GridSpec(100, 100, core=32, halo=12, chunk=32, stride=8, margin=4)
    assert compute_factor(unet_like) == pytest.approx(1.76**2)
    # 64 cores of 1024 with a 256 px halo: two edge reads of 1280, 62 interior ones of 1536.
    big = GridSpec(65536, 65536, core=1024, halo=256, chunk=512, stride=32)
    assert compute_factor(big) == pytest.approx(((2 * 1280 + 62 * 1536) / 65536) ** 2)
    # Every case agrees with the sum over the planned tiles.
    for case in (spec, unet_like):
        fed = sum(t.read.height * t.read.width for t in plan_tiles(case))
        assert compute_factor(case) == pytest.approx(fed / (case.height * case.width))


def test_memory_budgets_are_read_as_amounts_or_shares() -> None:
    assert memory_budget_mib("8GB", CPU) == pytest.approx(8e9 / 2**20)
    assert memory_budget_mib("512MiB", CPU) == 512
    assert memory_budget_mib("512MiB", CPU, workers=2) == 256  # local CPU workers share the RAM
    assert 0 < memory_budget_mib("10%", CPU) < memory_budget_mib("20%", CPU)
    for bad in ("8", "lots", "0%", "150%", "-1GB"):
        with pytest.raises(FcnpipeError, match="--memory-budget"):
            memory_budget_mib(bad, CPU)


# A made-up probe (data, not a measurement): 200 MiB fixed, 500 MiB per input Mpx.
PROBE = MemoryProbe("cpu", 200.0, 500.0, 0.0, 64.0, (256, 512))
SCENE = {"height": 8192, "width": 8192, "halo": 256, "margin": 0, "chunk": 512, "stride": 32, "block": 4}


def factor_of(core: int) -> float:
    return compute_factor(GridSpec(8192, 8192, core=core, halo=256, chunk=512, stride=32))


def test_the_tile_is_the_cheapest_that_fits_and_a_smaller_budget_costs_more() -> None:
    factors = {}
    for budget in (1500.0, 3000.0, 6000.0):
        sizing = size_tiles(**SCENE, probe=PROBE, budget_mib=budget, device=CPU)
        core = sizing.tile_size
        assert core % 512 == 0 and core % 32 == 0 and sizing.batch_size == 1
        assert sizing.peak_mib is not None and sizing.peak_mib <= budget
        for other in range(512, 8192 + 512, 512):  # every core that fits computes at least as much
            given = size_tiles(**SCENE, probe=PROBE, budget_mib=1e9, device=CPU, tile_size=other)
            assert given.peak_mib is not None
            if given.peak_mib <= budget:
                assert factor_of(other) >= factor_of(core)
        factors[budget] = factor_of(core)
    assert factors[1500.0] > factors[3000.0] > factors[6000.0]
    # On 8192 px, a core of 2560 leaves a last column of 512: no cheaper than 2048, and larger.
    assert factor_of(2560) == pytest.approx(factor_of(2048))


def test_no_activation_reaches_2_to_the_31_elements() -> None:
    wide = replace(PROBE, elements_per_px=1000.0)  # e.g. 1000 channels at full resolution
    sizing = size_tiles(**SCENE, probe=wide, budget_mib=1e9, device=CPU)
    reads = (sizing.tile_size + 2 * 256) ** 2
    assert reads * 1000 <= LARGEST_INDEXABLE < (sizing.tile_size + 512 + 2 * 256) ** 2 * 1000


def test_workers_each_get_tiles_and_blocks() -> None:
    sizing = size_tiles(**{**SCENE, "height": 2048, "width": 2048}, probe=PROBE, budget_mib=1e9, device=CPU,
                        workers=4)  # fmt: skip
    cores_per_side = math.ceil(2048 / sizing.tile_size)
    assert cores_per_side**2 >= 4
    assert math.ceil(cores_per_side / sizing.block) ** 2 >= 4


def test_a_budget_too_small_for_one_tile_gets_one_sentence() -> None:
    with pytest.raises(FcnpipeError, match=r"needs about .* GiB, more than the memory budget"):
        size_tiles(**SCENE, probe=PROBE, budget_mib=100.0, device=CPU)
    given = size_tiles(**SCENE, probe=PROBE, budget_mib=100.0, device=CPU, tile_size=1024)
    assert given.tile_size == 1024 and "above the memory budget" in given.notes[0]  # a given tile wins


def test_the_probe_does_not_underestimate_a_larger_pass() -> None:
    model = build_model("fcn8s", 5).eval()
    probe = probe_memory(model)
    if probe is None:
        pytest.skip("this system cannot reset its peak resident set (/proc/self/clear_refs)")
    x = torch.randint(0, 256, (1, 3, 640, 640), dtype=torch.uint8)
    with torch.inference_mode():
        measured = added_peak_mib(lambda: model(x.float()), CPU)
    assert probe.peak_mib(640 * 640) >= measured > 0


@pytest.mark.slow  # ~40 s
def test_auto_tiles_under_a_small_budget_are_smaller_and_stay_exact(
    tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    _, card = load_checkpoint(fcn8s_checkpoint)
    probe = card.memory["cpu"]  # measured when the checkpoint was written
    assert probe.mib_per_mpx > 0
    # 1100 px wide: a 256 px halo on each side still leaves reads narrower than the scene.
    scene = write_tif(tmp_path / "probe.tif", noise_image(300, 1100))
    settings = EXACT.model_copy(update=dict(tile_size="auto"))
    roomy = plan_scene(scene, fcn8s_checkpoint, settings, output=tmp_path / "roomy.zarr", dry_run=True)
    assert roomy.grid.core >= 1100  # all the memory it wants: one tile covers the scene
    # A budget that holds a read of about 300 x 704 px but not the whole scene's.
    budget = probe.peak_mib(300 * 704) + 40
    small = settings.model_copy(update=dict(memory_budget=f"{budget:.0f}MiB"))
    plan = plan_scene(scene, fcn8s_checkpoint, small, output=tmp_path / "small.zarr", dry_run=True)
    assert plan.grid.core < roomy.grid.core and plan.grid.core % 64 == 0
    assert plan.peak_mib is not None and plan.peak_mib <= budget
    assert plan.compute_factor > roomy.compute_factor == 1.0
    check_exact(tmp_path, fcn8s_checkpoint, 300, 1100, small)


def test_a_dry_run_computes_nothing_and_writes_nothing(
    tmp_path: Path, fcn8s_checkpoint: Path, prefect_api: str
) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(200, 330))
    before = set(tmp_path.iterdir())
    forwards = []

    def computed(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if any(isinstance(x, torch.Tensor) and not x.is_meta for x in inputs):
            forwards.append(module)

    # auto traces the network once on a shape-only (meta) input to know it streams: no values
    hook = torch.nn.modules.module.register_module_forward_hook(computed)
    try:
        args = ["run", FLOW, "--input", str(scene), "--weights", str(fcn8s_checkpoint), "--dry-run"]
        result = CliRunner().invoke(app, args)
    finally:
        hook.remove()
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and "compute factor 1.000" in result.output
    assert forwards == []  # no module of any network ran on values
    assert set(tmp_path.iterdir()) == before  # no mosaic, no preview


def test_a_dry_run_never_trains_the_default_model(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FCNPIPE_HOME", str(tmp_path / "home"))
    scene = write_tif(tmp_path / "scene.tif", noise_image(64, 64))
    result = CliRunner().invoke(app, ["run", FLOW, "--input", str(scene), "--dry-run"])
    assert result.exit_code == 1 and "not trained yet" in result.output
    assert not (tmp_path / "home").exists()


def test_the_run_reports_its_tiles_and_compute_factor(tmp_path: Path, pointwise_checkpoint: Path) -> None:
    # Plumbing (the 1x1 stand-in model): the figures travel from the plan to the stored report.
    scene = write_tif(tmp_path / "scene.tif", noise_image(100, 130))
    plan = plan_scene(scene, pointwise_checkpoint, SegmentSettings(tile_size=64, chunk=32, halo=32))
    assert plan.settings.batch_size == 1  # auto on a CPU
    run_local(plan)
    state = read_state(tmp_path / "scene.zarr")
    assert state is not None and state["complete"]
    # Rows read [0,96) [32,100): 164 px of 100; columns [0,96) [32,130) [96,130): 228 px of 130.
    assert state["report"]["compute_factor"] == pytest.approx(164 * 228 / (100 * 130), abs=1e-4)
    assert state["report"]["tile_size"] == 64 and state["report"]["halo"] == 32
