"""Where the CLI speaks: one stderr console, error lines, and tokens printed whole."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

console = Console(stderr=True)


def error(message: str) -> None:
    """One error line on stderr, never wrapped (rich would wrap it at the terminal width)."""
    console.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)


def print_token(token: str, *, to: Any = None) -> None:
    """A token on a line of its own, never wrapped, so a terminal copy gets all of it."""
    print(token, file=to or sys.stderr, flush=True)
