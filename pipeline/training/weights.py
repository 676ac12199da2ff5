"""Starting checkpoints: FCN weights from ImageNet VGG16 by net surgery, or random for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fcn import (
    CAFFE_VGG16,
    FCN,
    TORCHVISION_IMAGENET,
    FcnpipeError,
    ModelCard,
    build_model,
    describe,
    init_from_vgg16,
    load_vgg16_state_dict,
)
from fcn.fcn import init_from_scratch
from fcn.surgery import default_vgg16_path


def starting_model(
    arch: str,
    num_classes: int,
    *,
    vgg16: Path | None = None,
    caffe: bool = False,
    random_seed: int | None = None,
    class_names: list[str] | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Build an untrained FCN initialised from ImageNet VGG16 (default) or at random (with a seed).

    Random FCNs get He initialisation (:func:`fcn.fcn.init_from_scratch`).

    Without ``vgg16`` the torch hub cache is looked in; nothing is downloaded. The Caffe
    conversion (``caffe``) must be named: the cache holds torchvision's weights.
    """
    if random_seed is not None and (vgg16 is not None or caffe):
        raise FcnpipeError("choose either ImageNet VGG16 weights or --random, not both.")
    if caffe and vgg16 is None:
        raise FcnpipeError(
            "the Caffe VGG16 must be given by path (caffe-vgg16:PATH, or --caffe with --vgg16 PATH); "
            "the torch hub cache holds torchvision's VGG16, which is plain vgg16."
        )
    if random_seed is not None:
        torch.manual_seed(random_seed)
        model = build_model(arch, num_classes)
        if isinstance(model, FCN):
            init_from_scratch(model)
        init = f"random(seed={random_seed})"
        norm = TORCHVISION_IMAGENET
    else:
        path = vgg16 or default_vgg16_path()
        state = load_vgg16_state_dict(path)
        model = build_model(arch, num_classes)
        if not isinstance(model, FCN):
            raise FcnpipeError(f"{arch} cannot be initialised from VGG16.")
        init_from_vgg16(model, state)
        init = f"{'caffe-vgg16' if caffe else 'vgg16'}:{path.name}"
        norm = CAFFE_VGG16 if caffe else TORCHVISION_IMAGENET
    card = describe(
        model,
        arch,
        class_names=class_names,
        normalization=norm,
        provenance={"init": init, "dataset": None, "steps": 0},
    )
    return model, card
