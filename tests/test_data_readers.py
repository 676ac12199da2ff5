"""The dataset registry (``pipeline.training.data.readers``): names, specs, and ``fcnpipe data info``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fcn.errors import FcnpipeError
from fcnpipe.main import app
from pipeline.training.data import available_datasets, open_dataset
from tests.conftest import H, W, save_image


def test_every_family_is_registered() -> None:
    assert set(available_datasets()) >= {
        "camvid",
        "voc",
        "sbd",
        "siftflow",
        "siftflow-geo",
        "nyud",
        "nyud-hha",
        "pascal-context",
        "ortho",
        "vaihingen",
        "potsdam",
    }


def test_data_info_counts_each_split_and_names_what_does_not_read(camvid_root: Path) -> None:
    save_image(camvid_root / "val" / "c.png", np.zeros((H + 1, W, 3), dtype=np.uint8))  # label is H x W
    result = CliRunner().invoke(app, ["data", "info", f"camvid:{camvid_root}", "--check", "5"])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert lines[0] == f"train: 2 images (first 2 read, {W}x{H} px)"
    assert lines[1].startswith("val: not available:") and "val list" in lines[1]
    assert lines[2].startswith("test: not available:") and lines[3].startswith(
        "11 classes (ignore label 11): Sky,"
    )
    nothing = CliRunner().invoke(app, ["data", "info", f"voc:{camvid_root}"])
    assert (
        nothing.exit_code == 1 and "no split of voc:" in nothing.output and "Traceback" not in nothing.output
    )


def test_unknown_dataset_error_lists_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(FcnpipeError, match=r"camvid, .*voc"):
        open_dataset(f"cityscapes:{tmp_path}", "train")


def test_spec_without_a_path_is_an_error() -> None:
    with pytest.raises(FcnpipeError, match="NAME:PATH"):
        open_dataset("camvid", "train")


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FcnpipeError, match="does not exist"):
        open_dataset(f"voc:{tmp_path / 'nowhere'}", "train")
