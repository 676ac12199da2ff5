"""A prototype: exact FCN-8s inference in full-width row bands, with no recomputation at all.

Tiles pay for exactness by computing their halo (the compute factor, 1.41 for FCN-8s on an 8192²
scene at the CPU's tile). Streaming does not: the scene goes through the network in bands of full
rows, top to bottom, and every layer keeps only the rows of its input that its next output rows
still need (line buffers: k - 1 rows for a k × k convolution, an odd row for a pool, the rows of a
transposed convolution's output that later input rows still add to). Each output row is computed
once, so the compute factor is 1.0, and memory is set by the width and the band, not the height.

Each layer of FCN-8s becomes a row operator with the same weights:

- a convolution pads its first band's top and its last band's bottom with the zero rows it would
  pad the whole image with, runs unpadded vertically (padded horizontally), and keeps k - 1 rows;
- a ceil-mode 2 × 2 pool pools pairs of rows and keeps an odd row until the next band (or pools it
  alone at the end, as ceil mode does);
- a transposed convolution adds each band's contribution into an accumulator and releases the
  output rows no later input row can reach;
- the reference's crops skip their offset in rows once and cut columns per band; a sum releases
  the rows both of its inputs have.

It measures, on one scene: the whole-image pass (the reference, where it fits), the streamed pass
and fcnpipe's tiled path at ``--tile-size auto`` (``--tile`` to force one): seconds, peak memory
added (VmHWM, as ``fcn.memory``), compute factor, and the largest |Δ logit| over the logit range
and labels differing from the reference. Random weights (He-initialised, score layers included).

    uv run python bench/streaming.py --height 2048 --width 2048
    uv run python bench/streaming.py --height 4096 --width 2048 --band 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
import zarr
from memory import draw_windows
from torch import nn

from fcn import FCN, build_model, save_checkpoint
from fcn.checkpoint import describe
from fcn.fcn import CROP_8S, CROP_POOL3, CROP_POOL4
from fcn.memory import added_peak_mib
from pipeline.tiling.segment import SegmentSettings, plan_scene, run_local

Rows = torch.Tensor  # (N, C, rows, W): a band of rows


def rows_of(x: Rows) -> int:
    return int(x.shape[-2])


class Conv:
    """A stride-1 convolution over a stream of rows: zero rows at both ends, k - 1 rows kept."""

    def __init__(self, layer: nn.Conv2d) -> None:
        self.layer = layer
        self.k = int(layer.kernel_size[0])
        self.pad = int(layer.padding[0])  # type: ignore[index]
        self.buffer: Rows | None = None
        self.started = False

    def push(self, x: Rows, final: bool) -> Rows:
        parts = [] if self.buffer is None else [self.buffer]
        if not self.started:
            parts.append(x.new_zeros(*x.shape[:2], self.pad, x.shape[-1]))
            self.started = True
        parts.append(x)
        if final:
            parts.append(x.new_zeros(*x.shape[:2], self.pad, x.shape[-1]))
        buffer = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        ready = rows_of(buffer) - self.k + 1
        if ready <= 0:
            self.buffer = buffer
            width = x.shape[-1] + 2 * self.pad - self.k + 1
            return x.new_zeros(x.shape[0], self.layer.out_channels, 0, width)
        out = F.conv2d(buffer, self.layer.weight, self.layer.bias, padding=(0, self.pad))
        self.buffer = buffer[:, :, ready:]
        return out


class Pool:
    """A ceil-mode 2 x 2 max pool over a stream of rows: pairs of rows, the odd one kept."""

    def __init__(self) -> None:
        self.buffer: Rows | None = None

    def push(self, x: Rows, final: bool) -> Rows:
        buffer = x if self.buffer is None else torch.cat([self.buffer, x], dim=2)
        take = rows_of(buffer) if final else rows_of(buffer) // 2 * 2
        self.buffer = buffer[:, :, take:]
        if take == 0:
            return x.new_zeros(*x.shape[:2], 0, -(-x.shape[-1] // 2))
        return F.max_pool2d(buffer[:, :, :take], 2, 2, ceil_mode=True)


class Up:
    """A transposed convolution (kernel k, stride s) over a stream: rows released once complete."""

    def __init__(self, layer: nn.ConvTranspose2d) -> None:
        self.layer = layer
        self.s = int(layer.stride[0])
        self.acc: Rows | None = None  # output rows from self.start on, still open to additions
        self.start = 0  # global index of acc's first row
        self.inputs = 0  # input rows seen

    def push(self, x: Rows, final: bool) -> Rows:
        if rows_of(x):
            y = F.conv_transpose2d(x, self.layer.weight, stride=self.layer.stride)
            offset = self.s * self.inputs - self.start  # where y's first row lands in acc
            if self.acc is None:
                self.acc, offset = y, 0
                self.start = self.s * self.inputs
            else:
                grow = offset + rows_of(y) - rows_of(self.acc)
                if grow > 0:
                    tail = self.acc.new_zeros(*self.acc.shape[:2], grow, self.acc.shape[-1])
                    self.acc = torch.cat([self.acc, tail], 2)
                self.acc[:, :, offset : offset + rows_of(y)] += y
            self.inputs += rows_of(x)
        if self.acc is None:
            k = int(self.layer.kernel_size[0])
            return x.new_zeros(*x.shape[:2], 0, (x.shape[-1] - 1) * self.s + k)
        done = rows_of(self.acc) if final else max(self.s * self.inputs - self.start, 0)
        out, self.acc = self.acc[:, :, :done], self.acc[:, :, done:]
        self.start += done
        return out


class Crop:
    """The reference's crop: ``offset`` rows skipped once, at most ``height`` rows, columns cut per band."""

    def __init__(self, offset: int, height: int, width: int) -> None:
        self.offset, self.height, self.width = offset, height, width
        self.skip, self.emitted = offset, 0

    def push(self, x: Rows) -> Rows:
        drop = min(self.skip, rows_of(x))
        self.skip -= drop
        keep = min(rows_of(x) - drop, self.height - self.emitted)
        self.emitted += keep
        return x[:, :, drop : drop + keep, self.offset : self.offset + self.width]


class Sum:
    """The sum of two row streams: the rows both have are released."""

    def __init__(self) -> None:
        self.a: list[Rows] = []
        self.b: list[Rows] = []

    def push(self, a: Rows, b: Rows) -> Rows:
        self.a.append(a)
        self.b.append(b)
        left, right = torch.cat(self.a, 2), torch.cat(self.b, 2)
        n = min(rows_of(left), rows_of(right))
        self.a, self.b = [left[:, :, n:]], [right[:, :, n:]]
        return left[:, :, :n] + right[:, :, :n]


class StreamingFCN8s:
    """FCN-8s as row operators, fed band by band; yields the logits' rows in order."""

    def __init__(self, model: FCN, height: int, width: int) -> None:
        shapes = tensor_shapes(model, height, width)
        self.trunk: list[tuple[str, Callable[[Rows, bool], Rows]]] = []
        pools = 0
        for layer in model.features:
            if isinstance(layer, nn.Conv2d):
                self.trunk.append(("conv", Conv(layer).push))
            elif isinstance(layer, nn.MaxPool2d):
                pools += 1
                self.trunk.append((f"pool{pools}", Pool().push))
            else:
                self.trunk.append(("relu", lambda x, final: F.relu(x)))
        self.fc6, self.fc7, self.score_fr = Conv(model.fc6), Conv(model.fc7), Conv(model.score_fr)
        self.score_pool4, self.score_pool3 = Conv(model.score_pool4), Conv(model.score_pool3)
        self.up2, self.up4, self.up8 = Up(model.upscore2), Up(model.upscore_pool4), Up(model.upscore8)
        up2_h, up2_w = shapes["upscore2"]
        up4_h, up4_w = shapes["upscore_pool4"]
        self.crop4 = Crop(CROP_POOL4, up2_h, up2_w)
        self.crop3 = Crop(CROP_POOL3, up4_h, up4_w)
        self.crop8 = Crop(CROP_8S, height, width)
        self.sum4, self.sum3 = Sum(), Sum()

    @torch.inference_mode()
    def push(self, x: Rows, final: bool) -> Rows:
        taps = {}
        for name, op in self.trunk:
            x = op(x, final)
            taps[name] = x
        h = F.relu(self.fc6.push(x, final))
        h = F.relu(self.fc7.push(h, final))
        h = self.up2.push(self.score_fr.push(h, final), final)
        h = self.sum4.push(h, self.crop4.push(self.score_pool4.push(taps["pool4"], final)))
        h = self.up4.push(h, final)
        h = self.sum3.push(h, self.crop3.push(self.score_pool3.push(taps["pool3"], final)))
        return self.crop8.push(self.up8.push(h, final))


def tensor_shapes(model: FCN, height: int, width: int) -> dict[str, tuple[int, int]]:
    """Heights and widths of the upsampled tensors for the whole image, from a pass on the meta device."""
    shapes: dict[str, tuple[int, int]] = {}
    meta = build_model("fcn8s", model.num_classes).to("meta").eval()
    for name in ("upscore2", "upscore_pool4"):
        getattr(meta, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[-2:]))
        )
    with torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"))
    return shapes


def stream(model: FCN, image: torch.Tensor, band: int) -> torch.Tensor:
    """Logits of a normalised (1, 3, H, W) image, pushed through in bands of ``band`` rows."""
    height, width = image.shape[-2:]
    net = StreamingFCN8s(model, height, width)
    out = []
    for row in range(0, height, band):
        out.append(net.push(image[:, :, row : row + band], final=row + band >= height))
    return torch.cat(out, dim=2)


def random_fcn8s(classes: int) -> FCN:
    model = build_model("fcn8s", classes)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() == 4:
                nn.init.kaiming_normal_(p, nonlinearity="relu")
    assert isinstance(model, FCN)
    return model.eval()


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    box: list[object] = []
    start = time.perf_counter()
    peak = added_peak_mib(lambda: box.append(fn()), torch.device("cpu"))
    return box[0], time.perf_counter() - start, peak


def compare(reference: np.ndarray, other: np.ndarray) -> str:
    span = float(reference.max() - reference.min())
    worst = float(np.abs(reference - other).max()) / span
    differ = float((reference.argmax(0) != other.argmax(0)).mean())
    return f"max |Δ| / range {worst:.1e}, labels differing {differ:.3%}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--band", type=int, default=256, help="input rows per band")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--tile", type=int, default=None, help="fcnpipe's tile (default: auto)")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-image pass")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = random_fcn8s(args.classes)
    windows = draw_windows(min(2048, max(args.height, args.width)), count=2)
    tile = windows[0][:, : args.height, : args.width]
    reps = (1, -(-args.height // tile.shape[1]), -(-args.width // tile.shape[2]))
    image_np = np.ascontiguousarray(np.tile(tile, reps)[:, : args.height, : args.width])
    card = describe(model, "fcn8s")
    x = card.normalization.apply(torch.from_numpy(image_np)[None])
    mpx = args.height * args.width / 1e6
    print(f"FCN-8s ({args.classes} classes, random weights), {args.height} x {args.width} px, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    reference = None
    if not args.no_whole:
        with torch.inference_mode():
            whole, seconds, peak = timed(lambda: model(x)[0].numpy())
        reference = whole
        print(f"whole image: {seconds:.1f} s ({mpx / seconds:.3f} Mpx/s), peak +{peak:.0f} MiB, factor 1.00")
    streamed, seconds, peak = timed(lambda: stream(model, x, args.band)[0].numpy())
    versus = f"; {compare(reference, streamed)}" if reference is not None else ""  # type: ignore[arg-type]
    print(f"streamed, bands of {args.band} rows: {seconds:.1f} s ({mpx / seconds:.3f} Mpx/s), "
          f"peak +{peak:.0f} MiB, factor 1.00{versus}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scene = folder / "scene.tif"
        with rasterio.open(scene, "w", driver="GTiff", height=args.height, width=args.width, count=3,
                           dtype="uint8", tiled=True, blockxsize=512, blockysize=512) as dst:  # fmt: skip
            dst.write(image_np)
        weights = folder / "fcn8s.pt"
        save_checkpoint(weights, model, card)
        settings = SegmentSettings(tile_size=args.tile, device="cpu", outputs=("labels", "logits"),
                                   logits_dtype="float32")  # fmt: skip
        plan = plan_scene(scene, weights, settings, output=folder / "tiled.zarr")
        _, seconds, peak = timed(lambda: run_local(plan))
        tiled = np.asarray(zarr.open_group(str(folder / "tiled.zarr"), mode="r")["logits"][:])
        if reference is not None:
            versus = f"; {compare(reference, tiled)}"
        else:
            versus = f"; against streamed: {compare(tiled, streamed)}"  # type: ignore[arg-type]
        print(f"fcnpipe tiled, tile {plan.grid.core}, halo {plan.grid.halo}: {seconds:.1f} s "
              f"({mpx / seconds:.3f} Mpx/s, reads and Zarr writes included), peak +{peak:.0f} MiB, "
              f"factor {plan.compute_factor:.2f}{versus}")  # fmt: skip


if __name__ == "__main__":
    main()
