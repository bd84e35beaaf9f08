"""Writing the small TOML files agents read (pure), and setting our keys in a user's own file.

Python reads TOML (tomllib) but does not write it. The shapes written here are flat: top-level
strings, numbers and booleans, then tables of the same, whose names may be dotted
(``[model_providers.mesh-llm]``). Merging edits the user's text line by line, so their comments,
order and other settings stay as they were; the result is read back to check it says what we meant.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

Scalar = str | int | float | bool
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def _tables(
    data: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Scalar]]]:
    """(table path, its scalar values) for `data` and every table nested in it, parents first."""
    yield prefix, {k: v for k, v in data.items() if not isinstance(v, dict)}
    for name, value in data.items():
        if isinstance(value, dict):
            yield from _tables(value, (*prefix, name))


def _header(path: tuple[str, ...]) -> str:
    return "[" + ".".join(_key(p) for p in path) + "]"


def dumps(data: dict[str, Any]) -> str:
    """TOML text for nested dicts of scalars."""
    out: list[str] = []
    for path, values in _tables(data):
        if path and not values:
            continue  # a table holding only tables: its children's headers name it
        if path:
            out.append(("\n" if out else "") + _header(path))
        out += [f"{_key(k)} = {_value(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


_HEADER_LINE = re.compile(r"^\s*\[(?!\[)(.+?)\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")


def _path_of(header: str) -> tuple[str, ...] | None:
    """The table path a `[a.b]` header names, read by tomllib itself (quoted parts included)."""
    try:
        doc = tomllib.loads(f"[{header}]\n")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(doc, dict) and len(doc) == 1:
        name, doc = next(iter(doc.items()))
        path.append(name)
    return tuple(path)


def _sets(line: str, keys: set[str]) -> bool:
    stripped = line.lstrip()
    for key in keys:
        for spelled in {key, _key(key)}:
            if stripped.startswith(spelled) and stripped[len(spelled) :].lstrip().startswith("="):
                return True
    return False


def merge(existing: str, ours: dict[str, Any]) -> str:
    """`existing` TOML text with every value of `ours` set, all its other lines kept.

    Our values replace the user's in place of theirs: top-level ones go first, before any
    table; each of our tables gets our values right after its header (appended when absent).
    Raises ValueError when the text is not TOML, or sets our keys in a way line edits cannot
    follow (an inline table, a dotted key, a multi-line value).
    """
    try:
        tomllib.loads(existing)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"it is not valid TOML ({exc})") from None
    owned_by = dict(_tables(ours))
    tables = dict(owned_by)
    lines = existing.splitlines()
    out: list[str] = [f"{_key(k)} = {_value(v)}" for k, v in tables.pop(()).items()]
    current: tuple[str, ...] | None = ()
    for line in lines:
        header = _HEADER_LINE.match(line)
        if header:
            current = _path_of(header.group(1))
            out.append(line)
            if current in tables:
                out += [f"{_key(k)} = {_value(v)}" for k, v in tables.pop(current).items()]
            continue
        if _ANY_HEADER.match(line):
            current = None  # an array of tables: none of ours
        owned = owned_by.get(current) if current is not None else None
        if owned and _sets(line, set(owned)):
            continue
        out.append(line)
    for path, values in tables.items():
        if values:
            out += ["", _header(path), *(f"{_key(k)} = {_value(v)}" for k, v in values.items())]
    text = "\n".join(out).rstrip("\n") + "\n"
    _check(text, ours)
    return text


def _check(text: str, ours: dict[str, Any]) -> None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"its settings could not be merged line by line ({exc})") from None
    for path, values in _tables(ours):
        table: Any = doc
        for part in path:
            table = table.get(part, {}) if isinstance(table, dict) else {}
        for key, value in values.items():
            if not isinstance(table, dict) or table.get(key) != value:
                where = ".".join((*path, key))
                raise ValueError(f"{where} is set there in a way line edits cannot replace")
