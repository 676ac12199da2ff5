"""Typed job configs: YAML data validated into pydantic models (never executed), merged with options.

Config files are data: YAML read safely into a mapping, pydantic errors turned into a sentence.

Precedence: an option given on the command line, then the config file, then the defaults here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fcn import FcnpipeError
from pipeline.tiling.segment import SegmentSettings, Strategy


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


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as one sentence: ``field: problem; field: problem``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())


DEFAULT_MODEL_NAME = "fcn8s-synthetic-ortho.pt"


def default_model_path() -> Path:
    """Where the default model lives: ``$FCNPIPE_HOME/models`` or ``~/.cache/fcnpipe/models``."""
    home = os.environ.get("FCNPIPE_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "fcnpipe"
    return base / "models" / DEFAULT_MODEL_NAME


def split_list(value: Any) -> Any:
    """Accept ``"a,b"`` as well as ``["a", "b"]`` for list-valued settings."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class SegmentConfig(BaseModel):
    """The ``segment`` job: what configs/segment.yaml may hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: Path | None = None
    tile_size: int | Literal["auto"] = "auto"
    strategy: Strategy = "tiles"
    halo: int | None = Field(None, ge=0)
    chunk: int = Field(512, gt=0)
    block: int = Field(4, ge=1)
    batch_size: int | Literal["auto"] = "auto"
    memory_budget: str | None = None
    device: str = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    prefetch: int = Field(4, ge=1)
    outputs: tuple[Literal["labels", "probabilities", "logits"], ...] = ("labels",)
    logits_dtype: Literal["float16", "float32"] = "float16"
    probabilities_dtype: Literal["uint8", "float16"] = "uint8"
    bands: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = None

    _split = field_validator("outputs", "bands", "value_range", mode="before")(split_list)

    def settings(self) -> SegmentSettings:
        """The pipeline's settings from this config."""
        return SegmentSettings(
            tile_size=None if self.tile_size == "auto" else self.tile_size, strategy=self.strategy,
            halo=self.halo, chunk=self.chunk, block=self.block, memory_budget=self.memory_budget,
            batch_size=None if self.batch_size == "auto" else self.batch_size,
            device=self.device, precision=self.precision,
            prefetch=self.prefetch, outputs=self.outputs, logits_dtype=self.logits_dtype,
            probabilities_dtype=self.probabilities_dtype, bands=self.bands, value_range=self.value_range,
        )  # fmt: skip


def load_segment_config(path: Path | None, overrides: dict[str, Any]) -> SegmentConfig:
    """Read a YAML config (if any) and apply the options given (``None`` means not given)."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_mapping(path, "config")
        data = loaded.get("segment", loaded)
        if data.get("weights") is not None:  # relative to the config file
            data["weights"] = path.parent / str(data["weights"])
    data |= {k: v for k, v in overrides.items() if v is not None}
    try:
        return SegmentConfig(**data)
    except ValidationError as exc:
        raise FcnpipeError(f"invalid segment settings: {describe_errors(exc)}.") from None
