"""Plain YAML -> the schema's dataclasses: a safe loader, field-by-field conversion with errors that name
the file, the key, the value and what is allowed, and ``--set a.b=value`` overrides."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import MISSING
from typing import Any, Iterable, Mapping

import yaml

from refusion.config.schema import Recipe, RecipeError, TrainConfig

# ---------------------------------------------------------------------------------------------
# YAML

class _RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads ``3e-5`` as a float (YAML 1.2; YAML 1.1 needs ``3.0e-5``)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: no python object tags
    except yaml.constructor.ConstructorError as exc:
        tag = exc.problem or str(exc)
        raise RecipeError(
            f"{source}: refusing unsafe or unknown YAML tag ({tag.strip()}); recipes are plain "
            "YAML read with a safe loader, python object tags are not allowed") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: invalid YAML: {exc}") from None


# ---------------------------------------------------------------------------------------------
# building the dataclasses

class Context:
    """The recipe's source and the overrides applied to it, for error messages."""

    def __init__(self, source: str, overrides: dict[str, str] | None = None):
        self.source = source
        self.overrides = overrides or {}

    def fail(self, path: str, message: str) -> typing.NoReturn:
        note = ""
        for key, text in self.overrides.items():
            if path == key or path.startswith(key + "."):
                note = f" (set by override {text!r})"
        raise RecipeError(f"{self.source}: {message}{note}")


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key_message(key: Any, section: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    where = f"in section {section!r}" if section else "at the top level"
    return (f"unknown key {key!r} {where}{did_you_mean(key, allowed)}; "
            f"allowed keys: {', '.join(allowed)}")


def _schema_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _describe(tp: Any) -> str:
    inner, optional = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner is bool:
        text = "true or false"
    elif inner is int:
        text = "an integer"
    elif inner is float:
        text = "a number"
    elif inner is str:
        text = "a string"
    elif origin is tuple:
        text = f"a list of {len(typing.get_args(inner))} numbers"
    elif origin is list:
        text = "a list"
    elif origin is dict or dataclasses.is_dataclass(inner):
        text = "a mapping"
    else:
        text = str(inner)
    return f"{text} or null" if optional else text


def _convert(value: Any, tp: Any, path: str, ctx: Context) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None and optional:
        return None
    if dataclasses.is_dataclass(inner):
        return build(inner, value, path, ctx)
    origin = typing.get_origin(inner)
    ok = False
    if origin in (typing.Union, types.UnionType):      # e.g. bool | str: the first member that takes it
        members = typing.get_args(inner)
        for member in members:
            if (member is bool) == isinstance(value, bool) and isinstance(value, member):
                return value
        ctx.fail(path, f"{path} must be {' or '.join(_describe(m) for m in members)}, got {value!r} "
                       f"({type(value).__name__})")
    if inner is bool:
        ok = isinstance(value, bool)
    elif inner is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif inner is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif inner is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        items = typing.get_args(inner)
        ok = isinstance(value, (list, tuple)) and len(value) == len(items)
        if ok:
            return tuple(_convert(v, t, f"{path}[{i}]", ctx) for i, (v, t) in
                         enumerate(zip(value, items)))
    elif origin is list:
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    elif origin is dict:
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        value = copy.deepcopy(dict(value)) if ok else value
    if not ok:
        ctx.fail(path, f"{path} must be {_describe(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _check_value(value: Any, f: dataclasses.Field, path: str, ctx: Context) -> None:
    if value is None:
        return
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        ctx.fail(path, f"{path} must be one of {', '.join(choices)}; got {value!r}"
                       f"{did_you_mean(value, choices)}")
    check = f.metadata.get("check")
    if check and not check[1](value):
        ctx.fail(path, f"{path} must be {check[0]}, got {value!r}")


def build(cls: type, raw: Any, path: str, ctx: Context) -> Any:
    if not isinstance(raw, Mapping):
        what = f"section {path!r}" if path else "a recipe"
        ctx.fail(path, f"{what} must be a mapping of keys, got {raw!r} ({type(raw).__name__})")
    fields = _schema_fields(cls)
    for key in raw:
        if key not in fields:
            ctx.fail(f"{path}.{key}" if path else str(key), _unknown_key_message(key, path, fields))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in raw:
            value = raw[name]
            if cls is TrainConfig and name == "mixed_precision" and value is False:
                value = "no"  # YAML 1.1 reads an unquoted `no` as false
            values[name] = _convert(value, hints[name], key_path, ctx)
            _check_value(values[name], f, key_path, ctx)
        elif f.default is MISSING and f.default_factory is MISSING:
            ctx.fail(key_path, f"missing required key {key_path!r}")
    return cls(**values)


# ---------------------------------------------------------------------------------------------
# overrides

def _parse_override(text: str, source: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise RecipeError(f"{source}: override {text!r} must look like section.key=value "
                          "(e.g. train.total_iters=200)")
    return parts, parse_yaml(value, f"{source}: override {text!r}")


def _check_override_path(parts: list[str], text: str, source: str) -> None:
    cls: Any = Recipe
    for i, part in enumerate(parts):
        section = ".".join(parts[:i])
        if cls is dict:  # free-form mapping (model.args): checked later against the model
            return
        if cls is None:
            raise RecipeError(f"{source}: override {text!r}: {section} is a value, not a section")
        fields = _schema_fields(cls)
        if part not in fields:
            raise RecipeError(f"{source}: override {text!r}: "
                              + _unknown_key_message(part, section, fields))
        inner, _ = _unwrap_optional(typing.get_type_hints(cls)[part])
        if dataclasses.is_dataclass(inner):
            cls = inner
        elif typing.get_origin(inner) is dict:
            cls = dict
        else:
            cls = None


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str],
                    source: str = "<dict>") -> tuple[dict[str, Any], dict[str, str]]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a raw recipe mapping.

    Returns the new mapping and {dotted key: override text}; the input is not modified.
    """
    raw = copy.deepcopy(dict(raw))
    applied: dict[str, str] = {}
    for text in overrides:
        parts, value = _parse_override(text, source)
        _check_override_path(parts, text, source)
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        applied[".".join(parts)] = text
    return raw, applied


