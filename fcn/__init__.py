"""Fully convolutional networks: tensors in, logits out; no raster I/O, no Prefect."""

from fcn.checkpoint import ModelCard, describe, load_checkpoint, save_checkpoint
from fcn.errors import FcnpipeError
from fcn.fcn import FCN
from fcn.normalization import CAFFE_VGG16, TORCHVISION_IMAGENET, Normalization
from fcn.receptive_field import ReceptiveField, measure_receptive_field
from fcn.registry import available_models, build_model
from fcn.surgery import (
    convolutionalize,
    init_from_parent,
    init_from_vgg16,
    load_vgg16_state_dict,
)

__all__ = [
    "CAFFE_VGG16",
    "FCN",
    "TORCHVISION_IMAGENET",
    "FcnpipeError",
    "ModelCard",
    "Normalization",
    "ReceptiveField",
    "available_models",
    "build_model",
    "convolutionalize",
    "describe",
    "init_from_parent",
    "init_from_vgg16",
    "load_checkpoint",
    "load_vgg16_state_dict",
    "measure_receptive_field",
    "save_checkpoint",
]
