"""Load a flow file and turn ``--option value`` words into validated flow parameters.

Kept free of Prefect imports: a flow is anything with ``.fn`` (the wrapped function) and ``.name``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import TypeAdapter, ValidationError

from fcn import FcnpipeError


@dataclass(frozen=True)
class Param:
    """One flow parameter as an option."""

    name: str
    annotation: Any
    default: Any
    required: bool

    @property
    def option(self) -> str:
        """``--tile-size`` for ``tile_size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def is_flag(self) -> bool:
        """Booleans are flags: ``--overwrite`` alone means true."""
        return self.annotation is bool


def import_flow_module(path: Path) -> ModuleType:
    """Import a flow file; inside a package (e.g. ``flows/``) by its dotted name, so workers can too."""
    if not path.is_file():
        raise FcnpipeError(f"flow file {path} does not exist.")
    path = path.resolve()
    if (path.parent / "__init__.py").is_file():
        root = str(path.parent.parent)
        if root not in sys.path:
            sys.path.insert(0, root)
        return importlib.import_module(f"{path.parent.name}.{path.stem}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise FcnpipeError(f"{path} is not a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def find_flow(module: ModuleType, is_flow: Any) -> Any:
    """The module's flow: the one named like the file, else the only one defined there."""
    flows = {
        name: obj
        for name, obj in vars(module).items()
        if is_flow(obj) and obj.fn.__module__ == module.__name__
    }
    stem = module.__name__.rsplit(".", 1)[-1]
    if stem in flows:
        return flows[stem]
    if len(flows) == 1:
        return next(iter(flows.values()))
    raise FcnpipeError(
        f"{module.__file__} must define a flow named {stem} (found: {', '.join(flows) or 'none'})."
    )


def flow_params(fn: Any) -> list[Param]:
    """The flow function's parameters, with resolved type hints."""
    hints = get_type_hints(fn)
    params = []
    for p in inspect.signature(fn).parameters.values():
        required = p.default is inspect.Parameter.empty
        params.append(Param(p.name, hints.get(p.name, str), None if required else p.default, required))
    return params


def parse_options(words: list[str], params: list[Param]) -> dict[str, Any]:
    """``["--tile-size", "512", "--overwrite"]`` -> ``{"tile_size": 512, "overwrite": True}``, validated."""
    by_option = {p.option: p for p in params}
    accepted = ", ".join(by_option)
    values: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        option, eq, inline = word.partition("=")
        param = by_option.get(option)
        if param is None:
            raise FcnpipeError(f"unknown option {word!r}; this flow accepts: {accepted}.")
        if eq:
            raw: str | None = inline
        elif param.is_flag and (i + 1 == len(words) or words[i + 1].startswith("--")):
            raw = "true"
        elif i + 1 < len(words):
            raw = words[i + 1]
            i += 1
        else:
            raise FcnpipeError(f"option {option} needs a value.")
        try:
            values[param.name] = TypeAdapter(param.annotation).validate_python(raw)
        except ValidationError:
            raise FcnpipeError(f"{option} {raw!r} is not a valid {type_name(param.annotation)}.") from None
        i += 1
    missing = [p.option for p in params if p.required and p.name not in values]
    if missing:
        raise FcnpipeError(f"missing required option {', '.join(missing)}.")
    return values


def parse_interval(text: str) -> timedelta:
    """``90``, ``30s``, ``10m``, ``2h`` or ``1d`` as a duration; one sentence if it is none of them."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    number, unit = (value[:-1], value[-1]) if value[-1:] in units else (value, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise FcnpipeError(f"--interval {text!r} is not a duration; give seconds or e.g. 30s, 10m, 2h, 1d.")
    return timedelta(seconds=seconds)


def type_name(annotation: Any) -> str:
    """A readable name for a parameter's type: ``int or 'auto'`` for ``int | Literal["auto"] | None``."""
    if get_origin(annotation) is Literal:
        return " or ".join(repr(value) for value in get_args(annotation))
    if isinstance(annotation, UnionType) or get_origin(annotation) is Union:
        members = [a for a in get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in members)  # optional: "str", not "str | None"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("pathlib.", "").replace("typing.", "").replace("NoneType", "None")


def docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """A docstring's text before ``Args:`` and its Google-style argument descriptions, by name.

    The same section Prefect reads for its UI, so the command line and the UI say the same.
    """
    lines = inspect.cleandoc(doc).splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), len(lines))
    described: dict[str, str] = {}
    name = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        if not line.startswith(" ") and not line.startswith("\t"):
            break  # the next section
        key, colon, text = line.strip().partition(":")
        if colon and key.isidentifier() and len(line) - len(line.lstrip()) <= 4:
            name = key
            described[name] = text.strip()
        elif name is not None:
            described[name] += " " + line.strip()
    return "\n".join(lines[:start]).strip(), described


def shown_default(value: Any) -> str:
    """An option's default as a user would type it."""
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "—" if value is None else str(value)


def describe_params(
    params: list[Param], descriptions: dict[str, str], defaults: dict[str, Any] | None = None
) -> list[tuple[str, str, str, str]]:
    """(option, type, default, description) rows for ``--help``.

    ``defaults`` are what an option left out means where the flow's own default is ``None``
    (e.g. the config file's value).
    """
    rows = []
    for p in params:
        if p.required:
            default = "required"
        elif p.default is None:  # the config's value, or what the description says
            default = shown_default(defaults[p.name]) if defaults and p.name in defaults else "—"
        else:
            default = shown_default(p.default)
        rows.append((p.option, type_name(p.annotation), default, descriptions.get(p.name, "")))
    return rows
