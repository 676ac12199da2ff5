"""What the engine will do with a plan's tiles, worked out without running it (shared by the benchmarks)."""

from __future__ import annotations

from pipeline.grid import Tile
from pipeline.plan import Plan
from pipeline.tiling.engine import geometry


def engine_batches(plan: Plan) -> list[list[Tile]]:
    """The batches ``Engine.run`` forms: a block's tiles ordered by geometry, batched while it is the same.

    Assumes no tile is skipped as nodata (true of the synthetic scenes).
    """
    batches: list[list[Tile]] = []
    size = plan.settings.batch_size
    for block in plan.blocks:
        batch: list[Tile] = []
        for tile in sorted(block.tiles, key=geometry):
            if batch and (len(batch) == size or geometry(tile) != geometry(batch[0])):
                batches.append(batch)
                batch = []
            batch.append(tile)
        batches.append(batch)
    return batches


def largest_batch(plan: Plan) -> int:
    """Input pixels of the largest batch: what sets the engine's peak memory."""
    return max(sum(t.read.height * t.read.width for t in batch) for batch in engine_batches(plan))
