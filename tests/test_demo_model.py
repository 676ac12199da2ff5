"""The demonstration model (``fcn8s-demo``): FCN-8s's geometry, a small fraction of its size."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fcn import build_model, measure_receptive_field
from fcn.registry import architecture
from tests.conftest import randomize
from tests.test_architectures import ODD_SIZES, assert_tiles_stitch

DEMO = "fcn8s-demo"


def geometry(model: nn.Module) -> list[tuple[str, str, object, object, object, object]]:
    """Every layer's name, type, kernel, stride, padding and rounding: what sizes and fields depend on."""
    return [
        (
            name,
            type(layer).__name__,
            *(getattr(layer, a, None) for a in ("kernel_size", "stride", "padding", "ceil_mode")),
        )
        for name, layer in model.named_modules()
        if name
    ]


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_it_is_fcn8s_layer_for_layer_only_narrower() -> None:
    demo, full = build_model(DEMO, 6), build_model("fcn8s", 6)
    assert geometry(demo) == geometry(full)
    assert parameters(demo) < parameters(full) / 100
    spec = architecture(DEMO)
    assert spec.imagenet is None and spec.published_params_m is None  # from scratch only, no paper figure


def test_it_has_fcn8s_s_receptive_field_and_alignment() -> None:
    demo, full = build_model(DEMO, 6), build_model("fcn8s", 6)
    assert demo.total_stride == full.total_stride == 32
    assert measure_receptive_field(demo) == measure_receptive_field(full)
    assert measure_receptive_field(demo, phases=1) == measure_receptive_field(full, phases=1)


def test_output_shape_equals_input_shape_on_odd_sizes() -> None:
    model = randomize(build_model(DEMO, 3))
    with torch.no_grad():
        for h, w in ODD_SIZES:
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, 3, h, w)
            assert torch.isfinite(out).all()


def test_tiles_with_a_whole_halo_inside_the_scene_stitch_to_the_whole_image_pass(tmp_path: Path) -> None:
    # 700 x 650 px in tiles of 128 with the 256 px halo: the middle tiles read their whole halo from the
    # scene, which test_architectures.py's scene (97 x 131) is too small for. Cheap for this network.
    assert_tiles_stitch(DEMO, tmp_path, 700, 650, tile=128)
