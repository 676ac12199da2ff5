"""Training and evaluation: batches, the loss, training steps, scoring, and one resumable stage.

A stage trains one network for a number of steps from a starting model (:func:`initial_model`:
ImageNet VGG16, a checkpoint, or scratch), validates every so often, and keeps three files in its
run folder: ``last.pt`` (everything needed to continue), ``best.pt`` (the weights with the best
validation mean IU) and ``metrics.csv``. The paper's staged training is three stages in a row:
FCN-32s from VGG16, FCN-16s from the trained FCN-32s, FCN-8s from the trained FCN-16s.

Batches: the modern recipe takes random square crops with horizontal flips; an image smaller
than the crop is padded on the bottom and right, its label with the ignore value and its pixels
with the normalisation's mean colour, which the network sees as zeros (like the padding of its
own convolutions). The heavy recipe feeds whole images, one per step, at their native size.

Resuming from ``last.pt`` continues exactly: the checkpoint holds the weights, the optimiser's
and schedule's states, the step and the torch random state (dropout); the data order needs no
state at all, since the batch of every step is a pure function of the seed and the step.
"""

from __future__ import annotations

import csv
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fcn import (
    FcnpipeError,
    ModelCard,
    Normalization,
    build_model,
    describe,
    init_from_parent,
    load_checkpoint,
    save_checkpoint,
)
from fcn.checkpoint import Head, read_checkpoint
from fcn.inputs import autocast, network_input
from fcn.margin import same_size_forward
from fcn.registry import architecture
from fcn.rgbd import LateFusion, fuse_streams
from pipeline import stopping
from pipeline.training.adversarial import Adversary
from pipeline.training.balance import class_weights
from pipeline.training.data import SegmentationDataset, open_dataset
from pipeline.training.evaluation import evaluate_heads, heads_scores
from pipeline.training.recipes import Recipe, make_optimizer, make_scheduler, validated
from pipeline.training.weights import check_channels, starting_model

log = logging.getLogger(__name__)

STAGES = ("fcn32s", "fcn16s", "fcn8s")
"""The paper's staged training: each network starts from the one before it."""

SCRATCH_WARNING = (
    "training from scratch: the paper's results for this network assume an ImageNet start; "
    "expect much lower scores, or pass imagenet:PATH."
)
SCORES = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")
"""The paper's four metrics, as ``ConfusionMatrix.scores`` names them."""
METRIC_FIELDS = (
    "step",
    "epoch",
    "train_loss",
    *SCORES,
    "seconds",
    "discriminator_loss",
    "discriminator_accuracy",
)
"""Columns of ``metrics.csv``, one row per validation: ``epoch`` is fractional (samples seen over
training images), ``train_loss`` the mean since the previous row, ``seconds`` the training time so
far (validation not counted); the discriminator's mean loss and accuracy since the previous row are
filled in by adversarial training only. A model with several heads adds each further head's four
scores at the end (:func:`metric_fields`)."""

Batch = tuple[torch.Tensor, torch.Tensor]
"""Float images, RGB on the 0-255 scale then any further channels (N, C, H, W), and int64 label maps
(N, H, W), or (N, heads, H, W) for a dataset with several heads."""


class StageArgs(BaseModel):
    """What one stage trains on and for how long; stored in its checkpoints and checked on resume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    """``NAME:PATH``, as for :func:`pipeline.training.data.open_dataset`."""
    steps: int = Field(gt=0)
    eval_every: int = Field(gt=0)
    seed: int = Field(0, ge=0)
    train_split: str = "train"
    val_split: str = "val"
    val_dataset: str | None = None
    """``NAME:PATH`` of the validation data when it is not ``dataset`` (the reference trains on SBD
    and validates on VOC2011's seg11valid); it must have the training data's classes."""
    val_limit: int | None = Field(None, ge=1)
    """Validate on the first ``val_limit`` images only."""

    @property
    def dataset_name(self) -> str:
        """The training data's ``NAME``: what recipes key their per-dataset settings by."""
        return self.dataset.partition(":")[0]

    @property
    def validation(self) -> str:
        """The validation data's ``NAME:PATH``."""
        return self.val_dataset or self.dataset


# --- batches -----------------------------------------------------------------------------------


def epoch_draws(seed: int, epoch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample order of one epoch and three uniform numbers per position (crop row, column, flip)."""
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    gen = torch.Generator().manual_seed(epoch_seed)
    return torch.randperm(size, generator=gen), torch.rand(size, 3, generator=gen, dtype=torch.float64)


def pad_to(
    image: torch.Tensor, label: torch.Tensor, size: int, fill: tuple[float, ...], ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom and right up to ``size``: the image with ``fill``, the label(s) with ``ignore_index``."""
    h, w = label.shape[-2:]
    if h >= size and w >= size:
        return image, label
    ph, pw = max(h, size), max(w, size)
    padded = torch.tensor(fill, dtype=image.dtype).view(-1, 1, 1).repeat(1, ph, pw)
    padded[:, :h, :w] = image
    padded_label = torch.full((*label.shape[:-2], ph, pw), ignore_index, dtype=label.dtype)
    padded_label[..., :h, :w] = label
    return padded, padded_label


def random_crop(
    image: torch.Tensor, label: torch.Tensor, size: int, where: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``size`` square at relative position ``where`` (two numbers in [0, 1)) of a big enough image."""
    h, w = label.shape[-2:]
    top = min(int(where[0] * (h - size + 1)), h - size)
    left = min(int(where[1] * (w - size + 1)), w - size)
    return image[:, top : top + size, left : left + size], label[..., top : top + size, left : left + size]


def training_sample(
    dataset: SegmentationDataset,
    index: int,
    draws: torch.Tensor,
    recipe: Recipe,
    fill: tuple[float, ...],
) -> Batch:
    """One augmented sample: the recipe's random crop (padded where the image is smaller) and flip."""
    image, label = dataset[index]
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    y = torch.from_numpy(label)
    if recipe.crop is not None:
        x, y = pad_to(x, y, recipe.crop, fill, dataset.ignore_index)
        x, y = random_crop(x, y, recipe.crop, draws[:2])
    if recipe.hflip and draws[2] < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def batches(
    dataset: SegmentationDataset,
    recipe: Recipe,
    *,
    seed: int,
    fill: tuple[float, ...],
    start: int = 0,
) -> Iterator[Batch]:
    """The training batches of steps ``start``, ``start + 1``, ... without end.

    Epochs are shuffled and crops and flips drawn from ``(seed, epoch)`` alone, so the batch of a
    step does not depend on what ran before it: a resumed run sees exactly the same data.
    """
    if len(dataset) == 0:
        raise FcnpipeError(f"the {dataset.split} split of {dataset.root} is empty: nothing to train on.")
    position, epoch = start * recipe.batch_size, -1
    order, draws = torch.empty(0, dtype=torch.int64), torch.empty(0)
    while True:
        items = []
        for _ in range(recipe.batch_size):
            new_epoch, index = divmod(position, len(dataset))
            if new_epoch != epoch:
                epoch = new_epoch
                order, draws = epoch_draws(seed, epoch, len(dataset))
            items.append(training_sample(dataset, int(order[index]), draws[index], recipe, fill))
            position += 1
        yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


# --- steps and scores ----------------------------------------------------------------------------


def criterion(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    reduction: str,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise cross-entropy without the ``ignore_index`` pixels, each weighed by its class's ``weight``.

    ``sum`` adds over the labelled pixels (the reference); ``mean`` divides that by their count
    (zero, not NaN, when there are none), weighted or not, as Caffe's loss that SegNet's class
    weighting was made for normalises (PyTorch's own weighted mean divides by the weights' sum).
    """
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction must be sum or mean, not {reduction!r}")
    return total / (target != ignore_index).sum().clamp(min=1)


def heads_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    heads: tuple[Head, ...],
    ignore_index: int,
    reduction: str,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`criterion` of each head on its channels and its labels, summed.

    The reference's two-headed net adds its heads' losses. ``target`` is (N, H, W) for one head,
    (N, heads, H, W) for several.
    """
    if target.dim() == 3:
        return criterion(logits, target, ignore_index, reduction, weight)
    if len(heads) != target.shape[1] or weight is not None:  # check_heads refuses class weights
        raise ValueError(f"{target.shape[1]} labellings for heads {heads}, class weights {weight}")
    losses = [
        criterion(logits[:, h.channels], target[:, i], ignore_index, reduction) for i, h in enumerate(heads)
    ]
    return torch.stack(losses).sum()


LOSS_CELL = 32
"""The input pixels one cell of a VGG FCN's final score map stands for (its total stride)."""


def sampled_cells(labels: torch.Tensor, keep: float, ignore_index: int) -> torch.Tensor:
    """``labels`` with each ``LOSS_CELL``² cell set to ``ignore_index`` with probability ``1 - keep``.

    The FCN paper's loss sampling, drawn on the CPU's generator (saved with a stage, so resuming
    draws the same cells) and aligned to the image's corner, as the score map's cells are.
    """
    n, (height, width) = labels.shape[0], labels.shape[-2:]
    kept = torch.rand(n, -(-height // LOSS_CELL), -(-width // LOSS_CELL)) < keep
    mask = kept.repeat_interleave(LOSS_CELL, 1).repeat_interleave(LOSS_CELL, 2)[:, :height, :width]
    if labels.dim() == 4:  # several heads: the same cells for all, as they share the score map's cells
        mask = mask[:, None]
    return labels.masked_fill(~mask.to(labels.device), ignore_index)


def train_steps(
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    batches: Iterator[Batch],
    steps: int,
    *,
    device: torch.device,
    normalization: Normalization,
    ignore_index: int,
    recipe: Recipe,
    heads: tuple[Head, ...],
    class_weight: torch.Tensor | None = None,
    adversary: Adversary | None = None,
) -> float:
    """Run ``steps`` optimiser steps (the schedule stepped after each) and return their mean loss.

    With an ``adversary`` each step first updates its discriminator on the batch, then adds its
    adversarial term to the segmenter's loss (the hybrid loss, whose mean is returned).
    """
    model.train()
    total = 0.0
    for _ in range(steps):
        images, labels = next(batches)
        if recipe.loss_sampling < 1:
            labels = sampled_cells(labels, recipe.loss_sampling, ignore_index)
        labels = labels.to(device)
        x = network_input(images, normalization, device)
        with autocast(device, recipe.precision):
            logits = same_size_forward(model, x)
        loss = heads_loss(logits, labels, heads, ignore_index, recipe.loss_reduction, class_weight)
        if adversary is not None:
            probabilities = logits.float().softmax(1)
            adversary.update(x, probabilities, labels)
            loss = loss + adversary.segmenter_term(x, probabilities, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
    return total / steps


# --- starting points -----------------------------------------------------------------------------


def initial_model(
    init: str, arch: str, dataset: SegmentationDataset, *, seed: int = 0, download_base: str | None = None
) -> tuple[nn.Module, ModelCard]:
    """The model a stage starts from, with a card carrying the dataset's class names and palette.

    ``init`` is ``imagenet[:PATH]`` (the architecture's ImageNet classifier by net surgery, e.g.
    VGG16 for the FCNs; the torch hub cache without a path), ``vgg16[:PATH]`` (the same, for
    architectures that start from VGG16), ``caffe-vgg16[:PATH]`` (the Caffe conversion, fed as the
    reference's data layer for ``dataset`` feeds it: :attr:`SegmentationDataset.reference_input`;
    the file ``fcnpipe weights fetch vgg16 --caffe`` leaves in the hub cache without a path), ``scratch``
    (random, seeded; warns where the paper started from ImageNet), or a checkpoint: of the same
    architecture to continue from it, of another (FCN-32s for FCN-16s, FCN-16s for FCN-8s) for the
    paper's staged initialisation; or ``streams:COLOUR.pt,HHA.pt``, two trained FCN-32s that start
    a late fusion's streams (:func:`from_streams`).
    """
    kind, _, path = init.partition(":")
    names = list(dataset.class_names)
    if kind in ("imagenet", "vgg16", "caffe-vgg16"):
        source = architecture(arch).imagenet
        if kind == "vgg16" and source is not None and source.source != "vgg16":
            raise FcnpipeError(
                f"{arch} starts from ImageNet {source.source}, not VGG16: use imagenet[:PATH]."
            )
        weights = Path(path).expanduser() if path else None
        model, card = starting_model(
            arch, dataset.num_classes, imagenet=weights, caffe=kind == "caffe-vgg16", class_names=names,
            download_base=download_base, extra_inputs=dataset.extra_inputs,
        )  # fmt: skip
        if kind == "caffe-vgg16":
            colour = dataset.reference_input
            card = replace(card, normalization=replace(colour, then=dataset.extra_inputs(colour)))
    elif init == "scratch":
        if architecture(arch).imagenet is not None:
            warnings.warn(SCRATCH_WARNING, UserWarning, stacklevel=2)
        with torch.random.fork_rng(devices=[]):  # seeds torch's global generator: keep the caller's
            model, card = starting_model(
                arch, dataset.num_classes, random_seed=seed, class_names=names,
                extra_inputs=dataset.extra_inputs,
            )  # fmt: skip
    elif kind == "streams":
        return from_streams(path, arch, dataset)
    else:
        return from_checkpoint(Path(init).expanduser(), arch, dataset)
    return model, replace(card, palette=tuple(dataset.palette), head_sizes=dataset.head_sizes)


def from_checkpoint(path: Path, arch: str, dataset: SegmentationDataset) -> tuple[nn.Module, ModelCard]:
    """``arch`` from a checkpoint: its weights if it is one, else every layer the two share."""
    parent, card = load_checkpoint(path, num_classes=dataset.num_classes)
    provenance = {"init": str(path), "parent": card.arch, "dataset": None, "steps": 0}
    model = parent
    if card.arch != arch:
        model = build_model(arch, dataset.num_classes)
        check_channels(model, arch, card.normalization)
        init_from_parent(model, parent)
        card = describe(model, arch, normalization=card.normalization)
    check_input(card, dataset, str(path))
    card = replace(
        card, class_names=dataset.class_names, palette=tuple(dataset.palette), provenance=provenance,
        head_sizes=dataset.head_sizes,
    )  # fmt: skip
    return model.train(), card


def check_input(card: ModelCard, dataset: SegmentationDataset, model: str) -> None:
    """Refuse data whose images have another channel count than the model reads, in one sentence."""
    if card.normalization.channels != dataset.channels:
        raise FcnpipeError(
            f"{model} reads {card.normalization.channels} input channels but {dataset.name} images have "
            f"{dataset.channels}; use a model made for this dataset."
        )


def from_streams(paths: str, arch: str, dataset: SegmentationDataset) -> tuple[nn.Module, ModelCard]:
    """A late fusion from two trained FCN-32s, colour then HHA (``streams:COLOUR.pt,HHA.pt``).

    The release starts ``nyud-fcn32s-color-hha`` this way; the fusion reads each stream's input
    as that stream was trained to, so its normalisation is the colour checkpoint's, then the HHA's.
    """
    named = [Path(p).expanduser() for p in paths.split(",") if p]
    model = build_model(arch, dataset.num_classes)
    if not isinstance(model, LateFusion) or len(named) != 2:
        raise FcnpipeError(
            "streams:COLOUR.pt,HHA.pt starts a late fusion (fcn32s-color-hha) from two FCN-32s checkpoints."
        )
    if dataset.channels != model.in_channels:
        raise FcnpipeError(
            f"a late fusion reads colour and HHA ({model.in_channels} channels) but {dataset.name} images "
            f"have {dataset.channels}: train it on nyud-color-hha."
        )
    k = dataset.num_classes
    (color, color_card), (hha, hha_card) = (load_checkpoint(p, num_classes=k) for p in named)
    trained_on = [
        str(card.provenance.get("dataset") or "").partition(":")[0] for card in (color_card, hha_card)
    ]
    if trained_on[0] == "nyud-hha" or trained_on[1] not in ("nyud-hha", ""):
        raise FcnpipeError(
            f"streams: takes the colour FCN-32s first and the HHA one second, but {named[0]} was trained "
            f"on {trained_on[0] or 'unrecorded data'} and {named[1]} on {trained_on[1]}."
        )
    fuse_streams(model, color, hha)
    normalization = replace(color_card.normalization, then=(hha_card.normalization,))
    provenance = {"init": f"streams:{named[0]},{named[1]}", "dataset": None, "steps": 0}
    card = describe(model, arch, class_names=list(dataset.class_names), palette=list(dataset.palette),
                    normalization=normalization, provenance=provenance)  # fmt: skip
    return model.train(), replace(card, head_sizes=dataset.head_sizes)


# --- one stage -----------------------------------------------------------------------------------


@dataclass
class TrainState:
    """A stage in progress: what it trains and how far it got. ``last.pt`` holds all of it."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    device: torch.device
    step: int = 0
    best_mean_iu: float = -math.inf
    seconds: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    """The training loss of each step since the last validation."""
    adversary: Adversary | None = None

    def extra(self, recipe: Recipe, args: StageArgs, samples: int) -> dict[str, Any]:
        """The checkpoint entries beside the card and weights; plain data a weights-only load accepts."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.step * recipe.batch_size // samples,
            "best_mean_iu": self.best_mean_iu,
            "seconds": self.seconds,
            "scores": self.scores,
            "losses": self.losses,
            "rng": rng_state(self.device),
            "recipe": recipe.model_dump(),
            "args": args.model_dump(),
        } | ({"adversary": self.adversary.state()} if self.adversary is not None else {})

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint's entries (the inverse of :meth:`extra` plus the weights)."""
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"], self.device)
        self.step = int(payload["step"])
        self.best_mean_iu = float(payload["best_mean_iu"])
        self.seconds = float(payload["seconds"])
        self.scores = {k: float(v) for k, v in payload["scores"].items()}
        self.losses = [float(v) for v in payload["losses"]]
        if self.adversary is not None:
            self.adversary.restore(payload["adversary"])


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch random state that dropout draws from: the CPU's, and the GPU's when training on one."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Inverse of :func:`rng_state`.

    A stage resumed on another kind of device keeps the CPU's state only (its GPU draws start from
    the stage's seed): the run continues, but not bit for bit.
    """
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass(frozen=True)
class StageResult:
    """Where a stage ended and what it left in its run folder."""

    run_dir: Path
    step: int
    best_mean_iu: float
    scores: dict[str, float]

    @property
    def best(self) -> Path:
        """The checkpoint with the best validation mean IU."""
        return self.run_dir / "best.pt"

    @property
    def last(self) -> Path:
        """The checkpoint to resume from."""
        return self.run_dir / "last.pt"


def stamped(card: ModelCard, state: TrainState, recipe: Recipe, args: StageArgs) -> ModelCard:
    """The card with the stage's provenance: start, dataset, steps, recipe and validation scores."""
    provenance = {
        **card.provenance,
        "dataset": args.dataset,
        "steps": state.step,
        "recipe": recipe.name,
        "seed": args.seed,
        "val_dataset": args.validation,
        "val_split": args.val_split,
        "val_scores": state.scores,
    }
    return replace(card, provenance=provenance)


def open_splits(args: StageArgs, card: ModelCard) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training and validation splits, checked against the model's classes and each other's."""
    train_set, val_set = (
        open_dataset(args.dataset, args.train_split),
        open_dataset(args.validation, args.val_split),
    )
    for split, spec in ((train_set, args.dataset), (val_set, args.validation)):
        if len(split) == 0:
            raise FcnpipeError(
                f"the {split.split} split of {spec} is empty; a stage needs training images "
                "and validation images (its best checkpoint is chosen on them)."
            )
    if (val_set.channels, val_set.head_sizes) != (train_set.channels, train_set.head_sizes):
        raise FcnpipeError(
            f"the validation data {args.validation} is not of the training data's kind ({args.dataset}): "
            f"{val_set.name} and {train_set.name} differ in image channels or labellings."
        )
    check_input(card, train_set, card.arch)
    if val_set.class_names != train_set.class_names:
        raise FcnpipeError(
            f"the validation data {args.validation} is labelled with other classes than the training "
            f"data {args.dataset} ({class_difference(val_set.class_names, train_set.class_names)}); "
            "validate on data labelled with the same classes."
        )
    if train_set.num_classes != card.num_classes:
        raise FcnpipeError(
            f"the {train_set.split} split of {args.dataset} has {train_set.num_classes} classes but the "
            f"{card.arch} predicts {card.num_classes}; start from a model made for this dataset."
        )
    return train_set, val_set


def class_difference(val: tuple[str, ...], train: tuple[str, ...]) -> str:
    """Where two class lists first differ, in words (validation's side first)."""
    if len(val) != len(train):
        return f"{len(val)} classes against {len(train)}"
    index = next(i for i, (v, t) in enumerate(zip(val, train, strict=True)) if v != t)
    return f"class {index} is {val[index]!r} there and {train[index]!r} here"


def start_or_resume(
    run_dir: Path, state: TrainState, card: ModelCard, recipe: Recipe, args: StageArgs, resume: bool
) -> None:
    """Restore ``state`` from ``run_dir/last.pt`` when resuming, else start the folder afresh."""
    last = run_dir / "last.pt"
    if not last.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_header(run_dir / "metrics.csv", metric_fields(card))
        record = {"arch": card.arch, "init": card.provenance.get("init"), "args": args.model_dump()}
        (run_dir / "stage.yaml").write_text(yaml.safe_dump(record | {"recipe": recipe.model_dump()}))
        return
    if not resume:
        raise FcnpipeError(f"{run_dir} already holds a training run; resume it or choose another folder.")
    payload = read_checkpoint(last)
    stored_recipe = validated(payload["recipe"], str(last)).model_dump()  # settings added since: defaults
    stored_args = StageArgs(**payload["args"]).model_dump()  # arguments added since: defaults
    stored = (payload["card"]["arch"], stored_recipe, stored_args)
    if stored != (card.arch, recipe.model_dump(), args.model_dump()):
        raise FcnpipeError(
            f"{last} was made by another stage (architecture, recipe or arguments differ); a resume "
            "continues the run as it was started, so start a new run folder to change them."
        )
    state.restore(payload)
    trim_metrics(run_dir / "metrics.csv", state.step, metric_fields(card))
    log.info("resuming %s at step %d", run_dir, state.step)


def metric_fields(card: ModelCard) -> tuple[str, ...]:
    """The columns of a stage's ``metrics.csv``: :data:`METRIC_FIELDS`, then any further head's scores."""
    return METRIC_FIELDS + tuple(f"{head.name}_{score}" for head in card.heads[1:] for score in SCORES)


def write_metrics_header(path: Path, fields: tuple[str, ...]) -> None:
    """Start ``metrics.csv`` with its header row."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerow(fields)


def trim_metrics(path: Path, step: int, fields: tuple[str, ...]) -> None:
    """Drop rows after ``step``: written by a run that stopped before saving them into last.pt."""
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


def append_metrics(path: Path, row: dict[str, float], fields: tuple[str, ...]) -> None:
    """Add one validation row to ``metrics.csv``."""
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fields).writerow(row)


def save_last(
    run_dir: Path, state: TrainState, card: ModelCard, recipe: Recipe, args: StageArgs, samples: int
) -> None:
    """Write everything needed to continue to ``run_dir/last.pt``."""
    extra = state.extra(recipe, args, samples)
    save_checkpoint(run_dir / "last.pt", state.model, stamped(card, state, recipe, args), extra=extra)


def validate(
    run_dir: Path,
    state: TrainState,
    card: ModelCard,
    recipe: Recipe,
    args: StageArgs,
    splits: tuple[SegmentationDataset, SegmentationDataset],
    device: torch.device,
) -> None:
    """Score on the validation split, add a metrics row, and write best.pt when the mean IU improved."""
    train_set, val_set = splits
    train_loss, state.losses = sum(state.losses) / len(state.losses), []
    matrices = evaluate_heads(
        state.model, val_set, card.normalization, device, args.val_limit, recipe.precision
    )
    state.scores = heads_scores(matrices)
    epoch = round(state.step * recipe.batch_size / len(train_set), 4)
    row = {"step": state.step, "epoch": epoch, "train_loss": train_loss, **state.scores}
    if state.adversary is not None:
        row |= state.adversary.take_scores()
    append_metrics(run_dir / "metrics.csv", row | {"seconds": round(state.seconds, 2)}, metric_fields(card))
    log.info("step %d: loss %.4g, val mean IU %.4f", state.step, train_loss, state.scores["mean_iu"])
    score = state.scores["mean_iu"]  # the first head's; NaN when no validation pixel is labelled
    if score > state.best_mean_iu or not (run_dir / "best.pt").is_file():
        state.best_mean_iu = max(state.best_mean_iu, -math.inf if math.isnan(score) else score)
        final = stamped(card, state, recipe, args)
        extra = {"step": state.step, "recipe": recipe.model_dump()}
        save_checkpoint(run_dir / "best.pt", state.model, final, extra=extra)


def train_stage(
    model: nn.Module,
    card: ModelCard,
    recipe: Recipe,
    args: StageArgs,
    run_dir: Path,
    *,
    device: torch.device | None = None,
    resume: bool = False,
    until: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> StageResult:
    """Train ``model`` for ``args.steps`` steps, validating every ``args.eval_every`` and at the end.

    ``resume`` continues from ``run_dir/last.pt`` when there is one (and starts afresh when there
    is not); without it an existing run is an error. ``until`` pauses after that step with last.pt
    saved, for a later resume. The torch random state is forked: the caller's is left as it was.
    ``on_step`` hears about every step (a progress bar), after its validation if one was due.
    """
    device = device or torch.device("cpu")
    splits = open_splits(args, card)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe, card.arch, args.dataset_name)
    state = TrainState(model, optimizer, make_scheduler(optimizer, recipe, args.steps), device)
    train_set = splits[0]
    check_heads(train_set, recipe)
    weights = class_weights(recipe.class_weights, train_set)
    class_weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
    stop = args.steps if until is None else min(until, args.steps)
    with torch.random.fork_rng(devices=cuda_indices(device)):
        torch.manual_seed(args.seed)
        if recipe.adversarial > 0:  # seeded: the discriminator starts the same on every run
            state.adversary = Adversary.create(
                card.num_classes, train_set.ignore_index, recipe.adversarial, recipe.discriminator_lr, device,
                image_channels=card.normalization.channels,
            )  # fmt: skip
        start_or_resume(run_dir, state, card, recipe, args, resume)
        fill = card.normalization.zero_input()
        stream = batches(splits[0], recipe, seed=args.seed, fill=fill, start=state.step)
        try:
            while state.step < stop:
                started = time.perf_counter()
                loss = train_steps(
                    model, optimizer, state.scheduler, stream, 1, device=device,
                    normalization=card.normalization, ignore_index=train_set.ignore_index, recipe=recipe,
                    heads=card.heads, class_weight=class_weight, adversary=state.adversary,
                )  # fmt: skip
                state.step += 1
                state.losses.append(loss)
                state.seconds += time.perf_counter() - started
                due = state.step % args.eval_every == 0 or state.step == args.steps
                if due:
                    validate(run_dir, state, card, recipe, args, splits, device)
                if due or state.step == stop:
                    save_last(run_dir, state, card, recipe, args, len(splits[0]))
                if on_step is not None:
                    best = state.best_mean_iu if state.scores else None
                    on_step(StepReport(state.step, args.steps, loss, best, state.seconds))
        except Exception:
            raise
        except BaseException as exc:  # a signal (KeyboardInterrupt, or Prefect's for SIGTERM)
            raise stopping.Stopped(resume_hint(run_dir, card.arch)) from exc
    return StageResult(run_dir, state.step, state.best_mean_iu, state.scores)


def resume_hint(run_dir: Path, arch: str) -> str:
    """What to do after a stage was stopped: resume from its last.pt, which continues it exactly."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return f"training of {arch} stopped before its first checkpoint; the same command starts it again."
    step = torch.load(last, map_location="cpu", weights_only=True).get("step", "?")
    return f"training of {arch} stopped; --resume {last} continues it exactly from step {step}."


def check_heads(dataset: SegmentationDataset, recipe: Recipe) -> None:
    """Refuse what is defined for one head only: class weights and the adversarial term."""
    if dataset.head_sizes and (recipe.class_weights != "none" or recipe.adversarial > 0):
        raise FcnpipeError(
            f"{dataset.name} is labelled for {len(dataset.head_sizes)} heads, and class weights and "
            "adversarial training work with one: set class_weights: none and adversarial: 0."
        )


@dataclass(frozen=True)
class StepReport:
    """One finished training step, for progress displays."""

    step: int
    steps: int
    loss: float
    best_mean_iu: float | None
    """The best validation mean IU so far (None before the first validation)."""
    seconds: float
    """Training time of the stage so far, resumed parts included."""


def cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device whose random state a stage forks (none on other devices)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def resume_stage(
    run_dir: Path,
    *,
    device: torch.device | None = None,
    until: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> StageResult:
    """Continue the stage in ``run_dir`` from its last.pt alone: model, recipe and arguments are in it."""
    payload = read_checkpoint(run_dir / "last.pt")
    card = ModelCard.from_dict(payload["card"])
    recipe = validated(payload["recipe"], str(run_dir / "last.pt"))
    args = StageArgs(**payload["args"])
    model = build_model(card.arch, card.num_classes)
    return train_stage(
        model, card, recipe, args, run_dir, device=device, resume=True, until=until, on_step=on_step
    )
