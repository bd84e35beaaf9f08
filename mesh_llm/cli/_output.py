"""Where the CLI speaks: one stderr console, error lines, and tokens printed whole."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

PIPE_WIDTH = 10_000  # "no limit" for rich: wide enough for any table or line


def unwrapped_off_terminal(out: Console) -> Console:
    """`out` as it is on a terminal; off one (a pipe, a file, journald), with no width limit.

    Rich assumes 80 columns when it writes to a pipe: it folds table cells over rows
    (`SmolL│M2-13│5M`) and wraps lines, where a script or `grep` cannot find them. Off a
    terminal, tables take their natural width and lines are never wrapped.
    """
    if not out.is_terminal:
        out.width = PIPE_WIDTH
        out.soft_wrap = True
    return out


def stdout_console() -> Console:
    """The console for a command's output on stdout (tables, results)."""
    return unwrapped_off_terminal(Console())


console = unwrapped_off_terminal(Console(stderr=True))


def error(message: str) -> None:
    """One error line on stderr, never wrapped (rich would wrap it at the terminal width)."""
    console.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)


def print_token(token: str, *, to: Any = None) -> None:
    """A token on a line of its own, never wrapped, so a terminal copy gets all of it."""
    print(token, file=to or sys.stderr, flush=True)
