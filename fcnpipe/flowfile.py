"""A flow file's options, read without running it, and ``--option value`` words turned into its parameters.

The command line answers ``--help`` and every option mistake before the flow's module (and with it
torch and Prefect) is imported: the flow function's signature and docstring are read from the
file's syntax tree, and only the modules its annotations and defaults name are imported (the
settings models in ``pipeline.settings``, which need pydantic alone). A parameter typed by a
settings model (``SegmentSettings``) offers each of the model's fields as an option, with the
field's description as its help, and ``--config FILE`` for the model's YAML section; the flow
then receives the model, validated.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fcn.errors import FcnpipeError
from pipeline.settings import Settings, describe_value_error, type_name

CONFIG = "config"
"""The option that reads a flow's settings from a YAML file (``--config``)."""


@dataclass(frozen=True)
class Option:
    """One option of a flow: a parameter, or a field of a settings model the flow takes."""

    name: str
    annotation: Any
    default: Any
    required: bool
    help: str
    model: str | None = None  # the flow parameter whose settings model has this field

    @property
    def flag(self) -> str:
        """``--tile-size`` for ``tile_size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        """Booleans are switches: ``--overwrite`` alone means true."""
        return self.annotation is bool


@dataclass(frozen=True)
class FlowFile:
    """What a flow file offers, read from its source."""

    path: Path
    function: str
    text: str  # the docstring before ``Args:``
    options: tuple[Option, ...]
    models: tuple[tuple[str, type[Settings]], ...]  # (parameter, settings model) pairs

    @property
    def configurable(self) -> type[Settings] | None:
        """The settings model ``--config`` fills in, if the flow takes one with a config section."""
        return next((model for _, model in self.models if model.SECTION), None)


def module_name(path: Path) -> tuple[str, Path | None]:
    """The name a flow file is imported under, and the folder to put on the path for it.

    Inside a package (e.g. ``flows/``) by its dotted name, so Dask workers can import it too.
    """
    path = path.resolve()
    if (path.parent / "__init__.py").is_file():
        return f"{path.parent.name}.{path.stem}", path.parent.parent
    return path.stem, None


class LazyNames(dict[str, Any]):
    """The names a module's top-level imports bind, imported only when an expression uses one."""

    def __init__(self, tree: ast.Module) -> None:
        super().__init__()
        self.sources: dict[str, tuple[str, str | None]] = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.sources[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.sources[alias.asname or alias.name.partition(".")[0]] = (alias.name, None)

    def __missing__(self, name: str) -> Any:
        if name in self.sources:
            module, attribute = self.sources[name]
            loaded = importlib.import_module(module)
            value = loaded if attribute is None else getattr(loaded, attribute)
        elif hasattr(builtins, name):
            value = getattr(builtins, name)
        else:
            raise KeyError(name)
        self[name] = value
        return value


def is_flow_decorator(node: ast.expr) -> bool:
    """``@flow``, ``@flow(...)``, ``@prefect.flow(...)``."""
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "flow") or (
        isinstance(target, ast.Attribute) and target.attr == "flow"
    )


def read_flow(path: Path) -> FlowFile:
    """Read a flow file's flow (the one named like the file, else the only one) without running it."""
    if not path.is_file():
        raise FcnpipeError(f"flow file {path} does not exist.")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise FcnpipeError(f"{path} is not a Python file ({exc.msg}, line {exc.lineno}).") from None
    found = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and any(map(is_flow_decorator, node.decorator_list))
    }
    function = found.get(path.stem) or (next(iter(found.values())) if len(found) == 1 else None)
    if function is None:
        listed = ", ".join(found) or "none"
        raise FcnpipeError(f"{path} must define a flow named {path.stem} (found: {listed}).")
    names = LazyNames(tree)
    text, described = docstring_parts(ast.get_docstring(function) or "")
    options: list[Option] = []
    models: list[tuple[str, type[Settings]]] = []
    arguments = function.args
    defaults = [None] * (len(arguments.args) - len(arguments.defaults)) + list(arguments.defaults)
    for argument, default_node in zip(arguments.args, defaults, strict=True):
        annotation = evaluate(argument.annotation, names) if argument.annotation else str
        default = evaluate(default_node, names) if default_node is not None else None
        if isinstance(annotation, type) and issubclass(annotation, Settings):
            models.append((argument.arg, annotation))
            options += model_options(argument.arg, annotation)
            continue
        help_text = described.get(argument.arg, "")
        options.append(Option(argument.arg, annotation, default, default_node is None, help_text))
    flow = FlowFile(path, function.name, text, tuple(options), tuple(models))
    if flow.configurable is not None:
        config = Option(CONFIG, Path | None, None, False,
                        f"A YAML file of {flow.configurable.SECTION} settings (configs/"
                        f"{flow.configurable.SECTION}.yaml); options given here win.")  # fmt: skip
        flow = FlowFile(path, function.name, text, (*options, config), tuple(models))
    return flow


def evaluate(node: ast.expr, names: LazyNames) -> Any:
    """The value of an annotation or a default, in the module's names (imported on use)."""
    return eval(compile(ast.Expression(node), "<flow>", "eval"), {"__builtins__": builtins}, names)


def model_options(parameter: str, model: type[Settings]) -> list[Option]:
    """Each field of a settings model as an option."""
    return [
        Option(name, field.annotation, field.default, False, field.description or "", parameter)
        for name, field in model.model_fields.items()
    ]


def import_flow(flow: FlowFile) -> Any:
    """Import the flow file (torch, Prefect and all) and return its flow object."""
    name, root = module_name(flow.path)
    if root is not None:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        module: ModuleType = importlib.import_module(name)
    else:
        spec = importlib.util.spec_from_file_location(name, flow.path.resolve())
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return getattr(module, flow.function)


def parse_words(words: list[str], flow: FlowFile, command: str) -> dict[str, str | None]:
    """``["--tile-size", "512", "--overwrite"]`` -> ``{"tile_size": "512", "overwrite": "true"}``."""
    by_flag = {option.flag: option for option in flow.options}
    given: dict[str, str | None] = {}
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, inline = word.partition("=")
        option = by_flag.get(flag)
        if option is None:
            raise FcnpipeError(unknown_option(word, flag, list(by_flag), f"fcnpipe {command} {flow.path}"))
        if eq:
            raw: str | None = inline
        elif option.is_switch and (i + 1 == len(words) or words[i + 1].startswith("--")):
            raw = "true"
        elif i + 1 < len(words):
            raw = words[i + 1]
            i += 1
        else:
            raise FcnpipeError(f"option {flag} needs a value.")
        given[option.name] = raw
        i += 1
    return given


def unknown_option(word: str, flag: str, flags: list[str], usage: str) -> str:
    """One sentence for an unknown option: the closest one that exists, else where to look."""
    close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
    if close:
        return f"unknown option {word!r}; did you mean {close[0]}?"
    if not flag.startswith("--"):
        return f"unexpected {word!r}: options are written --name value (`{usage} --help` lists them)."
    return f"unknown option {word!r} (`{usage} --help` lists them)."


def parse_options(words: list[str], flow: FlowFile, command: str = "run") -> dict[str, Any]:
    """The flow's keyword arguments from the command line's words, validated.

    Settings models are built from ``--config`` (if given) and their fields' options; each other
    parameter is validated by its own type (a local input must exist, a local output's folder must
    be writable), before anything heavy is imported.
    """
    given = parse_words(words, flow, command)
    values: dict[str, Any] = {}
    for option in flow.options:
        if option.model is not None or option.name == CONFIG or option.name not in given:
            continue
        raw = given[option.name]
        try:
            values[option.name] = TypeAdapter(option.annotation).validate_python(raw)
        except ValidationError as exc:
            problem = describe_value_error(exc, option.annotation, raw)
            raise FcnpipeError(f"{option.flag} {problem}.") from None
    config_file = given.get(CONFIG)
    config = Path(config_file) if config_file else None
    for parameter, model in flow.models:
        fields = {o.name: given[o.name] for o in flow.options if o.model == parameter and o.name in given}
        values[parameter] = model.load(config if model.SECTION else None, fields)
    missing = [o.flag for o in flow.options if o.required and o.name not in values]
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


def help_rows(flow: FlowFile, config: Path | None = None) -> list[tuple[str, str, str, str]]:
    """(option, type, default, description) rows for ``--help``; defaults after ``config``, if given."""
    model = flow.configurable
    configured = model.load(config).model_dump() if model is not None and config is not None else {}
    rows = []
    for option in flow.options:
        if option.required:
            default = "required"
        elif option.model is not None and option.name in configured:
            default = shown_default(configured[option.name])
        else:
            default = shown_default(option.default)
        rows.append((option.flag, type_name(option.annotation), default, option.help))
    return rows
