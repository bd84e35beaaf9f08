"""The flag table of docs/cli.md, made from the node's settings."""

from __future__ import annotations

from mesh_llm.settings._node import NODE
from mesh_llm.settings._setting import markdown_table

HEADING = "## Flags\n"
GENERATED = (
    "<!-- Made from mesh_llm/settings by `python -m mesh_llm.settings --write docs/cli.md`; "
    "tests/unit/test_settings.py fails when they differ. -->\n"
)


def flags_markdown() -> str:
    """The "## Flags" section's body: a note on where it comes from, then one row per flag."""
    return GENERATED + "\n" + markdown_table(NODE)


def with_flag_table(text: str) -> str:
    """``text`` (docs/cli.md) with its "## Flags" section's body replaced by `flags_markdown`."""
    start = text.index(HEADING) + len(HEADING)
    end = text.find("\n## ", start)
    rest = "" if end < 0 else "\n" + text[end + 1 :]
    return text[:start] + "\n" + flags_markdown() + rest
