"""The value types a run passes between its stages: the plan every block reads, and what a block did.

Below tiling and outputs, which both read them; small and picklable, so blocks run in other
processes or on other machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fcn.checkpoint import ModelCard
from pipeline.grid import (
    Block,
    GridSpec,
    compute_factor,
    plan_blocks,
    plan_strips,
    strip_compute_factor,
    tile_count,
)
from pipeline.raster import RasterInfo
from pipeline.settings import SegmentSettings, Strategy
from pipeline.storage import Location


def plan_units(grid: GridSpec, strategy: Strategy) -> list[Block]:
    """The units of work (and of resume): blocks of tiles, or strips to stream."""
    return plan_strips(grid) if strategy == "stream" else plan_blocks(grid)


def auto_choice(predicted: dict[str, float]) -> str:
    """``--strategy auto``'s predicted costs and its choice, in words."""
    costs = ", ".join(f"{name} {cost:.3f}" for name, cost in predicted.items())
    return f"--strategy auto predicted {costs} and chose {min(predicted, key=lambda k: predicted[k])}"


@dataclass(frozen=True)
class Plan:
    """Everything a block needs, small and picklable."""

    input: RasterInfo
    output: Location  # checked once, when planned
    weights: str
    weights_sha256: str
    card: ModelCard
    grid: GridSpec
    settings: SegmentSettings
    todo: tuple[int, ...]
    warnings: tuple[str, ...] = field(default=())
    peak_mib: float | None = None  # predicted peak memory of one batch
    budget_mib: float | None = None
    complete: bool = False  # the output is already a complete mosaic of this plan: nothing to do
    predicted: dict[str, float] = field(default_factory=dict)  # --strategy auto: each one's cost

    @property
    def streamed(self) -> bool:
        """Whether the blocks are column strips streamed through the network."""
        return self.settings.strategy == "stream"

    @property
    def compute_factor(self) -> float:
        """Network pixels fed over scene pixels (``compute_factor`` or ``strip_compute_factor``)."""
        return strip_compute_factor(self.grid) if self.streamed else compute_factor(self.grid)

    def summary(self) -> dict[str, Any]:
        """The plan's figures, for the dry run's output and the run's report."""
        return {
            "strategy": self.settings.strategy,
            "tiles": len(self.blocks) if self.streamed else tile_count(self.grid),  # a strip is one
            "blocks": len(self.blocks),
            "blocks_to_do": len(self.todo),
            "tile_size": self.grid.core,
            "halo": self.grid.halo,
            "batch_size": self.settings.batch_size,
            "compute_factor": round(self.compute_factor, 4),
            "peak_memory_gib": None if self.peak_mib is None else round(self.peak_mib / 1024, 2),
            "memory_budget_gib": None if self.budget_mib is None else round(self.budget_mib / 1024, 2),
            "predicted_cost": dict(self.predicted),
        }

    @property
    def blocks(self) -> list[Block]:
        """All blocks of the grid, or its strips (recomputed: cheap, and keeps the plan small)."""
        return plan_units(self.grid, self.settings.strategy)


@dataclass(frozen=True)
class BlockReport:
    """What one block did."""

    index: int
    tiles: int
    skipped: int
    pixels: int
    seconds: float
    layout: str = ""
