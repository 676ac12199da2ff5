"""Batched inference on one device: prefetched reads, batches of equal shape, reduction on device.

Reads run ahead on a few threads (a bounded queue, so memory is set by the prefetch depth and the
tile size, never by the scene). On CUDA the batch goes through pinned memory with a non-blocking
copy, channels-last and bf16 autocast; softmax, argmax and quantisation happen on the device and
only the core of each tile comes back.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fcn import FcnpipeError, Normalization
from fcn.checkpoint import Head, head_layout
from fcn.inputs import autocast, network_input
from pipeline import stopping
from pipeline.grid import Tile
from pipeline.outputs.mosaic import (
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    head_array,
    label_dtype,
    label_nodata,
)
from pipeline.raster import RasterReader
from pipeline.settings import SegmentSettings

T = TypeVar("T")
R = TypeVar("R")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is cuda, then mps, then cpu; a named device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FcnpipeError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FcnpipeError("--device cuda was asked for but no CUDA GPU is available.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FcnpipeError("--device mps was asked for but MPS is not available.")
    return device


def compute_layout(device: torch.device, bf16: bool) -> str:
    """What decides the exact floating-point result besides the model and the input.

    The same layout gives the same bytes; another thread count, device or library version can
    sum a convolution in another order and change the last bits (README, "Which bytes are
    promised").
    """
    version = f"torch {torch.__version__}"
    if device.type == "cuda":
        cudnn = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        precision = "bf16" if bf16 else "fp32"
        return f"cuda {torch.cuda.get_device_name(device)}, {precision}, {version}, cuDNN {cudnn}"
    isa = torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    plural = "s" if threads != 1 else ""
    return f"{device.type} {platform.machine()} {isa}, {threads} thread{plural}, fp32, {version}"


def prefetch(fn: Callable[[T], R], items: Iterable[T], depth: int, workers: int = 2) -> Iterator[R]:
    """``map(fn, items)`` computed ``depth`` items ahead on threads, results in order."""
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fcnpipe-read") as pool:
        pending: list[Future[R]] = [pool.submit(fn, item) for item in islice(iterator, depth)]
        while pending:
            result = pending.pop(0).result()
            pending.extend(pool.submit(fn, item) for item in islice(iterator, 1))
            yield result


def geometry(tile: Tile) -> tuple[int, ...]:
    """What decides whether two tiles can share a batch: the input shape and the core's place in it."""
    rows, cols = tile.crop()
    return (*tile.read.shape, rows.start, rows.stop, cols.start, cols.stop)


@dataclass
class CoreResult:
    """The outputs for one tile's core (``None`` where not requested); ``skipped`` if all nodata.

    ``labels`` are the first head's; a model with further heads adds theirs in ``head_labels``, by
    the name of their array in the mosaic (``mosaic.head_array``).
    """

    tile: Tile
    labels: NDArray[Any]
    probabilities: NDArray[Any] | None = None
    logits: NDArray[np.floating[Any]] | None = None
    skipped: bool = False
    head_labels: dict[str, NDArray[Any]] = field(default_factory=dict)


@dataclass
class Loaded:
    """A tile read from disk: its pixels (None when the core holds no data) and the core's mask."""

    tile: Tile
    pixels: NDArray[Any] | None
    valid: NDArray[np.bool_]


class Engine:
    """Runs one model over tiles of one raster."""

    def __init__(
        self,
        model: nn.Module,
        normalization: Normalization,
        num_classes: int,
        settings: SegmentSettings,
        heads: tuple[Head, ...] = (),
    ) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.normalization = normalization
        self.num_classes = num_classes
        self.heads = heads or head_layout((), num_classes)
        self.cuda = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast = self.cuda and settings.precision == "bf16"

    @property
    def layout(self) -> str:
        """The engine's layout now (the thread count can change between blocks)."""
        return compute_layout(self.device, self.autocast)

    @torch.inference_mode()
    def logits(self, rgb: torch.Tensor, crop: tuple[slice, slice] | None = None) -> torch.Tensor:
        """Float32 logits (N, C, H, W) for RGB pixels on the 0-255 scale, already on the device.

        ``crop`` keeps only a window of the output, before it is widened to float32.
        """
        x = network_input(rgb, self.normalization, self.device)
        with autocast(self.device, self.settings.precision):
            out: torch.Tensor = self.model(x)
        if crop is not None:
            out = out[:, :, crop[0], crop[1]]
        return out.float()

    def load(self, reader: RasterReader, tile: Tile) -> Loaded:
        """Read a tile's mask, and its pixels unless the core holds no data at all."""
        valid = reader.valid(tile.core)
        pixels = reader.read(tile.read) if valid.any() else None
        return Loaded(tile, pixels, valid)

    def run(self, reader: RasterReader, tiles: Iterable[Tile]) -> Iterator[CoreResult]:
        """Segment ``tiles``, yielding one result per tile's core.

        Tiles of one geometry go side by side (edge tiles of a block otherwise interrupt the
        interior ones), so batches fill up; within a geometry the order is kept.
        """
        ordered = sorted(tiles, key=geometry)
        loaded = prefetch(lambda t: self.load(reader, t), ordered, self.settings.prefetch)
        batch: list[Loaded] = []
        for item in loaded:
            stopping.check("segmenting")
            if item.pixels is None:
                yield self.empty(item)
                continue
            if batch and geometry(item.tile) != geometry(batch[0].tile):
                yield from self.infer(batch)
                batch = []
            batch.append(item)
            if len(batch) == self.settings.batch:
                yield from self.infer(batch)
                batch = []
        if batch:
            yield from self.infer(batch)

    def empty(self, item: Loaded) -> CoreResult:
        """The result for a core with no data: nodata everywhere, no compute."""
        shape, k = item.tile.core.shape, self.num_classes
        outputs = self.settings.outputs
        first, *rest = (np.full(shape, label_nodata(h.classes), label_dtype(h.classes)) for h in self.heads)
        return CoreResult(
            item.tile,
            first,
            self.no_probabilities((k, *shape)) if "probabilities" in outputs else None,
            np.full((k, *shape), np.nan, self.settings.logits_dtype) if "logits" in outputs else None,
            skipped=True,
            head_labels=self.named(rest),
        )

    def named(self, labels: list[NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """The label maps of the heads after the first, by their arrays' names."""
        return {head_array(head): values for head, values in zip(self.heads[1:], labels, strict=True)}

    def no_probabilities(self, shape: tuple[int, ...]) -> NDArray[Any]:
        """Probabilities' nodata: 255 when quantised, NaN as float16."""
        if self.settings.probabilities_dtype == "float16":
            return np.full(shape, np.nan, np.float16)
        return np.full(shape, PROBABILITY_NODATA, np.uint8)

    def infer(self, batch: list[Loaded]) -> Iterator[CoreResult]:
        """Run one batch of tiles of the same geometry and reduce each core on the device."""
        stacked = torch.from_numpy(np.stack([b.pixels for b in batch]))  # type: ignore[misc]
        if self.cuda:
            stacked = stacked.pin_memory()
        logits = self.logits(stacked.to(self.device, non_blocking=True), batch[0].tile.crop())
        yield from self.reduce(batch, logits)

    def reduce(self, batch: list[Loaded], logits: torch.Tensor) -> Iterator[CoreResult]:
        """Labels, probabilities and logits as configured, from float32 logits (N, C, H, W) of the cores.

        Each head takes its labels and its softmax over its own channels.
        """
        labels = [
            logits[:, h.channels].argmax(1).to(torch.int32).cpu().numpy().astype(label_dtype(h.classes))
            for h in self.heads
        ]
        probs = logits_out = None
        if "probabilities" in self.settings.outputs:
            softmax = torch.cat([logits[:, h.channels].softmax(1) for h in self.heads], dim=1)
            if self.settings.probabilities_dtype == "float16":
                probs = softmax.to(torch.float16).cpu().numpy()
            else:
                probs = (softmax * PROBABILITY_SCALE).round().to(torch.uint8).cpu().numpy()
        if "logits" in self.settings.outputs:
            logits_out = logits.to(getattr(torch, self.settings.logits_dtype)).cpu().numpy()
        for i, item in enumerate(batch):
            yield self.masked(item, [head[i] for head in labels], probs[i] if probs is not None else None,
                              logits_out[i] if logits_out is not None else None)  # fmt: skip

    def masked(
        self,
        item: Loaded,
        labels: list[NDArray[Any]],
        probs: NDArray[Any] | None,
        logits: NDArray[np.floating[Any]] | None,
    ) -> CoreResult:
        """Write nodata where the input holds no data; ``labels`` has one map per head."""
        invalid = ~item.valid
        if invalid.any():
            labels = [
                np.where(invalid, label_nodata(h.classes), values).astype(values.dtype)
                for h, values in zip(self.heads, labels, strict=True)
            ]
            if probs is not None:
                probs = np.where(invalid, self.no_probabilities(()), probs).astype(probs.dtype)
            if logits is not None:
                logits = np.where(invalid, np.nan, logits).astype(logits.dtype)
        first, *rest = labels
        return CoreResult(item.tile, first, probs, logits, head_labels=self.named(rest))
