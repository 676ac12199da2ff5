from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fcn import build_model


def randomize(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Give every learnable parameter (score layers included) random values, in eval mode.

    The reference initialisation zeroes the score layers, which would make every output constant
    and every comparison between two outputs trivially true. Fixed bilinear upsamplers stay.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in filter(lambda p: p.requires_grad, model.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


@pytest.fixture(scope="session")
def random_fcn8s() -> nn.Module:
    """An FCN-8s (5 classes) whose every weight is random."""
    return randomize(build_model("fcn8s", 5), seed=1)


@pytest.fixture(scope="session")
def vgg16_state() -> dict[str, torch.Tensor]:
    """A VGG16 state dict in torchvision's layout, randomly initialised (nothing can be downloaded)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16().state_dict()


@pytest.fixture(scope="session")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory, vgg16_state: dict) -> Path:
    """The state dict saved under torchvision's file name, as a user would have it on disk."""
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save(vgg16_state, path)
    return path
