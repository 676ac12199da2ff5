"""What every reader shares (``pipeline.training.data.base``): a sample's image and label agree in size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fcn.errors import FcnpipeError
from pipeline.training.data import open_dataset
from tests.conftest import H, W, save_image


def test_image_and_label_of_different_sizes_are_reported(camvid_root: Path) -> None:
    save_image(camvid_root / "val" / "c.png", np.zeros((H + 1, W, 3), dtype=np.uint8))
    with pytest.raises(FcnpipeError, match="val list"):
        open_dataset(f"camvid:{camvid_root}", "val")[0]
