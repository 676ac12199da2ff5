"""The reference's training protocols as presets: typed YAML data (configs/presets.yaml), never code.

A preset names one model folder of the FCN reference release (github.com/shelhamer/fcn.berkeleyvision.org)
that fcnpipe can express, and sets the train flow's options as that folder trains it: the data and
its splits (training and validation may be two datasets), the network (FCN-16s and FCN-8s are
trained in the flow's stages from FCN-32s, as the release does), the start (the Caffe VGG16,
which also picks the dataset's input normalisation), the recipe (whose per-dataset steps and rates
are the folder's) and how often to validate. Options given on the command line win over it.

Dataset specs are templates: ``{data}`` stands for the folder given as ``--data DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, TypeAdapter, ValidationError

from fcn.errors import FcnpipeError
from pipeline.settings import describe_errors, read_mapping
from pipeline.training.downloads import Progress
from pipeline.training.recipes import CONFIGS
from pipeline.training.sources import fetch_dataset

PRESETS = CONFIGS / "presets.yaml"


class Preset(BaseModel):
    """One reference model folder's protocol, as train flow options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: str | None = None
    """The model folder of the reference release it follows (none: a protocol of fcnpipe's own)."""
    arch: str
    dataset: str
    """``NAME:PATH`` of the training data, ``{data}`` standing for ``--data DIR``."""
    data: str
    """What ``--data DIR`` must hold, in words (said when no data is given)."""
    train_split: str
    val_dataset: str | None = None
    """``NAME:PATH`` of the validation data when it is another dataset, as ``dataset``."""
    val_split: str
    init: str | None = "caffe-vgg16"
    """The start; none where the folder starts from models trained first (``init_from`` says which)."""
    init_from: str | None = None
    """What to pass as ``--init`` when the preset has no start of its own, in words."""
    recipe: str = "heavy"
    eval_every: int = Field(gt=0)
    """The reference's steps between scorings (solve.py's ``solver.step(N)``)."""
    paper: str
    """The paper's figure to compare with (README's table)."""
    release: str
    """The release README's figure for its own model of this folder."""
    max_steps: PositiveInt | None = None
    """Steps per stage, for a recipe with none of its own for the dataset (``modern``)."""
    fetch: dict[str, str] = Field(default_factory=dict)
    """Folders of ``--data DIR`` and the dataset source (``fcnpipe data fetch NAME``) that fills each:
    fetched, checked and unpacked before training when the folder does not exist."""

    def options(self, name: str, data: Path | None, given: dict[str, Any]) -> dict[str, Any]:
        """The flow options this preset sets, its ``{data}`` filled in; ``given`` options win.

        A template left to fill without ``data`` is one sentence saying what to pass.
        """
        values: dict[str, Any] = {
            "arch": self.arch, "init": self.init, "recipe": self.recipe,
            "dataset": self.dataset, "train_split": self.train_split, "val_dataset": self.val_dataset,
            "val_split": self.val_split, "eval_every": self.eval_every, "max_steps": self.max_steps,
        }  # fmt: skip
        values |= {k: v for k, v in given.items() if v is not None}
        if values["init"] is None:
            raise FcnpipeError(
                f"the {name} preset starts from models trained first: pass --init {self.init_from}."
            )
        for key in ("dataset", "val_dataset"):
            spec = values[key]
            if isinstance(spec, str) and "{data}" in spec:
                if data is None:
                    raise FcnpipeError(
                        f"the {name} preset reads its data from --data DIR, {self.data}; or give "
                        "--dataset NAME:PATH" + (" and --val-dataset NAME:PATH." if self.val_dataset else ".")
                    )
                values[key] = spec.replace("{data}", str(data))
        return values


def fetch_missing(
    preset: Preset, data: Path, used: list[str], *, base: str | None = None, progress: Progress | None = None
) -> list[str]:
    """Fetch the preset's datasets whose folders under ``data`` are missing; one line each.

    Only those that a dataset spec of the run (``used``: ``NAME:PATH``) still reads: an option
    given in place of the preset's data fetches nothing.
    """
    fetched = []
    for folder, name in preset.fetch.items():
        wanted = any(spec.partition(":")[2].startswith(str(data / folder)) for spec in used)
        if wanted and not (data / folder).exists():
            source = fetch_dataset(name, data / folder, base=base, progress=progress)
            fetched.append(f"fetched {name} into {data / folder} (licence: {source.licence}).")
    return fetched


def load_presets(path: Path = PRESETS) -> dict[str, Preset]:
    """Read and validate every preset of ``path``."""
    try:
        return TypeAdapter(dict[str, Preset]).validate_python(read_mapping(path, "presets file"))
    except ValidationError as exc:
        raise FcnpipeError(f"invalid preset in {path}: {describe_errors(exc)}.") from None


def find_preset(name: str) -> Preset:
    """The preset ``name``; an unknown name is a sentence listing the known ones."""
    presets = load_presets()
    if name not in presets:
        raise FcnpipeError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}.")
    return presets[name]
