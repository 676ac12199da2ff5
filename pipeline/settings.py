"""The typed settings of each job kind: the single source of their options.

A model here is what a YAML config may hold (``configs/segment.yaml``), what the flows take as
parameters (Prefect shows and validates them), what the command line offers as options (with
each field's description as its help) and what the pipeline receives. Values are validated here,
once, into the project's error; what can only be checked against a model or a raster (a tile
that is a multiple of the network's alignment) is checked when a run is planned.

This module imports pydantic and yaml only: the command line reads it to answer ``--help`` and
option mistakes before torch or Prefect load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fcn.errors import FcnpipeError
from pipeline.home import home

Auto = Literal["auto"]
"""A value fcnpipe chooses: the tile and batch from the memory budget."""

Strategy = Literal["auto", "tiles", "stream"]
"""tiles: cores read with the halo on every side; stream: column strips streamed top to bottom
(``fcn.streaming``), the halo paid across only; auto: the one predicted to cost less on this scene
(planning decides, and a mosaic keeps the strategy it was begun with)."""

Output = Literal["labels", "probabilities", "logits"]
OUTPUTS: tuple[Output, ...] = ("labels", "probabilities", "logits")

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
AMOUNT = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")
MEMORY_UNITS = {
    "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """Read ``path`` as a YAML mapping (never executed); ``what`` names it in errors ("config")."""
    if not path.is_file():
        raise FcnpipeError(f"{what} {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FcnpipeError(f"{what} {path} is not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise FcnpipeError(f"{what} {path} must be a mapping of settings.")
    return data


def type_name(annotation: Any) -> str:
    """A readable name for a type: ``int or 'auto'`` for ``int | Literal["auto"] | None``."""
    if get_origin(annotation) is Annotated:
        return type_name(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return " or ".join(repr(value) for value in get_args(annotation))
    if isinstance(annotation, UnionType) or get_origin(annotation) is Union:
        members = [a for a in get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in members)  # optional: "str", not "str | None"
    if get_origin(annotation) is tuple:
        return f"comma-separated list of {type_name(get_args(annotation)[0]).replace(' or ', ', ')}"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("pathlib.", "").replace("typing.", "").replace("NoneType", "None")


def describe_value_error(exc: ValidationError, annotation: Any, value: Any) -> str:
    """What is wrong with one value: the validator's own words, else the type it should have."""
    said = [e["msg"].removeprefix("Value error, ") for e in exc.errors() if e["type"] == "value_error"]
    if said:
        return said[0]
    return f"{value!r} is not a valid {type_name(annotation)}"


def is_type_error(error: Any) -> bool:
    """Whether pydantic says the value has the wrong type (not that it breaks a bound)."""
    kind = str(error["type"])
    return kind.endswith(("_parsing", "_type")) or kind in ("literal_error", "enum")


def describe_errors(exc: ValidationError, model: type[BaseModel] | None = None, options: bool = False) -> str:
    """Pydantic's errors as one sentence, a part per field: ``halo: Input should be ≥ 0; …``.

    With ``options`` fields are named as options (``--tile-size``), and a value of the wrong type
    says which types the option takes (``--tile-size 'big' is not a valid int or 'auto'``).
    """
    by_field: dict[str, list[Any]] = {}
    for error in exc.errors():
        by_field.setdefault(".".join(str(p) for p in error["loc"][:1]), []).append(error)
    parts = []
    for name, errors in by_field.items():
        label = ("--" + name.replace("_", "-") if options else name) if name else ""
        field = model.model_fields.get(name) if model is not None else None
        if errors[0]["type"] == "extra_forbidden":
            parts.append(f"{label} is not a setting")
        elif field is not None and field.annotation is not None and all(map(is_type_error, errors)):
            parts.append(f"{label} {errors[0].get('input')!r} is not a valid {type_name(field.annotation)}")
        else:
            said = next((e for e in errors if not is_type_error(e)), errors[0])["msg"]
            parts.append(f"{label}: " * bool(label) + said.removeprefix("Value error, "))
    return "; ".join(parts)


DEFAULT_MODEL_NAME = "fcn8s-demo-synthetic-ortho.pt"
"""The default model's file (pipeline.training.default_model says what it is)."""


def default_model_path() -> Path:
    """Where the default model lives: ``$FCNPIPE_HOME/models`` or ``~/.cache/fcnpipe/models``."""
    return home() / "models" / DEFAULT_MODEL_NAME


def split_list(value: Any) -> Any:
    """Accept ``"a,b"`` as well as ``["a", "b"]`` for list-valued settings."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def parse_budget(text: str) -> tuple[Literal["share", "bytes"], float]:
    """``"60%"`` -> ("share", 0.6); ``"8GB"`` -> ("bytes", 8e9); one sentence for anything else."""
    value = text.strip()
    if value.endswith("%"):
        try:
            fraction = float(value[:-1]) / 100
        except ValueError:
            fraction = 0.0
        if not 0 < fraction <= 1:
            raise ValueError(f"{text!r} is not a share between 1% and 100%")
        return "share", fraction
    match = AMOUNT.fullmatch(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in MEMORY_UNITS:
        raise ValueError(f"{text!r} is not an amount of memory; give e.g. 8GB, 512MiB or 60%")
    return "bytes", float(match.group(1)) * MEMORY_UNITS[unit]


def known_device(value: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (whether it is there is checked when used)."""
    if not DEVICE.fullmatch(value):
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
    return value


Device = Annotated[str, AfterValidator(known_device)]


def is_url(text: str) -> bool:
    """``s3://…``, ``https://…``: a scheme of two letters or more before ``://`` (a drive letter is one)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.isalnum()


def existing_local(value: str) -> str:
    """A local input must exist (a URL is checked when it is opened)."""
    if not is_url(value) and not any(c in value for c in "*?[") and not Path(value).expanduser().exists():
        raise ValueError(f"{value} does not exist")
    return value


def writable_local(value: str | None) -> str | None:
    """A local output's nearest existing folder must be writable (a URL is checked when planned)."""
    if value is None or is_url(value):
        return value
    folder = Path(value).expanduser().absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{value} cannot be written: {folder} is not a folder this user may write to")
    return value


Source = Annotated[str, AfterValidator(existing_local)]
"""A path or URL to read: a local one must exist."""

Target = Annotated[str | None, AfterValidator(writable_local)]
"""A path or URL to write, or None for the default: a local one's folder must be writable."""


def existing_checkpoint(value: str | Path) -> str | Path:
    """A checkpoint file must exist (read when the run is planned); a URL is fetched when planned."""
    if isinstance(value, str) and "://" in value:
        return value
    path = Path(value)
    if not path.expanduser().is_file():
        raise ValueError(f"checkpoint {value} does not exist")
    return path


Checkpoint = Annotated[str | Path, AfterValidator(existing_checkpoint)]
"""A model checkpoint: a path on this machine, or an s3://, gs://, az:// or https:// URL."""


class Settings(BaseModel):
    """A job's settings: frozen, strict about unknown keys, and invalid values are one sentence."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use, not import

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            described = describe_errors(exc, type(self), options=True)
            raise FcnpipeError(f"invalid settings: {described}.") from None

    @classmethod
    def load(cls, config: Path | None = None, given: dict[str, Any] | None = None) -> Any:
        """The settings of a YAML config (if any) with the values ``given`` on top (``None``: not given).

        The config is the file's section for this job (``segment:``) or the whole file; paths in it
        are relative to it.
        """
        data: dict[str, Any] = {}
        if config is not None:
            loaded = read_mapping(config, "config")
            data = dict(loaded.get(cls.SECTION, loaded))
            for name in cls.PATHS:
                if data.get(name) is not None and "://" not in str(data[name]):
                    data[name] = config.parent / str(data[name])
        data |= {k: v for k, v in (given or {}).items() if v is not None}
        return cls(**data)

    SECTION: ClassVar[str] = ""  # a config file's section for this job, if it has one
    PATHS: ClassVar[tuple[str, ...]] = ()  # fields that are paths, relative to the config file


class SegmentSettings(Settings):
    """How a scene is segmented; every field is an option of both segment flows.

    ``recorded`` fields change the bytes written: they are kept in the mosaic (a resume must use
    the same) and in its STAC Item.
    """

    SECTION: ClassVar[str] = "segment"
    PATHS: ClassVar[tuple[str, ...]] = ("weights",)

    weights: Checkpoint | None = Field(
        None,
        description="The model checkpoint, a path or an s3://, gs://, az://, https:// URL (fetched once per "
        "machine); default: fcnpipe's default model (trained on first use).",
    )
    tile_size: int | Auto = Field(
        "auto",
        description="The output core of a tile in px (a multiple of the chunk and of the network's "
        "alignment), or auto: the tile of least compute whose memory fits --memory-budget. With "
        "--strategy stream: the width of a strip.",
        json_schema_extra={"recorded": True},
    )
    strategy: Strategy = Field(
        "auto",
        description="auto: the one predicted to cost less on this scene; tiles (each core read with "
        "the halo on every side); or stream (column strips streamed top to bottom through the "
        "network, the halo paid across only: less compute, the same mosaic).",
        json_schema_extra={"recorded": True},
    )
    halo: int | None = Field(
        None,
        ge=0,
        description="Pixels read around each core; default: the checkpoint's, which covers the "
        "receptive field so the mosaic is exact. Less is faster and may show seams.",
        json_schema_extra={"recorded": True},
    )
    chunk: int = Field(512, gt=0, description="The Zarr chunk in px; tiles are whole multiples of it.")
    block: int = Field(
        4,
        ge=1,
        description="Cores per side of one unit of work (a task, and what a resume skips).",
        json_schema_extra={"recorded": True},
    )
    batch_size: int | Auto = Field(
        "auto", description="Tiles per forward pass, or auto: 1 on a CPU and with an automatic tile."
    )
    memory_budget: str | None = Field(
        None,
        description="Memory a run may plan for: a share of what is free now (60%) or an amount "
        "(8GB); default 50% of the RAM available (split between --workers), 80% of a GPU's.",
    )
    device: Device = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    precision: Literal["bf16", "fp32"] = Field(
        "bf16",
        description="bf16 (autocast on CUDA; CPUs always run fp32) or fp32.",
        json_schema_extra={"recorded": True},
    )
    prefetch: int = Field(4, ge=1, description="Tiles read ahead on threads.")
    outputs: tuple[Output, ...] = Field(
        ("labels",),
        min_length=1,
        description="What the mosaic holds: labels, and any of probabilities, logits (comma-separated).",
    )
    logits_dtype: Literal["float16", "float32"] = Field(
        "float16", description="float16, or float32 to keep logits exactly as computed."
    )
    probabilities_dtype: Literal["uint8", "float16"] = Field(
        "uint8", description="uint8 (p = value / 254, 255 = nodata) or float16 (NaN = nodata)."
    )
    bands: tuple[int, ...] | None = Field(
        None, description="The raster bands that feed the model, e.g. 1,2,3; default: the colour bands."
    )
    value_range: tuple[float, float] | None = Field(
        None, description="LO,HI: raw values mapped linearly to 0-255 (needed for non-8-bit rasters)."
    )

    _split = field_validator("outputs", "bands", "value_range", mode="before")(split_list)

    @field_validator("tile_size", "batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be auto or a positive number")
        return value

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_budget(value)
        return value

    @field_validator("outputs")
    @classmethod
    def _labels_first(cls, value: tuple[Output, ...]) -> tuple[Output, ...]:
        return tuple(o for o in OUTPUTS if o in value or o == "labels")  # labels always, in one order

    @property
    def batch(self) -> int:
        """The batch once planning has chosen it."""
        assert isinstance(self.batch_size, int), "plan_scene chooses the batch"
        return self.batch_size

    @property
    def tile(self) -> int:
        """The tile once planning has chosen it."""
        assert isinstance(self.tile_size, int), "plan_scene chooses the tile"
        return self.tile_size

    def record(self) -> dict[str, Any]:
        """The settings that change the bytes written (kept in the mosaic and its STAC Item)."""
        kept = {
            name: getattr(self, name)
            for name, field in type(self).model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("recorded")
        }
        if kept["strategy"] == "tiles":  # as before strategies existed: mosaics begun then still resume
            kept.pop("strategy")
        return kept


class ClusterSettings(Settings):
    """Where the blocks of a run go; options of both segment flows."""

    workers: int = Field(0, ge=0, description="Run the blocks on this many local CPU worker processes "
                         "(0: in this process).")  # fmt: skip
    gpus: str | None = Field(
        None, description="Run the blocks on one local worker per GPU: a number of GPUs, or all."
    )
    dask_address: str | None = Field(
        None, description="Run the blocks on an existing Dask scheduler, e.g. tcp://host:8786 (with "
        "--gpus, on its workers that declare a GPU)."
    )  # fmt: skip

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: str | None) -> str | None:
        if value is not None and value != "all" and not (value.isdigit() and int(value) > 0):
            raise ValueError(f"{value!r} is neither a number of GPUs nor all")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ClusterSettings:
        if self.workers > 0 and self.gpus is not None:
            raise ValueError("--workers starts CPU workers and --gpus one worker per GPU; give one of them")
        return self


class TrainSettings(Settings):
    """How a network is trained; every field is an option of the train flow.

    ``None`` means "the preset's, else the default" for the options a preset sets (``--preset``):
    what an option given nowhere means is :data:`pipeline.training.stages.TRAIN_DEFAULTS`.
    """

    dataset: str | None = Field(None, description="The training data as NAME:PATH (fcnpipe data info "
                                "NAME:PATH checks it).")  # fmt: skip
    arch: str | None = Field(
        None, description="The network (fcnpipe weights archs lists them); default fcn8s."
    )
    init: str | None = Field(
        None,
        description="imagenet[:PATH], caffe-vgg16[:PATH], a checkpoint to start from, scratch, or "
        "streams:COLOUR.pt,HHA.pt (two FCN-32s that start fcn32s-color-hha's streams); default imagenet.",
    )
    recipe: str | None = Field(
        None, description="modern, heavy (the reference's), default, or a recipe YAML file; default modern."
    )
    class_weights: Literal["none", "median-frequency"] = Field(
        "none", description="none, or median-frequency (weights from the training split, as SegNet)."
    )
    adversarial: float = Field(0.0, ge=0, description="LAMBDA of Luc et al.'s adversarial term (0: none).")
    learn: Literal["all", "classifier"] | None = Field(
        None, description="all, or classifier: only the score layers learn (the paper's FCN-32s-fixed)."
    )
    loss_sampling: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep each stride-32 cell in the loss with this probability (the paper's).",
    )
    max_steps: int | None = Field(None, ge=1, description="Steps per stage.")
    epochs: int | None = Field(None, ge=1, description="Epochs of the training split per stage (instead of "
                               "--max-steps).")  # fmt: skip
    eval_every: int | None = Field(None, ge=1, description="Steps between validations; default: one epoch.")
    staged: bool = Field(True, description="Train FCN-16s and FCN-8s in stages from FCN-32s, as the paper.")
    device: Device = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    seed: int = Field(0, description="Random seed of initialisation, sampling and augmentation.")
    val_limit: int | None = Field(None, ge=1, description="Score only this many validation images.")
    train_split: str | None = Field(None, description="The split to train on; default train.")
    val_split: str | None = Field(
        None, description="The split that chooses the best checkpoint; default val."
    )
    val_dataset: str | None = Field(
        None, description="The validation data as NAME:PATH, if not DATASET (same classes)."
    )
