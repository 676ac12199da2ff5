"""Streamed inference (``--strategy stream``): exact for every registered network, by strips, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from fcn import FcnpipeError, build_model
from fcn.checkpoint import load_checkpoint
from fcn.inputs import network_input
from fcn.margin import same_size_forward
from fcn.registry import available_models, segmentation_net
from fcn.streaming import NotStreamable, StreamingNet
from pipeline.grid import GridSpec, Window, chunk_rows, chunks_of, plan_strips, strip_compute_factor
from pipeline.outputs.mosaic import MANIFEST, ROWS_DONE
from pipeline.settings import SegmentSettings
from pipeline.tiling.segment import plan_scene, run_local, segment_block
from pipeline.tiling.sizing import size_tiles
from pipeline.tiling.strips import STREAM_COSTS, StreamCost, stream_cost
from tests.conftest import noise_image, randomize, save_model, write_tif
from tests.test_flow import chunk_bytes
from tests.test_sizing import CPU, PROBE, SCENE, factor_of

TOLERANCE = 1e-5  # of the logit range: fp32 kernels sum in another order over a band than over the image


def agree(reference: torch.Tensor | np.ndarray, other: torch.Tensor | np.ndarray) -> None:
    """Logits within TOLERANCE of the range; labels identical wherever the top two are not tied."""
    ref, out = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    assert ref.shape == out.shape
    span = ref.max() - ref.min()
    assert span > 0 and np.abs(ref - out).max() <= TOLERANCE * span
    top2 = np.sort(ref, axis=0)[-2:]
    decided = top2[1] - top2[0] > 2 * TOLERANCE * span
    assert np.array_equal(ref.argmax(0)[decided], out.argmax(0)[decided])
    assert decided.mean() > 0.99


@pytest.fixture(scope="module")
def fcns(random_fcn8s: nn.Module) -> dict[str, nn.Module]:
    """Random FCN-8s, FCN-8s at-once and the demonstration FCN-8s (score layers random too)."""
    siblings = ("fcn8s-atonce", "fcn8s-demo")
    others = {arch: randomize(build_model(arch, 5), seed=3) for arch in siblings}
    return {"fcn8s": random_fcn8s, **others}


@pytest.mark.parametrize(
    ("arch", "height", "width", "band"),
    [
        ("fcn8s", 97, 131, 32),  # odd sides, neither a multiple of the stride
        ("fcn8s", 161, 45, 7),  # bands of an odd row count, narrower than a pool's grid cell
        ("fcn8s-atonce", 64, 97, 64),  # one band: the whole image at once
        ("fcn8s-demo", 97, 131, 1),  # a row at a time
    ],
)
def test_streamed_logits_equal_one_whole_image_pass(
    fcns: dict[str, nn.Module], arch: str, height: int, width: int, band: int
) -> None:
    model = fcns[arch]
    x = (torch.from_numpy(noise_image(height, width, seed=height)).float()[None] - 120) / 60
    with torch.inference_mode():
        reference = model(x)[0]
    net = StreamingNet(model, height, width)
    rows = [net.push(x[:, :, r : r + band], final=r + band >= height) for r in range(0, height, band)]
    agree(reference, torch.cat(rows, dim=2)[0])


def varied(model: nn.Module, seed: int) -> nn.Module:
    """``model`` randomised, batch norms given running statistics other than 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    randomize(model, seed=seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)  # type: ignore[operator]
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)  # type: ignore[operator]
    return model


# Over 3 s each here; the FCN family also streams in the default run above.
STREAM_SLOW = {"deconvnet", "fcn32s-color-hha", "fcn32s-color-d", "fcn8s", "fcn16s", "fcn32s", "fcn8s-atonce"}


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in STREAM_SLOW else a for a in available_models()]
)
def test_every_registered_network_streams_as_one_whole_image_pass(arch: str) -> None:
    model = varied(build_model(arch, 5), seed=7)
    net = segmentation_net(model)
    stride, margin = net.total_stride, net.margin
    # Odd sides, neither a multiple of the stride, and bands of an odd row count.
    height, width, band = 2 * margin + 3 * stride + 5, 2 * margin + 2 * stride + 7, 13
    x = torch.randn(1, net.in_channels, height, width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = model(x)
    reference = out if isinstance(out, torch.Tensor) else torch.cat(list(out), dim=1)
    stream = StreamingNet(model, height, width)
    rows = [stream.push(x[:, :, r : r + band], final=r + band >= height) for r in range(0, height, band)]
    streamed = torch.cat(rows, dim=2)
    assert streamed.shape == reference.shape
    agree(reference[0], streamed[0])
    # Stricter than the range: against how much the logits vary across the image (small for some
    # random networks, whose logits are mostly their biases).
    variation = (reference - reference.mean(dim=(2, 3), keepdim=True)).abs().max()
    assert variation > 0 and (streamed - reference).abs().max() <= 1e-4 * variation


class Flipped(nn.Module):
    """A network whose output row depends on a row at the other end of the image: it cannot stream."""

    in_channels, margin, total_stride, num_classes = 3, 0, 1, 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A 1x1 convolution of the image upside down."""
        return self.conv(x.flip(2))


class ChangedInPlace(nn.Module):
    """A network that changes a tensor in place and then reads it again under another name."""

    in_channels, margin, total_stride, num_classes = 3, 0, 1, 3

    def __init__(self, write: bool = False) -> None:
        super().__init__()
        self.conv, self.score = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        self.write = write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``skip`` is ``h``: its ReLU in place is seen by both."""
        h = self.conv(x)
        skip = h
        h.relu_()
        if self.write:
            h[:, :, :2] = 0
        return self.score(torch.cat([h, skip], dim=1))


def test_a_tensor_changed_in_place_streams_as_changed_and_a_write_into_one_is_refused() -> None:
    model = randomize(ChangedInPlace(), seed=4)
    x = torch.randn(1, 3, 37, 29, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        reference = model(x.clone())
    stream = StreamingNet(model, 37, 29)
    streamed = torch.cat([stream.push(x[:, :, r : r + 5], final=r + 5 >= 37) for r in range(0, 37, 5)], dim=2)
    agree(reference[0], streamed[0])
    with pytest.raises(NotStreamable, match="writing into a tensor"):
        StreamingNet(randomize(ChangedInPlace(write=True)), 37, 29)


def test_an_operation_without_a_row_operator_is_refused_by_name() -> None:
    with pytest.raises(NotStreamable, match=r"^flip has no row operator$"):
        StreamingNet(Flipped().eval(), 40, 40)
    with pytest.raises(ValueError, match="eval mode"):
        StreamingNet(Flipped(), 40, 40)


def test_strips_and_their_compute_factor_worked_by_hand() -> None:
    # 1000 px in strips of 256 with a 128 px halo read [0,384) [128,640) [384,896) [640,1000):
    # 384 + 512 + 512 + 360 = 1768 px of every row.
    spec = GridSpec(300, 1000, core=256, halo=128, chunk=64, stride=32)
    assert strip_compute_factor(spec) == pytest.approx(1768 / 1000)
    strips = plan_strips(spec)  # one block of one tile each, read across with the halo only
    assert [(s.tiles[0].core, s.tiles[0].read) for s in strips] == [
        (Window(0, 0, 300, 256), Window(0, 0, 300, 384)),
        (Window(0, 256, 300, 256), Window(0, 128, 300, 512)),
        (Window(0, 512, 300, 256), Window(0, 384, 300, 512)),
        (Window(0, 768, 300, 232), Window(0, 640, 300, 360)),
    ]
    fed = sum(t.read.height * t.read.width for s in strips for t in s.tiles)
    assert fed == pytest.approx(strip_compute_factor(spec) * 300 * 1000)
    rows = [chunk_rows(s.tiles[0], 64) for s in strips]  # written a row of chunks at a time
    assert [t.core.height for t in rows[1]] == [64, 64, 64, 64, 44]
    assert all(t.read.col == 128 and t.read.width == 512 and t.crop()[1] == slice(128, 384) for t in rows[1])
    owners = [{c for t in r for c in chunks_of(t.core, 64)} for r in rows]
    assert sum(len(o) for o in owners) == len(set().union(*owners))  # no two strips share a chunk
    # Interior strips of 8192 with FCN-8s's 256 px halo, and a scene narrower than one strip.
    wide = GridSpec(64, 8192 * 8, core=8192, halo=256, chunk=512, stride=32)
    assert strip_compute_factor(wide) == pytest.approx((2 * 8448 + 6 * 8704) / 65536)
    assert strip_compute_factor(GridSpec(64, 300, core=512, halo=256, chunk=512, stride=32)) == 1.0


def test_strips_are_sized_to_the_budget_and_cost_less_than_tiles() -> None:
    for budget in (1500.0, 6000.0):
        tiles = size_tiles(**SCENE, probe=PROBE, budget_mib=budget, device=CPU)
        strips = size_tiles(**SCENE, probe=PROBE, budget_mib=budget, device=CPU, stream=stream_cost("fcn8s"))
        assert strips.peak_mib is not None and strips.peak_mib <= budget
        assert strips.batch_size == 1 and strips.block == 1
        spec = GridSpec(8192, 8192, core=strips.tile_size, halo=256, chunk=512, stride=32)
        assert strip_compute_factor(spec) < factor_of(tiles.tile_size)


def test_a_network_whose_stream_copies_more_gets_strips_no_wider_and_the_unmeasured_the_worst() -> None:
    lean, copying = StreamCost(1.0, 1.0), StreamCost(1.0, 2.5)
    for budget in (2000.0, 4000.0):
        narrow = size_tiles(**SCENE, probe=PROBE, budget_mib=budget, device=CPU, stream=copying)
        wide = size_tiles(**SCENE, probe=PROBE, budget_mib=budget, device=CPU, stream=lean)
        assert narrow.peak_mib is not None and narrow.peak_mib <= budget
        assert narrow.tile_size <= wide.tile_size
    assert narrow.tile_size < wide.tile_size  # 2.5x the memory costs width
    measured = list(STREAM_COSTS.values())
    assert stream_cost("a-network-nobody-measured") == StreamCost(
        max(c.time for c in measured), max(c.memory for c in measured)
    )
    assert all(cost.time >= 1.0 and cost.memory >= 1.0 for cost in measured)
    assert set(STREAM_COSTS) == set(available_models()) - {"pointwise"}  # every network is measured


def test_a_streamed_mosaic_equals_the_tiled_one_and_resumes_by_strip(
    tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    image = noise_image(150, 330, seed=4)
    image[image == 0] = 1  # keep 0 for nodata
    image[:, 20:90, 140:200] = 0  # a masked patch across two strips
    scene = write_tif(tmp_path / "scene.tif", image, nodata=0)
    outputs = {"chunk": 64, "outputs": ("labels", "probabilities", "logits"), "logits_dtype": "float32"}
    tiled = tmp_path / "tiled.zarr"
    tiles = SegmentSettings(strategy="tiles", tile_size=256, **outputs)
    run_local(plan_scene(scene, fcn8s_checkpoint, tiles, output=tiled))

    streamed = tmp_path / "streamed.zarr"
    settings = SegmentSettings(tile_size=128, strategy="stream", **outputs)
    dry = plan_scene(scene, fcn8s_checkpoint, settings, output=streamed, dry_run=True)
    assert dry.summary()["strategy"] == "stream" and len(dry.blocks) == 3  # strips at 0, 128, 256
    assert dry.summary()["compute_factor"] == pytest.approx(3.0)  # each reads all 330 columns
    assert not streamed.exists()
    segment_block(plan_scene(scene, fcn8s_checkpoint, settings, output=streamed), 0)  # then a crash
    with pytest.raises(FcnpipeError, match="was begun with --strategy stream"):
        plan_scene(scene, fcn8s_checkpoint, tiles, output=streamed)
    resumed = plan_scene(scene, fcn8s_checkpoint, settings, output=streamed)
    assert resumed.todo == (1, 2)  # the recorded strip is skipped
    report = run_local(resumed)
    assert report["strategy"] == "stream" and report["blocks_run"] == 2

    want, got = zarr.open_group(str(tiled), mode="r"), zarr.open_group(str(streamed), mode="r")
    nodata = (image == 0).all(axis=0)
    valid = ~nodata
    assert (got["labels"][:][nodata] == 255).all() and np.isnan(got["logits"][:][:, nodata]).all()  # type: ignore[index]
    assert (got["probabilities"][:][:, nodata] == 255).all()  # type: ignore[index]
    agree(want["logits"][:][:, valid][..., None], got["logits"][:][:, valid][..., None])  # type: ignore[index]
    assert np.array_equal(want["labels"][:], got["labels"][:])  # type: ignore[index]


def test_a_strip_that_died_midway_resumes_from_its_first_row_not_written_to_the_same_mosaic(
    tmp_path: Path, fcn8s_checkpoint: Path
) -> None:
    scene = write_tif(tmp_path / "scene.tif", noise_image(330, 150, seed=5))  # one strip, 6 rows of chunks
    settings = SegmentSettings(
        strategy="stream", chunk=64, outputs=("labels", "logits"), logits_dtype="float32"
    )
    whole = tmp_path / "whole.zarr"
    run_local(plan_scene(scene, fcn8s_checkpoint, settings, output=whole))

    died = tmp_path / "died.zarr"
    plan = plan_scene(scene, fcn8s_checkpoint, settings, output=died)
    assert len(plan.blocks) == 1
    segment_block(plan, 0)
    # What a death after the strip's third row of chunks leaves: rows 0-2 written and recorded,
    # the rest not, the strip not done.
    for array in ("labels", "logits"):
        for chunk in (died / array / "c").rglob("*"):
            if chunk.is_file() and int(chunk.relative_to(died / array / "c").parts[-2]) >= 3:
                chunk.unlink()
    for row in range(3, 6):
        (died / ROWS_DONE / "c" / "0" / str(row)).unlink()
    (died / MANIFEST / "c" / "0").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (died / "labels" / "c").rglob("*") if p.is_file()}
    assert len(kept) == 3 * 3  # rows 0-2, three chunks across

    resumed = plan_scene(scene, fcn8s_checkpoint, settings, output=died)
    assert resumed.todo == (0,)
    report = segment_block(resumed, 0)
    assert report.pixels == (330 - 3 * 64) * 150  # only the rows not written
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # rows above were not touched
    run_local(plan_scene(scene, fcn8s_checkpoint, settings, output=died))
    assert chunk_bytes(died) == chunk_bytes(whole)  # restarted a halo above its row: the same bytes


@pytest.mark.parametrize("arch", ["segnet-basic", "unet"])
def test_streamed_mosaics_of_other_networks_equal_their_one_whole_image_pass(
    arch: str, tmp_path: Path
) -> None:
    """Batch norm and unpooling (SegNet), and a margin of mirrored rows above and below (U-Net):
    strips over a scene wider than two halos and a core give the logits of one pass over the scene
    (mirrored by the margin, as the tiles see it)."""
    model = varied(build_model(arch, 4), seed=5)
    weights = save_model(tmp_path / f"{arch}.pt", model, arch)
    settings = SegmentSettings(tile_size=64, strategy="stream", chunk=32, outputs=("logits",),
                               logits_dtype="float32")  # fmt: skip
    probe = plan_scene(
        write_tif(tmp_path / "probe.tif", noise_image(32, 32)), weights, settings, dry_run=True
    )
    halo = probe.grid.halo
    width = 2 * halo + 64 + 37  # interior strips read a halo on both sides
    image = noise_image(75, width, seed=8)
    scene = write_tif(tmp_path / "scene.tif", image)
    plan = plan_scene(scene, weights, settings, output=tmp_path / "streamed.zarr")
    assert len(plan.blocks) >= 3 and any(b.tiles[0].read.width < width for b in plan.blocks)
    run_local(plan)
    loaded, card = load_checkpoint(weights)
    x = network_input(torch.from_numpy(image)[None].float(), card.normalization, torch.device("cpu"))
    with torch.inference_mode():
        reference = same_size_forward(loaded, x)[0]
    got = zarr.open_group(str(tmp_path / "streamed.zarr"), mode="r")["logits"][:]
    agree(reference, got)  # type: ignore[arg-type]


def test_auto_takes_the_strategy_of_least_predicted_cost(tmp_path: Path, fcn8s_checkpoint: Path) -> None:
    wide = write_tif(tmp_path / "wide.tif", noise_image(500, 600, seed=1))
    auto = SegmentSettings(strategy="auto", tile_size=128, chunk=64)
    plan = plan_scene(wide, fcn8s_checkpoint, auto, dry_run=True)
    tiles = plan_scene(wide, fcn8s_checkpoint, auto.model_copy(update={"strategy": "tiles"}), dry_run=True)
    stream = plan_scene(wide, fcn8s_checkpoint, auto.model_copy(update={"strategy": "stream"}), dry_run=True)
    # Tiles of 128 with FCN-8s's 256 px halo pay it down and across; strips only across.
    banding = stream_cost("fcn8s").time
    predicted = {"tiles": tiles.compute_factor, "stream": stream.compute_factor * banding}
    assert plan.predicted == pytest.approx(predicted, abs=1e-4)
    assert stream.compute_factor * banding < tiles.compute_factor
    assert plan.settings.strategy == "stream" and plan.summary()["predicted_cost"] == plan.predicted
    # The same scene holding data in one corner only: the tiles of no data are skipped, a strip
    # computes every row, so tiles cost less.
    corner = noise_image(500, 600, seed=1)
    corner[corner == 0] = 1
    corner[:, 100:, :] = 0
    corner[:, :, 100:] = 0
    sparse = write_tif(tmp_path / "sparse.tif", corner, nodata=0)
    weighed = plan_scene(sparse, fcn8s_checkpoint, auto, dry_run=True)
    assert weighed.settings.strategy == "tiles" and weighed.predicted["stream"] == plan.predicted["stream"]
    assert weighed.predicted["tiles"] < tiles.compute_factor / 5  # one core of 20 holds data
    small = write_tif(tmp_path / "small.tif", noise_image(100, 100, seed=2))
    automatic = auto.model_copy(update={"tile_size": "auto"})
    one_tile = plan_scene(small, fcn8s_checkpoint, automatic, dry_run=True)
    assert one_tile.settings.strategy == "tiles"  # one tile covers it: factor 1.0, a stream's 1.15
    assert one_tile.predicted["tiles"] == 1.0 and one_tile.predicted["stream"] == pytest.approx(banding)


def test_a_mosaic_begun_streamed_resumes_streamed_under_auto(
    tmp_path: Path, pointwise_checkpoint: Path
) -> None:
    # Plumbing: the stand-in model (no halo), for which auto alone would choose tiles (1.0 against
    # the unmeasured stream's 1.69).
    scene = write_tif(tmp_path / "scene.tif", noise_image(100, 200, seed=3))
    auto = SegmentSettings(strategy="auto", tile_size=64, chunk=32)
    assert plan_scene(scene, pointwise_checkpoint, auto, dry_run=True).settings.strategy == "tiles"
    streamed = auto.model_copy(update={"strategy": "stream"})
    begun = plan_scene(scene, pointwise_checkpoint, streamed, output=tmp_path / "scene.zarr")
    segment_block(begun, begun.todo[0])
    resumed = plan_scene(scene, pointwise_checkpoint, auto, output=tmp_path / "scene.zarr")
    assert resumed.settings.strategy == "stream" and resumed.todo == begun.todo[1:]
