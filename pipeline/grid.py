"""The tiling plan: pure functions over integer pixel windows. No I/O.

An image of ``height x width`` is cut into output **cores**: squares of ``core`` pixels on a grid
anchored at (0, 0), clipped at the right and bottom edges. ``core`` is a whole multiple of the
output chunk, so a core's pixels fill whole chunks and no two cores share a chunk. Each core is
read with a **halo** on every side, clipped at the image edge:

    tiles = ceil(height / core) * ceil(width / core)

Tile origins are core origins minus the halo (or 0), and both are multiples of the network's total
stride, so every tile sees the pooling grid the whole image would. With a halo at least as wide as
the receptive field, the core of a tile's output equals the same pixels of a whole-image pass.
Cores are grouped into **blocks** of ``block x block`` cores: the unit of work and of resume.

A network whose output lacks ``margin`` pixels of its input on each side (unpadded convolutions)
sees the whole image mirrored by ``margin`` past its edges (``fcn.margin``). Its tiles' reads
reach up to ``margin`` past the image (the reader mirrors them), their origins lie ``margin``
before a multiple of the stride, as the mirrored image's does, and the network's output covers
the read shrunk by ``margin``: ``halo`` is then ``margin`` plus a multiple of the stride.

A streamed run (``fcn.streaming``) cuts the image into column **strips** instead: cores ``core``
wide and the image high, each read with the halo across only and streamed top to bottom, one
strip per block (:func:`plan_strips`). Its compute factor is that of the strips' columns alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Window:
    """A rectangle of pixels: rows ``[row, row + height)``, columns ``[col, col + width)``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices that take this window out of a full-image array."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def relative_to(self, outer: Window) -> tuple[slice, slice]:
        """Slices that take this window out of an array covering ``outer``."""
        r, c = self.row - outer.row, self.col - outer.col
        return slice(r, r + self.height), slice(c, c + self.width)

    def shrink(self, margin: int) -> Window:
        """Lose ``margin`` on every side."""
        return Window(self.row + margin, self.col + margin, self.height - 2 * margin, self.width - 2 * margin)

    def expand(self, margin: int, height: int, width: int, border: int = 0) -> Window:
        """Grow by ``margin`` on every side, clipped to an image of ``height x width`` grown by ``border``."""
        r0, c0 = max(-border, self.row - margin), max(-border, self.col - margin)
        r1 = min(height + border, self.row + self.height + margin)
        c1 = min(width + border, self.col + self.width + margin)
        return Window(r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True)
class Tile:
    """One network input: the ``read`` window and the ``core`` of its output that is kept.

    The output covers ``read`` shrunk by ``margin`` on every side (0 for same-size networks).
    """

    core: Window
    read: Window
    margin: int = 0

    def crop(self) -> tuple[slice, slice]:
        """Slices that take the core out of the tile's output."""
        return self.core.relative_to(self.read.shrink(self.margin))


@dataclass(frozen=True)
class Block:
    """A group of neighbouring cores processed and recorded together."""

    index: int
    tiles: tuple[Tile, ...]

    @property
    def bounds(self) -> Window:
        """The window covering all of the block's cores."""
        r0 = min(t.core.row for t in self.tiles)
        c0 = min(t.core.col for t in self.tiles)
        r1 = max(t.core.row + t.core.height for t in self.tiles)
        c1 = max(t.core.col + t.core.width for t in self.tiles)
        return Window(r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True)
class GridSpec:
    """The numbers a plan is made from, checked for consistency."""

    height: int
    width: int
    core: int
    halo: int
    chunk: int
    stride: int = 32
    block: int = 4
    margin: int = 0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"an image must have at least one pixel, not {self.height}x{self.width}")
        if self.chunk < 1 or self.core % self.chunk:
            raise ValueError(f"the core ({self.core}) must be a whole multiple of the chunk ({self.chunk})")
        if self.core % self.stride or (self.halo - self.margin) % self.stride or self.halo < self.margin:
            raise ValueError(
                f"the core ({self.core}) must be a multiple of the stride ({self.stride}) and the halo "
                f"({self.halo}) the margin ({self.margin}) plus one"
            )
        if self.block < 1:
            raise ValueError(f"a block holds at least one core, not {self.block}")


def plan_tiles(spec: GridSpec) -> list[Tile]:
    """All tiles of the grid, row-major."""
    tiles = []
    for row in range(0, spec.height, spec.core):
        for col in range(0, spec.width, spec.core):
            core = Window(row, col, min(spec.core, spec.height - row), min(spec.core, spec.width - col))
            read = core.expand(spec.halo, spec.height, spec.width, border=spec.margin)
            tiles.append(Tile(core, read, spec.margin))
    return tiles


def tile_count(spec: GridSpec) -> int:
    """Number of tiles, without planning them."""
    return math.ceil(spec.height / spec.core) * math.ceil(spec.width / spec.core)


def plan_blocks(spec: GridSpec) -> list[Block]:
    """Group the tiles into blocks of ``block x block`` neighbouring cores, row-major."""
    cols = math.ceil(spec.width / spec.core)
    groups: dict[tuple[int, int], list[Tile]] = {}
    for i, tile in enumerate(plan_tiles(spec)):
        r, c = divmod(i, cols)
        groups.setdefault((r // spec.block, c // spec.block), []).append(tile)
    return [Block(index, tuple(tiles)) for index, (_, tiles) in enumerate(sorted(groups.items()))]


def chunks_of(window: Window, chunk: int) -> list[tuple[int, int]]:
    """Chunk-grid coordinates (row, col) that ``window`` touches."""
    return [
        (r, c)
        for r in range(window.row // chunk, (window.row + window.height - 1) // chunk + 1)
        for c in range(window.col // chunk, (window.col + window.width - 1) // chunk + 1)
    ]


def read_spans(size: int, core: int, halo: int, margin: int = 0) -> list[int]:
    """Lengths of the tiles' reads along one axis of ``size`` pixels (as :func:`plan_tiles` cuts it)."""
    return [
        min(size + margin, start + core + halo) - max(-margin, start - halo) for start in range(0, size, core)
    ]


def compute_factor(spec: GridSpec) -> float:
    """Pixels fed to the network over pixels of the scene: what exactness costs in compute.

    Every tile's read (its core, its halo, and for a network with a margin the mirrored border)
    goes through the network. Reads are separable (a tile's read is its row span by its column
    span), so the sum over tiles is the product of the sums along each axis. 1.0 is one
    whole-image pass of a same-size network.
    """
    rows = read_spans(spec.height, spec.core, spec.halo, spec.margin)
    cols = read_spans(spec.width, spec.core, spec.halo, spec.margin)
    return sum(rows) * sum(cols) / (spec.height * spec.width)


def plan_strips(spec: GridSpec) -> list[Block]:
    """Column strips ``core`` wide and the image high, one block of one tile each: a streamed run's units.

    A strip is read across its core plus the halo on either side (clipped at the image's edge) and
    streamed top to bottom, so it needs no halo vertically: its read has the image's rows (and, for
    a network with a margin, ``margin`` mirrored rows above and below, as a tile's read has them).
    """
    strips = []
    for index, col in enumerate(range(0, spec.width, spec.core)):
        core = Window(0, col, spec.height, min(spec.core, spec.width - col))
        read = core.expand(spec.halo, spec.height, spec.width, border=spec.margin)
        strips.append(Block(index, (Tile(core, read, spec.margin),)))
    return strips


def strip_from(strip: Tile, row: int, spec: GridSpec) -> Tile:
    """The rest of ``strip`` from image row ``row`` on: what a strip resumed below its top streams.

    Its read starts ``halo`` above the row of the pooling grid at or above ``row``, as the read of a
    tile whose core began there would, so every row it keeps is the whole strip's (exact, as
    tiles are); the rows between that grid row and ``row`` are computed again and not kept.
    """
    top = row // spec.stride * spec.stride
    below = Window(top, strip.core.col, spec.height - top, strip.core.width)
    read = below.expand(spec.halo, spec.height, spec.width, border=spec.margin)
    return Tile(Window(row, strip.core.col, spec.height - row, strip.core.width), read, spec.margin)


def chunk_rows(strip: Tile, chunk: int) -> list[Tile]:
    """A strip's rows of chunks, each with the same rows of the strip's read: what a stream writes at once."""
    m, bottom = strip.margin, strip.core.row + strip.core.height
    return [
        Tile(Window(r, strip.core.col, min(chunk, bottom - r), strip.core.width),
             Window(r - m, strip.read.col, min(chunk, bottom - r) + 2 * m, strip.read.width), m)
        for r in range(strip.core.row, bottom, chunk)
    ]  # fmt: skip


def strip_compute_factor(spec: GridSpec) -> float:
    """Pixels fed to the network over pixels of the scene when :func:`plan_strips` streams it.

    Every strip feeds its read columns over the image's full height once, so only the horizontal
    halo is paid: ``sum of the strips' read widths / width``, about ``(core + 2 * halo) / core``
    for interior strips and 1.0 for a scene one strip wide (a network with a margin also reads its
    mirrored rows and columns).
    """
    rows = spec.height + 2 * spec.margin
    return rows * sum(read_spans(spec.width, spec.core, spec.halo, spec.margin)) / (spec.height * spec.width)


def largest_read(spec: GridSpec) -> tuple[int, int]:
    """(height, width) of the largest read of the grid: what sets one tile's memory."""
    rows = read_spans(spec.height, spec.core, spec.halo, spec.margin)
    cols = read_spans(spec.width, spec.core, spec.halo, spec.margin)
    return max(rows), max(cols)


def windows(height: int, width: int, size: int) -> list[Window]:
    """The ``size`` × ``size`` windows (clipped at the edge) that tile a ``height`` × ``width`` image."""
    return [
        Window(r, c, min(size, height - r), min(size, width - c))
        for r in range(0, height, size)
        for c in range(0, width, size)
    ]
