"""Config files are data: YAML read safely into a mapping, pydantic errors turned into a sentence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fcn import FcnpipeError


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
