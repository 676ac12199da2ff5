from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

from fcn import build_model, describe, save_checkpoint


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


def write_tif(path: Path, data: np.ndarray, **profile: Any) -> Path:
    """Write a real GeoTIFF (bands first) with a UTM CRS and 0.5 m pixels unless told otherwise."""
    data = data if data.ndim == 3 else data[None]
    base = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(500000.0, 4500000.0, 0.5, 0.5),
    }
    with rasterio.open(path, "w", **(base | profile)) as dst:
        dst.write(data)
    return path


def noise_image(height: int, width: int, seed: int = 0, bands: int = 3) -> np.ndarray:
    """A uint8 image with structure at several scales (smooth blobs plus noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((bands, height // 16 + 2, width // 16 + 2))
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None], size=(height, width), mode="bilinear"
    )[0].numpy()
    return np.clip(smooth * 200 + rng.random((bands, height, width)) * 55, 0, 255).astype(np.uint8)


def save_model(path: Path, model: nn.Module, arch: str) -> Path:
    """Save ``model`` as a checkpoint with a measured card."""
    save_checkpoint(path, model, describe(model, arch))
    return path


@pytest.fixture(scope="session")
def fcn8s_checkpoint(tmp_path_factory: pytest.TempPathFactory, random_fcn8s: nn.Module) -> Path:
    """The random FCN-8s (5 classes) as a checkpoint file."""
    return save_model(tmp_path_factory.mktemp("fcn8s") / "fcn8s.pt", random_fcn8s, "fcn8s")


@pytest.fixture(scope="session")
def pointwise_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in model (one 1x1 convolution, 4 classes) for tests about plumbing, not the network."""
    model = randomize(build_model("pointwise", 4), seed=2, scale=1.0)
    return save_model(tmp_path_factory.mktemp("pointwise") / "pointwise.pt", model, "pointwise")
