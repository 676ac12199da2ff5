"""Net surgery: ImageNet VGG16 -> fully convolutional networks, and staged FCN initialisation.

VGG16's fully connected layers are convolutions in disguise: ``classifier.0`` (4096 x 25088) is a
7x7 convolution over pool5's 512 channels and ``classifier.3`` a 1x1 one. Reshaping them lets the
classifier sweep an image of any size, which is what FCNs are built on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fcn.blocks import ConvolutionalFC
from fcn.errors import FcnpipeError
from fcn.vgg import make_features

if TYPE_CHECKING:  # fcn.fcn imports this module for its ImageNet start
    from fcn.fcn import FCN

VGG16_FILENAME = "vgg16-397923af.pth"
CLASSIFIER_SHAPES = {
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
}
IMAGENET_CLASSES = 1000

StateDict = dict[str, torch.Tensor]


def feature_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the trunk's parameters in torchvision's layout."""
    return {f"features.{k}": tuple(v.shape) for k, v in make_features(1).state_dict().items()}


def default_vgg16_path() -> Path:
    """Where torchvision's hub cache keeps the ImageNet VGG16 weights (``$TORCH_HOME``-aware)."""
    return hub_path(VGG16_FILENAME)


def hub_path(filename: str) -> Path:
    """Where torchvision's hub cache keeps a weights file (``$TORCH_HOME``-aware)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_imagenet_state_dict(path: Path, source: str) -> StateDict:
    """Load torchvision's ImageNet weights of ``source`` (``vgg16``, ``vgg16_bn``, ``alexnet``, …).

    VGG16's names and shapes are checked here; other sources are checked by the surgery that reads
    them. Nothing is downloaded: the file must be on disk.
    """
    if source == "vgg16":
        return load_vgg16_state_dict(path)
    if not path.is_file():
        raise FcnpipeError(
            f"no ImageNet {source} weights at {path}; pass the file (torchvision's {path.name}) or put it "
            "in the torch hub cache."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FcnpipeError(f"{path} is not a readable PyTorch weights file ({exc}).") from exc
    if not isinstance(state, dict):
        raise FcnpipeError(f"{path} is not a state dict (found {type(state).__name__}).")
    return dict(state)


def load_vgg16_state_dict(path: Path | None = None) -> StateDict:
    """Load an ImageNet VGG16 state dict in torchvision's layout, checking names and shapes.

    Without ``path`` the hub cache is used. Nothing is downloaded: the file must be on disk.
    """
    path = path or default_vgg16_path()
    if not path.is_file():
        raise FcnpipeError(
            f"no ImageNet VGG16 weights at {path}; pass the file (torchvision's {VGG16_FILENAME} "
            "or a Caffe-converted VGG16 in the same layout) or put it in the torch hub cache."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FcnpipeError(f"{path} is not a readable PyTorch weights file ({exc}).") from exc
    check_vgg16_state_dict(state, str(path))
    return dict(state)


def check_vgg16_state_dict(state: object, source: str = "the state dict") -> None:
    """Raise a clear error unless ``state`` holds VGG16's convolutions and fc6/fc7 weights."""
    if not isinstance(state, dict):
        raise FcnpipeError(f"{source} is not a VGG16 state dict (found {type(state).__name__}).")
    expected = feature_shapes() | CLASSIFIER_SHAPES
    for name, shape in expected.items():
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else tuple(getattr(tensor, "shape", ()))
            raise FcnpipeError(
                f"{source} is not a VGG16 state dict in torchvision's layout: {name} should have "
                f"shape {shape} ({found})."
            )


def fc_as_conv(weight: torch.Tensor, in_channels: int, kernel: int) -> torch.Tensor:
    """Reshape a fully connected weight (out, in*k*k) into a convolution (out, in, k, k)."""
    return weight.reshape(weight.shape[0], in_channels, kernel, kernel)


class ConvolutionalVGG16(ConvolutionalFC):
    """VGG16 with its classifier turned into convolutions: ImageNet score maps for any input size.

    On a 224 x 224 image the single output position holds the classifier's 1000 logits.
    """

    def __init__(self, num_classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()
        self.features = make_features(first_padding=1)
        self.add_fc6_fc7(nn.Conv2d(512, 4096, kernel_size=7))
        self.fc8 = nn.Conv2d(4096, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class score maps at stride 32."""
        return self.fc8(self.fc6_fc7(self.features(x)))  # type: ignore[no-any-return]


def convolutionalize(state_dict: StateDict) -> ConvolutionalVGG16:
    """Turn an ImageNet VGG16 state dict into the equivalent fully convolutional classifier."""
    check_vgg16_state_dict(state_dict)
    if "classifier.6.weight" not in state_dict:
        raise FcnpipeError("the state dict has no classifier.6 (fc8) layer to convolutionalize.")
    fc8 = state_dict["classifier.6.weight"]
    model = ConvolutionalVGG16(num_classes=fc8.shape[0])
    copy_trunk_and_fc(model, state_dict)
    model.fc8.load_state_dict(
        {"weight": fc_as_conv(fc8, fc8.shape[1], 1), "bias": state_dict["classifier.6.bias"]}
    )
    return model


def copy_trunk_and_fc(model: FCN | ConvolutionalVGG16, state_dict: StateDict) -> None:
    """Copy VGG16's convolutions into ``model.features`` and fc6/fc7 into its fc6/fc7 convolutions."""
    check_vgg16_state_dict(state_dict)
    features = {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
    model.features.load_state_dict(features)
    for layer, fc, in_channels, kernel in ((model.fc6, 0, 512, 7), (model.fc7, 3, 4096, 1)):
        weight = fc_as_conv(state_dict[f"classifier.{fc}.weight"], in_channels, kernel)
        layer.load_state_dict({"weight": weight, "bias": state_dict[f"classifier.{fc}.bias"]})


def init_from_vgg16(model: FCN, state_dict: StateDict) -> FCN:
    """Initialise an FCN from ImageNet VGG16: trunk and fc6/fc7 copied, fc8 dropped, scores stay zero."""
    copy_trunk_and_fc(model, state_dict)
    return model


def init_from_parent(child: nn.Module, parent: nn.Module) -> list[str]:
    """Staged initialisation: copy every parameter ``child`` shares with ``parent`` (same name, shape).

    FCN-16s from FCN-32s and FCN-8s from FCN-16s: the new skip scores keep their zero
    initialisation, so the child starts out computing what its parent computed. Returns the names
    that were not copied.
    """
    parent_state = parent.state_dict()
    child_state = child.state_dict()
    shared = {k: v for k, v in parent_state.items() if k in child_state and child_state[k].shape == v.shape}
    if not any(k.startswith("score_fr.") for k in shared):
        raise FcnpipeError("the parent model's class scores do not match the child's class count.")
    child.load_state_dict(shared, strict=False)
    return sorted(set(child_state) - set(shared))
