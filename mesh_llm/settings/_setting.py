"""The record an option is declared with, and what is made from a table of them (pure).

A table is a tuple of `Setting`s. From one table come an argparse parser (`add_flags`), the
words that carry values to such a parser (`write_flags`), the values a configuration is built
from (`resolve`: given, else the environment, else the default, each checked against its
bounds) and the flag table of the docs (`markdown_table`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh_llm.errors import ConfigError

NO_DEFAULT = "\u2013"  # how the docs show a setting that is unset unless given


@dataclass(frozen=True)
class Setting:
    """One option, declared once: its flag, the type, default and bounds of its value, its help,
    the part of the configuration it feeds and whether the model-server child gets it.

    ``name`` is the value's name everywhere (argparse's dest, `build_config`'s key); the flag is
    ``--name`` with dashes unless ``flag`` says otherwise. A ``bool`` setting is a switch, off
    unless given; a ``repeat`` setting is given once per value and holds a list.
    """

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    part: str = "node"  # the record it configures: api, backend, discovery, split, transport, log, ...
    metavar: str | None = None
    lo: float | None = None  # inclusive bounds
    hi: float | None = None
    positive: bool = False  # above zero: a size in `metavar` units
    choices: tuple[str, ...] = ()
    repeat: bool = False
    env: str | None = None  # the environment variable read when the flag is not given
    flag: str = ""
    short: str = ""  # a one-letter alias, such as -v
    shown: str = ""  # how the default reads in the help and the docs, when not the value itself
    group: str = ""  # the help section it is listed in (none: the main options)
    hidden: bool = False  # for tests: accepted, never shown
    required: bool = False
    child: str = ""  # the model-server setting the value goes on to (in its units: MB become bytes)

    @property
    def long_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def default_text(self) -> str:
        """The default as the help and the docs state it."""
        if self.shown:
            text = self.shown
        elif self.type is bool:
            text = "off"
        elif self.default is None or self.repeat:
            text = NO_DEFAULT
        else:
            text = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        if not self.env:
            return text
        return f"${self.env}" if text == NO_DEFAULT else f"{text}, or ${self.env}"

    def check(self, value: Any) -> Any:
        """``value`` if it is within the setting's choices and bounds, else a ConfigError naming the flag."""
        if value is None or self.type is bool or self.repeat:
            return value
        flag = self.long_flag
        if self.choices and value not in self.choices:
            raise ConfigError(f"{flag} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.positive and not value > 0:
            raise ConfigError(f"{flag} must be a positive number of {self.metavar}, not {value}")
        if self.lo is not None and self.hi is not None and not self.lo <= value <= self.hi:
            raise ConfigError(f"{flag} must be between {self.lo:g} and {self.hi:g}, not {value}")
        if self.lo is not None and value < self.lo:
            raise ConfigError(f"{flag} must be at least {self.lo:g}, not {value}")
        return value


def find(table: Sequence[Setting], name: str) -> Setting:
    """The setting of this name in ``table``."""
    for setting in table:
        if setting.name == name:
            return setting
    raise KeyError(name)


def _help(s: Setting) -> str:
    if s.hidden:
        return argparse.SUPPRESS
    if s.type is bool or s.repeat or (s.default is None and not s.shown and not s.env):
        return s.help
    return f"{s.help} (default {s.default_text()})"


def add_flags(
    parser: argparse.ArgumentParser, table: Sequence[Setting], groups: Mapping[str, str] | None = None
) -> None:
    """One argparse argument per setting, in table order; ``groups`` titles the help sections.

    A setting read from the environment parses to None when not given, so `resolve` can tell."""
    sections: dict[str, Any] = {}
    for s in table:
        target: Any = parser
        if s.group:
            if s.group not in sections:
                sections[s.group] = parser.add_argument_group((groups or {}).get(s.group, s.group))
            target = sections[s.group]
        kwargs: dict[str, Any] = {"dest": s.name, "help": _help(s)}
        if s.type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["action"] = "append" if s.repeat else "store"
            kwargs["default"] = [] if s.repeat else None if s.env else s.default
            if s.type is not str:
                kwargs["type"] = s.type
            if s.choices:
                kwargs["choices"] = s.choices
            if s.metavar:
                kwargs["metavar"] = s.metavar
            if s.required:
                kwargs["required"] = True
        target.add_argument(*([s.short] if s.short else []), s.long_flag, **kwargs)


def write_flags(table: Sequence[Setting], values: Mapping[str, Any]) -> list[str]:
    """The command-line words that carry ``values`` (by setting name) to a parser made from
    ``table``. None and switches that are off are left out: the reader's default stands."""
    unknown = set(values) - {s.name for s in table}
    if unknown:
        raise TypeError(f"no such setting: {', '.join(sorted(unknown))}")
    words: list[str] = []
    for s in table:
        value = values.get(s.name)
        if value is None or value is False:
            continue
        if s.type is bool:
            words.append(s.long_flag)
        elif s.repeat:
            for item in value:
                words += [s.long_flag, str(item)]
        else:
            words += [s.long_flag, str(value)]
    return words


def resolve(
    table: Sequence[Setting], given: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every setting's value: the one given (None or empty: not given), else its environment
    variable in ``environ`` (stripped; empty counts as unset), else its default; each checked."""
    unknown = set(given) - {s.name for s in table}
    if unknown:
        raise TypeError(f"no such setting: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for s in table:
        value = given.get(s.name)
        if (value is None or value == "") and s.env and environ is not None:
            value = environ.get(s.env, "").strip() or None
        if value is None:
            value = [] if s.repeat else False if s.type is bool else s.default
        values[s.name] = s.check(value)
    return values


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Sequence[Setting]) -> str:
    """The docs' flag table: one row per shown setting, flag with its metavar, default, help."""
    rows = ["| flag | default | |", "|---|---|---|"]
    for s in table:
        if s.hidden:
            continue
        meta = s.metavar or ("|".join(s.choices) if s.choices else "")
        flag = ", ".join([*([s.short] if s.short else []), s.long_flag + (f" {meta}" if meta else "")])
        default = s.default_text()
        rows.append(f"| `{_cell(flag)}` | {_cell(default)} | {_cell(s.help)} |")
    return "\n".join(rows) + "\n"
