"""The tiling plan covers every pixel once, aligns to chunks and stride, and keeps halos inside."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.grid import GridSpec, Window, chunks_of, plan_blocks, plan_tiles, tile_count


def specs() -> list[GridSpec]:
    rng = random.Random(0)
    out = [GridSpec(1, 1, 64, 64, 64), GridSpec(700, 913, 128, 256, 64, block=3)]
    for _ in range(30):
        chunk = rng.choice([32, 64, 128])
        out.append(
            GridSpec(
                rng.randint(1, 1500), rng.randint(1, 1500), core=chunk * rng.randint(1, 4),
                halo=32 * rng.randint(0, 8), chunk=chunk, block=rng.randint(1, 5),
            )
        )  # fmt: skip
    return out


@pytest.mark.parametrize("spec", specs(), ids=lambda s: f"{s.height}x{s.width}c{s.core}h{s.halo}")
def test_cores_partition_the_image(spec: GridSpec) -> None:
    tiles = plan_tiles(spec)
    assert (
        len(tiles)
        == tile_count(spec)
        == math.ceil(spec.height / spec.core) * math.ceil(spec.width / spec.core)
    )
    covered = [[0] * spec.width for _ in range(spec.height)] if spec.height * spec.width < 40000 else None
    area = 0
    for t in tiles:
        area += t.core.height * t.core.width
        if covered is not None:
            for r in range(t.core.row, t.core.row + t.core.height):
                for c in range(t.core.col, t.core.col + t.core.width):
                    covered[r][c] += 1
    assert area == spec.height * spec.width
    if covered is not None:
        assert all(v == 1 for row in covered for v in row)


@pytest.mark.parametrize("spec", specs(), ids=lambda s: f"{s.height}x{s.width}c{s.core}h{s.halo}")
def test_reads_are_stride_aligned_halo_wide_and_inside_the_image(spec: GridSpec) -> None:
    for t in plan_tiles(spec):
        r, c = t.read, t.core
        assert r.row % spec.stride == 0 and r.col % spec.stride == 0
        assert r.row >= 0 and r.col >= 0 and r.row + r.height <= spec.height and r.col + r.width <= spec.width
        # The halo is full wherever the image allows it.
        assert c.row - r.row == min(spec.halo, c.row)
        assert c.col - r.col == min(spec.halo, c.col)
        assert r.row + r.height == min(spec.height, c.row + c.height + spec.halo)
        assert r.col + r.width == min(spec.width, c.col + c.width + spec.halo)
        rows, cols = t.crop()
        assert (rows.stop - rows.start, cols.stop - cols.start) == c.shape


@pytest.mark.parametrize("spec", specs(), ids=lambda s: f"{s.height}x{s.width}c{s.core}h{s.halo}")
def test_no_two_blocks_share_a_chunk(spec: GridSpec) -> None:
    owner: dict[tuple[int, int], int] = {}
    blocks = plan_blocks(spec)
    assert sorted(t.core for b in blocks for t in b.tiles) == sorted(t.core for t in plan_tiles(spec))
    for block in blocks:
        for tile in block.tiles:
            for chunk in chunks_of(tile.core, spec.chunk):
                assert owner.setdefault(chunk, block.index) == block.index
        assert len(block.tiles) <= spec.block**2
    assert [b.index for b in blocks] == list(range(len(blocks)))


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="whole multiple of the chunk"):
        GridSpec(100, 100, core=96, halo=0, chunk=64)
    with pytest.raises(ValueError, match="multiple of the stride"):
        GridSpec(100, 100, core=64, halo=20, chunk=64)
    with pytest.raises(ValueError, match="at least one pixel"):
        GridSpec(0, 100, core=64, halo=0, chunk=64)


def test_window_expand_clips_and_relative_slices() -> None:
    w = Window(10, 20, 5, 6).expand(15, 100, 30)
    assert w == Window(0, 5, 30, 25)
    assert Window(10, 20, 5, 6).relative_to(w) == (slice(10, 15), slice(15, 21))
