"""One self-describing checkpoint format: weights plus everything inference needs to use them.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` can read: no pickled
classes, so a file can never run code. Its ``card`` carries the architecture, classes, palette,
input normalisation, the measured receptive field with the halo that makes tiling exact, the
measured peak memory of a forward pass (``fcn.memory``, per kind of device it was probed on), and
where the weights came from. Training adds its own entries (optimiser, schedule, RNG) beside it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcn.errors import FcnpipeError
from fcn.memory import MemoryProbe, probe_memory
from fcn.normalization import TORCHVISION_IMAGENET, Normalization
from fcn.receptive_field import ReceptiveField, measure_receptive_field
from fcn.registry import available_models, build_model, segmentation_net

FORMAT = "fcnpipe-checkpoint"
VERSION = 1

RGB = tuple[int, int, int]


def default_palette(num_classes: int) -> list[RGB]:
    """The PASCAL VOC colour map: distinct colours by spreading the bits of the class index."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


@dataclass(frozen=True)
class Head:
    """A group of output channels scored on its own: one softmax, one loss, one label map.

    Most networks have one head over all their classes. SIFT Flow's net in the FCN reference has
    two on one trunk (33 semantic and 3 geometric classes); with the reference's fixed bilinear
    upsamplers, which never mix channels, that net is exactly an FCN over the 36 channels of both
    heads, scored as two groups.
    """

    name: str
    start: int
    stop: int

    @property
    def channels(self) -> slice:
        """The head's channels in the network's output."""
        return slice(self.start, self.stop)

    @property
    def classes(self) -> int:
        """How many classes the head distinguishes."""
        return self.stop - self.start


def head_layout(sizes: tuple[tuple[str, int], ...], num_classes: int) -> tuple[Head, ...]:
    """Heads side by side from ``(name, classes)`` pairs; none given: one head over every class."""
    heads, start = [], 0
    for name, classes in sizes or (("classes", num_classes),):
        heads.append(Head(name, start, start + classes))
        start += classes
    return tuple(heads)


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint says about its weights."""

    arch: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[RGB, ...]
    normalization: Normalization
    receptive_field: ReceptiveField
    total_stride: int
    provenance: dict[str, Any] = field(default_factory=dict)
    margin: int = 0  # pixels the output lacks on each side of the input (fcn.margin)
    memory: dict[str, MemoryProbe] = field(default_factory=dict)  # by device kind: "cpu", "cuda"
    head_sizes: tuple[tuple[str, int], ...] = ()  # (name, classes) per head; () is one head of all

    def __post_init__(self) -> None:
        if self.head_sizes and sum(n for _, n in self.head_sizes) != self.num_classes:
            raise FcnpipeError(
                f"the card's heads {self.head_sizes} do not add up to its {self.num_classes} classes."
            )

    @property
    def heads(self) -> tuple[Head, ...]:
        """The output's heads: the named groups, or one head ``classes`` over every class."""
        return head_layout(self.head_sizes, self.num_classes)

    def head_card(self, head: Head) -> ModelCard:
        """The card as seen by one head's label map: its classes, names and colours alone."""
        if not self.head_sizes:
            return self
        channels = head.channels
        return replace(
            self, num_classes=head.classes, class_names=self.class_names[channels],
            palette=self.palette[channels], head_sizes=(),
        )  # fmt: skip

    @property
    def halo(self) -> int:
        """Recommended tile halo: covers the receptive field and keeps tiles on the pooling grid."""
        return self.receptive_field.halo(self.total_stride, self.margin)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``torch.save``."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "normalization": self.normalization.to_dict(),
            "receptive_field": {"lo": self.receptive_field.lo, "hi": self.receptive_field.hi},
            "total_stride": self.total_stride,
            "margin": self.margin,
            "halo": self.halo,
            "memory": {device: probe.to_dict() for device, probe in self.memory.items()},
            "provenance": dict(self.provenance),
        } | ({"heads": [[name, n] for name, n in self.head_sizes]} if self.head_sizes else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`."""
        rf = data["receptive_field"]
        return cls(
            arch=str(data["arch"]),
            num_classes=int(data["num_classes"]),
            class_names=tuple(str(n) for n in data["class_names"]),
            palette=tuple((int(c[0]), int(c[1]), int(c[2])) for c in data["palette"]),
            normalization=Normalization.from_dict(data["normalization"]),
            receptive_field=ReceptiveField(int(rf["lo"]), int(rf["hi"])),
            total_stride=int(data["total_stride"]),
            provenance=dict(data.get("provenance", {})),
            margin=int(data.get("margin", 0)),
            memory={k: MemoryProbe.from_dict(v) for k, v in data.get("memory", {}).items()},
            head_sizes=tuple((str(name), int(n)) for name, n in data.get("heads", [])),
        )


def inference_forward(model: nn.Module, normalization: Normalization) -> Callable[[torch.Tensor], object]:
    """What inference does with a batch of 0-255 pixels: normalise, run, take the labels."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = model(normalization.apply(x))
        return logits.argmax(1)

    return forward


def probe_card_memory(model: nn.Module, normalization: Normalization) -> dict[str, MemoryProbe]:
    """The model's memory probe on the device its weights are on ({} where it cannot be read)."""
    device = next(model.parameters()).device
    probe = probe_memory(model, inference_forward(model, normalization), device)
    return {} if probe is None else {probe.device: probe}


def describe(
    model: nn.Module,
    arch: str,
    *,
    class_names: list[str] | None = None,
    palette: list[RGB] | None = None,
    normalization: Normalization = TORCHVISION_IMAGENET,
    provenance: dict[str, Any] | None = None,
    memory: bool = True,
) -> ModelCard:
    """Make the card of ``model``, measuring its receptive field and (unless not ``memory``) its memory."""
    net = segmentation_net(model)
    num_classes = net.num_classes
    names = class_names or [f"class_{i}" for i in range(num_classes)]
    colours = palette or default_palette(num_classes)
    if len(names) != num_classes or len(colours) != num_classes:
        raise FcnpipeError(
            f"the model has {num_classes} classes but {len(names)} class names and "
            f"{len(colours)} palette colours were given."
        )
    return ModelCard(
        arch=arch,
        num_classes=num_classes,
        class_names=tuple(names),
        palette=tuple(colours),
        normalization=normalization,
        receptive_field=measure_receptive_field(model),
        total_stride=net.total_stride,
        provenance=provenance or {},
        margin=net.margin,
        memory=probe_card_memory(model, normalization) if memory else {},
    )


def save_checkpoint(
    path: Path, model: nn.Module, card: ModelCard, extra: dict[str, Any] | None = None
) -> None:
    """Write a checkpoint atomically: a crash never leaves a half-written file at ``path``."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "card": card.to_dict(),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_checkpoint(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    """Read a checkpoint's raw contents safely (``weights_only=True``), with clear errors.

    ``lazy`` maps the file instead of reading it: its tensors are read only where used, so the
    card of a half-gigabyte checkpoint costs milliseconds.
    """
    if not path.is_file():
        raise FcnpipeError(f"checkpoint {path} does not exist.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise FcnpipeError(f"{path} is not a readable checkpoint (corrupt or truncated).") from exc
        raise FcnpipeError(
            f"{path} holds Python objects that a weights-only load refuses to run; "
            "only fcnpipe checkpoints (tensors and plain data) are accepted."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise FcnpipeError(f"{path} is not a readable checkpoint (corrupt or truncated).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FcnpipeError(
            f"{path} is not an fcnpipe checkpoint; make one with `fcnpipe weights init` or training."
        )
    if payload.get("version") != VERSION:
        raise FcnpipeError(f"{path} has checkpoint version {payload.get('version')}, not {VERSION}.")
    return payload


def load_checkpoint(
    path: Path, *, arch: str | None = None, num_classes: int | None = None
) -> tuple[nn.Module, ModelCard]:
    """Load a checkpoint into a fresh model (in eval mode) and return it with its card.

    ``arch`` and ``num_classes``, when given, are what the caller needs; a checkpoint made for
    something else is refused with a sentence saying so.
    """
    payload = read_checkpoint(path, lazy=True)
    card = ModelCard.from_dict(payload["card"])
    if card.arch not in available_models():
        raise FcnpipeError(
            f"{path} is for architecture {card.arch!r}, which this fcnpipe does not know "
            f"({', '.join(available_models())})."
        )
    if arch is not None and card.arch != arch:
        raise FcnpipeError(f"{path} is a {card.arch} checkpoint, not {arch}.")
    if num_classes is not None and card.num_classes != num_classes:
        raise FcnpipeError(f"{path} predicts {card.num_classes} classes, but {num_classes} are needed.")
    # Built on the meta device (no memory, no random initialisation), then given the checkpoint's
    # tensors, which map the file: an FCN's half gigabyte costs no copy and about a second less.
    with torch.device("meta"):
        model = build_model(card.arch, card.num_classes)
    try:
        model.load_state_dict(payload["state_dict"], assign=True)
    except (RuntimeError, KeyError) as exc:
        raise FcnpipeError(
            f"{path}'s weights do not fit a {card.arch} with {card.num_classes} classes."
        ) from exc
    placeholders = meta_tensors(model)
    if placeholders:  # a tensor the checkpoint does not hold: build it for real
        model = build_model(card.arch, card.num_classes)
        model.load_state_dict(payload["state_dict"])
    return model.eval(), card


def meta_tensors(model: nn.Module) -> list[str]:
    """The model's tensors still on the meta device: parameters, buffers and plain tensor attributes."""
    named = [*model.named_parameters(), *model.named_buffers()]
    for prefix, module in model.named_modules():
        named += [(f"{prefix}.{k}", v) for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
    return [name for name, tensor in named if tensor.is_meta]
