"""Starting checkpoints: a network's weights from its ImageNet classifier by net surgery, or random."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from fcn import (
    CAFFE_VGG16,
    FCN,
    TORCHVISION_IMAGENET,
    FcnpipeError,
    ModelCard,
    Normalization,
    build_model,
    describe,
)
from fcn.fcn import init_from_scratch
from fcn.registry import architecture, segmentation_net
from fcn.surgery import hub_path, load_imagenet_state_dict
from pipeline.training.downloads import progress_bar
from pipeline.training.sources import CAFFE_VGG16_FILENAME, fetch_imagenet


def starting_model(
    arch: str,
    num_classes: int,
    *,
    imagenet: Path | None = None,
    caffe: bool = False,
    random_seed: int | None = None,
    class_names: list[str] | None = None,
    download_base: str | None = None,
    extra_inputs: Callable[[Normalization], tuple[Normalization, ...]] | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Build an untrained network initialised from its ImageNet classifier (default) or at random.

    The ImageNet classifier is the one the architecture's paper started from (VGG16 for the FCNs,
    VGG16 with batch norm for SegNet, …; ``fcnpipe weights archs``); an architecture its paper
    trains from scratch has none. Random FCNs get He initialisation
    (:func:`fcn.fcn.init_from_scratch`), other networks their own initialisation.

    Without ``imagenet`` the torch hub cache is looked in, and torchvision's file is downloaded
    into it (checked against its checksum; from ``download_base`` if given) when it is missing.
    The Caffe conversion of VGG16 (``caffe``) is looked for there under the name ``fcnpipe weights
    fetch vgg16 --caffe`` gives it, never under torchvision's, and never downloaded unasked.
    ``extra_inputs`` normalises channels after the colour (a dataset's, e.g. NYUD's depth), given
    the colour's normalisation; the network must read exactly that many channels.
    """
    if random_seed is not None and (imagenet is not None or caffe):
        raise FcnpipeError("choose either ImageNet weights or --random, not both.")
    if caffe and imagenet is None:
        imagenet = hub_path(CAFFE_VGG16_FILENAME)
        if not imagenet.is_file():
            raise FcnpipeError(
                f"the Caffe VGG16 is not in the torch hub cache ({imagenet}): fetch it with 'fcnpipe "
                "weights fetch vgg16 --caffe', or name its file (caffe-vgg16:PATH, or --caffe with "
                "--imagenet PATH)."
            )
    spec = architecture(arch)  # an unknown name says so here
    colour = CAFFE_VGG16 if caffe else TORCHVISION_IMAGENET
    norm = replace(colour, then=extra_inputs(colour) if extra_inputs is not None else ())
    if random_seed is not None:
        torch.manual_seed(random_seed)
        model = build_model(arch, num_classes)
        check_channels(model, arch, norm)
        if isinstance(model, FCN):
            init_from_scratch(model)
        init = f"random(seed={random_seed})"
    else:
        surgery = spec.imagenet
        if surgery is None:
            raise FcnpipeError(
                f"{arch} has no ImageNet start (its paper trains it from scratch): use --random with "
                "'weights init', or --init scratch for training."
            )
        if caffe and surgery.source != "vgg16":
            raise FcnpipeError(f"--caffe is the Caffe VGG16; {arch} starts from {surgery.source}.")
        model = build_model(arch, num_classes)
        check_channels(model, arch, norm)  # before a download
        path = imagenet or hub_path(surgery.filename)
        if imagenet is None and not path.is_file():
            with progress_bar(sys.stderr.isatty()) as progress:
                path = fetch_imagenet(surgery.source, base=download_base, progress=progress)
        surgery.apply(model, load_imagenet_state_dict(path, surgery.source))
        init = f"{'caffe-vgg16' if caffe else surgery.source}:{path.name}"
    card = describe(
        model,
        arch,
        class_names=class_names,
        normalization=norm,
        provenance={"init": init, "dataset": None, "steps": 0},
    )
    return model, card


def check_channels(model: nn.Module, arch: str, normalization: Normalization) -> None:
    """Refuse input of another channel count than the network reads, in one sentence."""
    channels = segmentation_net(model).in_channels
    if channels != normalization.channels:
        given = "colour alone" if normalization.channels == 3 else f"the {normalization.channels} of its data"
        raise FcnpipeError(
            f"{arch} reads {channels} input channels, not {given}: train fcn32s-color-d on nyud-color-d, "
            "fcn32s-color-hha on nyud-color-hha, and the other networks on colour."
        )
