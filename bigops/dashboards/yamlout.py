"""A small YAML writer for the files we generate (dicts, lists, strings, numbers, booleans).

Every string is written double-quoted in JSON syntax, which YAML reads the same way; no dependency, and
no surprise from YAML's implicit types (``no``, ``1e3``, ``0s``)."""

from __future__ import annotations

import json


def dump(value, indent: int = 0) -> str:
    return "".join(_lines(value, indent)) if isinstance(value, (dict, list)) and value else _scalar(value) + "\n"


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, (dict, list)) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _lines(value, indent: int):
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                yield f"{pad}{key}:\n"
                yield from _lines(item, indent + 2)
            else:
                yield f"{pad}{key}: {_scalar(item)}\n"
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                first, *rest = list(_lines(item, indent + 2))
                yield f"{pad}- {first[indent + 2:]}"
                yield from rest
            else:
                yield f"{pad}- {_scalar(item)}\n"
