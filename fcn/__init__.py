"""Fully convolutional networks: tensors in, logits out; no raster I/O, no Prefect.

The names below load on first use, so that importing a light module of this package (such as
``fcn.errors``, which the command line's front door reads) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fcn.checkpoint import ModelCard as ModelCard
    from fcn.checkpoint import describe as describe
    from fcn.checkpoint import load_checkpoint as load_checkpoint
    from fcn.checkpoint import save_checkpoint as save_checkpoint
    from fcn.errors import FcnpipeError as FcnpipeError
    from fcn.fcn import FCN as FCN
    from fcn.normalization import CAFFE_VGG16 as CAFFE_VGG16
    from fcn.normalization import TORCHVISION_IMAGENET as TORCHVISION_IMAGENET
    from fcn.normalization import Normalization as Normalization
    from fcn.receptive_field import ReceptiveField as ReceptiveField
    from fcn.receptive_field import measure_receptive_field as measure_receptive_field
    from fcn.registry import available_models as available_models
    from fcn.registry import build_model as build_model
    from fcn.surgery import convolutionalize as convolutionalize
    from fcn.surgery import init_from_parent as init_from_parent
    from fcn.surgery import init_from_vgg16 as init_from_vgg16
    from fcn.surgery import load_vgg16_state_dict as load_vgg16_state_dict


WHERE = {
    "CAFFE_VGG16": "fcn.normalization",
    "FCN": "fcn.fcn",
    "TORCHVISION_IMAGENET": "fcn.normalization",
    "FcnpipeError": "fcn.errors",
    "ModelCard": "fcn.checkpoint",
    "Normalization": "fcn.normalization",
    "ReceptiveField": "fcn.receptive_field",
    "available_models": "fcn.registry",
    "build_model": "fcn.registry",
    "convolutionalize": "fcn.surgery",
    "describe": "fcn.checkpoint",
    "init_from_parent": "fcn.surgery",
    "init_from_vgg16": "fcn.surgery",
    "load_checkpoint": "fcn.checkpoint",
    "load_vgg16_state_dict": "fcn.surgery",
    "measure_receptive_field": "fcn.receptive_field",
    "save_checkpoint": "fcn.checkpoint",
}
"""Each public name and the module that defines it."""

__all__ = sorted(WHERE)


def __getattr__(name: str) -> Any:
    if name not in WHERE:
        raise AttributeError(f"module 'fcn' has no attribute {name!r}")
    value = getattr(importlib.import_module(WHERE[name]), name)
    globals()[name] = value
    return value
