"""GBNF pieces the forced-call grammars are built from: literals, text that avoids a closing tag,
and one tool's rules.
"""

from __future__ import annotations

from dataclasses import dataclass


def lit(text: str) -> str:
    """A GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


def _class_char(c: str) -> str:
    """One character escaped for a GBNF character class."""
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or ("\\" + c if c in "]\\^-[" else c)


def text_without(close: str) -> str:
    """A GBNF expression for any text that does not contain `close` (whose first character occurs
    only at its start, as in `</parameter>`). GBNF has no lookahead, so after each `<` the text
    spells a growing part of `close` and then leaves it with any other character (never `<`,
    which starts over): `[^<]* ( "<" ( "" | [^/<] [^<]* | "/" ( "" | [^p<] [^<]* | ... ) ) )*`.
    The text may end inside such a part: what follows it (the tag itself) cannot complete it."""
    first = close[0]
    if first in close[1:]:
        raise ValueError(f"{close!r}: its first character recurs in it")
    free = f"[^{_class_char(first)}]*"
    inner = '""'
    for k in range(len(close) - 1, 0, -1):
        leave = f"[^{_class_char(close[k])}{_class_char(first)}] {free}"
        grow = f" | {lit(close[k])} {inner}" if k + 1 < len(close) else ""
        inner = f'( "" | {leave}{grow} )'
    return f"{free} ( {lit(first)} {inner} )*"


@dataclass(frozen=True)
class ToolRules:
    """One tool's grammar pieces: its name, the rule for its JSON arguments and, for families that
    write arguments one by one, (key, value rule, required) per parameter."""

    name: str
    args: str
    params: tuple[tuple[str, str, bool], ...]
