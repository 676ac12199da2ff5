"""Exact streaming inference: any registered network fed in bands of rows, each output row computed once.

A tile pays for exactness by computing its halo; a stream does not need one vertically. The input
goes through the network in bands of whole rows, and every layer keeps only the rows of its input
that its next output rows still need (line buffers). The network is not rewritten by hand: its own
``forward`` is run once on a shape-only ("meta") input of the whole image's size, and every torch
operation it calls is recorded with its arguments (:func:`trace`); control flow that depends on sizes
(padding to the stride, crops) sees the whole image's sizes, so it takes the branch a whole-image
pass takes. Each recorded operation then becomes a row operator:

- **windowed** (convolutions and max pools of any kernel, stride, dilation, padding and ceil mode):
  output row ``o`` reads padded input rows ``o * s`` to ``o * s + d * (k - 1)``; the padding rows
  (zeros, or ``-inf`` for a pool) are added at the two ends of the stream, and each push runs the
  operation unpadded vertically on the rows that complete output rows, keeping the rest. A pool's
  switches (``return_indices``) are made whole-image indices;
- **transposed convolutions** add each band's contribution into an accumulator and release the
  output rows no later input row reaches (summed in float32, as one pass's kernel does);
- **upsampling** (``interpolate``, bilinear or nearest, by an integer factor) computes output rows
  from the input rows around them, with the image's edge clamping only at the image's edges;
- **unpooling** to recorded switches places a band of values by its band of switches;
- **pointwise** operations (activations, batch norm in eval mode, dropout in eval mode, scaling)
  run on the band; operations of two streams (sums, concatenations, products) release the rows
  both have; **crops and pads** skip or add rows once and cut or pad columns on every band.

An operation outside these is refused by name when the stream is built: nothing silently
approximates. The logits come out in order, row for row those of one pass over the whole input (up
to the summation order of the floating-point kernels), with memory set by the width and the band,
never by the height. Tensors only: the caller reads, normalises and writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fcn.registry import build_model, segmentation_net

Ref = tuple[int, int]  # (node, output index): one stream of bands
INPUT: Ref = (-1, 0)


def rows_of(x: torch.Tensor) -> int:
    """Rows of a band (N, C, rows, W)."""
    return int(x.shape[-2])


# --- tracing: the network's own forward, on a meta input of the whole image's size --------------


@dataclass
class Node:
    """One recorded operation: ``func(*args, **kwargs)`` with streams in place of traced tensors."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shapes: list[torch.Size]  # each output's whole-image shape
    inputs: list[Ref] = field(default_factory=list)  # the streams it reads, in argument order
    in_shapes: list[torch.Size] = field(default_factory=list)  # their whole-image shapes


class Traced(torch.Tensor):
    """A meta tensor of the whole image's size that records what is done to it."""

    ref: Ref
    recording: list[Node]

    @classmethod
    def __torch_function__(
        cls, func: Callable[..., Any], types: Any, args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        kwargs = kwargs or {}
        traced = [t for t in leaves((args, kwargs)) if isinstance(t, Traced)]
        recording = traced[0].recording
        name = getattr(func, "__name__", "")
        if name == "__setitem__":
            raise NotStreamable("writing into a tensor (x[...] = y) does not stream")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*map_leaves(args, as_meta), **map_leaves(kwargs, as_meta))
        outputs = list(out) if isinstance(out, tuple) else [out]
        if not any(isinstance(o, torch.Tensor) for o in outputs):
            return out  # a size, a dtype, a number: not part of the stream
        if not all(isinstance(o, torch.Tensor) for o in outputs):
            raise NotStreamable(f"{name_of(func)} returns tensors mixed with other values")
        node = Node(func, map_leaves(args, ref_of), map_leaves(kwargs, ref_of), [o.shape for o in outputs])
        node.inputs = [t.ref for t in traced]
        recording.append(node)
        wrapped = []
        for index, o in enumerate(outputs):
            t = o.as_subclass(Traced)
            t.ref, t.recording = (len(recording) - 1, index), recording
            wrapped.append(t)
        mutated = args[0] if args else None
        if isinstance(mutated, Traced) and (kwargs.get("inplace") is True or in_place(name)):
            mutated.ref = wrapped[0].ref  # later uses of the tensor read the changed values
        return tuple(wrapped) if isinstance(out, tuple) else wrapped[0]


def in_place(name: str) -> bool:
    """Whether a tensor method of this name changes its tensor (``relu_``, ``add_``), as torch names them."""
    return name.endswith("_") and not name.startswith("_")


class NotStreamable(ValueError):
    """The network uses an operation that has no row operator."""


def leaves(value: Any) -> list[Any]:
    """The non-container values inside nested tuples, lists and dicts."""
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    return [value]


def map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with ``fn`` applied to every non-container value (container types kept)."""
    if isinstance(value, tuple | list):
        return type(value)(map_leaves(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_leaves(v, fn) for k, v in value.items()}
    return fn(value)


@dataclass(frozen=True)
class StreamRef:
    """A recorded argument that is a stream (a traced tensor), not a constant."""

    ref: Ref


def as_meta(value: Any) -> Any:
    """A tensor argument as a plain meta tensor of its shape (weights are never copied)."""
    if isinstance(value, Traced):
        with torch._C.DisableTorchFunctionSubclass():
            return value.as_subclass(torch.Tensor)
    if isinstance(value, torch.Tensor) and value.device.type != "meta":
        return value.to("meta")
    return value


def ref_of(value: Any) -> Any:
    """A traced tensor recorded as its stream; anything else as itself."""
    return StreamRef(value.ref) if isinstance(value, Traced) else value


def name_of(func: Callable[..., Any]) -> str:
    """An operation's name for a sentence (``conv2d``, ``Tensor.__getitem__``)."""
    owner = getattr(func, "__objclass__", None)
    name = getattr(func, "__name__", repr(func))
    return f"Tensor.{name}" if owner is torch.Tensor else name


@dataclass
class Program:
    """A network's forward as recorded nodes, and where its outputs come from."""

    nodes: list[Node]
    outputs: list[Ref]
    input_shape: torch.Size


class RealConstants(TorchFunctionMode):
    """Constants a forward makes on its input's device are made on the model's device instead.

    ``torch.tensor(mean, device=x.device)`` would otherwise be made on ``meta``, where the traced
    input lives, and have no values to stream with.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        kwargs = dict(kwargs or {})
        if func in FACTORIES and torch.device(kwargs.get("device") or "cpu").type == "meta":
            kwargs["device"] = self.device
        return func(*args, **kwargs)


FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.arange, torch.empty}


def trace(model: nn.Module, shape: tuple[int, ...]) -> Program:
    """Record ``model``'s forward on a meta input of ``shape`` (N, C, H, W)."""
    recording: list[Node] = []
    x = torch.empty(shape, device="meta").as_subclass(Traced)
    x.ref, x.recording = INPUT, recording
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode(False), torch.no_grad(), RealConstants(device):
        out = model(x)
    outputs = out if isinstance(out, list | tuple) else [out]
    if not all(isinstance(o, Traced) for o in outputs):
        raise NotStreamable("the network returns something other than tensors computed from its input")
    return Program(recording, [o.ref for o in outputs], torch.Size(shape))


# --- row operators -------------------------------------------------------------------------------


class RowOp:
    """A layer over streams of bands: the new rows of each input in, the output rows now complete out."""

    def push(self, inputs: list[torch.Tensor], final: bool) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Take each input stream's next rows (``final``: the last push) and return completed rows."""
        raise NotImplementedError


def scalar_or_pair(value: Any) -> tuple[int, int]:
    """A layer's ``int | (int, int)`` argument as a pair."""
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def argument(node: Node, index: int, name: str, default: Any) -> Any:
    """A recorded call's argument by position or name."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class Windowed(RowOp):
    """A strided, dilated window over rows (convolution or max pool), run unpadded vertically.

    Padded rows are numbered from 0 (the first of ``pad`` fill rows above the image); output row
    ``o`` reads padded rows ``o * stride`` to ``o * stride + extent - 1``.
    """

    def __init__(self, run: Callable[[torch.Tensor], Any], node: Node, *, extent: int, stride: int, pad: int,
                 fill: float) -> None:  # fmt: skip
        self.run, self.extent, self.stride, self.pad, self.fill = run, extent, stride, pad, fill
        self.out_shape = node.shapes[0]
        self.buffer: torch.Tensor | None = None  # padded rows from ``start`` on
        self.start = 0
        self.done = 0  # output rows released

    def fill_rows(self, like: torch.Tensor, rows: int) -> torch.Tensor:
        """``rows`` rows of the padding value, shaped as ``like``'s rows."""
        return like.new_full((*like.shape[:2], rows, like.shape[-1]), self.fill)

    def push(self, inputs: list[torch.Tensor], final: bool) -> Any:
        """The output rows whose window of input rows has arrived."""
        (x,) = inputs
        parts = [self.fill_rows(x, self.pad)] if self.buffer is None else [self.buffer]
        parts.append(x)
        held = self.start + sum(rows_of(p) for p in parts)
        out_rows = int(self.out_shape[-2])
        if final:  # the padding below the image, as far as the last output row reads
            below = max(0, (out_rows - 1) * self.stride + self.extent - held)
            parts.append(self.fill_rows(x, below))
            held += below
        buffer = torch.cat(parts, dim=2)
        ready = min(out_rows, (held - self.extent) // self.stride + 1) if held >= self.extent else 0
        if ready <= self.done:
            self.buffer = buffer
            return self.empty(x)
        first = self.done * self.stride - self.start  # the first output's first row in the buffer
        window = buffer[:, :, first : first + (ready - self.done - 1) * self.stride + self.extent]
        out = self.placed(self.run(window), self.done * self.stride - self.pad)
        self.done = ready
        keep_from = self.done * self.stride - self.start
        self.buffer = buffer[:, :, keep_from:].clone()  # a view would keep the whole band alive
        self.start += keep_from
        return out

    def empty(self, x: torch.Tensor) -> Any:
        """No output rows yet: a band of none, of the output's channels and width."""
        return x.new_zeros(x.shape[0], self.out_shape[1], 0, self.out_shape[-1])

    def placed(self, out: Any, offset: int) -> Any:
        """The operation's output for a window starting at image row ``offset``."""
        return out


class Pool(Windowed):
    """A max pool; with switches, their flat indices shifted to the whole image's rows."""

    def __init__(self, run: Callable[[torch.Tensor], Any], node: Node, *, switches: bool, **kw: Any) -> None:
        super().__init__(run, node, fill=-math.inf, **kw)
        self.switches, self.in_width = switches, int(node.in_shapes[0][-1])

    def empty(self, x: torch.Tensor) -> Any:
        """No rows yet (and no switches)."""
        values = super().empty(x)
        return (values, values.long()) if self.switches else values

    def placed(self, out: Any, offset: int) -> Any:
        """Switches index the whole image's rows (the window's start added)."""
        if not self.switches:
            return out
        values, indices = out
        return values, indices + offset * self.in_width


class Transposed(RowOp):
    """A transposed convolution: rows released once no later input row adds to them.

    Input row ``i`` adds to unpadded output rows ``s * i`` to ``s * i + d * (k - 1)``; output row
    ``o`` is unpadded row ``o + pad``. The rows are summed in float32 (a band's contributions meet
    here; under bf16 autocast a partial sum would otherwise be rounded once more than in one pass).
    """

    def __init__(self, node: Node, out_rows: int) -> None:
        weight, bias = node.args[1], argument(node, 2, "bias", None)
        self.weight, self.bias = weight, bias
        self.stride = scalar_or_pair(argument(node, 3, "stride", 1))
        self.pad = scalar_or_pair(argument(node, 4, "padding", 0))
        self.out_pad = scalar_or_pair(argument(node, 5, "output_padding", 0))
        self.groups = int(argument(node, 6, "groups", 1))
        self.dilation = scalar_or_pair(argument(node, 7, "dilation", 1))
        self.extent = self.dilation[0] * (int(weight.shape[-2]) - 1) + 1
        self.out_shape = node.shapes[0]
        self.out_rows = out_rows
        self.acc: torch.Tensor | None = None  # unpadded rows from ``acc_start`` on
        self.acc_start = 0
        self.seen = 0  # input rows seen
        self.done = 0  # output rows released

    def push(self, inputs: list[torch.Tensor], final: bool) -> torch.Tensor:
        """The output rows that no later input row reaches (all of them after the last push)."""
        (x,) = inputs
        s = self.stride[0]
        if rows_of(x):
            y = F.conv_transpose2d(
                x, self.weight, None, (s, self.stride[1]), (0, self.pad[1]), (0, self.out_pad[1]),
                self.groups, (self.dilation[0], self.dilation[1]),
            ).float()  # fmt: skip
            at = s * self.seen - self.acc_start  # where y's first row lands in acc
            if self.acc is None:
                self.acc = y
            else:
                grow = at + rows_of(y) - rows_of(self.acc)
                if grow > 0:
                    self.acc = F.pad(self.acc, (0, 0, 0, grow))
                self.acc[:, :, at : at + rows_of(y)] += y
            self.seen += rows_of(x)
        if self.acc is None:
            return x.new_zeros(x.shape[0], self.out_shape[1], 0, self.out_shape[-1], dtype=torch.float32)
        reach = self.out_rows if final else min(self.out_rows, s * self.seen - self.pad[0])
        count = reach - self.done
        if count <= 0:
            return self.acc[:, :, :0]
        first = self.done + self.pad[0] - self.acc_start
        need = first + count - rows_of(self.acc)
        if need > 0:  # output padding beyond the last row any input reaches: bias only
            self.acc = F.pad(self.acc, (0, 0, 0, need))
        out = self.acc[:, :, first : first + count]
        if self.bias is not None:
            out = out + self.bias.float()[None, :, None, None]
        self.acc = self.acc[:, :, first + count :].clone()
        self.acc_start += first + count
        self.done = reach
        return out


class Upsample(RowOp):
    """``interpolate`` by an integer factor: each output row from the input rows around it."""

    def __init__(self, node: Node, in_rows: int, out_rows: int) -> None:
        self.node, self.in_rows, self.out_rows = node, in_rows, out_rows
        self.factor = out_rows // in_rows
        self.mode = argument(node, 3, "mode", "nearest")
        if out_rows != self.factor * in_rows or self.mode not in ("nearest", "bilinear"):
            raise NotStreamable(
                f"interpolate streams by an integer factor, bilinear or nearest (got {self.mode})"
            )
        if self.mode == "bilinear" and argument(node, 4, "align_corners", None):
            raise NotStreamable("interpolate with align_corners=True does not stream")
        self.buffer: torch.Tensor | None = None  # input rows from ``start`` on
        self.start = 0
        self.seen = 0
        self.done = 0

    def sources(self, o: int) -> tuple[int, int]:
        """The first and last input rows output row ``o`` reads."""
        u = self.factor
        if self.mode == "nearest":
            i = min(o // u, self.in_rows - 1)
            return i, i
        i0 = math.floor(max(0.0, (o + 0.5) / u - 0.5))
        return i0, min(i0 + 1, self.in_rows - 1)

    def push(self, inputs: list[torch.Tensor], final: bool) -> torch.Tensor:
        """The output rows whose input rows have all arrived."""
        (x,) = inputs
        buffer = x if self.buffer is None else torch.cat([self.buffer, x], dim=2)
        self.seen += rows_of(x)
        ready = self.done
        while ready < self.out_rows and (final or self.sources(ready)[1] < self.seen):
            ready += 1
        width = int(self.node.shapes[0][-1])
        if ready == self.done:
            self.buffer = buffer
            return x.new_zeros(x.shape[0], x.shape[1], 0, width)
        lo, hi = self.sources(self.done)[0], self.sources(ready - 1)[1] + 1
        window = buffer[:, :, lo - self.start : hi - self.start]
        # By size, as the scales then equal the whole-image call's (in / out, an integer's inverse).
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        out = F.interpolate(window, size=(self.factor * (hi - lo), width), mode=self.mode, **kw)
        out = out[:, :, self.done - self.factor * lo : ready - self.factor * lo]
        self.done = ready
        keep = self.sources(ready)[0] if ready < self.out_rows else self.seen
        self.buffer = buffer[:, :, keep - self.start :].clone()
        self.start = keep
        return out


class Unpool(RowOp):
    """``max_unpool2d`` (kernel = stride) of a band of values to its band of whole-image switches."""

    def __init__(self, node: Node, out_shape: torch.Size) -> None:
        kernel = scalar_or_pair(node.args[2] if len(node.args) > 2 else node.kwargs["kernel_size"])
        stride = scalar_or_pair(argument(node, 3, "stride", None) or kernel)
        if kernel != stride or scalar_or_pair(argument(node, 4, "padding", 0)) != (0, 0):
            raise NotStreamable("only unpadded unpooling with kernel = stride streams")
        self.k, self.out_rows, self.out_width = kernel[0], int(out_shape[-2]), int(out_shape[-1])
        self.merge = Aligned(2)
        self.done = 0  # input rows unpooled

    def push(self, inputs: list[torch.Tensor], final: bool) -> torch.Tensor:
        """The output rows of the input rows both values and switches have."""
        values, switches = self.merge.take(inputs)
        rows = rows_of(values)
        top = self.done * self.k
        bottom = min(self.out_rows, (self.done + rows) * self.k)
        self.done += rows
        size = (bottom - top, self.out_width)
        if rows == 0:
            return values.new_zeros(*values.shape[:2], 0, self.out_width)
        k = (self.k, self.k)
        return F.max_unpool2d(values, switches - top * self.out_width, k, k, output_size=size)


class Aligned:
    """Rows of several streams over the same rows, released as all of them have arrived."""

    def __init__(self, count: int) -> None:
        self.held: list[torch.Tensor | None] = [None] * count

    def take(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The rows every stream has delivered so far, in order; the rest kept."""
        held = [x if h is None else torch.cat([h, x], dim=2) for h, x in zip(self.held, inputs, strict=True)]
        n = min(rows_of(h) for h in held)
        self.held = [h[:, :, n:] for h in held]
        return [h[:, :, :n] for h in held]


class Combine(RowOp):
    """An operation of several streams (sum, product, concatenation) and constants, row for row."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.merge = Aligned(len(node.inputs))

    def push(self, inputs: list[torch.Tensor], final: bool) -> Any:
        """The operation on the rows all streams have."""
        rows = iter(self.merge.take(inputs))
        args = map_leaves(self.node.args, lambda v: next(rows) if isinstance(v, StreamRef) else v)
        kwargs = map_leaves(self.node.kwargs, lambda v: next(rows) if isinstance(v, StreamRef) else v)
        return self.node.func(*args, **kwargs)


class Crop(RowOp):
    """Rows ``top`` to ``bottom`` of a stream, with the other dimensions' slices applied to every band."""

    def __init__(self, top: int, bottom: int, rest: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.top, self.bottom, self.rest = top, bottom, rest
        self.seen = 0

    def push(self, inputs: list[torch.Tensor], final: bool) -> torch.Tensor:
        """The rows of the band inside the crop."""
        (x,) = inputs
        first, last = self.seen, self.seen + rows_of(x)
        self.seen = last
        lo, hi = max(first, self.top), min(last, self.bottom)
        return self.rest(x[:, :, max(0, lo - first) : max(0, hi - first)])


class Pad(RowOp):
    """Padding of rows and columns: ``top`` rows before the stream, ``bottom`` after, columns per band.

    Constant padding adds rows of its value; ``replicate`` repeats the first and last rows and
    ``reflect`` mirrors the rows next to them, so the stream holds back its first rows until it has
    those it mirrors, and keeps a copy of its last ones for the end.
    """

    def __init__(self, top: int, bottom: int, columns: tuple[int, int], mode: str, value: float) -> None:
        self.top, self.bottom, self.columns, self.mode, self.value = top, bottom, columns, mode, value
        mirrored = 1 if mode == "reflect" else 0
        self.need_top = 0 if mode == "constant" else min(1, top) + mirrored * top
        self.need_bottom = 0 if mode == "constant" else min(1, bottom) + mirrored * bottom
        self.held: torch.Tensor | None = None  # rows waiting for the top padding
        self.tail: torch.Tensor | None = None  # the last rows, for the bottom padding
        self.started = False

    def edge(self, rows: torch.Tensor, count: int, at_top: bool) -> torch.Tensor:
        """``count`` padding rows beside ``rows`` (the image's first rows, or its last)."""
        if self.mode == "constant":
            return rows.new_full((*rows.shape[:2], count, rows.shape[-1]), self.value)
        if self.mode == "replicate":
            one = rows[:, :, :1] if at_top else rows[:, :, -1:]
            return one.expand(-1, -1, count, -1)
        mirrored = rows[:, :, 1 : count + 1] if at_top else rows[:, :, -count - 1 : -1]
        return mirrored.flip(2)

    def push(self, inputs: list[torch.Tensor], final: bool) -> torch.Tensor:
        """The band padded at its sides, after the top rows (once there) and before the bottom (last)."""
        (x,) = inputs
        if rows_of(x) and any(self.columns):
            mode = "constant" if self.mode == "constant" else self.mode
            kw = {"value": self.value} if mode == "constant" else {}
            x = F.pad(x, (*self.columns, 0, 0), mode=mode, **kw)
        elif any(self.columns):
            x = x.new_zeros(*x.shape[:3], x.shape[-1] + sum(self.columns))
        if self.need_bottom:
            tail = x if self.tail is None else torch.cat([self.tail, x], dim=2)
            self.tail = tail[:, :, -self.need_bottom :].clone()
        parts = []
        if not self.started:
            held = x if self.held is None else torch.cat([self.held, x], dim=2)
            if rows_of(held) < self.need_top and not final:
                self.held = held
                return held[:, :, :0]
            self.started, self.held = True, None
            parts += [self.edge(held, self.top, at_top=True), held] if self.top else [held]
        else:
            parts.append(x)
        if final and self.bottom:
            last = self.tail if self.tail is not None else parts[-1]
            parts.append(self.edge(last, self.bottom, at_top=False))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


class Pointwise(RowOp):
    """An operation on each row alone (an activation, eval batch norm, a scale): run on the band."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def push(self, inputs: list[torch.Tensor], final: bool) -> Any:
        """The operation on the band."""
        (x,) = inputs
        args = map_leaves(self.node.args, lambda v: x if isinstance(v, StreamRef) else v)
        kwargs = map_leaves(self.node.kwargs, lambda v: x if isinstance(v, StreamRef) else v)
        return self.node.func(*args, **kwargs)


# --- which operator each recorded operation becomes ---------------------------------------------

POINTWISE_NAMES = {
    "relu", "relu_", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "hardtanh", "softmax", "log_softmax",
    "batch_norm", "dropout", "dropout2d", "local_response_norm", "contiguous", "float", "to", "clone",
    "__mul__", "__rmul__", "mul", "__truediv__", "div", "__add__", "__radd__", "add", "__sub__", "sub",
    "__neg__", "neg",
}  # fmt: skip
"""Operations that act on each row alone (when given one stream; a second stream makes a combine)."""

OUT_OF_PLACE: dict[str, Callable[..., Any]] = {"relu_": torch.relu, "add_": torch.add, "mul_": torch.mul}
"""In-place operations run out of place: a band may feed several operators."""

COMBINE_NAMES = {"cat", "concat", "__add__", "__radd__", "add", "__mul__", "__rmul__", "mul", "__sub__",
                 "sub"}  # fmt: skip


def operator_for(node: Node) -> RowOp:
    """The row operator of one recorded operation, or :class:`NotStreamable` naming it."""
    name = name_of(node.func).removeprefix("Tensor.")
    shape = node.shapes[0]
    in_shape = node.in_shapes[0] if node.in_shapes else torch.Size()
    if name in ("conv2d", "max_pool2d", "max_pool2d_with_indices"):
        return windowed(node, name)
    if name == "conv_transpose2d":
        return Transposed(node, int(shape[-2]))
    if name == "interpolate":
        return Upsample(node, int(in_shape[-2]), int(shape[-2]))
    if name == "max_unpool2d":
        return Unpool(node, shape)
    if name == "__getitem__":
        return crop(node, in_shape)
    if name == "pad":
        return pad(node)
    if name in ("batch_norm", "dropout", "dropout2d") and argument(node, 5 if name == "batch_norm" else 2,
                                                                  "training", False):  # fmt: skip
        raise NotStreamable(f"{name} in training mode does not stream (put the model in eval mode)")
    if name in ("cat", "concat"):
        dim = argument(node, 1, "dim", 0)
        if dim % 4 == 2:
            raise NotStreamable("a concatenation along rows does not stream")
        return Combine(node)
    if len(node.inputs) > 1 and name in COMBINE_NAMES:
        return Combine(node)
    if name in POINTWISE_NAMES or name in OUT_OF_PLACE:
        if name in ("softmax", "log_softmax") and argument(node, 1, "dim", None) in (2, -2, None):
            raise NotStreamable(f"{name} over rows does not stream")
        if any(isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[-2] > 1 for v in leaves(node.args)):
            raise NotStreamable(f"{name} with a constant that varies along rows does not stream")
        if name in OUT_OF_PLACE:
            node.func = OUT_OF_PLACE[name]
        if name == "relu" and node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        return Pointwise(node)
    raise NotStreamable(f"{name} has no row operator")


def windowed(node: Node, name: str) -> RowOp:
    """A convolution or max pool as a :class:`Windowed` operator."""
    if name == "conv2d":
        weight, bias = node.args[1], argument(node, 2, "bias", None)
        stride = scalar_or_pair(argument(node, 3, "stride", 1))
        padding = argument(node, 4, "padding", 0)
        if isinstance(padding, str):
            raise NotStreamable(f"conv2d with padding={padding!r} does not stream; give numbers")
        padding = scalar_or_pair(padding)
        dilation = scalar_or_pair(argument(node, 5, "dilation", 1))
        groups = int(argument(node, 6, "groups", 1))

        def convolve(x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, weight, bias, (stride[0], stride[1]), (0, padding[1]), dilation, groups)

        extent = dilation[0] * (int(weight.shape[-2]) - 1) + 1
        return Windowed(convolve, node, extent=extent, stride=stride[0], pad=padding[0], fill=0.0)
    kernel = scalar_or_pair(argument(node, 1, "kernel_size", None))
    stride = scalar_or_pair(argument(node, 2, "stride", None) or kernel)
    padding = scalar_or_pair(argument(node, 3, "padding", 0))
    dilation = scalar_or_pair(argument(node, 4, "dilation", 1))
    ceil = bool(argument(node, 5, "ceil_mode", False))
    switches = name == "max_pool2d_with_indices" or bool(argument(node, 6, "return_indices", False))

    def pool(x: torch.Tensor) -> Any:
        run = F.max_pool2d_with_indices if switches else F.max_pool2d
        return run(x, kernel, stride, (0, padding[1]), dilation, ceil_mode=ceil)

    extent = dilation[0] * (kernel[0] - 1) + 1
    return Pool(pool, node, extent=extent, stride=stride[0], pad=padding[0], switches=switches)


def crop(node: Node, in_shape: torch.Size) -> RowOp:
    """``x[...]`` with slices only: the rows' slice as a crop of the stream, the rest per band."""
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    if any(i is not Ellipsis and not isinstance(i, slice) for i in index):
        raise NotStreamable("indexing other than by slices does not stream")
    ndim = len(in_shape)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1 :]
    index = index + (slice(None),) * (ndim - len(index))
    rows = index[ndim - 2]
    top, bottom, step = rows.indices(int(in_shape[-2]))
    if step != 1:
        raise NotStreamable("a strided slice of rows does not stream")
    rest = (*index[: ndim - 2], slice(None), *index[ndim - 1 :])
    return Crop(top, max(top, bottom), lambda x: x[rest])


def pad(node: Node) -> RowOp:
    """``F.pad`` of the last two dimensions: constant, replicate or reflect."""
    widths = list(argument(node, 1, "pad", ()))
    mode = argument(node, 2, "mode", "constant")
    value = argument(node, 3, "value", None) or 0.0
    if mode not in ("constant", "replicate", "reflect") or len(widths) not in (2, 4) or min(widths) < 0:
        raise NotStreamable(f"pad (mode {mode!r}, {widths}) does not stream")
    top, bottom = (widths[2], widths[3]) if len(widths) == 4 else (0, 0)
    return Pad(top, bottom, (widths[0], widths[1]), mode, float(value))


# --- the stream ----------------------------------------------------------------------------------


class StreamingNet:
    """A network (in eval mode) as row operators, for one input of ``height`` x ``width``.

    :meth:`push` takes the normalised input in bands of rows, top to bottom, the last with
    ``final``; it returns the logits' rows completed so far, in order. A network with several heads
    returns them concatenated along channels, as its whole-image pass would be read head by head.
    """

    def __init__(self, model: nn.Module, height: int, width: int, channels: int | None = None) -> None:
        if model.training:
            raise ValueError("stream a model in eval mode (dropout off, batch norm's running statistics)")
        channels = channels if channels is not None else segmentation_net(model).in_channels
        self.program = trace(model, (1, channels, height, width))
        shapes = {INPUT: self.program.input_shape}
        for number, node in enumerate(self.program.nodes):
            node.in_shapes = [shapes[r] for r in node.inputs]
            for index, shape in enumerate(node.shapes):
                shapes[(number, index)] = shape
        self.ops = [operator_for(node) for node in self.program.nodes]
        last_use: dict[Ref, int] = {}
        for number, node in enumerate(self.program.nodes):
            for ref in node.inputs:
                last_use[ref] = number
        self.last_use = last_use

    @torch.inference_mode()
    def push(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """Feed the next band of normalised input (N, C, rows, width); get the logits' rows it completes."""
        values: dict[Ref, torch.Tensor] = {INPUT: x}
        for number, (node, op) in enumerate(zip(self.program.nodes, self.ops, strict=True)):
            out = op.push([values[r] for r in node.inputs], final)
            for index, o in enumerate(out if isinstance(out, tuple) else (out,)):
                values[(number, index)] = o
            for ref in node.inputs:
                if self.last_use[ref] == number and ref not in self.program.outputs:
                    values.pop(ref, None)
        outputs = [values[r] for r in self.program.outputs]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def streaming_refusal(arch: str, num_classes: int) -> str | None:
    """Why the registered network ``arch`` cannot stream (naming the operation), or None if it can.

    Built and traced on the meta device at a small size: no memory, no weights, a fraction of a second.
    """
    with torch.device("meta"):
        model = build_model(arch, num_classes).eval()
    net = segmentation_net(model)
    size = 4 * net.total_stride + 2 * net.margin
    try:
        StreamingNet(model, size, size)
    except NotStreamable as exc:
        return str(exc)
    return None
