"""The studio's methods as the agent's tools: each described once from its settings type (the
same description API clients get) and called with JSON arguments that are checked against that
type before anything runs."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from studio.catalogue import Catalogue
from studio.errors import InvalidRequest
from studio.generation import model_sampling
from studio.params import SamplingSettings, checked, params
from studio.runner import Method, methods


def tools() -> dict[str, Method]:
    """Every registered method is a tool: a new tab's method is a new tool, no agent code."""
    return methods()


def describe_tools() -> str:
    """Every tool with its settings and inputs, for a language model's system prompt."""
    return "\n\n".join(method.describe() for method in tools().values())


def json_schema(kind: Any) -> dict[str, Any]:
    """The JSON Schema of a settings type (or one field's type): what an MCP client validates a
    call against, from the same dataclass the tool is checked with."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        return json_schema(options[0]) if len(options) == 1 else {"anyOf": [json_schema(o) for o in options]}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(kind))}
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints, declared = typing.get_type_hints(kind), params(kind)
        properties: dict[str, Any] = {}
        required = []
        for item in dataclasses.fields(kind):
            schema = json_schema(hints[item.name])
            if item.name in declared:
                known = declared[item.name]
                schema["description"] = known.label + (f": {known.info}" if known.info else "")
                schema |= {"default": known.default}
                if known.minimum is not None and known.maximum is not None:
                    schema |= {"minimum": known.minimum, "maximum": known.maximum}
            elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                required.append(item.name)
            properties[item.name] = schema
        return {"type": "object", "properties": properties, "required": required}
    if origin is tuple:
        arguments = [argument for argument in typing.get_args(kind) if argument is not Ellipsis]
        items = json_schema(arguments[0]) if arguments else {}
        fixed = {} if Ellipsis in typing.get_args(kind) or not arguments else {"minItems": len(arguments)}
        return {"type": "array", "items": items} | fixed | ({"maxItems": len(arguments)} if fixed else {})
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array"}
    return {"type": simple[origin or kind]} if (origin or kind) in simple else {}


def _convert(value: Any, kind: Any, where: str) -> Any:
    """A JSON value as the annotated type: nested dataclasses from objects, tuples from lists."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        if value is None:
            return None
        kind, origin = options[0], typing.get_origin(options[0])
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, Mapping):
            raise InvalidRequest(f"{where}: expected an object.")
        return from_json(kind, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InvalidRequest(f"{where}: expected a list.")
        arguments = typing.get_args(kind)
        item = arguments[0] if arguments else Any
        return tuple(_convert(element, item, f"{where}[{index}]") for index, element in enumerate(value))
    return value


def from_json(settings_type: type, data: Mapping[str, Any], where: str = "arguments") -> Any:
    """`settings_type` from a JSON object: unknown fields refused by name, nested types built,
    then every declared setting checked against its range."""
    hints = typing.get_type_hints(settings_type)
    known = {item.name for item in dataclasses.fields(settings_type)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidRequest(f"{where}: {settings_type.__name__} has no field {unknown[0]!r}.")
    values = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        made = settings_type(**values)
    except TypeError as error:
        raise InvalidRequest(f"{where}: {error}") from None
    return checked(made) if isinstance(made, SamplingSettings) else made


def with_defaults(catalogue: Catalogue, arguments: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A tool's arguments with the model (`model` unless they name one) and that model's own
    sampling where they name none (a settings type's defaults are a hub model's 1024²)."""
    chosen = str(arguments.get("model", model))
    return {**model_sampling(catalogue.get(chosen)), "model": chosen, **arguments}


def tool_settings(name: str, arguments: Mapping[str, Any]) -> SamplingSettings:
    """A tool call's settings, validated; InvalidRequest names the tool and the field."""
    table = tools()
    if name not in table:
        raise InvalidRequest(f"There is no tool {name!r}; there are {', '.join(sorted(table))}.")
    return from_json(table[name].settings_type, arguments, name)
