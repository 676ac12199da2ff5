"""Reading the files datasets are made of: split lists, images, palette PNGs and MATLAB files.

Each reader turns a missing or malformed file into an ``FcnpipeError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io  # type: ignore[import-untyped]
from numpy.typing import NDArray
from PIL import Image

from fcn.errors import FcnpipeError
from pipeline.training.data.base import ImageArray, LabelArray


def read_lines(path: Path) -> list[str]:
    """Read the non-blank lines of a text file, stripped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FcnpipeError(f"missing file {path}; the dataset folder is incomplete.") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


SHIPPED_SPLITS = Path(__file__).with_name("splits")
"""The reference release's split lists fcnpipe ships (``splits/README.md`` says which and whence)."""


def shipped_split(dataset: str, split: str) -> list[Path]:
    """The shipped list for ``dataset``'s ``split``, as a candidate for :func:`split_file` (absolute)."""
    path = SHIPPED_SPLITS / dataset / f"{split}.txt"
    return [path] if path.is_file() else []


def split_file(dataset: str, root: Path, split: str, candidates: Sequence[Path]) -> Path:
    """Find the first existing split list among ``candidates`` (paths relative to ``root``)."""
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    looked = " or ".join(str(c) for c in candidates)
    raise FcnpipeError(f"{dataset} at {root} has no {split!r} split: {looked} does not exist.")


def require_dirs(dataset: str, root: Path, *names: str) -> None:
    """Raise unless every named folder exists under ``root``."""
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        raise FcnpipeError(
            f"{root} is not a {dataset} folder: it lacks {', '.join(f'{m}/' for m in missing)}."
        )


def read_rgb(path: Path) -> ImageArray:
    """Read an image file as H x W x 3 uint8 RGB (grey and palette images are expanded)."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FcnpipeError(f"missing image {path}; the dataset folder is incomplete.") from None


def read_index_png(path: Path) -> LabelArray:
    """Read a single-channel or palette PNG as its stored indices (not the palette's colours)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16"):
                raise FcnpipeError(
                    f"label {path} is a {image.mode} image; labels must be palette or "
                    "single-channel PNGs holding class indices."
                )
            return np.array(image, dtype=np.int64)
    except FileNotFoundError:
        raise FcnpipeError(f"missing label {path}; the dataset folder is incomplete.") from None


def load_mat(path: Path, key: str) -> NDArray[Any]:
    """Read the variable ``key`` of a MATLAB (v5) file."""
    try:
        contents = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise FcnpipeError(f"missing label {path}; the dataset folder is incomplete.") from None
    except NotImplementedError:
        raise FcnpipeError(f"{path} is a MATLAB v7.3 file; re-save it as v7.") from None
    if key not in contents:
        raise FcnpipeError(f"{path} has no variable {key!r}; is it from another dataset?")
    value: NDArray[Any] = contents[key]
    return value
